"""Our checkpoint format: one safetensors file whose JSON header carries the model class, the
config and a format version, and whose tensors are the model's array leaves named by tree path.

`save(path, model)` / `load(path)`. Nothing is pickled; the model is rebuilt as a shape-only
skeleton from the header, filled leaf by leaf, and nothing may be left unfilled. Writes are atomic.
"""

import json
import os

import equinox as eqx
import jax
import jax.random as jr

from ._config import BigBirdConfig
from ._hf_load import fill_from_state
from ._hf_read import CheckpointError, read_safetensors, safetensors_metadata
from ._io import write_safetensors
from ._registry import MODEL_CLASSES
from ._tree import array_leaves, path_str

FORMAT = "eqx-bigbird"
FORMAT_VERSION = 1
EQX_FILE = "eqx_bigbird.safetensors"


def checkpoint_file(path) -> str:
    path = os.fspath(path)
    return os.path.join(path, EQX_FILE) if os.path.isdir(path) or path.endswith(os.sep) else path


def model_classes() -> dict[str, type]:
    """Our model classes by name: those registered with `_registry.register`."""
    return dict(MODEL_CLASSES)


def save(path: str | os.PathLike, model) -> str:
    """Writes `model` (any of our model classes) to `path` (a file, or a directory to hold
    `eqx_bigbird.safetensors`), atomically. Returns the file written."""
    file = checkpoint_file(path)
    os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
    cls = type(model)
    if model_classes().get(cls.__name__) is not cls:
        raise TypeError(f"cannot save a {cls.__name__}: not an eqx_bigbird model class")
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model_class": cls.__name__,
        "config": json.dumps(model.config.to_hf(), sort_keys=True),
        "init_kwargs": json.dumps(model.init_kwargs(), sort_keys=True),
        "inference": json.dumps(bool(getattr(model, "inference", False))),
    }
    write_safetensors(file, array_leaves(model), metadata)
    return file


def read_header(path: str | os.PathLike) -> dict:
    """The header of one of our checkpoints: format_version, model_class, config, init_kwargs."""
    file = checkpoint_file(path)
    if not os.path.exists(file):
        raise CheckpointError(f"{file}: no such file")
    meta = safetensors_metadata(file)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{file}: not an eqx-bigbird checkpoint (format={meta.get('format')!r}); HF checkpoints "
            "load with BigBirdModel.from_pretrained or `eqx-bigbird convert`"
        )
    version = int(meta.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{file}: format version {version}, this eqx-bigbird reads {FORMAT_VERSION}"
        )
    try:
        return {
            "format_version": version,
            "model_class": meta["model_class"],
            "config": json.loads(meta["config"]),
            "init_kwargs": json.loads(meta["init_kwargs"]),
            "inference": json.loads(meta["inference"]),
        }
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{file}: corrupt eqx-bigbird header ({e!r})") from None


def load(path: str | os.PathLike, cls: type | None = None, *, dtype="keep"):
    """Rebuilds the model saved by `save` (needs no HF files).

    `cls`, if given, must be the saved class (else `CheckpointError`). `dtype="keep"` keeps the
    saved dtypes (bit-identical leaves); a dtype casts floating leaves to it.
    """
    file = checkpoint_file(path)
    header = read_header(file)
    name = header["model_class"]
    classes = model_classes()
    if name not in classes:
        raise CheckpointError(f"{file}: unknown model class {name!r} (known: {sorted(classes)})")
    if cls is not None and classes[name] is not cls:
        raise CheckpointError(f"{file}: holds a {name}, not a {cls.__name__}")
    cls = classes[name]
    try:
        config = BigBirdConfig.from_hf(header["config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{file}: bad config in header: {e}") from None
    skeleton = eqx.filter_eval_shape(cls, config, key=jr.PRNGKey(0), **header["init_kwargs"])
    paths = [
        path_str(p)
        for p, x in jax.tree_util.tree_flatten_with_path(skeleton)[0]
        if isinstance(x, jax.ShapeDtypeStruct)
    ]
    model, report = fill_from_state(
        skeleton,
        read_safetensors(file),
        {p: p for p in paths},
        num_layers=0,
        source=file,
        dtype=dtype,
    )
    if report.unused:
        raise CheckpointError(f"{file}: tensors the {name} does not have: {report.unused}")
    return eqx.nn.inference_mode(model, header["inference"])
