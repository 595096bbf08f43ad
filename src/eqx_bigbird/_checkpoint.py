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
from ._io import SAFETENSORS_DTYPES
from ._tree import path_str

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
FLAX_MSGPACK = "flax_model.msgpack"
PYTORCH_BIN = "pytorch_model.bin"

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


def canonical_name(name: str) -> str:
    return "bert." + name if name.startswith(_ENCODER_ROOTS) else name


def canonical_names(state: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """Prefixes the encoder's keys with `bert.` where a base-model checkpoint left it out."""
    if isinstance(state, LazyTensors):
        return state.renamed(canonical_name)
    return {canonical_name(k): v for k, v in state.items()}


class CheckpointError(ValueError):
    """A checkpoint does not fit the model: missing, mis-shaped or unreadable weights."""


@dataclasses.dataclass
class LoadReport:
    """What a load used: HF keys consumed, our leaves newly initialised, HF keys left unused.

    `tied` are checkpoint keys that duplicate another key (HF's tied decoder weights): accepted,
    checked equal to what they are tied to, and not loaded twice.
    """

    source: str
    used: list[str]
    initialised: list[str]
    unused: list[str]
    model_class: str = ""
    num_params: int = 0
    dtypes: tuple[str, ...] = ()
    tied: list[str] = dataclasses.field(default_factory=list)

    def __str__(self):
        lines = [f"loaded {len(self.used)} tensors from {self.source}"]
        if self.initialised:
            lines.append(f"newly initialised (not in checkpoint): {self.initialised}")
        if self.unused:
            lines.append(f"unused checkpoint keys: {self.unused}")
        return "\n".join(lines)

    def summary(self, limit: int = 8) -> str:
        """A readable multi-line summary (what `eqx-bigbird convert` prints)."""

        def names(xs):
            xs = list(xs)
            shown = ", ".join(xs[:limit]) + (
                f", ... ({len(xs) - limit} more)" if len(xs) > limit else ""
            )
            return f"{len(xs)}" + (f" [{shown}]" if xs else "")

        return "\n".join(
            [
                f"source:      {self.source}",
                f"model:       {self.model_class}",
                f"parameters:  {self.num_params:,} ({', '.join(self.dtypes)})",
                f"used keys:   {len(self.used)}"
                + (f" (+{len(self.tied)} tied)" if self.tied else ""),
                f"initialised: {names(self.initialised)}",
                f"unused keys: {names(self.unused)}",
            ]
        )


# -- reading --------------------------------------------------------------------------------------


class LazyTensors(Mapping):
    """`{name: array}` whose arrays are read from disk only when looked up (one at a time), so a
    conversion never holds the whole checkpoint in memory next to the model."""

    def __init__(self, loaders: dict, shapes: dict, source: str):
        self._loaders, self._shapes, self.source = loaders, shapes, source

    def __getitem__(self, name):
        return self._loaders[name]()

    def __iter__(self):
        return iter(self._loaders)

    def __len__(self):
        return len(self._loaders)

    def shape(self, name) -> tuple[int, ...]:
        return self._shapes[name]

    def renamed(self, rename) -> "LazyTensors":
        loaders, shapes = {}, {}
        for k in self._loaders:
            loaders[rename(k)], shapes[rename(k)] = self._loaders[k], self._shapes[k]
        return LazyTensors(loaders, shapes, self.source)


def _dtype_from_name(name: str) -> np.dtype:
    return np.dtype(jnp.bfloat16) if name == "bfloat16" else np.dtype(name)


_ST_DTYPES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def _safetensors_header(file: str) -> tuple[dict, int]:
    """The parsed header of a safetensors file and where its data starts; validated against the
    file size so truncated or corrupt files are reported here, naming the file."""
    size = os.path.getsize(file)
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{file}: truncated or not a safetensors file ({size} bytes)")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, 100_000_000):
            raise CheckpointError(
                f"{file}: corrupt or truncated safetensors header (declares {n} bytes, file has {size})"
            )
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CheckpointError(f"{file}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: corrupt safetensors header (not a JSON object)")
    start, end = 8 + n, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _ST_DTYPES[info["dtype"]]
            lo, hi = info["data_offsets"]
            count = int(np.prod(info["shape"], dtype=np.int64))
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{file}: corrupt safetensors entry {name!r}: {info}") from None
        if hi - lo != count * _dtype_from_name(dtype).itemsize:
            raise CheckpointError(f"{file}: corrupt safetensors entry {name!r}: size mismatch")
        end = max(end, hi)
    if start + end > size:
        raise CheckpointError(
            f"{file}: truncated (the header needs {start + end} bytes, the file has {size})"
        )
    return header, start


def read_safetensors(path: str) -> LazyTensors:
    """A `model.safetensors` file (or a sharded `model.safetensors.index.json`), read lazily.

    Our own parser (the format is a JSON header + raw little-endian bytes): bf16 needs no framework,
    and every tensor is read with one `readinto`, never memory-mapped wholesale.
    """
    files = [path]
    if path.endswith(".json"):
        try:
            with open(path, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: not a safetensors index ({e!r})") from None
        files = [os.path.join(os.path.dirname(path), s) for s in shards]
        for file in files:
            if not os.path.exists(file):
                raise CheckpointError(f"{path}: shard {file} is missing")
    loaders, shapes = {}, {}
    for file in files:
        header, start = _safetensors_header(file)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype, shape = _dtype_from_name(_ST_DTYPES[info["dtype"]]), tuple(info["shape"])
            lo = start + info["data_offsets"][0]

            def load(file=file, lo=lo, dtype=dtype, shape=shape):
                out = np.empty(shape, dtype)
                with open(file, "rb") as f:
                    f.seek(lo)
                    f.readinto(out.reshape(-1).view(np.uint8).data)
                return out

            loaders[name], shapes[name] = load, shape
    # HF's old LayerNorm names.
    rename = lambda k: re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k))  # noqa: E731
    return LazyTensors(loaders, shapes, path).renamed(rename)


