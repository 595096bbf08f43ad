import gc
import os


def _pin_xdist_worker():
    """Under pytest-xdist, gives worker i of n its own share of the CPUs (every n-th one).

    XLA sizes its thread pool from the process's CPU affinity, so without this every worker
    runs its programs on every core and the workers contend; pinned, n workers on n cores run
    side by side. Subprocesses a test starts inherit their worker's share."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not (worker and count and hasattr(os, "sched_setaffinity")):
        return
    cpus = sorted(os.sched_getaffinity(0))
    index, count = int(worker.removeprefix("gw")), int(count)
    if count <= len(cpus):
        os.sched_setaffinity(0, cpus[index % count :: count])


# Before JAX starts: its CPU client reads the affinity once.
_pin_xdist_worker()
# Two cores, many small programs: keep XLA from oversubscribing and tests deterministic.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import jax
import jax.random as jr
import pytest

import eqx_bigbird

# As `eqx-bigbird` commands do: no page zeroing of every large buffer of every step.
eqx_bigbird.reuse_freed_memory()

# Our code runs under strict dtype and rank promotion (HF Flax code does not: see
# `hf_reference.lenient_jax`).
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


# Under pytest-xdist (`--dist loadfile --no-loadscope-reorder`, in pyproject.toml) these files
# start first, the longest first (worker seconds of a 2-core run: 846, 482, 284, 282, 275, 260,
# 260, 258, 249, 225), so that both workers end together rather than one running a long file
# alone at the end.
LONGEST_FIRST = (
    "test_main_job.py", "test_distributed.py", "test_hf_parity.py", "test_cli_train.py",
    "test_notebooks.py", "test_training.py", "test_heads.py", "test_sparse_attention.py",
    "test_options.py", "test_model.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


@pytest.fixture(scope="module", autouse=True)
def _free_compiled_programs():
    """Drops JAX's compiled programs after each test module. The suite compiles thousands of
    small programs in one process; keeping them all alive ends in a crash inside XLA's compiler
    late in the run (seen as a segfault in CI), so each module starts from empty caches."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture
def getkey():
    """A fresh PRNG key per call, from a per-test seed."""
    keys = iter(jr.split(jr.PRNGKey(0), 1000))
    return lambda: next(keys)
