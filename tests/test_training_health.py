"""The training-health watcher of `eqx-bigbird train` (cli/health.py): non-finite losses stop a
run, loss spikes and collapses to one class are reported once, and the watcher resumes."""

import json
import math

import numpy as np
import pytest

from eqx_bigbird.cli.health import COLLAPSE_SHARE, SPIKE_RATIO, SPIKE_WINDOW, Diverged, Health

NAMES = tuple(str(i) for i in range(10))


def _feed(health, losses, start=1):
    return [m for step, x in enumerate(losses, start) if (m := health.loss(step, x))]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_raises(bad):
    health = Health()
    _feed(health, [2.0, 1.9])
    with pytest.raises(Diverged, match=f"step 3: the training loss is {bad}"):
        health.loss(3, bad)


def test_a_steady_or_falling_loss_never_warns():
    """The shape and noise of a healthy default run (cli/health.py's comment): a plateau at 2.28,
    then a fall to 1.8, per-step std 0.22."""
    rng = np.random.default_rng(0)
    steps = np.arange(1000)
    losses = 1.8 + 0.48 / (1 + np.exp((steps - 300) / 40)) + rng.normal(0, 0.22, 1000)
    health = Health()
    assert _feed(health, losses) == [] and health.warnings == []


def test_a_spike_is_reported_once_per_excursion():
    rng = np.random.default_rng(1)
    calm = list(1.78 + rng.normal(0, 0.22, 200))
    high = list(2.25 + rng.normal(0, 0.22, 100))  # back on the plateau: 1.26x
    health = Health()
    messages = _feed(health, calm + high + calm + high)
    assert len(messages) == 2 and all("loss spike" in m for m in messages)
    first = health.warnings[0]
    assert first["kind"] == "loss spike" and 200 < first["step"] <= 200 + SPIKE_WINDOW
    assert SPIKE_RATIO < 2.25 / 1.78
    assert "--lr" in first["message"]


def test_collapse_to_one_class():
    labels = np.arange(200) % 10
    healthy = labels.copy()
    one = np.zeros(200, np.int64)
    one[: int(200 * (1 - COLLAPSE_SHARE))] = 3  # COLLAPSE_SHARE of the predictions are class 0
    # The untrained plateau at the first validations is not a warning ...
    health = Health()
    assert health.predictions(200, one, labels, "validation", NAMES) is None
    assert health.predictions(400, one, labels, "validation", NAMES) is None
    # ... on the test split it is: the run never left it.
    message = health.predictions(1000, one, labels, "test", NAMES)
    assert "never left the one-class plateau" in message and "class '0'" in message
    # Falling back after a healthy validation is reported at once.
    health = Health()
    assert health.predictions(200, healthy, labels, "validation", NAMES) is None
    message = health.predictions(400, one, labels, "validation", NAMES)
    assert "fell back to predicting one class" in message
    assert health.predictions(600, one, labels, "validation", NAMES) is None  # once
    assert [w["kind"] for w in health.warnings] == ["collapse to one class"]
    # A class that really is most of the labels may take most of the predictions.
    mostly = np.where(np.arange(200) < 190, 0, labels)
    assert Health().predictions(1000, one, mostly, "test", NAMES) is None


def test_resumed_watcher_continues_exactly():
    rng = np.random.default_rng(2)
    losses = list(1.78 + rng.normal(0, 0.22, 150)) + list(2.3 + rng.normal(0, 0.22, 80))
    whole = Health()
    _feed(whole, losses)
    first = Health()
    _feed(first, losses[:160])
    state = json.loads(json.dumps(first.state()))  # progress.json round trip
    second = Health.resumed(state, losses[:160])
    _feed(second, losses[160:], start=161)
    assert second.warnings == whole.warnings and len(whole.warnings) == 1