def _msgpack_ext_hook(code, data):
    # Flax's msgpack extension types: 1 = ndarray, 3 = numpy scalar (both (shape, dtype, bytes)).
    if code in (1, 3):
        shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
        dtype = _dtype_from_name(dtype_name.decode())
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


def _flax_to_torch_names(flat: dict[str, np.ndarray], path: str = "") -> dict[str, np.ndarray]:
    """Flax names/layouts -> PyTorch names/layouts (HF's own `load_flax_weights_in_pytorch_model`)."""
    out = {}
    for name, value in flat.items():
        parts = name.split("/")
        leaf = parts[-1]
        if leaf == "kernel":
            if value.ndim != 2:
                raise CheckpointError(
                    f"{path}: Flax kernel {name} has {value.ndim} dims, expected 2"
                )
            leaf, value = "weight", value.T
        elif leaf in ("scale", "embedding"):
            leaf = "weight"
        out[".".join(parts[:-1] + [leaf])] = value
    return out


def read_flax_msgpack(path: str) -> dict[str, np.ndarray]:
    """A Flax `flax_model.msgpack` as `{pytorch_name: array}` (never unpickles anything).

    Streamed from the file, so the raw bytes and the arrays are not both held in memory."""
    try:
        with open(path, "rb") as f:
            unpacker = msgpack.Unpacker(
                f,
                ext_hook=_msgpack_ext_hook,
                raw=False,
                strict_map_key=False,
                max_buffer_size=2**31 - 1,
            )
            tree = unpacker.unpack()
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except Exception as e:  # msgpack's OutOfData / ExtraData / ValueError on truncation or garbage
        raise CheckpointError(
            f"{path}: corrupt or truncated Flax msgpack checkpoint ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(tree, dict):
        raise CheckpointError(
            f"{path}: not a Flax parameter tree (top level is {type(tree).__name__})"
        )
    tree = _unchunk(tree)
    flat = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        elif isinstance(node, np.ndarray):
            flat[prefix] = node
        else:
            raise CheckpointError(f"{path}: unexpected {type(node).__name__} at {prefix!r}")

    walk(tree, "")
    return _flax_to_torch_names(flat, path)


def read_pytorch_bin(path: str) -> dict[str, np.ndarray]:
    """A pickled `pytorch_model.bin`, only through torch's restricted `weights_only=True` loader."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path}: reading pytorch_model.bin needs torch (pip install torch), or convert it to "
            'safetensors where torch is installed: python -c "import torch, safetensors.torch as s; '
            "s.save_file(torch.load('pytorch_model.bin', weights_only=True), 'model.safetensors')\""
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise CheckpointError(
            f"{path}: cannot load with torch.load(weights_only=True): {e}"
        ) from None
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        v = v.detach().contiguous()
        if v.dtype == torch.bfloat16:
            out[k] = v.view(torch.int16).numpy().view(jnp.bfloat16)
        else:
            out[k] = v.numpy()
    return out


# In order of preference when a directory holds several.
_WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, FLAX_MSGPACK, PYTORCH_BIN)


def find_weights_file(path: str | os.PathLike) -> str:
    """The weights file of a local HF directory (or `path` itself if it is a file)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file or directory")
    if not os.path.isdir(path):
        if not path.endswith((".safetensors", ".json", ".msgpack", ".bin", ".pt", ".pth")):
            raise CheckpointError(
                f"{path}: unknown checkpoint format (expected .safetensors, "
                ".safetensors.index.json, .msgpack or pytorch_model.bin)"
            )
        return path
    for name in _WEIGHT_FILES:
        candidate = os.path.join(path, name)
        if os.path.exists(candidate):
            return candidate
    raise CheckpointError(
        f"{path}: unknown layout: no {', '.join(_WEIGHT_FILES)} (found {sorted(os.listdir(path))})"
    )


def read_hf_weights(path: str | os.PathLike) -> tuple[Mapping[str, np.ndarray], str]:
    """The weights of a local HF directory (or file), in PyTorch names, and the file read.

    Safetensors are read lazily (a `LazyTensors` mapping); Flax msgpack and `pytorch_model.bin`
    (torch only, `weights_only=True`) as a dict.
    """
    path = find_weights_file(path)
    if path.endswith(".msgpack"):
        return read_flax_msgpack(path), path
    if path.endswith((".safetensors", ".json")):
        return read_safetensors(path), path
    if path.endswith((".bin", ".pt", ".pth")):
        return read_pytorch_bin(path), path
    raise CheckpointError(
        f"{path}: unknown checkpoint format (expected .safetensors, .safetensors.index.json, "
        ".msgpack or pytorch_model.bin)"
    )


# -- mapping --------------------------------------------------------------------------------------


def hf_name_of(our_path: str, names: Mapping[str, str]) -> str:
    """The HF name pattern of one of our leaves (longest matching module prefix wins)."""
    for prefix in sorted(names, key=len, reverse=True):
        if our_path == prefix or our_path.startswith(prefix + "."):
            return names[prefix] + our_path[len(prefix) :]
    raise KeyError(f"no HF name for {our_path}")


def _target_dtype(leaf_dtype, value_dtype, dtype):
    if not jnp.issubdtype(leaf_dtype, jnp.floating):
        return leaf_dtype
    if dtype is None:
        return leaf_dtype
    if isinstance(dtype, str) and dtype == "keep":
        return value_dtype
    return jnp.dtype(dtype)


def param_summary(model) -> tuple[int, tuple[str, ...]]:
    """(number of parameters, sorted dtype names) over the array leaves of `model`."""
    leaves = [x for x in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))]
    return sum(int(x.size) for x in leaves), tuple(sorted({str(x.dtype) for x in leaves}))


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # a nicety only
        return None
    return tqdm(total=total, desc=desc, unit="tensor", leave=False)


