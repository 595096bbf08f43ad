"""Export to Hugging Face: `config.json` + `model.safetensors` in HF PyTorch names and layouts,
and optionally `flax_model.msgpack` in Flax names and layouts (written with msgpack, no flax).

The names come from the same declarative map the loader uses (`_hf_names.hf_names`), read the
other way: each of our leaves has one HF pattern; stacked layers are un-stacked to `layer.{i}`.
"""

import json
import os

import equinox as eqx
import jax
import msgpack
import numpy as np

from ._hf_names import (
    has_flax,
    hf_name_of,
    hf_names,
    layer_count,
    saved_name,
    tied_names,
    written_copies,
)
from ._hf_read import FLAX_MSGPACK, SAFETENSORS
from ._io import atomic_write_text, atomic_writer, write_safetensors
from ._tree import array_leaves, path_str

# Flax splits arrays above this many bytes into chunks (flax.serialization.MAX_CHUNK_SIZE).
_FLAX_MAX_CHUNK = 2**30


_MODULE_KINDS = {
    eqx.nn.Linear: "linear",
    eqx.nn.LayerNorm: "layer_norm",
    eqx.nn.Embedding: "embedding",
}


def _module_kinds(model) -> dict[str, str]:
    """Our leaf path -> the kind of module that holds it, for the leaves of those in
    `_MODULE_KINDS`."""
    is_module = lambda x: type(x) in _MODULE_KINDS  # noqa: E731
    kinds = {}
    for path, node in jax.tree_util.tree_flatten_with_path(model, is_leaf=is_module)[0]:
        if is_module(node):
            for sub, _ in jax.tree_util.tree_flatten_with_path(node)[0]:
                kinds[path_str(path + sub)] = _MODULE_KINDS[type(node)]
    return kinds


def hf_state(model, *, include_tied: bool = False) -> list[tuple[str, np.ndarray, str]]:
    """`[(HF PyTorch name, array, kind)]` for every array leaf of `model`, layers un-stacked.

    Names are as HF's `save_pretrained` of the same class writes them (base model: no `bert.`).
    `kind` is the leaf's module type (`linear`, `layer_norm`, `embedding` or `other`), which decides
    its Flax name and layout. `include_tied` adds the class's tied keys (`_hf_names.tied_names`)
    as copies (HF itself omits them when saving and re-ties them when loading); those HF would
    not re-tie (`_hf_names.written_copies`) are always written.
    """
    cls, config = type(model), model.config
    names, kinds = hf_names(cls, config), _module_kinds(model)
    out = []
    for ours, leaf in array_leaves(model):
        pattern = hf_name_of(ours, names)
        kind = kinds.get(ours, "other")
        value = np.asarray(leaf)  # no copy on CPU
        if "{i}" in pattern:
            if value.shape[0] != layer_count(cls, config, pattern):
                raise ValueError(
                    f"{ours}: {value.shape[0]} stacked layers, config says "
                    f"{layer_count(cls, config, pattern)}"
                )
            out.extend((pattern.format(i=i), value[i], kind) for i in range(value.shape[0]))
        else:
            out.append((pattern, value, kind))
    copies = tied_names(cls, config) if include_tied else written_copies(cls, config)
    if copies:
        by_name = {name: (value, kind) for name, value, kind in out}
        out.extend((name, *by_name[target]) for name, target in copies.items())
    return [(saved_name(cls, name), value, kind) for name, value, kind in out]


def _to_flax(name: str, value: np.ndarray, kind: str) -> tuple[list[str], np.ndarray]:
    """HF PyTorch name/layout -> Flax path/layout (HF's `rename_key_and_reshape_tensor`)."""
    *module, leaf = name.split(".")
    if leaf == "weight":
        if kind == "linear":
            leaf, value = "kernel", value.T
        elif kind == "layer_norm":
            leaf = "scale"
        elif kind == "embedding":
            leaf = "embedding"
    return module + [leaf], value


def _flax_leaf(value: np.ndarray):
    value = np.ascontiguousarray(value)
    if value.nbytes > _FLAX_MAX_CHUNK:
        step = max(1, _FLAX_MAX_CHUNK // value.dtype.itemsize)
        flat = value.reshape(-1)
        chunks = [flat[i : i + step] for i in range(0, flat.size, step)]
        return {
            "__msgpack_chunked_array__": True,
            "shape": {str(i): d for i, d in enumerate(value.shape)},
            "chunks": {str(i): c for i, c in enumerate(chunks)},
        }
    return value


def write_flax_msgpack(path, tree: dict) -> None:
    """Writes a nested `{str: dict | ndarray}` as Flax's `serialization.to_bytes` would, streaming
    one array at a time, atomically."""
    packer = msgpack.Packer(use_bin_type=True)

    def emit(f, node):
        if isinstance(node, dict):
            f.write(packer.pack_map_header(len(node)))
            for k, v in node.items():
                f.write(packer.pack(k))
                emit(f, v)
        elif isinstance(node, np.ndarray):
            payload = msgpack.packb(
                (node.shape, node.dtype.name, node.tobytes("C")), use_bin_type=True
            )
            f.write(packer.pack(msgpack.ExtType(1, payload)))
        else:
            f.write(packer.pack(node))

    with atomic_writer(path) as f:
        emit(f, tree)


def _flax_tree(state: list[tuple[str, np.ndarray, str]]) -> dict:
    """The nested Flax parameter dict of `hf_state` entries."""
    tree: dict = {}
    for name, value, kind in state:
        keys, value = _to_flax(name, value, kind)
        node = tree
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = _flax_leaf(value)
    return tree


def save_pretrained(
    model, path: str | os.PathLike, *, flax: bool = False, include_tied: bool = False
) -> None:
    """Writes `model` as a Hugging Face checkpoint directory.

    **Arguments:**
    - `model`: one of our model classes.
    - `path`: the directory (created if needed).
    - `flax`: also write `flax_model.msgpack` (Flax names, (in, out) kernels).
    - `include_tied`: also write tied keys (`cls.predictions.decoder.weight` and `.bias`) as
      copies in `model.safetensors`; HF's own `save_pretrained` leaves them out.

    Writes `config.json` (`architectures`: the class's name) and `model.safetensors` (HF PyTorch
    names, (out, in) weights), each atomically.
    """
    path = os.fspath(path)
    cls = type(model)
    if flax and not has_flax(cls):
        raise ValueError(f"HF has no Flax version of {cls.__name__}: flax=True is not possible")
    os.makedirs(path, exist_ok=True)
    state = hf_state(model, include_tied=include_tied)
    config = model.config.to_hf()
    config["architectures"] = [cls.__name__]
    write_safetensors(
        os.path.join(path, SAFETENSORS), [(n, v) for n, v, _ in state], {"format": "pt"}
    )
    if flax:
        # Flax's LM head holds no decoder kernel or bias to tie: the copies have no Flax name.
        tied = {saved_name(cls, name) for name in tied_names(cls, model.config)}
        write_flax_msgpack(
            os.path.join(path, FLAX_MSGPACK), _flax_tree([e for e in state if e[0] not in tied])
        )
    atomic_write_text(
        os.path.join(path, "config.json"), json.dumps(config, indent=2, sort_keys=True) + "\n"
    )
