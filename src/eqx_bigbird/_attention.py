"""The attention modules: one call signature, one output record, two kinds.

`FullAttention` is HF's `original_full` (also the decoder's causal self-attention and its
cross-attention); `BlockSparseAttention` is HF's `block_sparse`. Both are thin wrappers around the
pure functions of `eqx_bigbird.sparse_attention`: projections in, merged heads out.
"""

import abc
import typing

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, Int, PRNGKeyArray, Real

from . import sparse_attention as sa
from ._config import BigBirdConfig
from ._nn import normal_linear, per_token

# `output_attentions`: False; True for dense `(heads, seq, kv)` maps; or "blocked" for the
# block-sparse kind's compact `sparse_attention.BlockedProbs` (O(seq) memory). Full attention
# gives dense maps either way.
OutputAttentions = bool | typing.Literal["blocked"]
Cache = tuple[Float[Array, "heads kv dim"], Float[Array, "heads kv dim"]]
Probs = Float[Array, "heads seq kv"] | sa.BlockedProbs


class AttentionOutput(eqx.Module):
    """`context` `(seq, hidden)` (heads merged); `probs` when asked for; the updated `cache`
    when one was given."""

    context: Float[Array, "seq hidden"]
    probs: Probs | None = None
    cache: Cache | None = None