def fill_from_state(
    skeleton,
    state: Mapping[str, np.ndarray],
    names: Mapping[str, str],
    *,
    num_layers: int,
    init=None,
    source: str = "checkpoint",
    dtype=None,
    tied: Mapping[str, str] | None = None,
    progress: bool = False,
):
    """Fills every array leaf of `skeleton` (a shape-only model) from `state`.

    - `names`: our module path -> HF module path (`{i}` marks the stacked layer axis).
    - `init` (an initialised model of the same structure) supplies leaves the checkpoint lacks;
      without it they are an error.
    - `dtype`: `None` casts to the skeleton's dtype; `"keep"` keeps the checkpoint's (bf16/fp16
      stay so); anything else casts floating leaves to it.
    - `tied`: `{HF key: HF key it duplicates}` (tied decoder weights): accepted if equal.

    Returns the model and a `LoadReport`. Every problem (missing, mis-shaped) is collected and
    raised together as one `CheckpointError` naming `source`.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(skeleton)
    init_leaves = jax.tree_util.tree_leaves(init) if init is not None else None
    filled, used, missing, misshaped, initialised = [], set(), [], [], []
    bar = _progress_bar(len(leaves), os.path.basename(source), progress)
    for n, (path, leaf) in enumerate(leaves):
        if bar is not None:
            bar.update()
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            filled.append(leaf)
            continue
        ours = path_str(path)
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
        stacked = "{i}" in pattern
        want = leaf.shape[1:] if stacked else leaf.shape  # per layer, as HF stores it
        shapes = [
            tuple(state.shape(k) if isinstance(state, LazyTensors) else state[k].shape)
            for k in keys
        ]  # checked before any lazy tensor is read
        if any(s != want for s in shapes):
            misshaped.append(f"{pattern}: checkpoint {shapes[0]}, model {want}")
            filled.append(leaf)
            continue
        value = np.stack([state[k] for k in keys]) if stacked else state[keys[0]]
        used.update(keys)
        filled.append(jnp.asarray(value, dtype=_target_dtype(leaf.dtype, value.dtype, dtype)))
        del value
    if bar is not None:
        bar.close()
    tied_present = []
    for key, target in (tied or {}).items():
        if key in state and target in used:
            if not np.array_equal(np.asarray(state[key]), np.asarray(state[target])):
                misshaped.append(f"{key}: differs from {target}, which the model ties it to")
            tied_present.append(key)
    problems = []
    if missing:
        problems.append(f"missing keys: {missing}")
    if misshaped:
        problems.append(f"mis-shaped keys: {misshaped}")
    if problems:
        raise CheckpointError(f"{source} does not fit the model; " + "; ".join(problems))
    model = jax.tree_util.tree_unflatten(treedef, filled)
    unfilled = [
        path_str(p)
        for p, x in jax.tree_util.tree_flatten_with_path(model)[0]
        if isinstance(x, jax.ShapeDtypeStruct)
    ]
    assert not unfilled, f"unfilled leaves: {unfilled}"
    num_params, dtypes = param_summary(model)
    report = LoadReport(
        source,
        sorted(used),
        initialised,
        sorted(set(state) - used - set(tied_present)),
        model_class=type(model).__name__,
        num_params=num_params,
        dtypes=dtypes,
        tied=sorted(tied_present),
    )
    return model, report


def hf_tied_names(cls, config: BigBirdConfig) -> dict[str, str]:
    """`cls.hf_tied_names(config)` if the class declares tied HF keys, else none."""
    fn = getattr(cls, "hf_tied_names", None)
    return dict(fn(config)) if fn is not None else {}


def build_from_state(
    cls, config, state, source, *, key, allow_init, dtype, progress=False, model_kwargs=None
):
    """`cls(config)` with its leaves from `state` (canonical HF names): skeleton -> fill.
    `allow_init` initialises leaves the state lacks from `key`. Returns `(model, LoadReport)`."""
    model_kwargs = model_kwargs or {}
    key = jr.PRNGKey(0) if key is None else key
    skeleton = eqx.filter_eval_shape(cls, config, key=key, **model_kwargs)
    init = cls(config, key=key, **model_kwargs) if allow_init else None
    return fill_from_state(
        skeleton,
        state,
        cls.hf_names(config),
        num_layers=config.num_hidden_layers,
        init=init,
        source=source,
        dtype=dtype,
        tied=hf_tied_names(cls, config),
        progress=progress,
    )


def from_pretrained(
    cls,
    path: str | os.PathLike,
    *,
    key=None,
    allow_init: bool = False,
    verbose: bool = False,
    config_overrides: dict | None = None,
    dtype=None,
    progress: bool = False,
    return_report: bool = False,
    **model_kwargs,
):
    """Builds `cls` from a local HF directory; see `BigBirdModel.from_pretrained`.

    `cls` provides `hf_names(config) -> {our module path: HF module path}` (canonical HF names,
    see `ENCODER_NAMES`) and is built as `cls(config, key=key, **model_kwargs)`.

    - `allow_init`: leaves missing from the checkpoint are initialised (from `key`) and reported,
      instead of raising `CheckpointError`.
    - `config_overrides`: fields to change in the read config (e.g. `attention_type`).
    - `dtype`: `None` (float32, the model's own), `"keep"` (the checkpoint's: bf16 stays bf16),
      or a dtype to cast to.
    - `return_report`: return `(model, LoadReport)`.
    - `model_kwargs`: passed to the model constructor (e.g. `scan_layers=False`).
    """
    weights = find_weights_file(path)
    config_dir = path if os.path.isdir(path) else os.path.dirname(os.fspath(path))
    config_file = os.path.join(config_dir, "config.json")
    try:
        config = BigBirdConfig.from_hf(config_file)
    except FileNotFoundError:
        raise CheckpointError(f"{config_dir}: no config.json next to {weights}") from None
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{config_file}: {e}") from None
    if config_overrides:
        config = config.replace(**config_overrides)
    state, source = read_hf_weights(weights)
    state = canonical_names(state)
    model, report = build_from_state(
        cls, config, state, source, key=key, allow_init=allow_init, dtype=dtype,
        progress=progress, model_kwargs=model_kwargs,
    )
    del state
    if report.initialised:
        warnings.warn(f"{cls.__name__}: newly initialised from `key`: {report.initialised}")
    if verbose:
        print(report)
    model = eqx.nn.inference_mode(model)
    return (model, report) if return_report else model
