"""Atomic file writes: a temp file in the same folder, fsync, then rename over the target.

Also the safetensors writer that our own format and the HF export share: it streams one tensor
at a time into the temp file (no second copy of the model in memory) and never pickles.
"""

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike):
    """Yields a binary file; on success it replaces `path`, on any error it is removed, so a
    failed or interrupted write never leaves a partial file under the final name."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> None:
    """`fig.savefig(path, **kwargs)`, atomically (the format from the file's extension)."""
    ext = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
    with atomic_writer(path) as f:
        fig.savefig(f, format=ext or None, **kwargs)


def _undecodable(path, data: bytes, e: UnicodeDecodeError) -> ValueError:
    line = data.count(b"\n", 0, e.start) + 1
    return ValueError(f"{os.fspath(path)}:{line}: not UTF-8 text (byte {e.start})")


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file; bytes that are not UTF-8 raise `ValueError` naming the file and line."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _undecodable(path, data, e) from None


def read_lines(path: str | os.PathLike) -> Iterable[tuple[int, str]]:
    """`(line number, line)` of a UTF-8 text file, read line by line (checked like `read_text`)."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{os.fspath(path)}:{number}: not UTF-8 text (byte {e.start} of the line)"
                ) from None


# numpy dtype name -> safetensors dtype tag (bfloat16 is ml_dtypes', as jax uses).
SAFETENSORS_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def write_safetensors(
    path: str | os.PathLike,
    tensors: Iterable[tuple[str, Any]] | Mapping[str, Any],  # numpy or jax arrays
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Writes `(name, array)` pairs as a safetensors file, atomically.

    Arrays may be anything `np.asarray` accepts (jax arrays on CPU are not copied).
    """
    items = list(tensors.items() if isinstance(tensors, Mapping) else tensors)
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, value in items:
        dtype = np.dtype(value.dtype)
        if dtype.name not in SAFETENSORS_DTYPES:
            raise TypeError(f"cannot write {name} of dtype {dtype} to safetensors")
        if name in header:
            raise ValueError(f"duplicate tensor name {name!r} while writing {path}")
        nbytes = int(np.prod(value.shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype.name],
            "shape": [int(d) for d in value.shape],
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned, as safetensors does
    with atomic_writer(path) as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, value in items:
            array = np.ascontiguousarray(np.asarray(value))
            f.write(array.reshape(-1).view(np.uint8).data)