class AbstractAttention(eqx.Module):
    """Multi-head attention of one sequence; the kinds differ in which keys each query sees.

    `__call__(x, mask, *, states=None, plan=None, cache=None, cache_index=None, head_mask=None,
    key=None, inference=False, output_attentions=False) -> AttentionOutput`:
    - `x`: `(seq, hidden)` queries (and keys/values, unless `states` is given);
    - `mask`: `(kv,)` 1 for real keys, or `(seq, kv)` per query (a decoder's causal mask);
    - `states`: `(kv, hidden)` keys/values to attend to instead of `x` (cross-attention);
    - `plan`: the random key blocks of block-sparse attention (`sparse_attention.Plan`), `None`
      for full attention;
    - `cache`, `cache_index`: a decoder's key/value slots, the new ones written at `cache_index`.
    """

    query: eqx.AbstractVar[eqx.nn.Linear]
    key: eqx.AbstractVar[eqx.nn.Linear]
    value: eqx.AbstractVar[eqx.nn.Linear]
    num_heads: eqx.AbstractVar[int]
    dropout_rate: eqx.AbstractVar[float]

    def split_heads(self, linear: eqx.nn.Linear, x: Float[Array, "seq hidden"]):
        """`linear` applied to every token, as `(heads, seq, head_dim)`."""
        return per_token(linear, x).reshape(x.shape[0], self.num_heads, -1).transpose(1, 0, 2)

    def _full(self, x, states, mask, cache, cache_index, key, inference):
        """Dense softmax attention (with its dropout in training), writing `cache` if given."""
        states = x if states is None else states
        q = self.split_heads(self.query, x)
        k, v = self.split_heads(self.key, states), self.split_heads(self.value, states)
        if cache is not None:
            start = (jnp.zeros((), jnp.int32), cache_index, jnp.zeros((), jnp.int32))
            k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), start)
            v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), start)
            cache = (k, v)
        rate = 0.0 if inference else self.dropout_rate
        ctx, probs = sa.full_attention(q, k, v, mask, dropout_rate=rate, key=key)
        return ctx, probs, cache

    @abc.abstractmethod
    def __call__(
        self,
        x: Float[Array, "seq hidden"],
        mask: Real[Array, " kv"] | Real[Array, "seq kv"],
        *,
        states: Float[Array, "kv hidden"] | None = None,
        plan: sa.Plan | None = None,
        cache: Cache | None = None,
        cache_index: Int[Array, ""] | None = None,
        head_mask: Float[Array, " heads"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool = False,
        output_attentions: OutputAttentions = False,
    ) -> AttentionOutput:
        raise NotImplementedError


def _qkv(config: BigBirdConfig, key):
    h, std = config.hidden_size, config.initializer_range
    return tuple(
        normal_linear(h, h, use_bias=config.use_bias, std=std, key=k) for k in jr.split(key, 3)
    )


def _output(ctx, probs, cache, head_mask, output_attentions) -> AttentionOutput:
    """Applies the head mask and merges heads: `(heads, seq, dim)` -> `(seq, heads * dim)`."""
    if head_mask is not None:
        ctx = ctx * head_mask[:, None, None]
        if isinstance(probs, sa.BlockedProbs):
            scale = head_mask[:, None, None, None]
            probs = eqx.tree_at(
                lambda p: (p.global_rows, p.rows),
                probs,
                (probs.global_rows * scale, probs.rows * scale),
            )
        elif probs is not None:
            probs = probs * head_mask[:, None, None]
    heads, seq, dim = ctx.shape
    merged = ctx.transpose(1, 0, 2).reshape(seq, heads * dim)
    return AttentionOutput(merged, probs if output_attentions else None, cache)


class FullAttention(AbstractAttention):
    """HF's `original_full`: every query attends every (unmasked) key; dropout on the probs."""

    query: eqx.nn.Linear
    key: eqx.nn.Linear
    value: eqx.nn.Linear
    num_heads: int = eqx.field(static=True)
    dropout_rate: float = eqx.field(static=True)

    def __init__(self, config: BigBirdConfig, *, key: PRNGKeyArray):
        self.query, self.key, self.value = _qkv(config, key)
        self.num_heads = config.num_attention_heads
        self.dropout_rate = config.attention_probs_dropout_prob

    def __call__(
        self,
        x: Float[Array, "seq hidden"],
        mask: Real[Array, " kv"] | Real[Array, "seq kv"],
        *,
        states: Float[Array, "kv hidden"] | None = None,
        plan: sa.Plan | None = None,
        cache: Cache | None = None,
        cache_index: Int[Array, ""] | None = None,
        head_mask: Float[Array, " heads"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool = False,
        output_attentions: OutputAttentions = False,
    ) -> AttentionOutput:
        if plan is not None:
            raise ValueError("a random-block plan was given to full attention")
        ctx, probs, cache = self._full(x, states, mask, cache, cache_index, key, inference)
        return _output(ctx, probs, cache, head_mask, output_attentions)


class BlockSparseAttention(AbstractAttention):
    """HF's `block_sparse` (BigBird ITC), see `eqx_bigbird.sparse_attention`. Self-attention only.

    `plan=None` marks a call too short for block-sparse attention (`BigBirdConfig.uses_block_sparse`
    decides): it runs full attention, with its dropout, on the same weights, as HF PyTorch does.
    """

    query: eqx.nn.Linear
    key: eqx.nn.Linear
    value: eqx.nn.Linear
    num_heads: int = eqx.field(static=True)
    dropout_rate: float = eqx.field(static=True)
    block_size: int = eqx.field(static=True)

    def __init__(self, config: BigBirdConfig, *, key: PRNGKeyArray):
        self.query, self.key, self.value = _qkv(config, key)
        self.num_heads = config.num_attention_heads
        self.dropout_rate = config.attention_probs_dropout_prob
        self.block_size = config.block_size

    def __call__(
        self,
        x: Float[Array, "seq hidden"],
        mask: Real[Array, " kv"] | Real[Array, "seq kv"],
        *,
        states: Float[Array, "kv hidden"] | None = None,
        plan: sa.Plan | None = None,
        cache: Cache | None = None,
        cache_index: Int[Array, ""] | None = None,
        head_mask: Float[Array, " heads"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool = False,
        output_attentions: OutputAttentions = False,
    ) -> AttentionOutput:
        if states is not None or cache is not None:
            raise ValueError("block-sparse attention cannot attend to encoder states or a cache")
        if plan is None:
            ctx, probs, _ = self._full(x, None, mask, None, None, key, inference)
            return _output(ctx, probs, None, head_mask, output_attentions)
        q, k, v = (self.split_heads(m, x) for m in (self.query, self.key, self.value))
        ctx, probs = sa.block_sparse_attention(
            q, k, v, mask, plan, block_size=self.block_size, return_probs=output_attentions is True
        )
        if output_attentions == "blocked":
            probs = sa.blocked_probs(q, k, mask, plan, block_size=self.block_size)
        return _output(ctx, probs, None, head_mask, output_attentions)


# `BigBirdConfig.self_attention_type` -> the class the layers are built with.
ATTENTION_CLASSES: dict[str, type[AbstractAttention]] = {
    "original_full": FullAttention,
    "block_sparse": BlockSparseAttention,
}
