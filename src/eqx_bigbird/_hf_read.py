"""Reading HF checkpoint files (safetensors, Flax msgpack, `pytorch_model.bin`) as `{PyTorch
name: array}`, without flax and (except for `.bin`) without torch.

Flax names are rewritten to PyTorch names as they are read (kernel (in, out) -> weight (out, in),
scale/embedding -> weight), so everything downstream sees one naming.
"""

import json
import os
import re
import zipfile
from collections.abc import Callable, Mapping

import jax.numpy as jnp
import msgpack
import numpy as np

from ._io import SAFETENSORS_DTYPES

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
FLAX_MSGPACK = "flax_model.msgpack"
PYTORCH_BIN = "pytorch_model.bin"


class CheckpointError(ValueError):
    """A checkpoint does not fit the model: missing, mis-shaped or unreadable weights."""


class LazyTensors(Mapping):
    """`{name: array}` whose arrays are read from disk only when looked up (one at a time), so a
    conversion never holds the whole checkpoint in memory next to the model."""

    def __init__(self, loaders: dict, shapes: dict, source: str):
        self._loaders, self._shapes, self.source = loaders, shapes, source

    @classmethod
    def in_memory(cls, arrays: Mapping[str, np.ndarray], source: str) -> "LazyTensors":
        """Arrays already read, behind the same interface."""
        loaders = {k: (lambda v=v: v) for k, v in arrays.items()}
        return cls(loaders, {k: tuple(v.shape) for k, v in arrays.items()}, source)

    def __getitem__(self, name):
        return self._loaders[name]()

    def __iter__(self):
        return iter(self._loaders)

    def __len__(self):
        return len(self._loaders)

    def shape(self, name) -> tuple[int, ...]:
        """The shape of `name`, without reading it."""
        return self._shapes[name]

    def with_defaults(self, arrays: Mapping[str, np.ndarray]) -> "LazyTensors":
        """These tensors, plus those of `arrays` whose names are absent."""
        missing = {k: v for k, v in arrays.items() if k not in self._loaders}
        extra = LazyTensors.in_memory(missing, self.source)
        return LazyTensors(
            {**self._loaders, **extra._loaders}, {**self._shapes, **extra._shapes}, self.source
        )

    def renamed(self, rename: Callable[[str], str]) -> "LazyTensors":
        """The same tensors under `rename(name)`."""
        loaders, shapes = {}, {}
        for k in self._loaders:
            loaders[rename(k)], shapes[rename(k)] = self._loaders[k], self._shapes[k]
        return LazyTensors(loaders, shapes, self.source)


def _dtype_from_name(name: str) -> np.dtype:
    return np.dtype(jnp.bfloat16) if name == "bfloat16" else np.dtype(name)


