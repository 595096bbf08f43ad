"""Building our models from HF checkpoints: skeleton -> fill -> check.

The model is first built shape-only (`eqx.filter_eval_shape`, no weights allocated), every leaf is
then filled from the checkpoint through the class's name map (`_hf_names.hf_names`), and finally
nothing may be left unfilled.
"""

import dataclasses
import os
import re
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ._config import BigBirdConfig
from ._hf_names import (
    ENCODER_ROOTS,
    canonical_name,
    hf_name_of,
    hf_names,
    tied_names,
    zero_defaults,
)
from ._hf_read import (
    CheckpointError,
    LazyTensors,
    find_weights_file,
    read_hf_weights,
    safetensors_metadata,
)
from ._hub import local_path
from ._registry import config_class
from ._tree import path_str


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


def param_summary(model) -> tuple[int, tuple[str, ...]]:
    """(number of parameters, sorted dtype names) over the array leaves of `model`."""
    leaves = [x for x in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))]
    return sum(int(x.size) for x in leaves), tuple(sorted({str(x.dtype) for x in leaves}))


def _target_dtype(leaf_dtype, value_dtype, dtype):
    if not jnp.issubdtype(leaf_dtype, jnp.floating):
        return leaf_dtype
    if dtype is None:
        return leaf_dtype
    if isinstance(dtype, str) and dtype == "keep":
        return value_dtype
    return jnp.dtype(dtype)


def _check_dtype(dtype):
    """`dtype` is None, "keep" or a floating dtype (weights are never cast to integers)."""
    if dtype is None or (isinstance(dtype, str) and dtype == "keep"):
        return
    try:
        ok = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"dtype={dtype!r}: expected None, 'keep' or a floating dtype")


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # a nicety only
        return None
    return tqdm(total=total, desc=desc, unit="tensor", leave=False)


@dataclasses.dataclass
class _Findings:
    """What filling found so far: keys used, and every problem, to be reported together."""

    used: set = dataclasses.field(default_factory=set)
    missing: list = dataclasses.field(default_factory=list)
    misshaped: list = dataclasses.field(default_factory=list)
    initialised: list = dataclasses.field(default_factory=list)
    nonfinite: list = dataclasses.field(default_factory=list)


def _fill_leaf(leaf, ours, init_leaf, state, names, dtype, found):
    """One leaf of the skeleton, from `state` (or `init_leaf`, or left unfilled with the problem
    recorded in `found`). A stacked leaf spans as many HF layers as its leading axis."""
    pattern = hf_name_of(ours, names)
    stacked = "{i}" in pattern
    keys = [pattern.format(i=i) for i in range(leaf.shape[0])] if stacked else [pattern]
    absent = [k for k in keys if k not in state]
    if absent:
        if init_leaf is None:
            found.missing.extend(absent)
            return leaf
        found.initialised.append(pattern)
        return init_leaf
    want = leaf.shape[1:] if stacked else leaf.shape  # per layer, as HF stores it
    shapes = [tuple(state.shape(k)) for k in keys]  # checked before any tensor is read
    if any(s != want for s in shapes):
        found.misshaped.append(f"{pattern}: checkpoint {shapes[0]}, model {want}")
        return leaf
    value = np.stack([state[k] for k in keys]) if stacked else state[keys[0]]
    found.used.update(keys)
    value = jnp.asarray(value, dtype=_target_dtype(leaf.dtype, value.dtype, dtype))
    # NaN/inf weights make every output NaN; checked after the cast, which may overflow.
    if jnp.issubdtype(value.dtype, jnp.inexact) and not bool(jnp.isfinite(value).all()):
        found.nonfinite.append(pattern)
    return value


def _check_tied(state, tied, found) -> list[str]:
    """The tied keys `state` carries next to what they duplicate; a copy that differs is a
    problem recorded in `found`."""
    present = []
    for key, target in tied.items():
        if key in state and target in found.used:
            if not np.array_equal(np.asarray(state[key]), np.asarray(state[target])):
                found.misshaped.append(f"{key}: differs from {target}, which the model ties it to")
            present.append(key)
    return present


