"""`eqx-bigbird fill-mask` and `eqx-bigbird embed`: inference from a checkpoint (ours, or an HF
directory) with its tokenizer."""

import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import BigBirdForMaskedLM, BigBirdForPreTraining, BigBirdModel, Tokenizer, load
from .._io import atomic_writer, read_text
from .._serialization import checkpoint_file
from .args import (
    add_checkpoint,
    add_command,
    add_tokenizer,
    encoder_of,
    hub_ids_to_paths,
    require_positive,
)

FILL_MASK_EXAMPLES = """\
examples:
  eqx-bigbird fill-mask google/bigbird-roberta-base "Paris is the [MASK] of France."
  eqx-bigbird fill-mask hf/bigbird-roberta-base "Paris is the [MASK] of France."   # a directory
  eqx-bigbird fill-mask mlm.safetensors --tokenizer hf/bigbird-roberta-base "a [MASK] day" -k 10
"""

EMBED_EXAMPLES = """\
examples:
  eqx-bigbird embed google/bigbird-roberta-base docs/*.txt --out embeddings.npy
  eqx-bigbird embed model.safetensors a.txt b.txt --out x.npy --tokenizer hf/bigbird-roberta-base
  eqx-bigbird embed hf/bigbird-roberta-base *.txt --out x.npy --normalize --max-length 2048
"""


def add_fill_mask(sub) -> None:
    p = add_command(
        sub, "fill-mask", fill_mask,
        help="the top-k tokens (with probabilities) for each mask token in a text",
        description="Runs a masked-LM checkpoint (BigBirdForMaskedLM or BigBirdForPreTraining; "
        "an HF directory, a Hub repo id or our format) on TEXT and prints, for every mask token, the k most "
        "probable tokens.",
        examples=FILL_MASK_EXAMPLES,
    )
    add_checkpoint(p)
    p.add_argument("text", help="text with one or more mask tokens (e.g. [MASK])")
    add_tokenizer(p)
    p.add_argument("-k", "--top-k", type=int, default=5, help="tokens per mask (default 5)")


def add_embed(sub) -> None:
    p = add_command(
        sub, "embed", embed,
        help="mean-pooled embeddings of long documents, saved as .npy",
        description="Encodes each FILE (UTF-8 text, truncated to --max-length tokens) with the "
        "checkpoint's encoder and writes the mean of its final hidden states over real tokens: "
        "a float32 array of shape (files, hidden), rows in the order given.",
        examples=EMBED_EXAMPLES,
    )
    add_checkpoint(p)
    p.add_argument("files", nargs="+", metavar="FILE", help="text files, one document each")
    p.add_argument("--out", required=True, help="output .npy file")
    add_tokenizer(p)
    p.add_argument("--max-length", type=int,
                   help="most tokens per document (default: the model's max_position_embeddings)")
    p.add_argument("--normalize", action="store_true", help="scale each embedding to unit length")


def _is_ours(path) -> bool:
    """Our checkpoint file, or a folder holding one that is not also an HF directory."""
    return os.path.isfile(checkpoint_file(path)) and (
        not os.path.isdir(path) or not os.path.exists(os.path.join(path, "config.json"))
    )


def _tokenizer(args):
    folder = args.tokenizer
    if folder is None:
        folder = args.checkpoint if os.path.isdir(args.checkpoint) else None
        if folder is None or not any(
            os.path.exists(os.path.join(folder, f)) for f in ("tokenizer.json", "spiece.model")
        ):
            raise ValueError(
                f"{args.checkpoint} has no tokenizer (tokenizer.json or spiece.model): "
                "pass --tokenizer DIR"
            )
    return Tokenizer.from_pretrained(folder)


def _load_mlm(path):
    if not _is_ours(path):
        return BigBirdForMaskedLM.from_pretrained(path)
    model = load(path)
    if not isinstance(model, (BigBirdForMaskedLM, BigBirdForPreTraining)):
        raise ValueError(
            f"{path} holds a {type(model).__name__}, which has no masked-LM head "
            "(need BigBirdForMaskedLM or BigBirdForPreTraining)"
        )
    return model


def _load_encoder(path):
    if not _is_ours(path):
        return BigBirdModel.from_pretrained(path, add_pooling_layer=False)
    model = load(path)
    encoder = encoder_of(model)
    if encoder is None:
        raise ValueError(f"{path} holds a {type(model).__name__}, which has no BigBird encoder")
    return encoder