_ST_DTYPES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def _open_safetensors(file: str):
    """`safetensors.safe_open(file)`: the library validates the header (offsets that tile the data
    section without overlap, sizes that match dtype and shape, the file's length); every failure
    is a `CheckpointError` naming the file. Nothing is read but the header."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(file, framework="numpy")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: {_diagnose(file)} ({e})") from None


def _diagnose(file: str) -> str:
    """What is wrong with a file the library refused: truncated (the library only says "not fully
    covered"), or corrupt."""
    size = os.path.getsize(file)
    with open(file, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= min(size - 8, 100_000_000):
            return f"truncated or not a safetensors file ({size} bytes)"
        try:
            header = json.loads(f.read(n))
            end = max(
                (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0
            )
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "corrupt safetensors header"
    if isinstance(end, int) and 8 + n + end > size:
        return f"truncated (the header needs {8 + n + end} bytes, the file has {size})"
    return "corrupt safetensors file"


def safetensors_metadata(file: str) -> dict[str, str]:
    """The `__metadata__` of a safetensors file (empty if none), after the library validated it."""
    return _open_safetensors(file).metadata() or {}


def safetensors_shards(path: str) -> list[str]:
    """The files behind `path`: itself, or the shards a `.index.json` names."""
    if not path.endswith(".json"):
        return [path]
    try:
        with open(path, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a safetensors index ({e!r})") from None
    files = [os.path.join(os.path.dirname(path), s) for s in shards]
    for file in files:
        if not os.path.exists(file):
            raise CheckpointError(f"{path}: shard {file} is missing")
    return files


def _old_layer_norm_name(name: str) -> str:
    return re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", name))


def read_safetensors(path: str) -> LazyTensors:
    """A `model.safetensors` file (or a sharded `model.safetensors.index.json`), read lazily.

    Read through the `safetensors` library (its header validation, one tensor copied out of the
    memory map per lookup). bf16 comes back as ml_dtypes' `bfloat16` (jax's).
    """
    loaders, shapes = {}, {}
    for file in safetensors_shards(path):
        handle = _open_safetensors(file)
        for name in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
            view = handle.get_slice(name)
            if view.get_dtype() not in _ST_DTYPES:
                raise CheckpointError(
                    f"{file}: tensor {name!r} has dtype {view.get_dtype()}, which eqx-bigbird "
                    f"does not read (known: {sorted(_ST_DTYPES)})"
                )
            if name in loaders:
                raise CheckpointError(f"{path}: tensor {name!r} is in more than one shard")
            loaders[name] = lambda handle=handle, name=name: handle.get_tensor(name)
            shapes[name] = tuple(view.get_shape())
    return LazyTensors(loaders, shapes, path).renamed(_old_layer_norm_name)


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


def flax_to_torch_names(flat: dict[str, np.ndarray], path: str = "") -> dict[str, np.ndarray]:
    """`{"a/b/kernel": array}` in Flax names and layouts -> PyTorch names and layouts, as HF's
    own `load_flax_weights_in_pytorch_model` converts them."""
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


def _unpack_flax_tree(path: str) -> dict:
    """The nested parameter dict of a Flax msgpack file, streamed from disk so the raw bytes and
    the arrays are not both held in memory."""
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
    return _unchunk(tree)


def read_flax_msgpack(path: str) -> LazyTensors:
    """A Flax `flax_model.msgpack` in PyTorch names and layouts (never unpickles anything)."""
    flat = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        elif isinstance(node, np.ndarray):
            flat[prefix] = node
        else:
            raise CheckpointError(f"{path}: unexpected {type(node).__name__} at {prefix!r}")

    walk(_unpack_flax_tree(path), "")
    return LazyTensors.in_memory(flax_to_torch_names(flat, path), path)


def read_pytorch_bin(path: str) -> LazyTensors:
    """A pickled `pytorch_model.bin`, only through torch's restricted `weights_only=True` loader."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path}: reading pytorch_model.bin needs torch (pip install torch), or convert it to "
            'safetensors where torch is installed: python -c "import torch, safetensors.torch as s; '
            "s.save_file(torch.load('pytorch_model.bin', weights_only=True), 'model.safetensors')\""
        ) from None
    # torch >= 1.6 writes a zip archive, which torch can memory-map; older files are one legacy
    # pickle stream that it can only read whole (still through the restricted loader).
    legacy = not zipfile.is_zipfile(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=not legacy)
    except Exception as e:
        kind = "a zip archive"
        if legacy:
            kind = "not a zip archive (read as a legacy torch < 1.6 pickle)"
        raise CheckpointError(
            f"{path}: {kind}, which torch.load(weights_only=True) refused ({type(e).__name__}); "
            "nothing else is unpickled: re-save it as model.safetensors where it was made "
            "(safetensors.torch.save_file(model.state_dict(), 'model.safetensors'))"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict")
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        v = v.detach().contiguous()
        if v.dtype == torch.bfloat16:
            out[k] = v.view(torch.int16).numpy().view(jnp.bfloat16)
        else:
            out[k] = v.numpy()
    return LazyTensors.in_memory(out, path)


# The file names a directory may hold, in order of preference when it holds several.
_WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, FLAX_MSGPACK, PYTORCH_BIN)
# Each reader, by the ending of the file it reads.
_READERS = {
    ".safetensors": read_safetensors,
    ".json": read_safetensors,
    ".msgpack": read_flax_msgpack,
    ".bin": read_pytorch_bin,
    ".pt": read_pytorch_bin,
    ".pth": read_pytorch_bin,
}


def find_weights_file(path: str | os.PathLike) -> str:
    """The weights file of a local HF directory (or `path` itself if it is a file)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file or directory")
    if not os.path.isdir(path):
        if not path.endswith(tuple(_READERS)):
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


def read_hf_weights(path: str | os.PathLike) -> tuple[LazyTensors, str]:
    """The weights of a local HF directory (or file), in PyTorch names, and the file read.

    Safetensors are read lazily, one tensor per lookup; Flax msgpack and `pytorch_model.bin`
    (torch only, `weights_only=True`) are read whole.
    """
    path = find_weights_file(path)
    reader = next(r for ending, r in _READERS.items() if path.endswith(ending))
    return reader(path), path
