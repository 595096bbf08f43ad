"""What the sub-commands share: registering one, the checkpoint and tokenizer arguments, checks
of numeric flags, and finding the encoder inside a loaded model."""

import argparse
import math

from .. import BigBirdModel

CHECKPOINT_HELP = "HF directory, or our .safetensors file (then --tokenizer)"
TOKENIZER_HELP = "tokenizer folder (default: CHECKPOINT's)"


def add_command(sub, name: str, func, *, help: str, description: str, examples: str):
    """A sub-command parser whose epilog (`examples`) keeps its line breaks; `func(args)` runs it
    and returns the exit status."""
    p = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=func)
    return p


def add_checkpoint(p) -> None:
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)


def add_tokenizer(p, help: str = TOKENIZER_HELP) -> None:
    p.add_argument("--tokenizer", metavar="DIR", help=help)


def require_positive(flag: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{flag} must be >= 1, got {value}")


def require_finite(flag: str, value: float, *, low: float, high: float | None = None,
                   low_open: bool = False) -> None:
    """`value` is a finite number in [low, high) (or (low, high) with `low_open`)."""
    above = value > low if low_open else value >= low
    if not (math.isfinite(value) and above and (high is None or value < high)):
        span = f"{'(' if low_open else '['}{low}, {'inf' if high is None else high})"
        raise ValueError(f"{flag} must be a finite number in {span}, got {value}")


def encoder_of(model):
    """The BigBird encoder of `model` (itself, or a head's `bert`); None when it has none."""
    return model if isinstance(model, BigBirdModel) else getattr(model, "bert", None)
