"""Training on a device mesh (one host or many) with what JAX provides: `jax.make_mesh`,
`NamedSharding` / `PartitionSpec`, and the GSPMD partitioner inside `jit`.

    mesh = make_mesh(data=4, fsdp=2)                      # axes ("data", "fsdp")
    state = shard_state(TrainState.create(model, optimizer), mesh, fsdp=True)
    step = make_sharded_train_step(loss_fn, optimizer, state, mesh, fsdp=True)
    for batch in data:                                    # this process's rows of the batch
        state, metrics = step(state, shard_batch(batch, mesh), key)

- The batch is split over every device (both mesh axes are data-parallel).
- Parameters and optimizer state are replicated (`fsdp=False`), sharded over every device
  (`fsdp=True`, ZeRO-3 / FSDP), or sharded over one axis and replicated over the others
  (`fsdp="fsdp"`: shard within a host, replicate across hosts). Which dimension of a leaf is split
  is decided by one rule over the pytree, `leaf_spec`.
- Several processes (hosts): call `initialize_distributed` first; the code is the same.
  `shard_batch` takes each process's own rows; training state is checkpointed by
  `eqx_bigbird.checkpointing` (each process writes its shards); `save_sharded` gathers a model
  and process 0 writes our single-file format; `load_sharded` reads it on every process and
  places the shards.
"""

import os
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._serialization import load, save
from .training import TrainState, make_train_step

__all__ = [
    "initialize_distributed",
    "make_mesh",
    "leaf_spec",
    "state_shardings",
    "shard_state",
    "batch_sharding",
    "shard_batch",
    "process_rows",
    "make_sharded_train_step",
    "to_host",
    "save_sharded",
    "load_sharded",
]

DATA, FSDP = "data", "fsdp"
# Leaves smaller than this (elements) stay replicated: biases and LayerNorm scales cost more in
# per-leaf collective latency than the memory they would save.
MIN_SHARD_SIZE = 2**14


def initialize_distributed(
    coordinator: str | None = None, num_processes: int | None = None,
    process_id: int | None = None, *, initialization_timeout: int = 300,
    heartbeat_timeout: int = 100,
) -> None:
    """`jax.distributed.initialize` with bounded waits; call it in every process before any
    other JAX call. Arguments left `None` come from `JAX_COORDINATOR_ADDRESS` or the cluster
    (SLURM, Open MPI, Cloud TPU, ... auto-detected by JAX).

    A process that has not connected within `initialization_timeout` seconds, or one that stops
    sending heartbeats for `heartbeat_timeout` seconds (killed, hung), ends every other process
    with JAX's error naming the unhealthy task, instead of a hang. On the CPU backend,
    cross-process collectives run over gloo.
    """
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator, num_processes, process_id,
        initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout,
        shutdown_timeout_seconds=heartbeat_timeout,
    )


def make_mesh(data: int | None = None, fsdp: int = 1, *, devices=None) -> Mesh:
    """A `("data", "fsdp")` mesh over `devices` (default: all of them, every process's).

    `data=None` takes whatever `fsdp` leaves. Axes are `Auto` (GSPMD propagates shardings through
    the model; the model code knows nothing of meshes).
    """
    devices = jax.devices() if devices is None else list(devices)
    if data is None:
        data = len(devices) // fsdp
    if data * fsdp != len(devices):
        raise ValueError(f"mesh {data}x{fsdp} does not cover the {len(devices)} devices")
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh((data, fsdp), (DATA, FSDP), auto, devices=devices)


def _param_axes(mesh: Mesh, fsdp: bool | str | tuple[str, ...]) -> tuple[str, ...]:
    if fsdp is False:
        return ()
    if fsdp is True:
        return tuple(mesh.axis_names)
    axes = (fsdp,) if isinstance(fsdp, str) else tuple(fsdp)
    unknown = set(axes) - set(mesh.axis_names)
    if unknown:
        raise ValueError(f"fsdp axes {sorted(unknown)} are not mesh axes {mesh.axis_names}")
    return axes


def _is_stacked(path) -> bool:
    """Leaves under a `layers` attribute (`BigBirdEncoder.layers`, also inside optimizer states,
    which mirror the model's paths) carry the stacked layer axis first."""
    return any(isinstance(k, jax.tree_util.GetAttrKey) and k.name == "layers" for k in path)


def leaf_spec(
    shape: tuple[int, ...], num_shards: int, axes: tuple[str, ...], *, stacked: bool = False,
    min_size: int = MIN_SHARD_SIZE,
) -> PartitionSpec:
    """The sharding rule for one array: split its largest dimension that `num_shards` divides
    over `axes`; replicate it if it is smaller than `min_size` elements or nothing divides.

    `stacked`: the leading axis is the layer axis, never split. `lax.scan` slices one layer per
    step, which then lives on one device: XLA must move the whole stack around (more all-gather
    bytes in benchmarks/sharding.py), and only divisors of the layer count could be used. Split
    along a feature axis, every layer is spread over all devices.
    """
    if not axes or num_shards == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return PartitionSpec()
    candidates = [
        i for i in range(1 if stacked else 0, len(shape)) if shape[i] % num_shards == 0
    ]
    if not candidates:
        return PartitionSpec()
    dim = max(candidates, key=lambda i: shape[i])  # first of the largest on ties
    spec: list[Any] = [None] * len(shape)
    spec[dim] = axes[0] if len(axes) == 1 else axes
    return PartitionSpec(*spec)


