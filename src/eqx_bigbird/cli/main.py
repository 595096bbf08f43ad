"""The `eqx-bigbird` parser, one sub-command a module, and the dispatch: an error prints one
readable line, no traceback."""

import argparse
import re
import sys

import equinox as eqx
import jax

from .. import CheckpointError, reuse_freed_memory
from . import convert, summarize, tools, train
from .health import Diverged

# name -> function adding its sub-parser, in the order `--help` lists them.
SUBCOMMANDS = {
    "convert": convert.add_parser,
    "train": train.add_parser,
    "fill-mask": tools.add_fill_mask,
    "embed": tools.add_embed,
    "summarize": summarize.add_parser,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eqx-bigbird",
        description="BigBird in JAX + Equinox: checkpoint conversion and tools.",
        epilog="run `eqx-bigbird COMMAND --help` for a command's options and examples.\n\n"
        + convert.EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `eqx-bigbird` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    reuse_freed_memory()
    try:
        return int(args.func(args) or 0)
    except (CheckpointError, ValueError, TypeError, OSError, Diverged) as e:
        print(f"eqx-bigbird {args.command}: error: {e}", file=sys.stderr)
        return 1
    except (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError) as e:
        print(f"eqx-bigbird {args.command}: error: {runtime_message(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"eqx-bigbird {args.command}: interrupted", file=sys.stderr)
        return 130


def runtime_message(error: Exception) -> str:
    """The one line that a check failing inside compiled code (`eqx.error_if`) reported, out of
    the pages of text JAX and Equinox wrap it in; other runtime errors: their first line."""
    found = re.findall(r"EquinoxRuntimeError: (.+)", str(error))
    return found[-1].strip() if found else str(error).strip().splitlines()[0]
