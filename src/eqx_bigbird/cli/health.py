"""Training health for `eqx-bigbird train`: a non-finite loss stops the run; a loss spike or a
collapse to one predicted class is reported (log and metrics.json), never passed over silently.

The thresholds are measured, not guessed: see `SPIKE_RATIO` and `COLLAPSE_SHARE`.
"""

import dataclasses
import math
import statistics

import numpy as np

# A spike: the mean loss of the last `SPIKE_WINDOW` steps exceeds `SPIKE_RATIO` x the lowest such
# mean seen before. Measured on default-recipe runs (per-step losses of metrics.json): a healthy run
# (lr 1e-3, seed 0, per-step std 0.22) peaked at 1.08x its best 50-step mean (1.13x over 25 steps);
# falling back from the learned loss (~1.78) to the plateau (~2.25) is 1.26x.
SPIKE_WINDOW = 50
SPIKE_RATIO = 1.2
# A collapse: one class takes at least this share of the predictions while it is less than half
# of the true labels (a model that learned nothing predicts the majority class everywhere).
COLLAPSE_SHARE = 0.9


class Diverged(RuntimeError):
    """The loss became NaN or infinite: the run stops without writing a model."""


@dataclasses.dataclass
class Health:
    """Watches one run; `warnings` go into metrics.json."""

    warnings: list = dataclasses.field(default_factory=list)
    _losses: list = dataclasses.field(default_factory=list)
    _best_window: float = math.inf
    _in_spike: bool = False
    _collapsed: bool | None = None  # the last evaluation's; None before the first
    _healthy_once: bool = False  # some evaluation was not collapsed

    def loss(self, step: int, value: float) -> str | None:
        """Records step `step`'s loss; raises `Diverged` if it is not finite; returns a warning
        the first time the windowed loss rises `SPIKE_RATIO` x above its best."""
        if not math.isfinite(value):
            raise Diverged(f"step {step}: the training loss is {value}")
        self._losses = [*self._losses[1 - SPIKE_WINDOW :], value]
        if len(self._losses) < SPIKE_WINDOW:
            return None
        window = statistics.fmean(self._losses[-SPIKE_WINDOW:])
        spiking = window > SPIKE_RATIO * self._best_window
        self._best_window = min(self._best_window, window)
        message = None
        if spiking and not self._in_spike:
            message = self._warn(
                "loss spike", step,
                f"the mean loss of the last {SPIKE_WINDOW} steps, {window:.3f}, is "
                f"{window / self._best_window:.2f}x its best ({self._best_window:.3f}); the "
                "learning rate may be too high (--lr)",
            )
        self._in_spike = spiking
        return message

    def predictions(self, step: int, predicted: np.ndarray, labels: np.ndarray, split: str,
                    names) -> str | None:
        """Records an evaluation's predictions; returns a warning when they collapse to one
        class: on the test split always, on validation when the previous evaluation had not."""
        counts = np.bincount(predicted, minlength=len(names))
        top = int(counts.argmax())
        share, label_share = counts[top] / len(predicted), float((labels == top).mean())
        collapsed = bool(share >= COLLAPSE_SHARE and label_share < 0.5)
        was, self._collapsed = self._collapsed, collapsed
        self._healthy_once = self._healthy_once or not collapsed
        if not collapsed or (split != "test" and was is not False):
            return None
        what = ("fell back to predicting one class" if self._healthy_once
                else "never left the one-class plateau")
        return self._warn(
            "collapse to one class", step,
            f"{share:.0%} of the {split} predictions are class {names[top]!r} ({label_share:.0%} "
            f"of the labels): the model {what}",
        )

    def state(self) -> dict:
        """What `resumed` needs to continue watching (the checkpoint's progress record keeps it)."""
        best = None if math.isinf(self._best_window) else self._best_window
        return {"warnings": self.warnings, "best_window": best,
                "in_spike": self._in_spike, "collapsed": self._collapsed,
                "healthy_once": self._healthy_once}

    @classmethod
    def resumed(cls, state: dict, losses: list[float]) -> "Health":
        """The watcher of an interrupted run, from its `state()` and its losses so far."""
        best = math.inf if state["best_window"] is None else state["best_window"]
        return cls(list(state["warnings"]), list(losses[-SPIKE_WINDOW:]), best,
                   state["in_spike"], state["collapsed"], state["healthy_once"])

    def _warn(self, kind: str, step: int, text: str) -> str:
        self.warnings.append({"kind": kind, "step": step, "message": text})
        return f"warning: step {step}: {kind}: {text}"
