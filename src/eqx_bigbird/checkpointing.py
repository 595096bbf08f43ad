"""Training-state checkpoints with Orbax: model, optimizer state, step and the caller's JSON
(data position, PRNG key, metrics so far), written asynchronously with every process writing its
own shards, one directory per step committed atomically, the last `max_to_keep` kept; restored
onto any mesh and any number of processes.

    checkpoints = Checkpointer("run/checkpoints")              # every process, same directory
    checkpoints.save(state, extra={"examples_seen": n})        # returns once copied to host
    state, extra = checkpoints.restore(optimizer, mesh=mesh, fsdp=True)
    checkpoints.close()                                        # waits for the last write

    state = eqx_bigbird.load_training_state("run/checkpoints")  # one process: latest step

Layout, `DIRECTORY/<step>/`: `model/` and `opt_state/` (Orbax PyTree items: a flat mapping from
tree path, as in our `.safetensors` format, to array; tensorstore OCDBT files, one set per
process) and `meta/` (JSON: the model's class and config, the step, the caller's `extra`). Orbax
writes `DIRECTORY/<step>.orbax-checkpoint-tmp-*` and renames it once every process has finished,
so a step directory is complete or absent; an unfinished one is ignored, and removed by the next
writer to open the directory.
"""

import json
import os
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, SingleDeviceSharding

from ._hf_read import CheckpointError
from ._serialization import model_header, model_skeleton
from ._tree import array_leaves, path_str
from .sharding import MIN_SHARD_SIZE, state_shardings
from .training import TrainState

__all__ = ["Checkpointer", "load_training_state"]

FORMAT = "eqx-bigbird-train-state"
FORMAT_VERSION = 1
# What reading a damaged checkpoint raises (tensorstore: ValueError; orbax: also KeyError, OSError).
READ_ERRORS = (ValueError, KeyError, TypeError, OSError, RuntimeError)


def _orbax():
    import orbax.checkpoint as ocp  # lazily: `import eqx_bigbird` stays light

    return ocp


class Checkpointer:
    """Training-state checkpoints under `directory` (every process passes the same path, on a
    file system all of them see).

    **Arguments:**
    - `directory`: holds one sub-directory per saved step.
    - `max_to_keep`: older steps are deleted once a newer one is committed (`None`: keep all).
    - `async_save`: `save` returns once the arrays are copied to host memory and writes in the
      background (the next `save`, `wait` and `close` wait for it).
    - `read_only`: never writes or deletes (for loading).
    """

    def __init__(
        self, directory: str | os.PathLike, *, max_to_keep: int | None = 3,
        async_save: bool = True, read_only: bool = False,
    ):
        ocp = _orbax()
        self.directory = os.path.abspath(os.fspath(directory))
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(f"{self.directory}: no such checkpoint directory")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
            create=not read_only, cleanup_tmp_directories=not read_only,
            save_interval_steps=0 if read_only else 1,
        )
        self._read_only = read_only
        handlers = {
            "model": ocp.StandardCheckpointHandler(),
            "opt_state": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
        }
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_handlers=handlers)

    def steps(self) -> list[int]:
        """The committed steps, oldest first (unfinished writes are not among them)."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, state: TrainState, *, extra: dict | None = None) -> int:
        """Saves `state` as step `int(state.step)`, with `extra` (JSON-able) beside it; every
        process must call it. A step already saved is left as it is. Returns the step."""
        if self._read_only:
            raise ValueError(f"{self.directory}: opened read_only")
        ocp = _orbax()
        step = int(state.step)
        try:
            json.dumps(extra)
        except (TypeError, ValueError) as e:
            raise TypeError(f"Checkpointer.save: extra must be JSON-able ({e})") from None
        if step in self.steps():
            return step
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "step": step,
            "model": model_header(state.model), "extra": extra or {},
        }
        self._manager.save(step, args=ocp.args.Composite(
            model=ocp.args.StandardSave(_flat(state.model)),
            opt_state=ocp.args.StandardSave(_flat(state.opt_state)),
            meta=ocp.args.JsonSave(meta),
        ))
        return step

    def restore(
        self, optimizer: optax.GradientTransformation | None = None, *, step: int | None = None,
        mesh: Mesh | None = None, fsdp: bool | str | tuple[str, ...] = False,
        min_size: int = MIN_SHARD_SIZE,
    ) -> tuple[TrainState, dict]:
        """The state saved at `step` (default: the latest) and its `extra`.

        The optimizer state's structure comes from `optimizer.init` (`None`: not restored,
        `opt_state=None`, enough for evaluation or export). Arrays are placed as
        `sharding.state_shardings(state, mesh, fsdp=..., min_size=...)` says, each process
        reading only its own shards, whatever mesh or process count wrote them; `mesh=None`:
        on this process's first device.
        """
        step = self._step(step)
        where = os.path.join(self.directory, str(step))
        meta = self._meta(step, where)
        skeleton = eqx.nn.inference_mode(model_skeleton(meta["model"], where), False)
        like = eqx.filter_eval_shape(_fresh_state, skeleton, optimizer)
        model, opt_state = like.model, like.opt_state
        placed = _placements(like, mesh, fsdp, min_size)
        try:
            stored = self._manager.item_metadata(step)
        except READ_ERRORS as e:
            raise CheckpointError(f"{where}: unreadable checkpoint ({_first_line(e)})") from None
        wanted = ("model",) if optimizer is None else ("model", "opt_state")
        targets = {
            name: _targets(getattr(like, name), getattr(placed, name), stored[name], where, name)
            for name in wanted
        }
        ocp = _orbax()
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                **{name: ocp.args.StandardRestore(t) for name, t in targets.items()}
            ))
        except READ_ERRORS as e:  # tensorstore and orbax raise several kinds: name the checkpoint
            raise CheckpointError(f"{where}: unreadable checkpoint ({_first_line(e)})") from None
        model = eqx.nn.inference_mode(_fill(model, restored["model"]), meta["model"]["inference"])
        if optimizer is not None:
            opt_state = _fill(opt_state, restored["opt_state"])
        step_array = jax.device_put(jnp.asarray(step, jnp.int32), placed.step)
        return TrainState(model=model, opt_state=opt_state, step=step_array), meta["extra"]

    def extra(self, step: int | None = None) -> dict:
        """The `extra` saved with `step` (default: the latest), without reading any array."""
        step = self._step(step)
        return self._meta(step, os.path.join(self.directory, str(step)))["extra"]

    def wait(self) -> None:
        """Blocks until the last `save` is committed (raises its error, if it failed)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _step(self, step: int | None) -> int:
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"{self.directory}: no complete checkpoint there")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise CheckpointError(f"{self.directory}: no step {step} (saved: {steps})")
        return step

    def _meta(self, step: int, where: str) -> dict:
        ocp = _orbax()
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = meta["meta"]
        except READ_ERRORS as e:  # a missing, truncated or edited meta/ item
            raise CheckpointError(f"{where}/meta: unreadable ({_first_line(e)})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{where}: not an eqx-bigbird training checkpoint")
        if meta.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{where}: format version {meta.get('format_version')}, this "
                                  f"eqx-bigbird reads {FORMAT_VERSION}")
        if meta.get("step") != step or not isinstance(meta.get("extra"), dict):
            raise CheckpointError(f"{where}/meta: corrupt (step {meta.get('step')!r})")
        return meta