def _raise_problems(found, source):
    problems = []
    if found.missing:
        problems.append(f"missing keys: {found.missing}")
    if found.misshaped:
        problems.append(f"mis-shaped keys: {found.misshaped}")
    if found.nonfinite:
        problems.append(f"NaN or inf in {found.nonfinite}")
    if problems:
        raise CheckpointError(f"{source} does not fit the model; " + "; ".join(problems))


def _assert_filled(model):
    """Nothing of the skeleton is left: a leaf that stayed shape-only would be a loader bug."""
    unfilled = [
        path_str(p)
        for p, x in jax.tree_util.tree_flatten_with_path(model)[0]
        if isinstance(x, jax.ShapeDtypeStruct)
    ]
    assert not unfilled, f"unfilled leaves: {unfilled}"


def fill_from_state(
    skeleton,
    state: LazyTensors,
    names: dict[str, str],
    *,
    init=None,
    source: str = "checkpoint",
    dtype=None,
    tied: dict[str, str] | None = None,
    progress: bool = False,
):
    """Fills every array leaf of `skeleton` (a shape-only model) from `state`.

    - `names`: our module path -> HF module path (`{i}` marks the stacked layer axis).
    - `init` (an initialised model of the same structure) supplies leaves the checkpoint lacks;
      without it they are an error.
    - `dtype`: `None` casts to the skeleton's dtype; `"keep"` keeps the checkpoint's (bf16/fp16
      stay so); anything else casts floating leaves to it.
    - `tied`: `{HF key: HF key it duplicates}` (tied decoder weights): accepted if equal.

    Returns the model and a `LoadReport`. Every problem (missing, mis-shaped, NaN or inf
    values) is collected and raised together as one `CheckpointError` naming `source`.
    """
    _check_dtype(dtype)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(skeleton)
    init_leaves = jax.tree_util.tree_leaves(init) if init is not None else [None] * len(leaves)
    found, filled = _Findings(), []
    bar = _progress_bar(len(leaves), os.path.basename(source), progress)
    for (path, leaf), init_leaf in zip(leaves, init_leaves, strict=True):
        if bar is not None:
            bar.update()
        if isinstance(leaf, jax.ShapeDtypeStruct):
            leaf = _fill_leaf(leaf, path_str(path), init_leaf, state, names, dtype, found)
        filled.append(leaf)
    if bar is not None:
        bar.close()
    tied_present = _check_tied(state, tied or {}, found)
    _raise_problems(found, source)
    model = jax.tree_util.tree_unflatten(treedef, filled)
    _assert_filled(model)
    num_params, dtypes = param_summary(model)
    report = LoadReport(
        source,
        sorted(found.used),
        found.initialised,
        sorted(set(state) - found.used - set(tied_present)),
        model_class=type(model).__name__,
        num_params=num_params,
        dtypes=dtypes,
        tied=sorted(tied_present),
    )
    return model, report


def build_from_state(
    cls, config, state, source, *, key, allow_init, dtype, progress=False, model_kwargs=None
):
    """`cls(config)` with its leaves from `state` (canonical HF names): skeleton -> fill.
    `allow_init` initialises leaves the state lacks from `key`. Returns `(model, LoadReport)`."""
    model_kwargs = model_kwargs or {}
    key = jr.PRNGKey(0) if key is None else key
    skeleton = eqx.filter_eval_shape(cls, config, key=key, **model_kwargs)
    init = cls(config, key=key, **model_kwargs) if allow_init else None
    names = hf_names(cls, config)
    model, report = fill_from_state(
        skeleton,
        state,
        names,
        init=init,
        source=source,
        dtype=dtype,
        tied=tied_names(cls, config),
        progress=progress,
    )
    own = _own_unused(report.unused, skeleton, names)
    if own:
        raise CheckpointError(
            f"{source}: checkpoint keys of the {cls.__name__} that its config does not use "
            f"(num_hidden_layers={config.num_hidden_layers}, add_cross_attention="
            f"{getattr(config, 'add_cross_attention', None)}): {own}"
        )
    return model, report


# HF buffers (not weights) that older PyTorch checkpoints save; HF ignores them on load.
_HF_BUFFERS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")


