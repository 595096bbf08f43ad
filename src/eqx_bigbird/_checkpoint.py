"""Loading HF BigBird checkpoints (safetensors or Flax msgpack) into our pytrees, without torch/flax.

Conversion is skeleton -> fill -> check: the model is first built shape-only
(`eqx.filter_eval_shape`, no weights allocated), every leaf is then filled from the checkpoint
through one declarative map between our tree paths and HF's PyTorch names, and finally nothing may
be left unfilled. Flax names are first rewritten to PyTorch names (kernel (in, out) -> weight
(out, in), scale/embedding -> weight), so there is a single map.
"""

import dataclasses
import json
import os
import re
import warnings
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import msgpack
import numpy as np

from ._config import BigBirdConfig

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
FLAX_MSGPACK = "flax_model.msgpack"

# Our module path -> HF (PyTorch) module path, for the encoder. `{i}` marks the stacked layer axis:
# our leaf `encoder.layers.X` of shape (layers, ...) is HF's `encoder.layer.{i}.Y` for every i.
# Leaf names (weight, bias) are the same on both sides. HF names are canonicalised with the
# `bert.` prefix that its head classes use (see `canonical_names`), so one map serves the base
# model and every head: a head holding the encoder as `bert` maps `bert.<ours>` -> `bert.<HF>`.
ENCODER_NAMES: dict[str, str] = {
    "embeddings.word_embeddings": "bert.embeddings.word_embeddings",
    "embeddings.position_embeddings": "bert.embeddings.position_embeddings",
    "embeddings.token_type_embeddings": "bert.embeddings.token_type_embeddings",
    "embeddings.layer_norm": "bert.embeddings.LayerNorm",
    "encoder.layers.attention.query": "bert.encoder.layer.{i}.attention.self.query",
    "encoder.layers.attention.key": "bert.encoder.layer.{i}.attention.self.key",
    "encoder.layers.attention.value": "bert.encoder.layer.{i}.attention.self.value",
    "encoder.layers.attention_output": "bert.encoder.layer.{i}.attention.output.dense",
    "encoder.layers.attention_norm": "bert.encoder.layer.{i}.attention.output.LayerNorm",
    "encoder.layers.intermediate": "bert.encoder.layer.{i}.intermediate.dense",
    "encoder.layers.output": "bert.encoder.layer.{i}.output.dense",
    "encoder.layers.output_norm": "bert.encoder.layer.{i}.output.LayerNorm",
    "pooler": "bert.pooler",
}
# Top-level HF module names that belong to the encoder: HF's base classes save them unprefixed.
_ENCODER_ROOTS = ("embeddings.", "encoder.", "pooler.")


def canonical_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Prefixes the encoder's keys with `bert.` where a base-model checkpoint left it out."""
    return {("bert." + k if k.startswith(_ENCODER_ROOTS) else k): v for k, v in state.items()}


class CheckpointError(ValueError):
    """A checkpoint does not fit the model: missing, mis-shaped or unreadable weights."""


@dataclasses.dataclass
class LoadReport:
    """What a load used: HF keys consumed, our leaves newly initialised, HF keys left unused."""

    source: str
    used: list[str]
    initialised: list[str]
    unused: list[str]

    def __str__(self):
        lines = [f"loaded {len(self.used)} tensors from {self.source}"]
        if self.initialised:
            lines.append(f"newly initialised (not in checkpoint): {self.initialised}")
        if self.unused:
            lines.append(f"unused checkpoint keys: {self.unused}")
        return "\n".join(lines)


# -- reading --------------------------------------------------------------------------------------


def _msgpack_ext_hook(code, data):
    # Flax's msgpack extension types: 1 = ndarray, 3 = numpy scalar (both (shape, dtype, bytes)).
    if code in (1, 3):
        shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
        name = dtype_name.decode()
        dtype = jnp.bfloat16 if name == "bfloat16" else np.dtype(name)
        return np.frombuffer(buffer, dtype=dtype).reshape(shape)
    raise CheckpointError(f"unsupported msgpack extension type {code} in Flax checkpoint")