def state_shardings(
    tree: PyTree, mesh: Mesh, *, fsdp: bool | str | tuple[str, ...] = False,
    min_size: int = MIN_SHARD_SIZE,
) -> PyTree:
    """A `NamedSharding` for every array leaf of `tree` (a model, an optimizer state, a
    `TrainState`; arrays or `jax.ShapeDtypeStruct`s), `None` for everything else: the rule
    `leaf_spec` applied leaf by leaf.

    `fsdp`: `False` replicates; `True` shards over all mesh axes; an axis name (or tuple) shards
    over those axes only and replicates over the rest.
    """
    axes = _param_axes(mesh, fsdp)
    n = int(np.prod([mesh.shape[a] for a in axes], dtype=np.int64))

    def one(path, x):
        if not _is_array_like(x):
            return None
        spec = leaf_spec(x.shape, n, axes, stacked=_is_stacked(path), min_size=min_size)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, eqx.filter(tree, _is_array_like))


def _is_array_like(x) -> bool:
    # Shape-only leaves too: a skeleton's shardings are what a checkpoint restores onto.
    return eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct)


def _put(x, sharding: NamedSharding):
    # make_array_from_callback works when the sharding spans other processes' devices too (each
    # process supplies its own shards); every process must hold the same `x`.
    if isinstance(x, jax.Array) and not x.is_fully_addressable:  # already global: reshard
        return jax.jit(lambda y: y, out_shardings=sharding)(x)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_state(
    tree: PyTree, mesh: Mesh, *, fsdp: bool | str | tuple[str, ...] = False,
    min_size: int = MIN_SHARD_SIZE,
) -> PyTree:
    """`tree` with every array leaf placed by `state_shardings` (works on one host or many;
    every process passes the same values, e.g. a model built from the same key)."""
    arrays, rest = eqx.partition(tree, eqx.is_array)
    shardings = state_shardings(arrays, mesh, fsdp=fsdp, min_size=min_size)
    arrays = jax.tree_util.tree_map(_put, arrays, shardings)
    return eqx.combine(arrays, rest)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every mesh axis, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))


def shard_batch(batch: PyTree, mesh: Mesh) -> PyTree:
    """Global arrays from each process's rows of the batch (on one host: the whole batch).

    The global batch size is the sum over processes and must be divisible by the device count.
    """
    sharding = batch_sharding(mesh)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
    )


def process_rows(mesh: Mesh, global_batch: int) -> slice:
    """The rows of a global batch of `global_batch` that this process feeds `shard_batch`:
    those its devices hold under `batch_sharding(mesh)` (with `make_mesh`'s device order,
    process i's are the i-th of `jax.process_count()` equal parts)."""
    if global_batch % mesh.size:
        raise ValueError(f"global batch {global_batch} is not divisible by the mesh's "
                         f"{mesh.size} devices")
    held = batch_sharding(mesh).addressable_devices_indices_map((global_batch,)).values()
    rows = sorted({(i[0].indices(global_batch)[:2]) for i in held})
    start, stop = rows[0][0], rows[-1][1]
    if sum(b - a for a, b in rows) != stop - start:
        raise ValueError("this process's devices do not hold contiguous rows of the batch; "
                         "build the mesh with make_mesh (devices in process order)")
    return slice(start, stop)


def make_sharded_train_step(
    loss_fn: Callable[..., Float[Array, ""]],
    optimizer: optax.GradientTransformation,
    state: TrainState,
    mesh: Mesh,
    *,
    fsdp: bool | str | tuple[str, ...] = False,
    min_size: int = MIN_SHARD_SIZE,
    accumulation_steps: int = 1,
    donate: bool = True,
) -> Callable[[TrainState, PyTree, PRNGKeyArray], tuple[TrainState, dict[str, Any]]]:
    """`training.make_train_step` on `mesh`: the new state keeps `state_shardings(state, ...)`
    (pass the same `fsdp` and `min_size` as to `shard_state`), the batch is split by
    `batch_sharding`, gradients are reduced (FSDP: reduce-scattered) by XLA."""
    return make_train_step(
        loss_fn,
        optimizer,
        accumulation_steps=accumulation_steps,
        donate=donate,
        state_shardings=state_shardings(state, mesh, fsdp=fsdp, min_size=min_size),
        batch_sharding=batch_sharding(mesh),
    )


def to_host(x):
    """`x` as a numpy array in every process's memory, also when it spans processes
    (collective: then every process must call it). Non-arrays pass through."""
    if not eqx.is_array(x):
        return x
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def save_sharded(path: str | os.PathLike, model) -> str | None:
    """`eqx_bigbird.save` for a model whose leaves may span processes. Every process must call
    it (gathering is collective); process 0 writes, the others wait until the file exists.

    Gathers the whole model into process 0's host memory. Returns the file written (process 0)
    or `None`.
    """
    host = jax.tree_util.tree_map(to_host, model)
    file = save(path, host) if jax.process_index() == 0 else None
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("eqx_bigbird.save_sharded")
    return file


def load_sharded(
    path: str | os.PathLike, mesh: Mesh, cls: type | None = None, *,
    fsdp: bool | str | tuple[str, ...] = False, min_size: int = MIN_SHARD_SIZE, dtype="keep",
):
    """`eqx_bigbird.load` on every process (the file must be visible to all), then placed on
    `mesh` by `shard_state`. The full model passes through host memory, not device 0's."""
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        model = load(path, cls, dtype=dtype)
    return shard_state(model, mesh, fsdp=fsdp, min_size=min_size)
