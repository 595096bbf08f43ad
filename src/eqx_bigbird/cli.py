"""The `eqx-bigbird` command line: one subcommand per task (`convert` now; train, bench,
fill-mask and embed plug in through `SUBCOMMANDS`). Errors print one readable line, no traceback."""

import argparse
import json
import os
import sys

from ._checkpoint import CheckpointError

PROGRESS_BYTES = 64 * 2**20  # show a progress bar for checkpoints larger than this

CONVERT_EXAMPLES = """\
examples:
  eqx-bigbird convert hf/bigbird-roberta-base model.eqx.safetensors     # HF dir -> ours
  eqx-bigbird convert hf/flax_model.msgpack out/ --dtype float32        # cast bf16 to f32
  eqx-bigbird convert hf/model.safetensors.index.json out.safetensors   # sharded
  eqx-bigbird convert --model-class BigBirdModel hf/mlm-checkpoint enc.safetensors
  eqx-bigbird convert --from-bert hf/roberta-base rb.safetensors --max-position-embeddings 4096
  eqx-bigbird convert --to-hf model.eqx.safetensors hf-out/ --flax      # ours -> HF
"""


def _add_convert(sub):
    p = sub.add_parser(
        "convert",
        help="convert an HF checkpoint to an eqx-bigbird checkpoint (or back with --to-hf)",
        description="Converts a local HF BigBird checkpoint (directory, model.safetensors, sharded "
        "index, flax_model.msgpack, or pytorch_model.bin when torch is installed) into one "
        "eqx-bigbird file, and prints what was used.",
        epilog=CONVERT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", help="HF directory or weights file (ours, with --to-hf)")
    p.add_argument("dst", help="output file, or directory (then DST/eqx_bigbird.safetensors)")
    p.add_argument(
        "--model-class",
        help="our class to build (default: from config.json "
        "`architectures` when we have it, else BigBirdModel)",
    )
    p.add_argument(
        "--dtype",
        default="keep",
        choices=["keep", "float32", "bfloat16", "float16"],
        help="keep the checkpoint's dtype (default) or cast floating weights",
    )
    p.add_argument(
        "--allow-init",
        action="store_true",
        help="initialise weights the checkpoint lacks instead of failing",
    )
    p.add_argument(
        "--from-bert", action="store_true", help="SRC is a BERT/RoBERTa checkpoint: warm start"
    )
    p.add_argument("--max-position-embeddings", type=int, default=4096, help="with --from-bert")
    p.add_argument(
        "--attention-type",
        default="block_sparse",
        choices=["block_sparse", "original_full"],
        help="with --from-bert",
    )
    p.add_argument("--block-size", type=int, default=64, help="with --from-bert")
    p.add_argument("--num-random-blocks", type=int, default=3, help="with --from-bert")
    p.add_argument(
        "--to-hf",
        action="store_true",
        help="SRC is an eqx-bigbird file: write an HF directory to DST",
    )
    p.add_argument("--flax", action="store_true", help="with --to-hf: also flax_model.msgpack")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary, no progress bar")
    p.set_defaults(func=convert)


def _add_train(sub):
    from ._train_cli import add_parser

    add_parser(sub)


def _add_fill_mask(sub):
    from ._tools_cli import add_fill_mask

    add_fill_mask(sub)


def _add_embed(sub):
    from ._tools_cli import add_embed

    add_embed(sub)


# name -> function adding the subparser; later subcommands append themselves here.
SUBCOMMANDS = {
    "convert": _add_convert,
    "train": _add_train,
    "fill-mask": _add_fill_mask,
    "embed": _add_embed,
}


def _hf_class(src: str, requested: str | None):
    from ._serialization import model_classes

    classes = model_classes()
    if requested is not None:
        if requested not in classes:
            raise ValueError(f"unknown --model-class {requested!r} (known: {sorted(classes)})")
        return classes[requested]
    folder = src if os.path.isdir(src) else os.path.dirname(src)
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            architectures = json.load(f).get("architectures") or []
    except (OSError, ValueError):
        architectures = []
    for name in architectures:
        if name in classes:
            return classes[name]
    return classes["BigBirdModel"]


def convert(args) -> int:
    from ._bert import from_bert
    from ._checkpoint import find_weights_file, from_pretrained
    from ._export import save_pretrained
    from ._serialization import load, save

    log = (lambda *a: None) if args.quiet else print  # noqa: E731
    if args.to_hf:
        model = load(args.src)
        save_pretrained(model, args.dst, flax=args.flax)
        log(f"wrote {type(model).__name__} as an HF checkpoint to {args.dst}")
        return 0
    weights = find_weights_file(args.src)
    size = sum(
        os.path.getsize(os.path.join(os.path.dirname(weights), f))
        for f in os.listdir(os.path.dirname(weights) or ".")
        if f.endswith((".safetensors", ".msgpack", ".bin"))
    )
    progress = not args.quiet and size > PROGRESS_BYTES
    cls = _hf_class(args.src, args.model_class)
    dtype = args.dtype  # "keep" or a floating dtype name
    if args.from_bert:
        model, report = from_bert(
            args.src,
            cls,
            max_position_embeddings=args.max_position_embeddings,
            attention_type=args.attention_type,
            block_size=args.block_size,
            num_random_blocks=args.num_random_blocks,
            dtype=dtype,
            return_report=True,
        )
    else:
        model, report = from_pretrained(
            cls,
            args.src,
            allow_init=args.allow_init,
            dtype=dtype,
            progress=progress,
            return_report=True,
        )
    file = save(args.dst, model)
    log(report.summary())
    log(f"wrote {file}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eqx-bigbird",
        description="BigBird in JAX + Equinox: checkpoint conversion and tools.",
        epilog="run `eqx-bigbird COMMAND --help` for a command's options and examples.\n\n"
        + CONVERT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `eqx-bigbird` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CheckpointError, ValueError, TypeError, OSError) as e:
        print(f"eqx-bigbird {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"eqx-bigbird {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