def _unchunk(tree):
    """Flax splits arrays over 1 GiB into {'__msgpack_chunked_array__', 'shape', 'chunks'}."""
    if isinstance(tree, dict):
        if "__msgpack_chunked_array__" in tree:
            shape = tuple(tree["shape"][str(i)] for i in range(len(tree["shape"])))
            chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
            return np.concatenate(chunks).reshape(shape)
        return {k: _unchunk(v) for k, v in tree.items()}
    return tree


def _flax_to_torch_names(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flax names/layouts -> PyTorch names/layouts (HF's own `load_flax_weights_in_pytorch_model`)."""
    out = {}
    for name, value in flat.items():
        parts = name.split("/")
        leaf = parts[-1]
        if leaf == "kernel":
            if value.ndim != 2:
                raise CheckpointError(f"Flax kernel {name} has {value.ndim} dims, expected 2")
            leaf, value = "weight", value.T
        elif leaf in ("scale", "embedding"):
            leaf = "weight"
        out[".".join(parts[:-1] + [leaf])] = value
    return out


def read_flax_msgpack(path: str) -> dict[str, np.ndarray]:
    """A Flax `flax_model.msgpack` as `{pytorch_name: array}` (never unpickles anything)."""
    with open(path, "rb") as f:
        tree = msgpack.unpackb(f.read(), ext_hook=_msgpack_ext_hook, raw=False, strict_map_key=False)
    tree = _unchunk(tree)
    flat = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        elif isinstance(node, np.ndarray):
            flat[prefix] = node
        else:
            raise CheckpointError(f"unexpected {type(node).__name__} at {prefix!r} in {path}")

    walk(tree, "")
    return _flax_to_torch_names(flat)


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """A `model.safetensors` file (or a sharded index) as `{name: numpy array}`."""
    from safetensors import safe_open

    files = [path]
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(os.path.dirname(path), s) for s in shards]
    out = {}
    for file in files:
        try:
            with safe_open(file, framework="numpy") as f:
                for name in f.keys():
                    out[name] = f.get_tensor(name)
        except Exception as e:  # safetensors raises its own error types; name the file
            if "bfloat16" in str(e) or "bf16" in str(e).lower():
                out.update(_read_safetensors_bf16(file))
            else:
                raise CheckpointError(f"cannot read {file}: {e}") from e
    # HF's old LayerNorm names.
    return {re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k)): v for k, v in out.items()}


def _read_safetensors_bf16(file):
    from safetensors.flax import load_file

    return {k: np.asarray(v) for k, v in load_file(file).items()}


