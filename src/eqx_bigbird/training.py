"""Training utilities: an optax train step with gradient accumulation and buffer donation, and
masked-LM input corruption. Any loss from `eqx_bigbird` (or your own) plugs in.

    optimizer = optax.adamw(1e-4)
    state = TrainState.create(model, optimizer)
    step = make_train_step(loss_fn, optimizer, accumulation_steps=4)
    for batch in data:
        state, metrics = step(state, batch, key)   # key: split inside, per micro-batch

`loss_fn(model, batch, *, key) -> scalar` sees a whole micro-batch (a pytree of arrays with a
leading batch axis) and does its own `jax.vmap` over examples, so it decides how to average.
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

from ._compile import outermost_jit

__all__ = ["TrainState", "make_train_step", "mask_tokens"]


class TrainState(eqx.Module):
    """Model, optimizer state and step count: everything a train step updates."""

    model: eqx.Module
    opt_state: PyTree
    step: Int[Array, ""]

    @classmethod
    def create(cls, model: eqx.Module, optimizer: optax.GradientTransformation) -> "TrainState":
        opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        return cls(model=model, opt_state=opt_state, step=jnp.zeros((), jnp.int32))


def make_train_step(
    loss_fn: Callable[..., Float[Array, ""]],
    optimizer: optax.GradientTransformation,
    *,
    accumulation_steps: int = 1,
    donate: bool = True,
    state_shardings: PyTree | None = None,
    batch_sharding: PyTree | None = None,
) -> Callable[[TrainState, PyTree, PRNGKeyArray], tuple[TrainState, dict[str, Any]]]:
    """A jit-compiled `step(state, batch, key) -> (state, metrics)`.

    **Arguments:**
    - `loss_fn`: `loss_fn(model, micro_batch, *, key) -> scalar loss`.
    - `optimizer`: any optax transformation; updates apply to the model's inexact arrays.
    - `accumulation_steps`: the batch's leading axis is split into this many micro-batches whose
      gradients are averaged (a `lax.scan`, so memory is one micro-batch's); the batch size must
      divide evenly.
    - `donate`: donate the old state's buffers to the new one (halves the state's peak memory;
      the `state` passed in must not be used after a step that returned). The step is then two
      compiled calls: gradients (which sees the batch and donates nothing), then the update
      (which donates the state and the gradients). So a step that raises on a bad batch (an id
      out of range, a label outside the classes) leaves the `state` passed in intact and usable.
    - `state_shardings`, `batch_sharding`: for a device mesh (see `eqx_bigbird.sharding`). The
      new state is constrained to `state_shardings` (a `jax.sharding.Sharding` per array leaf
      of the state, `None` elsewhere) and gradients to its model part; the batch, and each
      micro-batch along its batch axis, to `batch_sharding` (one `NamedSharding` for every leaf,
      or a pytree of them). `None` leaves placement to XLA, as on one device.

    **Returns:** the step function; `metrics` holds `loss` (mean over micro-batches) and
    `grad_norm`. Called outside any JAX transformation it compiles with `jit_options()` (on
    CPU, every dot its own YNNPACK call); inside your own jit or scan, without.
    """
    if accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")

    def gradients(batch, model, key):
        batch = _constrain(batch, batch_sharding)
        if accumulation_steps == 1:
            loss, grads = _value_and_grad(loss_fn, model, batch, key)
        else:
            loss, grads = _accumulated(
                loss_fn, model, batch, key, accumulation_steps, batch_sharding
            )
        if state_shardings is not None:
            grads = _constrain(grads, state_shardings.model)  # FSDP: reduce-scatter, not all-reduce
        return loss, grads

    def update(state, grads, loss):
        new, metrics = _update(optimizer, state, grads, loss)
        return _constrain(new, state_shardings), metrics

    if not donate:

        def step(state, batch, key):
            loss, grads = gradients(batch, state.model, key)
            return update(state, grads, loss)

        return outermost_jit(step)

    # Two compiled calls, so that a bad batch cannot cost the caller its state: the batch is only
    # seen (and checked, by the model's input checks) by the first, which donates nothing; the
    # state's buffers are donated to the second, which cannot fail on the batch.
    jitted_gradients = outermost_jit(gradients)
    jitted_update = outermost_jit(update, donate="all")

    def train_step(state: TrainState, batch: PyTree, key: PRNGKeyArray):
        loss, grads = jitted_gradients(batch, state.model, key)
        return jitted_update(state, grads, loss)

    return train_step


def _value_and_grad(loss_fn, model, batch, key):
    return eqx.filter_value_and_grad(lambda m: loss_fn(m, batch, key=key))(model)


def _accumulated(loss_fn, model, batch, key, steps, batch_sharding):
    """Mean loss and gradients over `steps` micro-batches, one at a time (a `lax.scan`)."""

    def split(x):
        if x.shape[0] % steps:
            raise ValueError(
                f"batch size {x.shape[0]} is not divisible by accumulation_steps={steps}"
            )
        return x.reshape(steps, x.shape[0] // steps, *x.shape[1:])

    micro_batches = jax.tree_util.tree_map(split, batch)
    # Without this XLA may split the micro-batch axis over devices, and the scan would then
    # gather every micro-batch everywhere.
    micro_batches = _constrain(micro_batches, _micro_sharding(batch_sharding))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)

    def body(carry, xs):
        loss_sum, grad_sum = carry
        loss, grads = _value_and_grad(loss_fn, eqx.combine(params, static), *xs)
        grads = eqx.filter(grads, eqx.is_inexact_array)
        return (loss_sum + loss, jax.tree_util.tree_map(jnp.add, grad_sum, grads)), None

    keys = jr.split(key, steps)
    (loss, grads), _ = jax.lax.scan(body, (jnp.zeros(()), zeros), (micro_batches, keys))
    return loss / steps, jax.tree_util.tree_map(lambda g: g / steps, grads)


def _update(optimizer, state: TrainState, grads, loss) -> tuple[TrainState, dict[str, Any]]:
    params = eqx.filter(state.model, eqx.is_inexact_array)
    # optax relies on implicit dtype promotion (e.g. Adam's bias correction), which a user
    # running JAX in strict promotion mode for their own code would otherwise trip over.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = optimizer.update(
            eqx.filter(grads, eqx.is_inexact_array), state.opt_state, params
        )
    model = eqx.apply_updates(state.model, updates)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(eqx.filter(grads, eqx.is_array))}
    return TrainState(model=model, opt_state=opt_state, step=state.step + 1), metrics


def _constrain(tree, shardings):
    if shardings is None:
        return tree
    arrays, rest = eqx.partition(tree, eqx.is_array)
    return eqx.combine(jax.lax.with_sharding_constraint(arrays, shardings), rest)


def _micro_sharding(batch_sharding):
    """(accumulation, micro-batch, ...): the batch's spec moved one axis right."""
    if batch_sharding is None:
        return None
    return jax.tree_util.tree_map(
        lambda s: jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec(None, *s.spec)),
        batch_sharding,
    )


