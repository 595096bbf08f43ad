"""What the sub-commands share: registering one, the checkpoint and tokenizer arguments, checks
of numeric flags, and finding the encoder inside a loaded model."""

import argparse
import math
import os

from .. import BigBirdModel
from .._hub import local_path

CHECKPOINT_HELP = (
    "HF directory or Hub repo id (org/name, through the HF cache), or our .safetensors file "
    "(then --tokenizer)"
)
TOKENIZER_HELP = "tokenizer folder or Hub repo id (default: CHECKPOINT's)"


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
    add_hub_flags(p)


def add_hub_flags(p) -> None:
    p.add_argument("--revision", help="branch, tag or commit of the Hub repo ids given (default: "
                   "main)")
    p.add_argument("--local-files-only", action="store_true", help="Hub repo ids from the HF "
                   "cache only, never the network (as HF_HUB_OFFLINE=1)")


def hub_ids_to_paths(args, checkpoint: str, *, with_tokenizer: bool = True) -> None:
    """Replaces a Hub repo id in `args.<checkpoint>` (and in `args.tokenizer`) with its local
    snapshot folder, fetched into the HF cache as --revision / --local-files-only say; local
    paths stay. Without --tokenizer the checkpoint's snapshot also gets the repo's tokenizer
    files, if it has them and `with_tokenizer`: the tokenizer defaults to the checkpoint's."""
    tokenizer = getattr(args, "tokenizer", None)
    files = "model+tokenizer" if with_tokenizer and tokenizer is None else "model"
    given = [(checkpoint, getattr(args, checkpoint), files), ("tokenizer", tokenizer, "tokenizer")]
    repo_ids = [(n, v, k) for n, v, k in given if v is not None and not os.path.exists(v)]
    if args.revision is not None and not repo_ids:
        raise ValueError(f"--revision {args.revision}: no Hub repo id was given (only local paths)")
    for name, value, kind in repo_ids:
        setattr(args, name, local_path(value, kind, revision=args.revision,
                                       local_files_only=args.local_files_only))


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
