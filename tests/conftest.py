import gc
import os

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
