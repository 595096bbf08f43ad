"""Our checkpoint format: one safetensors file whose JSON header carries the model class, the
config and a format version, and whose tensors are the model's array leaves named by tree path.

`save(path, model)` / `load(path)`. Nothing is pickled; the model is rebuilt as a shape-only
skeleton from the header, filled leaf by leaf, and nothing may be left unfilled. Writes are atomic.
"""

import dataclasses
import inspect
import json
import os

import equinox as eqx
import jax
import jax.random as jr

from ._hf_load import fill_from_state
from ._hf_read import CheckpointError, read_safetensors, safetensors_metadata
from ._io import write_safetensors
from ._layers import ExecutionOptions
from ._registry import MODEL_CLASSES, config_class
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
    header = model_header(model)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model_class": header["model_class"],
        **{k: json.dumps(header[k], sort_keys=True)
           for k in ("config", "init_kwargs", "inference")},
    }
    write_safetensors(file, array_leaves(model), metadata)
    return file


def model_header(model) -> dict:
    """What rebuilds `model`'s skeleton (JSON-able): its class name, config, init kwargs and
    inference flag. Our training-state checkpoints store it too."""
    cls = type(model)
    if model_classes().get(cls.__name__) is not cls:
        raise TypeError(f"cannot save a {cls.__name__}: not an eqx_bigbird model class")
    return {
        "model_class": cls.__name__,
        "config": model.config.to_hf(),
        "init_kwargs": model.init_kwargs(),
        "inference": bool(getattr(model, "inference", False)),
    }


def model_skeleton(header: dict, source, cls: type | None = None):
    """The shape-only model (`jax.ShapeDtypeStruct` array leaves, training mode) that `header`
    describes; `CheckpointError` naming `source` if it cannot be rebuilt."""
    name = header["model_class"]
    classes = model_classes()
    if name not in classes:
        raise CheckpointError(f"{source}: unknown model class {name!r} (known: {sorted(classes)})")
    if cls is not None and classes[name] is not cls:
        raise CheckpointError(f"{source}: holds a {name}, not a {cls.__name__}")
    try:
        config = config_class(classes[name]).from_hf(header["config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: bad config in header: {e}") from None
    _check_init_kwargs(source, classes[name], header["init_kwargs"])
    try:
        return eqx.filter_eval_shape(
            classes[name], config, key=jr.PRNGKey(0), **header["init_kwargs"]
        )
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: bad init_kwargs in header: {e}") from None


def read_header(path: str | os.PathLike) -> dict:
    """The header of one of our checkpoints: format_version, model_class, config, init_kwargs."""
    file = checkpoint_file(path)
    if not os.path.exists(file):
        if os.path.isdir(path):
            hf = os.path.exists(os.path.join(path, "config.json"))
            raise CheckpointError(
                f"{os.fspath(path)}: a directory without {EQX_FILE}"
                + ("; it looks like an HF checkpoint (convert it without --to-hf, or load it with "
                   "from_pretrained)" if hf else "")
            )
        raise CheckpointError(f"{file}: no such file")
    meta = safetensors_metadata(file)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{file}: not an eqx-bigbird checkpoint (format={meta.get('format')!r}); HF checkpoints "
            "load with BigBirdModel.from_pretrained or `eqx-bigbird convert`"
        )
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{file}: format_version {version!r}, this eqx-bigbird reads {FORMAT_VERSION}"
        )
    try:
        header = {name: json.loads(meta[name]) for name in ("config", "init_kwargs", "inference")}
        header["model_class"] = meta["model_class"]
    except KeyError as e:
        raise CheckpointError(f"{file}: eqx-bigbird header lacks {e.args[0]!r}") from None
    except ValueError as e:
        raise CheckpointError(f"{file}: corrupt eqx-bigbird header ({e})") from None
    for name, kind, what in (
        ("config", dict, "object"), ("init_kwargs", dict, "object"), ("inference", bool, "bool")
    ):
        if not isinstance(header[name], kind):
            # A config given as a string would be read as a path to some other file.
            raise CheckpointError(
                f"{file}: header {name} must be a JSON {what}, got {type(header[name]).__name__}"
            )
    return {"format_version": FORMAT_VERSION, **header}


def _check_init_kwargs(file: str, cls: type, kwargs: dict):
    """The saved constructor keywords are ones `cls` takes (its own and `ExecutionOptions`)."""
    own = set(inspect.signature(cls.__init__).parameters) - {"self", "config", "key", "options"}
    known = own | {f.name for f in dataclasses.fields(ExecutionOptions)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise CheckpointError(
            f"{file}: init_kwargs {unknown} are not options of {cls.__name__} "
            f"(known: {sorted(known)})"
        )


def load(path: str | os.PathLike, cls: type | None = None, *, dtype="keep"):
    """Rebuilds the model saved by `save` (needs no HF files).

    `cls`, if given, must be the saved class (else `CheckpointError`). `dtype="keep"` keeps the
    saved dtypes (bit-identical leaves); a dtype casts floating leaves to it.
    """
    file = checkpoint_file(path)
    header = read_header(path)
    name = header["model_class"]
    skeleton = model_skeleton(header, file, cls)
    paths = [
        path_str(p)
        for p, x in jax.tree_util.tree_flatten_with_path(skeleton)[0]
        if isinstance(x, jax.ShapeDtypeStruct)
    ]
    model, report = fill_from_state(
        skeleton,
        read_safetensors(file),
        {p: p for p in paths},
        source=file,
        dtype=dtype,
    )
    if report.unused:
        raise CheckpointError(f"{file}: tensors the {name} does not have: {report.unused}")
    return eqx.nn.inference_mode(model, header["inference"])