def fill_mask(args) -> int:
    require_positive("--top-k", args.top_k)
    hub_ids_to_paths(args, "checkpoint")
    tokenizer = _tokenizer(args)
    model = _load_mlm(args.checkpoint)
    mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise ValueError("the tokenizer has no mask token")
    limit = model.config.max_position_embeddings
    enc = tokenizer.encode(args.text, max_length=limit)
    positions = np.flatnonzero(enc.input_ids == mask_id)
    mask = tokenizer.id_to_token(mask_id)
    if len(positions) == 0:
        whole = tokenizer.encode(args.text, truncation=False)
        if enc.truncated and (whole.input_ids == mask_id).any():
            raise ValueError(
                f"every {mask} token lies beyond the model's {limit}-token limit and was "
                "truncated away"
            )
        raise ValueError(f"no {mask} token in the text")
    if enc.truncated:
        print(f"note: the text was truncated to {len(enc.input_ids)} tokens")

    @jax.jit
    def probabilities(ids, mask, positions):
        logits = model(ids, mask, positions=positions, inference=True).logits
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    probs = np.asarray(probabilities(
        jnp.asarray(enc.input_ids), jnp.asarray(enc.attention_mask), jnp.asarray(positions)
    ))
    k = min(args.top_k, probs.shape[-1])
    for n, (pos, p) in enumerate(zip(positions, probs)):
        top = np.argsort(-p, kind="stable")[:k]
        if len(positions) > 1:
            print(f"mask {n + 1} (token {int(pos)}):")
        for t in top:
            token = tokenizer.decode([int(t)], skip_special_tokens=False).strip()
            print(f"  {p[t]:.4f}  {token or tokenizer.id_to_token(int(t))}")
    return 0


@eqx.filter_jit
def _mean_pool(model, ids, mask):
    h = model(ids, mask, inference=True).last_hidden_state
    m = mask.astype(h.dtype)[:, None]
    return (h * m).sum(0) / jnp.maximum(m.sum(), 1.0)


def _embed_texts(encoder, tokenizer, texts, max_length) -> tuple[np.ndarray, int]:
    """(float32 embeddings, one row a text; how many texts were truncated)."""
    # Pad only to a multiple of block_size, as the model itself would: more padding would move
    # the last (global) block onto padding and change the block-sparse result.
    bucket = encoder.config.block_size
    rows, truncated = [], 0
    for text in texts:
        enc = tokenizer.encode(text, max_length=max_length)
        truncated += enc.truncated
        n = len(enc.input_ids)
        length = -(-n // bucket) * bucket
        if length > encoder.config.max_position_embeddings:  # no room: the model pads itself
            length = n
        ids = np.full(length, tokenizer.pad_token_id or 0, np.int32)
        mask = np.zeros(length, np.int32)
        ids[:n], mask[:n] = enc.input_ids, 1
        rows.append(np.asarray(_mean_pool(encoder, jnp.asarray(ids), jnp.asarray(mask))))
    return np.stack(rows).astype(np.float32), truncated


def embed(args) -> int:
    hub_ids_to_paths(args, "checkpoint")
    inputs = {os.path.realpath(f) for f in args.files}
    if os.path.realpath(args.out) in inputs:
        raise ValueError(f"refusing to write --out {args.out}: it is one of the input FILEs")
    if args.max_length is not None and args.max_length < 1:
        raise ValueError(f"--max-length must be at least 1, got {args.max_length}")
    tokenizer = _tokenizer(args)
    encoder = _load_encoder(args.checkpoint)
    most = encoder.config.max_position_embeddings
    max_length = most if args.max_length is None else args.max_length
    if max_length > most:
        raise ValueError(
            f"--max-length {max_length} must lie in [1, {most}] (the model's "
            "max_position_embeddings)"
        )
    texts = [read_text(file) for file in args.files]
    out, truncated = _embed_texts(encoder, tokenizer, texts, max_length)
    if args.normalize:
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with atomic_writer(args.out) as f:
        np.save(f, out)
    note = f" ({truncated} truncated to {max_length} tokens)" if truncated else ""
    print(f"wrote {args.out}: {out.shape[0]} x {out.shape[1]} float32{note}")
    return 0