def load_training_state(
    path: str | os.PathLike, optimizer: optax.GradientTransformation | None = None, *,
    step: int | None = None, mesh: Mesh | None = None, fsdp: bool | str | tuple[str, ...] = False,
    min_size: int = MIN_SHARD_SIZE,
) -> TrainState:
    """One call: the `TrainState` of a checkpoint directory's latest step (or `step`), written by
    any number of processes; `path` may also be a step directory. Without `optimizer` the state
    has `opt_state=None`: `load_training_state(path).model` for evaluation or export
    (`eqx_bigbird.save`). See `Checkpointer.restore` for `mesh`, `fsdp`, `min_size`."""
    path = os.path.abspath(os.fspath(path))
    name = os.path.basename(path)
    if step is None and name.isdigit() and os.path.isdir(os.path.join(path, "meta")):
        path, step = os.path.dirname(path), int(name)
    with Checkpointer(path, read_only=True) as checkpoints:
        state, _ = checkpoints.restore(optimizer, step=step, mesh=mesh, fsdp=fsdp,
                                       min_size=min_size)
    return state


def _is_abstract(x) -> bool:
    return isinstance(x, jax.ShapeDtypeStruct)


def _fresh_state(model, optimizer) -> TrainState:
    """`TrainState.create`, or without optimizer state (traced by `filter_eval_shape`)."""
    if optimizer is not None:
        return TrainState.create(model, optimizer)
    return TrainState(model=model, opt_state=None, step=jnp.zeros((), jnp.int32))


def _flat(tree) -> dict[str, Any]:
    """Array leaves by dotted tree path: Orbax then needs no knowledge of our pytree types."""
    return dict(array_leaves(tree))


def _abstract_leaves(tree) -> list[tuple[str, jax.ShapeDtypeStruct]]:
    return [
        (path_str(p), x)
        for p, x in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_abstract)[0]
        if _is_abstract(x)
    ]


def _placements(like: TrainState, mesh: Mesh | None, fsdp, min_size) -> TrainState:
    """A `Sharding` at every abstract leaf of `like`, `None` elsewhere."""
    if mesh is not None:
        return state_shardings(like, mesh, fsdp=fsdp, min_size=min_size)
    one = SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree_util.tree_map(lambda x: one if _is_abstract(x) else None, like,
                                  is_leaf=_is_abstract)


def _targets(like, placed, stored, where: str, item: str) -> dict[str, jax.ShapeDtypeStruct]:
    """What Orbax restores into, by name: the stored dtype, the expected shape and placement;
    the stored names must be exactly the expected ones (nothing left unfilled or unused)."""
    expected = dict(_abstract_leaves(like))
    shardings = {path_str(p): s for p, s in jax.tree_util.tree_flatten_with_path(placed)[0]}
    stored = dict(stored or {})
    missing, unused = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing or unused:
        what = "model" if item == "model" else "optimizer"
        raise CheckpointError(f"{where}/{item}: does not match the {what} (missing "
                              f"{missing[:5]}, unexpected {unused[:5]})")
    out = {}
    for name, x in expected.items():
        shape = tuple(stored[name].shape)
        if shape != tuple(x.shape):
            raise CheckpointError(f"{where}/{item}: {name} has shape {shape}, expected {x.shape}")
        out[name] = jax.ShapeDtypeStruct(x.shape, stored[name].dtype, sharding=shardings[name])
    return out


def _fill(skeleton, arrays: dict[str, jax.Array]):
    flat, treedef = jax.tree_util.tree_flatten_with_path(skeleton, is_leaf=_is_abstract)
    leaves = [arrays[path_str(p)] if _is_abstract(x) else x for p, x in flat]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]