def read_hf_weights(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], str]:
    """The weights of a local HF directory (or file), in PyTorch names, and the file read."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in (SAFETENSORS, SAFETENSORS_INDEX, FLAX_MSGPACK):
            candidate = os.path.join(path, name)
            if os.path.exists(candidate):
                path = candidate
                break
        else:
            found = sorted(os.listdir(path))
            hint = (
                " (pickled PyTorch checkpoints are never loaded: convert them to safetensors first)"
                if any(f.endswith((".bin", ".pt", ".pth", ".ckpt")) for f in found)
                else ""
            )
            raise CheckpointError(
                f"no {SAFETENSORS} or {FLAX_MSGPACK} in {path} (found {found}){hint}"
            )
    if path.endswith(".msgpack"):
        return read_flax_msgpack(path), path
    if path.endswith((".safetensors", ".json")):
        return read_safetensors(path), path
    raise CheckpointError(f"unknown checkpoint format: {path} (expected .safetensors or .msgpack)")


# -- mapping --------------------------------------------------------------------------------------


def _path_str(path) -> str:
    parts = []
    for p in path:
        if isinstance(p, jax.tree_util.GetAttrKey):
            parts.append(p.name)
        elif isinstance(p, jax.tree_util.SequenceKey):
            parts.append(str(p.idx))
        elif isinstance(p, jax.tree_util.DictKey):
            parts.append(str(p.key))
        else:
            parts.append(str(p))
    return ".".join(parts)


def hf_name_of(our_path: str, names: Mapping[str, str]) -> str:
    """The HF name pattern of one of our leaves (longest matching module prefix wins)."""
    for prefix in sorted(names, key=len, reverse=True):
        if our_path == prefix or our_path.startswith(prefix + "."):
            return names[prefix] + our_path[len(prefix) :]
    raise KeyError(f"no HF name for {our_path}")


def fill_from_state(skeleton, state: dict[str, np.ndarray], names: Mapping[str, str], *,
                    num_layers: int, init=None, source: str = "checkpoint"):
    """Fills every array leaf of `skeleton` (a shape-only model) from `state`.

    `init` (an initialised model of the same structure) supplies leaves the checkpoint lacks; without
    it they are an error. Returns the model and a `LoadReport`.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(skeleton)
    init_leaves = jax.tree_util.tree_leaves(init) if init is not None else None
    filled, used, missing, misshaped, initialised = [], set(), [], [], []
    for n, (path, leaf) in enumerate(leaves):
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            filled.append(leaf)
            continue
        ours = _path_str(path)
        pattern = hf_name_of(ours, names)
        keys = [pattern.format(i=i) for i in range(num_layers)] if "{i}" in pattern else [pattern]
        absent = [k for k in keys if k not in state]
        if absent:
            if init_leaves is None:
                missing.extend(absent)
                filled.append(leaf)
            else:
                initialised.append(pattern)
                filled.append(init_leaves[n])
            continue
        value = np.stack([state[k] for k in keys]) if "{i}" in pattern else state[keys[0]]
        if value.shape != leaf.shape:
            misshaped.append(f"{pattern}: checkpoint {value.shape}, model {leaf.shape}")
            filled.append(leaf)
            continue
        used.update(keys)
        filled.append(jnp.asarray(value, dtype=leaf.dtype))
    problems = []
    if missing:
        problems.append(f"missing keys: {missing}")
    if misshaped:
        problems.append(f"mis-shaped keys: {misshaped}")
    if problems:
        raise CheckpointError(f"{source} does not fit the model; " + "; ".join(problems))
    model = jax.tree_util.tree_unflatten(treedef, filled)
    unfilled = [
        _path_str(p)
        for p, x in jax.tree_util.tree_flatten_with_path(model)[0]
        if isinstance(x, jax.ShapeDtypeStruct)
    ]
    assert not unfilled, f"unfilled leaves: {unfilled}"
    report = LoadReport(source, sorted(used), initialised, sorted(set(state) - used))
    return model, report


def from_pretrained(
    cls,
    path: str | os.PathLike,
    *,
    key=None,
    allow_init: bool = False,
    verbose: bool = False,
    config_overrides: dict | None = None,
    **model_kwargs,
):
    """Builds `cls` from a local HF directory; see `BigBirdModel.from_pretrained`.

    `cls` provides `hf_names(config) -> {our module path: HF module path}` (canonical HF names,
    see `ENCODER_NAMES`) and is built as `cls(config, key=key, **model_kwargs)`.

    - `allow_init`: leaves missing from the checkpoint are initialised (from `key`) and reported,
      instead of raising `CheckpointError`.
    - `config_overrides`: fields to change in the read config (e.g. `attention_type`).
    - `model_kwargs`: passed to the model constructor (e.g. `scan_layers=False`).
    """
    config = BigBirdConfig.from_hf(path)
    if config_overrides:
        config = config.replace(**config_overrides)
    state, source = read_hf_weights(path)
    state = canonical_names(state)
    key = jr.PRNGKey(0) if key is None else key
    skeleton = eqx.filter_eval_shape(cls, config, key=key, **model_kwargs)
    init = cls(config, key=key, **model_kwargs) if allow_init else None
    model, report = fill_from_state(
        skeleton, state, cls.hf_names(config), num_layers=config.num_hidden_layers, init=init,
        source=source,
    )
    if report.initialised:
        warnings.warn(f"{cls.__name__}: newly initialised from `key`: {report.initialised}")
    if verbose:
        print(report)
    return eqx.nn.inference_mode(model)
