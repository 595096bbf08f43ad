"""`eqx-bigbird summarize`: summaries of long documents with a BigBird-Pegasus checkpoint (an HF
directory, a Hub repo id or our format) through `generate`, written as JSON lines."""

import functools
import json
import os

import equinox as eqx
import jax
import numpy as np
from tqdm.auto import tqdm

from .. import BigBirdPegasusForConditionalGeneration, generate, jit_options, load
from .._generate import model_generation_config
from .._io import atomic_write_text
from .args import (
    add_checkpoint,
    add_command,
    add_tokenizer,
    hub_ids_to_paths,
    require_finite,
    require_positive,
)
from .tools import _is_ours, _tokenizer

EXAMPLES = """\
examples:
  eqx-bigbird summarize google/bigbird-pegasus-large-arxiv paper.txt --out summaries.jsonl
  eqx-bigbird summarize hf/bigbird-pegasus-large-pubmed docs/*.txt --num-beams 4 --batch-size 4
  eqx-bigbird summarize model.safetensors --tokenizer hf/pegasus a.txt --truncate
"""


def add_parser(sub) -> None:
    p = add_command(
        sub, "summarize", summarize,
        help="summaries of long documents with a BigBird-Pegasus checkpoint, as JSON lines",
        description="Summarizes each FILE (UTF-8 text, one document) with "
        "BigBirdPegasusForConditionalGeneration and `generate`, and writes one JSON object a "
        "line, in the order given: file, summary, summary_ids, input_tokens, truncated. Options "
        "not given come from the checkpoint's generation_config.json / config.json, as in HF. "
        "A summary does not depend on --batch-size: documents are batched only with others of "
        "the same length in blocks (one compiled program per such length).",
        examples=EXAMPLES,
    )
    add_checkpoint(p)
    p.add_argument("files", nargs="+", metavar="FILE", help="text files, one document each")
    add_tokenizer(p)
    p.add_argument("--out", default="summaries.jsonl",
                   help="output JSON-lines file (default summaries.jsonl)")
    p.add_argument("--num-beams", type=int, help="beam search width (1: greedy)")
    p.add_argument("--max-new-tokens", type=int, help="most summary tokens")
    p.add_argument("--no-repeat-ngram-size", type=int, help="ban repeated n-grams of this size")
    p.add_argument("--length-penalty", type=float, help="beam score / length ** this")
    p.add_argument("--batch-size", type=int, default=1,
                   help="documents summarized at once (default 1)")
    p.add_argument("--truncate", action="store_true", help="cut documents longer than the "
                   "model's max_position_embeddings (default: an error)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _load(path):
    if not _is_ours(path):
        return BigBirdPegasusForConditionalGeneration.from_pretrained(path)
    model = load(path)
    if not isinstance(model, BigBirdPegasusForConditionalGeneration):
        raise ValueError(
            f"{path} holds a {type(model).__name__}, not a "
            "BigBirdPegasusForConditionalGeneration"
        )
    return model


def _options(args) -> dict:
    """The generation options given on the command line (the rest: the checkpoint's)."""
    if args.num_beams is not None:
        require_positive("--num-beams", args.num_beams)
    if args.max_new_tokens is not None:
        require_positive("--max-new-tokens", args.max_new_tokens)
    if args.no_repeat_ngram_size is not None and args.no_repeat_ngram_size < 0:
        raise ValueError(f"--no-repeat-ngram-size must be >= 0, got {args.no_repeat_ngram_size}")
    if args.length_penalty is not None:
        require_finite("--length-penalty", args.length_penalty, low=-float("inf"))
    given = {
        "num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens,
        "no_repeat_ngram_size": args.no_repeat_ngram_size, "length_penalty": args.length_penalty,
    }
    return {k: v for k, v in given.items() if v is not None}


def _encode(tokenizer, path, limit: int, truncate: bool):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if truncate:
        return tokenizer.encode(text, max_length=limit)
    enc = tokenizer.encode(text, truncation=False)
    if len(enc.input_ids) > limit:
        raise ValueError(
            f"{path}: {len(enc.input_ids)} tokens, more than the model's "
            f"max_position_embeddings={limit}; pass --truncate to cut it"
        )
    return enc


def _summary_ids(row: np.ndarray, eos: int | None) -> list[int]:
    """The new tokens of one `generate` row (after the start token), up to the first eos."""
    new = row[1:]
    if eos is not None and np.any(new == eos):
        new = new[: int(np.argmax(new == eos))]
    return [int(t) for t in new]


def summarize(args) -> int:
    require_positive("--batch-size", args.batch_size)
    options = _options(args)
    hub_ids_to_paths(args, "checkpoint")
    tokenizer = _tokenizer(args)
    model = _load(args.checkpoint)
    config = model.config
    encodings = [
        _encode(tokenizer, path, config.max_position_embeddings, args.truncate)
        for path in args.files
    ]
    # Bad options fail here, before any work.
    jax.eval_shape(lambda: generate(model, np.ones(1, np.int32), **options))

    @functools.partial(eqx.filter_jit, **jit_options())
    def run(model, ids, mask):
        return jax.vmap(lambda i, m: generate(model, i, attention_mask=m, **options))(ids, mask)

    # Pad each document to a multiple of block_size only, as the model itself does, and batch
    # documents of the same padded length: more padding would change a block-sparse result.
    block, pad = config.block_size, config.pad_token_id
    buckets: dict[int, list[int]] = {}
    for n, enc in enumerate(encodings):
        buckets.setdefault(-(-len(enc.input_ids) // block) * block, []).append(n)
    rows: list[np.ndarray | None] = [None] * len(encodings)
    bar = tqdm(total=len(encodings), desc="summarize", unit="doc", disable=args.no_progress)
    with bar:
        for length, members in sorted(buckets.items()):
            for start in range(0, len(members), args.batch_size):
                batch = members[start:start + args.batch_size]
                ids = np.full((args.batch_size, length), pad, np.int32)
                mask = np.zeros((args.batch_size, length), np.int32)
                # A short last batch repeats its first document: one shape per length.
                for b in range(args.batch_size):
                    enc = encodings[batch[min(b, len(batch) - 1)]]
                    ids[b, : len(enc.input_ids)], mask[b, : len(enc.input_ids)] = enc.input_ids, 1
                out = np.asarray(run(model, ids, mask))
                for b, n in enumerate(batch):
                    rows[n] = out[b]
                bar.update(len(batch))
    eos = model_generation_config(model).eos_token_id
    lines = []
    for path, enc, row in zip(args.files, encodings, rows):
        ids = _summary_ids(row, eos)
        lines.append(json.dumps({
            "file": path, "summary": tokenizer.decode(ids, skip_special_tokens=True),
            "summary_ids": ids, "input_tokens": len(enc.input_ids), "truncated": enc.truncated,
        }, ensure_ascii=False))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write_text(args.out, "".join(line + "\n" for line in lines))
    truncated = sum(enc.truncated for enc in encodings)
    limit = config.max_position_embeddings
    note = f" ({truncated} truncated to {limit} tokens)" if truncated else ""
    print(f"wrote {args.out}: {len(lines)} summaries{note}")
    return 0