def _own_unused(unused: list[str], skeleton, names: dict[str, str]) -> list[str]:
    """The unused keys that belong to the model being loaded, not to another head: anything of the
    encoder's embeddings and layers (extra layers, cross-attention the config lacks, unknown
    pieces), and anything under one of the model's own modules. Keys of other heads (and a pooler
    the model was built without) may be skipped; they stay in `LoadReport.unused`."""
    modules = {
        hf_name_of(path_str(p), names).rsplit(".", 1)[0]
        for p, x in jax.tree_util.tree_flatten_with_path(skeleton)[0]
        if isinstance(x, jax.ShapeDtypeStruct)
    }
    patterns = [re.escape(m).replace(re.escape("{i}"), r"\d+") + r"\." for m in modules]
    own = re.compile("|".join(patterns + [re.escape(r) for r in ENCODER_ROOTS]))
    return [k for k in unused if k not in _HF_BUFFERS and own.match(k)]


def finish_load(model, report: LoadReport, *, who: str, shown: str | None, return_report: bool):
    """The loaded model in inference mode (and `report` if `return_report`), after a warning
    naming what was initialised from `key` and printing `shown` if given."""
    if report.initialised:
        warnings.warn(f"{who}: newly initialised from `key`: {report.initialised}")
    if shown is not None:
        print(shown)
    model = eqx.nn.inference_mode(model)
    return (model, report) if return_report else model


def read_config(path: str | os.PathLike, weights: str, cls=BigBirdConfig):
    """The config (a `cls`) in the `config.json` next to `weights` (`path` is a directory or
    file)."""
    config_dir = path if os.path.isdir(path) else os.path.dirname(os.fspath(path))
    config_file = os.path.join(config_dir, "config.json")
    try:
        return cls.from_hf(config_file)
    except FileNotFoundError:
        if _is_ours(weights):
            raise CheckpointError(
                f"{weights} is an eqx-bigbird checkpoint, not an HF one: load it with "
                "eqx_bigbird.load (or convert it to HF with `eqx-bigbird convert --to-hf`)"
            ) from None
        raise CheckpointError(f"{config_dir}: no config.json next to {weights}") from None
    except (ValueError, TypeError) as e:  # from_hf names the file
        raise CheckpointError(str(e)) from None


def _is_ours(weights: str) -> bool:
    from ._serialization import FORMAT  # (it imports this module)

    if not weights.endswith(".safetensors"):
        return False
    try:
        return safetensors_metadata(weights).get("format") == FORMAT
    except CheckpointError:
        return False


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
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    **model_kwargs,
):
    """Builds `cls` from an HF directory or Hub repo id; see `BigBirdModel.from_pretrained`.

    `cls` is one of our model classes (its HF names are `_hf_names.hf_names(cls, config)`), built
    as `cls(config, key=key, **model_kwargs)`.

    - `allow_init`: leaves missing from the checkpoint are initialised (from `key`) and reported,
      instead of raising `CheckpointError`.
    - `config_overrides`: fields to change in the read config (e.g. `attention_type`).
    - `dtype`: `None` (float32, the model's own), `"keep"` (the checkpoint's: bf16 stays bf16),
      or a dtype to cast to.
    - `return_report`: return `(model, LoadReport)`.
    - `revision`, `cache_dir`, `local_files_only`, `token`: for a Hub repo id (`org/name`),
      resolved through the HF cache; see `_hub.local_path`.
    - `model_kwargs`: passed to the model constructor (e.g. `scan_layers=False`).
    """
    path = local_path(
        path, "model", revision=revision, cache_dir=cache_dir,
        local_files_only=local_files_only, token=token,
    )
    weights = find_weights_file(path)
    config = read_config(path, weights, config_class(cls))
    if config_overrides:
        config = config.replace(**config_overrides)
    state, source = read_hf_weights(weights)
    state = state.renamed(lambda name: canonical_name(name, cls))
    state = state.with_defaults(zero_defaults(cls, config))
    model, report = build_from_state(
        cls, config, state, source, key=key, allow_init=allow_init,
        dtype=dtype, progress=progress, model_kwargs=model_kwargs,
    )
    return finish_load(
        model, report, who=cls.__name__, shown=str(report) if verbose else None,
        return_report=return_report,
    )
