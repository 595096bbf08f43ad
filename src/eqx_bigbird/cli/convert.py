"""`eqx-bigbird convert`: an HF checkpoint to our format (or a BERT/RoBERTa one as a warm start),
and back with --to-hf."""

import json
import os

from .. import CheckpointError, from_bert, load, save, save_pretrained
from .._hf_read import (
    FLAX_MSGPACK,
    SAFETENSORS,
    find_weights_file,
    safetensors_metadata,
    safetensors_shards,
)
from .._serialization import FORMAT, checkpoint_file, model_classes
from .args import add_command, add_hub_flags, hub_ids_to_paths

PROGRESS_BYTES = 64 * 2**20  # show a progress bar for checkpoints larger than this

EXAMPLES = """\
examples:
  eqx-bigbird convert google/bigbird-roberta-base model.eqx.safetensors  # Hub id -> ours
  eqx-bigbird convert hf/bigbird-roberta-base model.eqx.safetensors     # HF dir -> ours
  eqx-bigbird convert hf/flax_model.msgpack out/ --dtype float32        # cast bf16 to f32
  eqx-bigbird convert hf/model.safetensors.index.json out.safetensors   # sharded
  eqx-bigbird convert hf/bigbird-pegasus-large-arxiv pegasus.safetensors  # pytorch_model.bin too
  eqx-bigbird convert --model-class BigBirdModel hf/mlm-checkpoint enc.safetensors
  eqx-bigbird convert --from-bert hf/roberta-base rb.safetensors --max-position-embeddings 4096
  eqx-bigbird convert --to-hf model.eqx.safetensors hf-out/ --flax      # ours -> HF
"""


def add_parser(sub) -> None:
    p = add_command(
        sub, "convert", convert,
        help="convert an HF checkpoint to an eqx-bigbird checkpoint (or back with --to-hf)",
        description="Converts an HF BigBird or BigBird-Pegasus checkpoint (a Hub repo id or a "
        "directory, model.safetensors, sharded index, flax_model.msgpack, or pytorch_model.bin "
        "when torch is installed) into one "
        "eqx-bigbird file, and prints what was used.",
        examples=EXAMPLES,
    )
    p.add_argument("src", help="HF directory, Hub repo id (org/name) or weights file (ours, "
                   "with --to-hf)")
    add_hub_flags(p)
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
    _add_from_bert_flags(p)
    p.add_argument(
        "--to-hf",
        action="store_true",
        help="SRC is an eqx-bigbird file: write an HF directory to DST",
    )
    p.add_argument("--flax", action="store_true", help="with --to-hf: also flax_model.msgpack")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary, no progress bar")


def _add_from_bert_flags(p) -> None:
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


def _model_class(src: str, requested: str | None):
    """--model-class, else the first class of config.json's `architectures` we have, else the
    base model of its `model_type` (BigBirdModel or BigBirdPegasusModel)."""
    classes = model_classes()
    if requested is not None:
        if requested not in classes:
            raise ValueError(f"unknown --model-class {requested!r} (known: {sorted(classes)})")
        return classes[requested]
    folder = src if os.path.isdir(src) else os.path.dirname(src)
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError):
        raw = {}
    for name in raw.get("architectures") or []:
        if name in classes:
            return classes[name]
    pegasus = raw.get("model_type") == "bigbird_pegasus"
    return classes["BigBirdPegasusModel" if pegasus else "BigBirdModel"]


def _weights_bytes(src: str) -> int:
    """The size of the weight files in the folder of SRC's weights (all shards of an index)."""
    folder = os.path.dirname(find_weights_file(src))
    return sum(
        os.path.getsize(os.path.join(folder, f))
        for f in os.listdir(folder or ".")
        if f.endswith((".safetensors", ".msgpack", ".bin"))
    )


def _hf_sources(src: str) -> list[str]:
    """Every file converting the HF checkpoint SRC reads: weights (all shards), config.json."""
    weights = find_weights_file(src)
    files = [weights, os.path.join(os.path.dirname(weights), "config.json")]
    if weights.endswith(".json"):
        files += safetensors_shards(weights)
    return files


def _refuse_overwrite(sources: list[str], targets: list[str]) -> None:
    """No output may replace a file the conversion reads, nor a file that is not ours."""
    read = {os.path.realpath(f) for f in sources}
    for target in targets:
        if os.path.realpath(target) in read:
            raise ValueError(
                f"refusing to write {target}: the conversion reads that file (choose another DST)"
            )


def _refuse_foreign(file: str) -> None:
    """Our file may replace an older one of ours, never another file (an HF model.safetensors)."""
    if not os.path.exists(file):
        return
    try:
        ours = safetensors_metadata(file).get("format") == FORMAT
    except CheckpointError:
        ours = False
    if not ours:
        raise ValueError(
            f"refusing to replace {file}: it exists and is not an eqx-bigbird checkpoint"
        )


def convert(args) -> int:
    log = (lambda *a: None) if args.quiet else print  # noqa: E731
    if args.to_hf:
        targets = [os.path.join(args.dst, f) for f in (SAFETENSORS, "config.json", FLAX_MSGPACK)]
        _refuse_overwrite([checkpoint_file(args.src)], targets)
        model = load(args.src)
        save_pretrained(model, args.dst, flax=args.flax)
        log(f"wrote {type(model).__name__} as an HF checkpoint to {args.dst}")
        return 0
    hub_ids_to_paths(args, "src", with_tokenizer=False)
    dst = checkpoint_file(args.dst)
    _refuse_overwrite(_hf_sources(args.src), [dst])
    _refuse_foreign(dst)
    progress = not args.quiet and _weights_bytes(args.src) > PROGRESS_BYTES
    cls = _model_class(args.src, args.model_class)
    if args.from_bert:
        model, report = from_bert(
            args.src,
            cls,
            max_position_embeddings=args.max_position_embeddings,
            attention_type=args.attention_type,
            block_size=args.block_size,
            num_random_blocks=args.num_random_blocks,
            dtype=args.dtype,
            return_report=True,
        )
    else:
        model, report = cls.from_pretrained(
            args.src,
            allow_init=args.allow_init,
            dtype=args.dtype,
            progress=progress,
            return_report=True,
        )
    file = save(args.dst, model)
    log(report.summary())
    log(f"wrote {file}")
    return 0
