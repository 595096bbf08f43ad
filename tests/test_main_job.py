"""The shipped recipe learns: `eqx-bigbird train` with its default hyperparameters, shortened to
STEPS steps (same code path, data generator, model, learning rate, warmup share, clipping and
batch; as in every run, each training example is seen once, so the splits are drawn for STEPS x
batch examples), leaves the majority-class plateau on two seeds."""

import json

import pytest

from eqx_bigbird.cli import main

# Measured under the suite's XLA flags (XLA_FLAGS=--xla_cpu_multi_thread_eigen=false python -m
# benchmarks.readme_figures --seeds S -- --steps N --val-size 128 --test-size 500 --eval-every 100):
# at N = 400, seeds 0 / 1 / 2 end 17.8 / 17.8 / 15.8 points above their majority baselines but
# seed 3 stays on the one-class plateau (margin 0.0, "collapse to one class"): with the schedule
# shortened to 400 steps it leaves the plateau too late. At N = 600, seed 0 ends at +17.2 (36.6%
# vs 19.4%) and seed 3, the slowest measured, at +16.6 (31.6% vs 15.0%; validation 11.7% through
# step 300, 30.5% at 600). These two seeds are tested; 10 points is five times the ~2-point
# spread of a 500-example test split and 6.6 under the smallest measured margin, while a run on
# the plateau scores ~0.
STEPS = 600
SEEDS = [0, 3]
MIN_MARGIN = 0.10


@pytest.mark.parametrize("seed", SEEDS)
def test_shortened_default_recipe_beats_the_majority_baseline(seed, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--seed", str(seed), "--steps", str(STEPS), "--val-size", "128",
            "--test-size", "500", "--eval-every", str(STEPS), "--no-progress", "--out", str(out)]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    margin = metrics["test_accuracy"] - metrics["majority_baseline"]
    assert margin >= MIN_MARGIN, (
        f"seed {seed}: test accuracy {metrics['test_accuracy']:.1%} vs majority baseline "
        f"{metrics['majority_baseline']:.1%} after {STEPS} steps"
    )
    assert metrics["warnings"] == []
