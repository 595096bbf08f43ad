"""The shipped recipe learns: `eqx-bigbird train` with its default hyperparameters and schedule
(smaller validation and test splits), leaves the majority-class plateau on two seeds."""

import json
import subprocess
import sys

import pytest

from eqx_bigbird.cli.train import DEFAULTS

# Measured under the suite's XLA flags (XLA_FLAGS=--xla_cpu_multi_thread_eigen=false python -m
# benchmarks.readme_figures --seeds S -- --steps N --val-size 128 --test-size 500 --eval-every 100):
# at N = 400, seeds 0 / 1 / 2 end 17.8 / 17.8 / 15.8 points above their majority baselines but
# seed 3 stays on the one-class plateau (margin 0.0, "collapse to one class"): with the schedule
# shortened to 400 steps it leaves the plateau too late. At N = 600, seed 0 ends at +17.2 (36.6%
# vs 19.4%) and seed 3, the slowest measured, at +16.6 (31.6% vs 15.0%; validation 11.7% through
# step 300, 30.5% at 600). These two seeds are tested; 10 points is five times the ~2-point
# spread of a 500-example test split and 6.6 under the smallest measured margin, while a run on
# the plateau scores ~0. Cost: the two runs side by side take 267 s of this 2-core machine with
# nothing else running (commit 4b23631; earlier code 502 s, and 656 s before
# `reuse_freed_memory`), over the issue's ~2 minutes: shorter schedules leave the slow seeds on
# the plateau, so the steps stay. `--junitxml` reports record each run's accuracies. The margins
# hold for XLA's numerics with two CPUs (below); pinned to one CPU seed 3 ends at +5.8.
# On another machine of this kind (2026-12-03: AVX-512/AMX CPU, jax 0.10.2) seed 3 at 600 steps
# ended at +4.8 (19.8% vs 15.0%, still leaving the plateau), so the test ran 800: seed 0 +18.8
# (38.2% vs 19.4%), seed 3 +17.8 (32.8% vs 15.0%), the two side by side in 354 s there. Then
# `make_train_step` took `jit_options()` (2026-12-04), which changes XLA's rounding: seed 3 at 800
# steps was step for step the same through step 500 and then left the plateau later, ending at
# +6.0 (21.0%; +17.6 with the options patched out, same run). A shortened schedule stays on that
# edge under any change of rounding, so the test runs the shipped schedule, 1000 steps: seed 3
# leaves the plateau by step 300 (validation 28.9%) and ends at +17.2 (32.2% vs 15.0%), seed 0
# at +21.6 (37.0% vs 15.4%); the two side by side in 344 s on this machine.
STEPS = DEFAULTS["steps"]  # the shipped schedule: the command below leaves --steps to the CLI
SEEDS = [0, 3]
MIN_MARGIN = 0.10


# `python -m eqx_bigbird.cli` on two CPUs (the first two of the machine), whatever share of them
# its pytest-xdist worker has (tests/conftest.py pins each worker): XLA sizes its thread pool from
# the CPU affinity, and the pool's size changes the rounding of its multi-threaded ops, which the
# trajectory of a run near the plateau amplifies (seed 3 at 600 steps, measured: 31.6% test
# accuracy with two CPUs, as on CI, both times; 20.8% pinned to one; seed 0: 36.6% both ways).
# Two CPUs reproduce the measured runs on any machine with two or more.
ON_TWO_CPUS = ("import os, runpy; os.sched_setaffinity(0, range(min(2, os.cpu_count()))); "
               "runpy.run_module('eqx_bigbird.cli', run_name='__main__', alter_sys=True)")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both seeds at once, one process each (with the suite's XLA flags), on the same two
    CPUs: on CI's two cores less wall time than one after the other, if not half.
    **Returns:** `{seed: (exit status, stderr, output folder)}`."""
    root = tmp_path_factory.mktemp("main_job")
    procs = {}
    try:
        for seed in SEEDS:
            cmd = [sys.executable, "-c", ON_TWO_CPUS, "train", "--seed", str(seed),
                   "--val-size", "128", "--test-size", "500",
                   "--eval-every", str(STEPS), "--no-progress", "--out", str(root / str(seed))]
            procs[seed] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE, text=True)
        errors = {seed: proc.communicate(timeout=1800)[1] for seed, proc in procs.items()}
        return {seed: (procs[seed].returncode, errors[seed], root / str(seed)) for seed in SEEDS}
    finally:
        for proc in procs.values():  # none left running after a timeout
            proc.kill()


@pytest.mark.parametrize("seed", SEEDS)
def test_default_recipe_beats_the_majority_baseline(seed, runs, record_property):
    rc, err, out = runs[seed]
    assert rc == 0, err[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    margin = metrics["test_accuracy"] - metrics["majority_baseline"]
    # In `--junitxml` reports: the margins of every run, so their spread is on record.
    for name in ("test_accuracy", "majority_baseline"):
        record_property(name, metrics[name])
    assert margin >= MIN_MARGIN, (
        f"seed {seed}: test accuracy {metrics['test_accuracy']:.1%} vs majority baseline "
        f"{metrics['majority_baseline']:.1%} after {STEPS} steps"
    )
    assert metrics["warnings"] == []