def mask_tokens(
    key: PRNGKeyArray,
    input_ids: Int[Array, " seq"],
    *,
    mask_token_id: int,
    vocab_size: int,
    maskable: Bool[Array, " seq"] | None = None,
    probability: float = 0.15,
) -> tuple[Int[Array, " seq"], Int[Array, " seq"]]:
    """BERT's masked-LM corruption of one sequence: pick `probability` of the maskable tokens;
    of those, 80% become the mask token, 10% a random token, 10% stay.

    **Returns:** `(corrupted_ids, labels)` with labels -100 (ignored) where nothing was picked.
    """
    k_pick, k_kind, k_rand = jr.split(key, 3)
    if maskable is None:
        maskable = jnp.ones(input_ids.shape, bool)
    picked = jr.bernoulli(k_pick, probability, input_ids.shape) & maskable
    kind = jr.uniform(k_kind, input_ids.shape)
    random_ids = jr.randint(k_rand, input_ids.shape, 0, vocab_size, input_ids.dtype)
    corrupted = jnp.where(picked & (kind < 0.8), mask_token_id, input_ids)
    corrupted = jnp.where(picked & (kind >= 0.8) & (kind < 0.9), random_ids, corrupted)
    labels = jnp.where(picked, input_ids, -100)
    return corrupted.astype(input_ids.dtype), labels.astype(input_ids.dtype)
