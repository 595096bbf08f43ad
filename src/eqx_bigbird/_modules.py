"""The BigBird encoder: embeddings, self-attention kinds, the scanned layer stack, the model."""

import abc
import dataclasses
import inspect
import typing
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, Real

from . import sparse_attention as sa
from ._activations import ACTIVATIONS
from ._config import BigBirdConfig
from ._registry import register


# `output_attentions`: False; True for dense `(heads, seq, seq)` maps per layer; or "blocked" for
# block-sparse layers' compact `sparse_attention.BlockedProbs` (O(seq) memory; `densify` expands
# one layer, for the padded length). Full-attention calls give dense maps either way.
OutputAttentions = bool | typing.Literal["blocked"]

def split_key(key: PRNGKeyArray | None, num: int = 2):
    """`jr.split` that passes `None` through (inference needs no randomness)."""
    if key is None:
        return (None,) * num
    return tuple(jr.split(key, num))


def _normal_linear(in_features, out_features, *, use_bias=True, std, key):
    """An `eqx.nn.Linear` with HF's init: weight ~ N(0, std), bias zero."""
    linear = eqx.nn.Linear(in_features, out_features, use_bias=use_bias, key=key)
    linear = eqx.tree_at(lambda m: m.weight, linear, std * jr.normal(key, linear.weight.shape))
    if use_bias:
        linear = eqx.tree_at(lambda m: m.bias, linear, jnp.zeros_like(linear.bias))
    return linear


def _normal_embedding(num, dim, *, std, key):
    return eqx.nn.Embedding(weight=std * jr.normal(key, (num, dim)))


def _apply(layer, x):
    """Applies a per-token layer (Linear, LayerNorm) to every token of `x: (seq, features)`."""
    return jax.vmap(layer)(x)


class BigBirdEmbeddings(eqx.Module):
    """Word + token-type + position embeddings, then dropout, then LayerNorm (HF BigBird's order)."""

    word_embeddings: eqx.nn.Embedding
    position_embeddings: eqx.nn.Embedding
    token_type_embeddings: eqx.nn.Embedding
    layer_norm: eqx.nn.LayerNorm
    dropout: eqx.nn.Dropout
    rescale: float | None = eqx.field(static=True)

    def __init__(self, config: BigBirdConfig, *, key: PRNGKeyArray):
        kw, kp, kt = jr.split(key, 3)
        std, hidden = config.initializer_range, config.hidden_size
        self.word_embeddings = _normal_embedding(config.vocab_size, hidden, std=std, key=kw)
        self.position_embeddings = _normal_embedding(
            config.max_position_embeddings, hidden, std=std, key=kp
        )
        self.token_type_embeddings = _normal_embedding(
            config.type_vocab_size, hidden, std=std, key=kt
        )
        self.layer_norm = eqx.nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.dropout = eqx.nn.Dropout(config.hidden_dropout_prob)
        self.rescale = hidden**0.5 if config.rescale_embeddings else None

    def __call__(
        self,
        input_ids: Int[Array, " seq"],
        token_type_ids: Int[Array, " seq"],
        position_ids: Int[Array, " seq"],
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
    ) -> Float[Array, "seq hidden"]:
        words = self.word_embeddings.weight[input_ids]
        if self.rescale is not None:
            words = words * self.rescale
        x = (
            words
            + self.token_type_embeddings.weight[token_type_ids]
            + self.position_embeddings.weight[position_ids]
        )
        x = self.dropout(x, key=key, inference=inference)
        return _apply(self.layer_norm, x)


class AbstractSelfAttention(eqx.Module):
    """Multi-head self-attention of one sequence; subclasses say which keys each query sees.

    `__call__(x, mask, *, head_mask, plan, key, inference, output_attentions)` returns the merged
    context `(seq, hidden)` and, when asked, the dense attention map `(heads, seq, seq)`.
    """

    query: eqx.AbstractVar[eqx.nn.Linear]
    key: eqx.AbstractVar[eqx.nn.Linear]
    value: eqx.AbstractVar[eqx.nn.Linear]
    num_heads: eqx.AbstractVar[int]
    attention_dropout: eqx.AbstractVar[float]

    def _heads(self, x: Float[Array, "seq hidden"]):
        def project(linear):
            y = _apply(linear, x)
            return y.reshape(x.shape[0], self.num_heads, -1).transpose(1, 0, 2)

        return project(self.query), project(self.key), project(self.value)

    def _full(self, x, mask, head_mask, key, inference):
        q, k, v = self._heads(x)
        ctx, probs = sa.full_attention(
            q, k, v, mask, dropout_rate=0.0 if inference else self.attention_dropout, key=key
        )
        return ctx, probs

    @abc.abstractmethod
    def __call__(
        self,
        x: Float[Array, "seq hidden"],
        mask: Real[Array, " seq"],
        *,
        head_mask: Float[Array, " heads"] | None = None,
        plan: Int[Array, "heads rows r"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool = False,
        output_attentions: OutputAttentions = False,
    ) -> tuple[Float[Array, "seq hidden"], Float[Array, "heads seq seq"] | sa.BlockedProbs | None]:
        raise NotImplementedError


def _qkv(config: BigBirdConfig, key):
    kq, kk, kv = jr.split(key, 3)
    h, std = config.hidden_size, config.initializer_range
    return tuple(
        _normal_linear(h, h, use_bias=config.use_bias, std=std, key=k) for k in (kq, kk, kv)
    )


def _finish(ctx, probs, head_mask, output_attentions):
    """Applies the head mask and merges heads: `(heads, seq, dim)` -> `(seq, heads*dim)`."""
    if head_mask is not None:
        ctx = ctx * head_mask[:, None, None]
        if isinstance(probs, sa.BlockedProbs):
            probs = sa.BlockedProbs(
                global_rows=probs.global_rows * head_mask[:, None, None, None],
                rows=probs.rows * head_mask[:, None, None, None],
                key_blocks=probs.key_blocks,
            )
        elif probs is not None:
            probs = probs * head_mask[:, None, None]
    heads, seq, dim = ctx.shape
    merged = ctx.transpose(1, 0, 2).reshape(seq, heads * dim)
    return merged, (probs if output_attentions else None)


class FullSelfAttention(AbstractSelfAttention):
    """HF's `original_full`: every token attends every (unmasked) token; dropout on the probs."""

    query: eqx.nn.Linear
    key: eqx.nn.Linear
    value: eqx.nn.Linear
    num_heads: int = eqx.field(static=True)
    attention_dropout: float = eqx.field(static=True)

    def __init__(self, config: BigBirdConfig, *, key: PRNGKeyArray):
        self.query, self.key, self.value = _qkv(config, key)
        self.num_heads = config.num_attention_heads
        self.attention_dropout = config.attention_probs_dropout_prob

    def __call__(
        self,
        x: Float[Array, "seq hidden"],
        mask: Real[Array, " seq"],
        *,
        head_mask: Float[Array, " heads"] | None = None,
        plan: Int[Array, "heads rows r"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool = False,
        output_attentions: OutputAttentions = False,
    ) -> tuple[Float[Array, "seq hidden"], Float[Array, "heads seq seq"] | sa.BlockedProbs | None]:
        if plan is not None:
            raise ValueError("a random-block plan was given to full attention")
        ctx, probs = self._full(x, mask, head_mask, key, inference)
        return _finish(ctx, probs, head_mask, output_attentions)

    def attend(
        self,
        x: Float[Array, "seq hidden"],
        states: Float[Array, "kseq hidden"],
        mask: Real[Array, "seq kv"] | Real[Array, " kv"],
        *,
        cache: tuple[Float[Array, "heads kv dim"], Float[Array, "heads kv dim"]] | None = None,
        cache_index: Int[Array, ""] | None = None,
        head_mask: Float[Array, " heads"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool = False,
        output_attentions: OutputAttentions = False,
    ):
        """Queries from `x`, keys and values from `states` (`x` itself for decoder
        self-attention, the encoder's states for cross-attention).

        With `cache` (keys and values of `kv` slots), the new keys/values are written at
        `cache_index` and the queries attend over all slots; `mask` must then hide the slots not
        yet written (the decoder's causal mask does).

        **Returns:** `(context (seq, hidden), probs (heads, seq, kv) or None, updated cache)`.
        """

        def project(linear, y):
            return _apply(linear, y).reshape(y.shape[0], self.num_heads, -1).transpose(1, 0, 2)

        q, k, v = project(self.query, x), project(self.key, states), project(self.value, states)
        if cache is not None:
            start = (jnp.zeros((), jnp.int32), cache_index, jnp.zeros((), jnp.int32))
            k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), start)
            v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), start)
            cache = (k, v)
        ctx, probs = sa.full_attention(
            q, k, v, mask, dropout_rate=0.0 if inference else self.attention_dropout, key=key
        )
        merged, probs = _finish(ctx, probs, head_mask, output_attentions)
        return merged, probs, cache


class BlockSparseSelfAttention(AbstractSelfAttention):
    """HF's `block_sparse` (BigBird ITC), see `eqx_bigbird.sparse_attention`.

    Random blocks: an explicit `plan` if given; else HF's eval plan (all block 0) in inference and
    a fresh `sparse_attention.random_plan` drawn from `key` in training. Sequences of at most
    `(5 + 2r) * block_size` tokens use full attention (with its dropout), as HF PyTorch does.
    """

    query: eqx.nn.Linear
    key: eqx.nn.Linear
    value: eqx.nn.Linear
    num_heads: int = eqx.field(static=True)
    attention_dropout: float = eqx.field(static=True)
    block_size: int = eqx.field(static=True)
    num_random_blocks: int = eqx.field(static=True)

    def __init__(self, config: BigBirdConfig, *, key: PRNGKeyArray):
        self.query, self.key, self.value = _qkv(config, key)
        self.num_heads = config.num_attention_heads
        self.attention_dropout = config.attention_probs_dropout_prob
        self.block_size = config.block_size
        self.num_random_blocks = config.num_random_blocks

    def uses_full_attention(self, seq_len: int) -> bool:
        return seq_len <= (5 + 2 * self.num_random_blocks) * self.block_size

    def __call__(
        self,
        x: Float[Array, "seq hidden"],
        mask: Real[Array, " seq"],
        *,
        head_mask: Float[Array, " heads"] | None = None,
        plan: Int[Array, "heads rows r"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool = False,
        output_attentions: OutputAttentions = False,
    ) -> tuple[Float[Array, "seq hidden"], Float[Array, "heads seq seq"] | sa.BlockedProbs | None]:
        seq = x.shape[0]
        if self.uses_full_attention(seq):
            if plan is not None:
                raise ValueError(
                    f"a random-block plan was given, but {seq} tokens use full attention "
                    f"(block-sparse needs more than {(5 + 2 * self.num_random_blocks) * self.block_size})"
                )
            ctx, probs = self._full(x, mask, head_mask, key, inference)
            return _finish(ctx, probs, head_mask, output_attentions)
        nb = sa.num_blocks(seq, self.block_size)
        if plan is None:
            if inference:
                plan = self.num_random_blocks  # HF's eval plan, without its duplicate blocks
            else:
                if key is None:
                    raise ValueError("block-sparse attention in training needs a `key`")
                plan = sa.random_plan(key, self.num_heads, nb, self.num_random_blocks)
        q, k, v = self._heads(x)
        ctx, probs = sa.block_sparse_attention(
            q, k, v, mask, plan, block_size=self.block_size,
            return_probs=output_attentions is True,
        )
        if output_attentions == "blocked":
            probs = sa.blocked_probs(q, k, mask, plan, block_size=self.block_size)
        return _finish(ctx, probs, head_mask, output_attentions)


_ATTENTION_KINDS = {"original_full": FullSelfAttention, "block_sparse": BlockSparseSelfAttention}


def is_decoder_config(config: BigBirdConfig) -> bool:
    return config.is_decoder or config.add_cross_attention


def attention_kind(config: BigBirdConfig) -> type[AbstractSelfAttention]:
    """The self-attention class a config runs. Decoders always run full attention: block-sparse
    attention has global and random blocks that see later tokens, so it cannot be causal, and its
    blocked layout cannot attend to a key/value cache or to encoder states."""
    if is_decoder_config(config):
        return FullSelfAttention
    return _ATTENTION_KINDS[config.attention_type]


def check_decoder_config(config: BigBirdConfig) -> None:
    """HF's rules for decoder configs; warns where we switch block-sparse to full attention."""
    if config.add_cross_attention and not config.is_decoder:
        raise ValueError("add_cross_attention=True needs is_decoder=True (as in HF BigBird)")
    if is_decoder_config(config) and config.attention_type == "block_sparse":
        warnings.warn(
            "BigBird decoder (is_decoder/add_cross_attention) with attention_type='block_sparse': "
            "using full (causal) attention, since block-sparse attention cannot be causal, cached "
            "or cross-attend (same weights; HF PyTorch switches likewise for cross-attention)",
            stacklevel=3,
        )


class BigBirdLayer(eqx.Module):
    """One post-LayerNorm transformer layer: attention, then the feed-forward block."""

    attention: AbstractSelfAttention
    attention_output: eqx.nn.Linear
    attention_norm: eqx.nn.LayerNorm
    intermediate: eqx.nn.Linear
    output: eqx.nn.Linear
    output_norm: eqx.nn.LayerNorm
    dropout: eqx.nn.Dropout
    crossattention: FullSelfAttention | None
    crossattention_output: eqx.nn.Linear | None
    crossattention_norm: eqx.nn.LayerNorm | None
    hidden_act: str = eqx.field(static=True)

    def __init__(self, config: BigBirdConfig, *, key: PRNGKeyArray):
        ka, ko, ki, kf = jr.split(key, 4)
        h, i, std = config.hidden_size, config.intermediate_size, config.initializer_range
        self.attention = attention_kind(config)(config, key=ka)
        if config.add_cross_attention:
            kc, kco = jr.split(jr.fold_in(key, 1))
            self.crossattention = FullSelfAttention(config, key=kc)
            self.crossattention_output = _normal_linear(h, h, std=std, key=kco)
            self.crossattention_norm = eqx.nn.LayerNorm(h, eps=config.layer_norm_eps)
        else:
            self.crossattention = self.crossattention_output = self.crossattention_norm = None
        self.attention_output = _normal_linear(h, h, std=std, key=ko)
        self.attention_norm = eqx.nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.intermediate = _normal_linear(h, i, std=std, key=ki)
        self.output = _normal_linear(i, h, std=std, key=kf)
        self.output_norm = eqx.nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = eqx.nn.Dropout(config.hidden_dropout_prob)
        self.hidden_act = config.hidden_act

    def __call__(
        self,
        x: Float[Array, "seq hidden"],
        mask: Real[Array, " seq"] | Real[Array, "seq kv"],
        *,
        head_mask: Float[Array, " heads"] | None = None,
        plan: Int[Array, "heads rows r"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool = False,
        output_attentions: OutputAttentions = False,
        encoder_hidden_states: Float[Array, "enc_seq hidden"] | None = None,
        encoder_mask: Real[Array, " enc_seq"] | None = None,
        cache: tuple[Float[Array, "heads kv dim"], Float[Array, "heads kv dim"]] | None = None,
        cache_index: Int[Array, ""] | None = None,
    ):
        """One layer. `mask` is `(seq,)` for an encoder and `(seq, kv)` (causal, over the cache
        slots when `cache` is given) for a decoder.

        **Returns:** `(hidden, self-attention probs, cross-attention probs, updated cache)`, the
        probs `None` unless `output_attentions`, the cache `None` unless given.
        """
        k_attn, k_drop1, k_drop2 = split_key(key, 3)
        if isinstance(self.attention, FullSelfAttention):
            if plan is not None:
                raise ValueError("a random-block plan was given to full attention")
            ctx, probs, cache = self.attention.attend(
                x, x, mask, cache=cache, cache_index=cache_index, head_mask=head_mask, key=k_attn,
                inference=inference, output_attentions=output_attentions,
            )
        else:
            if cache is not None:
                raise ValueError("block-sparse attention cannot use a key/value cache")
            ctx, probs = self.attention(
                x, mask, head_mask=head_mask, plan=plan, key=k_attn, inference=inference,
                output_attentions=output_attentions,
            )
        h = self.dropout(_apply(self.attention_output, ctx), key=k_drop1, inference=inference)
        h = _apply(self.attention_norm, h + x)
        cross_probs = None
        if encoder_hidden_states is not None:
            if self.crossattention is None:
                raise ValueError(
                    "encoder_hidden_states given, but the layer has no cross-attention "
                    "(config.add_cross_attention=False)"
                )
            # A separate key stream, so the encoder-only path draws exactly what it did before.
            k_cross, k_drop_c = split_key(None if key is None else jr.fold_in(key, 1))
            c, cross_probs, _ = self.crossattention.attend(
                h, encoder_hidden_states, encoder_mask, head_mask=head_mask, key=k_cross,
                inference=inference, output_attentions=output_attentions,
            )
            c = self.dropout(_apply(self.crossattention_output, c), key=k_drop_c, inference=inference)
            h = _apply(self.crossattention_norm, c + h)
        f = _apply(self.output, ACTIVATIONS[self.hidden_act](_apply(self.intermediate, h)))
        f = self.dropout(f, key=k_drop2, inference=inference)
        return _apply(self.output_norm, f + h), probs, cross_probs, cache


# Gradient checkpointing policies for the scanned layer body (`jax.checkpoint_policies`).
# "dots_with_no_batch_dims_saveable" keeps the projection/FFN matmul outputs and recomputes the
# batched attention einsums: JAX's suggested heuristic for transformers, and BigBird's split.
CHECKPOINT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def _cast_floats(tree, dtype):
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, tree
    )


class BigBirdEncoder(eqx.Module):
    """`num_hidden_layers` layers stored stacked (leading axis) and run with `lax.scan`.

    Static execution options (they change how, not what, is computed; see `with_options`):
    - `scan_layers=False` unrolls the same stacked weights into a Python loop;
    - `gradient_checkpointing`: a `CHECKPOINT_POLICIES` name; the scanned layer body is wrapped in
      `eqx.filter_checkpoint` with that policy, trading recomputation for activation memory;
    - `compute_dtype`: run the layers in "bfloat16"/"float16" with float32 parameters (cast per
      layer inside the scan); softmax and LayerNorm statistics stay float32.
    """

    layers: BigBirdLayer
    num_layers: int = eqx.field(static=True)
    scan_layers: bool = eqx.field(static=True)
    gradient_checkpointing: str | None = eqx.field(static=True)
    compute_dtype: str | None = eqx.field(static=True)

    def __init__(
        self,
        config: BigBirdConfig,
        *,
        key: PRNGKeyArray,
        scan_layers: bool = True,
        gradient_checkpointing: str | None = None,
        compute_dtype: str | None = None,
    ):
        if gradient_checkpointing not in (None, *CHECKPOINT_POLICIES):
            raise ValueError(
                f"gradient_checkpointing={gradient_checkpointing!r}; choose one of "
                f"{sorted(CHECKPOINT_POLICIES)} or None"
            )
        if compute_dtype not in (None, *COMPUTE_DTYPES):
            raise ValueError(f"compute_dtype={compute_dtype!r}; choose one of {COMPUTE_DTYPES}")
        keys = jr.split(key, config.num_hidden_layers)
        self.layers = eqx.filter_vmap(lambda k: BigBirdLayer(config, key=k))(keys)
        self.num_layers = config.num_hidden_layers
        self.scan_layers = scan_layers
        self.gradient_checkpointing = gradient_checkpointing
        self.compute_dtype = compute_dtype

    def __call__(
        self,
        x: Float[Array, "seq hidden"],
        mask: Real[Array, " seq"] | Real[Array, "seq kv"],
        *,
        head_mask: Float[Array, "layers heads"] | None = None,
        plans: Int[Array, "layers heads rows r"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool = False,
        output_hidden_states: bool = False,
        output_attentions: OutputAttentions = False,
        encoder_hidden_states: Float[Array, "enc_seq hidden"] | None = None,
        encoder_mask: Real[Array, " enc_seq"] | None = None,
        cache: tuple[Float[Array, "layers heads kv dim"], Float[Array, "layers heads kv dim"]]
        | None = None,
        cache_index: Int[Array, ""] | None = None,
    ):
        """Runs every layer. The decoder's cache is stacked over layers: each layer reads its slice
        as a scan input and the updated slices come back as scan outputs.

        **Returns:** `(hidden, per-layer hidden states, self-attention probs, cross-attention probs,
        updated cache)`, the stacked extras `None` unless asked for (or given, for the cache).
        """
        dynamic, static = eqx.partition(self.layers, eqx.is_array)
        per_layer = {"params": dynamic}
        if key is not None:
            per_layer["key"] = jr.split(key, self.num_layers)
        if head_mask is not None:
            per_layer["head_mask"] = head_mask
        if plans is not None:
            per_layer["plan"] = plans
        if cache is not None:
            per_layer["cache"] = cache

        def step(h, xs):
            layer = eqx.combine(xs["params"], static)
            if self.compute_dtype is not None:
                layer = _cast_floats(layer, self.compute_dtype)
            h, probs, cross_probs, new_cache = layer(
                h, mask, head_mask=xs.get("head_mask"), plan=xs.get("plan"), key=xs.get("key"),
                inference=inference, output_attentions=output_attentions,
                encoder_hidden_states=encoder_hidden_states, encoder_mask=encoder_mask,
                cache=xs.get("cache"), cache_index=cache_index,
            )
            return h, (h if output_hidden_states else None, probs, cross_probs, new_cache)

        if self.gradient_checkpointing is not None:
            step = eqx.filter_checkpoint(
                step, policy=CHECKPOINT_POLICIES[self.gradient_checkpointing]
            )
        if self.compute_dtype is not None:
            x = x.astype(self.compute_dtype)
        if self.scan_layers:
            x, (hidden, attentions, cross, new_cache) = jax.lax.scan(step, x, per_layer)
        else:
            outs = []
            for i in range(self.num_layers):
                x, out = step(x, jax.tree_util.tree_map(lambda a: a[i], per_layer))
                outs.append(out)
            hidden, attentions, cross, new_cache = jax.tree_util.tree_map(
                lambda *a: jnp.stack(a), *outs
            )
        return x, hidden, attentions, cross, new_cache


class KVCache(eqx.Module):
    """A decoder's self-attention keys and values for incremental decoding (one example).

    - `key`, `value`: `(layers, heads, max_length, head_dim)`, slots `[0, index)` filled.
    - `mask`: `(max_length,)` float, 1 where a filled slot holds a real (unmasked) token.
    - `index`: `()` int32, the number of positions decoded so far (the next token's position).

    Cross-attention keys/values are not cached: they are recomputed from `encoder_hidden_states`
    at each call (they do not grow with decoding).
    """

    key: Float[Array, "layers heads max_length dim"]
    value: Float[Array, "layers heads max_length dim"]
    mask: Float[Array, " max_length"]
    index: Int[Array, ""]

    @classmethod
    def empty(cls, config: BigBirdConfig, max_length: int, dtype=jnp.float32) -> "KVCache":
        """A cache with room for `max_length` positions (prompt plus generated tokens)."""
        shape = (config.num_hidden_layers, config.num_attention_heads, max_length, config.head_dim)
        return cls(
            key=jnp.zeros(shape, dtype), value=jnp.zeros(shape, dtype),
            mask=jnp.zeros((max_length,), jnp.float32), index=jnp.zeros((), jnp.int32),
        )


class BigBirdModelOutput(eqx.Module):
    """What `BigBirdModel` returns (fields not asked for are `None`).

    - `last_hidden_state`: `(seq, hidden)`.
    - `pooler_output`: `(hidden,)`, `tanh(dense(h[0]))`; `None` without a pooler.
    - `hidden_states`: `(layers + 1, seq, hidden)`: the embeddings, then every layer's output.
    - `attentions`: `(layers, heads, seq, kv)` attention maps (block-sparse ones densified);
      `kv` is `seq`, or the cache's `max_length` for a cached decoder call.
    - `cross_attentions`: `(layers, heads, seq, enc_seq)`, decoders with cross-attention.
    - `past_key_values`: the updated `KVCache` when one was given.
    """

    last_hidden_state: Float[Array, "seq hidden"]
    pooler_output: Float[Array, " hidden"] | None = None
    hidden_states: Float[Array, "layers_plus_1 seq hidden"] | None = None
    attentions: Float[Array, "layers heads seq kv"] | sa.BlockedProbs | None = None
    cross_attentions: Float[Array, "layers heads seq enc_seq"] | None = None
    past_key_values: KVCache | None = None


# Decoder layers with cross-attention: our module paths -> HF's (canonical) names.
CROSS_ATTENTION_NAMES: dict[str, str] = {
    "encoder.layers.crossattention.query": "bert.encoder.layer.{i}.crossattention.self.query",
    "encoder.layers.crossattention.key": "bert.encoder.layer.{i}.crossattention.self.key",
    "encoder.layers.crossattention.value": "bert.encoder.layer.{i}.crossattention.self.value",
    "encoder.layers.crossattention_output": "bert.encoder.layer.{i}.crossattention.output.dense",
    "encoder.layers.crossattention_norm": "bert.encoder.layer.{i}.crossattention.output.LayerNorm",
}


def _as_int_ids(x, name, seq_len):
    x = jnp.asarray(x)
    if x.shape != (seq_len,):
        raise ValueError(f"{name} has shape {x.shape}, expected ({seq_len},) like input_ids")
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(f"{name} must hold integers, got dtype {x.dtype}")
    return x.astype(jnp.int32)


def _check_range(x, upper, name):
    """Raises (also under jit, via `eqx.error_if`) if any id lies outside [0, upper)."""
    return eqx.error_if(x, (x < 0) | (x >= upper), f"{name} out of range [0, {upper})")


# How block-sparse attention picks its random blocks when no explicit `random_plan` is given:
# - "resample" (default): HF's behaviour in inference (its eval plan: every random block is block
#   0, so converted checkpoints give HF's numbers), and in training a fresh plan per call, layer,
#   head and row drawn from the call's key (`sparse_attention.random_plan`).
# - "fixed": the original paper's (and HF PyTorch training's) fixed plan per layer, numpy-seeded
#   with the layer index (`sparse_attention.paper_plan`), in training AND inference.
RANDOM_ATTENTION_MODES = ("resample", "fixed")


@register
class BigBirdModel(eqx.Module):
    """The BigBird encoder (HF `BigBirdModel` / `FlaxBigBirdModel`), called on ONE example.

    Batches: `jax.vmap(model)(input_ids, ...)` (or `eqx.filter_vmap`). `eqx.nn.inference_mode(model)`
    turns off dropout and random attention everywhere; outside inference mode every call needs a
    `key`. Sequences whose length is not a multiple of `block_size` are padded internally
    (block-sparse) and every output is un-padded.
    """

    embeddings: BigBirdEmbeddings
    encoder: BigBirdEncoder
    pooler: eqx.nn.Linear | None
    config: BigBirdConfig = eqx.field(static=True)
    random_attention: str = eqx.field(static=True)
    inference: bool = False

    def __init__(
        self,
        config: BigBirdConfig,
        *,
        key: PRNGKeyArray,
        add_pooling_layer: bool = True,
        scan_layers: bool = True,
        gradient_checkpointing: str | None = None,
        compute_dtype: str | None = None,
        random_attention: str = "resample",
    ):
        """**Arguments:** `config`; `key` for the initial weights; `add_pooling_layer`; the
        encoder's execution options `scan_layers`, `gradient_checkpointing`, `compute_dtype`
        (see `BigBirdEncoder`); `random_attention` (see `RANDOM_ATTENTION_MODES`)."""
        ke, kl, kp = jr.split(key, 3)
        check_decoder_config(config)
        if random_attention not in RANDOM_ATTENTION_MODES:
            raise ValueError(
                f"random_attention={random_attention!r}; choose one of {RANDOM_ATTENTION_MODES}"
            )
        self.config = config
        self.random_attention = random_attention
        self.embeddings = BigBirdEmbeddings(config, key=ke)
        self.encoder = BigBirdEncoder(
            config, key=kl, scan_layers=scan_layers,
            gradient_checkpointing=gradient_checkpointing, compute_dtype=compute_dtype,
        )
        h = config.hidden_size
        self.pooler = (
            _normal_linear(h, h, std=config.initializer_range, key=kp) if add_pooling_layer else None
        )
        self.inference = False

    def uses_block_sparse(self, seq_len: int) -> bool:
        """Whether a call on `seq_len` tokens runs block-sparse (else: full attention)."""
        c = self.config
        return (
            c.attention_type == "block_sparse"
            and not is_decoder_config(c)
            and seq_len > c.max_tokens_for_full_attention
        )

    def padded_length(self, seq_len: int) -> int:
        """The length the encoder actually runs at (a multiple of block_size when block-sparse)."""
        if not self.uses_block_sparse(seq_len):
            return seq_len
        return -(-seq_len // self.config.block_size) * self.config.block_size

    def _forward(
        self,
        input_ids: Int[ArrayLike, " seq"],
        attention_mask: Int[ArrayLike, " seq"] | Bool[ArrayLike, " seq"] | None = None,
        token_type_ids: Int[ArrayLike, " seq"] | None = None,
        position_ids: Int[ArrayLike, " seq"] | None = None,
        head_mask: Real[ArrayLike, "layers heads"] | Real[ArrayLike, " heads"] | None = None,
        *,
        encoder_hidden_states: Float[ArrayLike, "enc_seq hidden"] | None = None,
        encoder_attention_mask: Int[ArrayLike, " enc_seq"] | Bool[ArrayLike, " enc_seq"]
        | None = None,
        past_key_values: KVCache | None = None,
        random_plan: Int[ArrayLike, "layers heads rows r"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        output_hidden_states: bool = False,
        output_attentions: OutputAttentions = False,
    ) -> BigBirdModelOutput:
        """Encodes one sequence.

        **Arguments:**
        - `input_ids`: `(seq,)` token ids in `[0, vocab_size)`.
        - `attention_mask`: `(seq,)`, 1/True for real tokens (default: all real).
        - `token_type_ids`, `position_ids`: `(seq,)` (defaults: zeros, `arange(seq)`).
        - `head_mask`: `(layers, heads)` or `(heads,)` multipliers of each head's output; works for
          both attention kinds (HF ignores it in block-sparse).
        - `encoder_hidden_states`, `encoder_attention_mask`: `(enc_seq, hidden)` states to
          cross-attend to and their `(enc_seq,)` mask (decoders with `add_cross_attention` only).
        - `past_key_values`: a `KVCache` (decoders only, `config.is_decoder`): `input_ids` are the
          next tokens, at positions `index, index + 1, ...`; the updated cache is returned.
        - `random_plan`: explicit random blocks `(layers, heads, nb - 2, r)` for the padded length
          (see `sparse_attention`); default: HF's eval plan in inference, `key`-drawn in training.
        - `key`: PRNG key for dropout and random attention; required outside inference mode.
        - `inference`: overrides the model's `inference` flag for this call.

        **Returns:** a `BigBirdModelOutput`.
        """
        c = self.config
        inference = self.inference if inference is None else inference
        if not inference and key is None:
            raise ValueError(
                "BigBirdModel in training mode needs `key=` (for dropout and random attention); "
                "for deterministic outputs use `eqx.nn.inference_mode(model)` or `inference=True`"
            )
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim != 1:
            raise ValueError(
                f"BigBirdModel is called on one example: input_ids must be 1-D (seq,), got shape "
                f"{input_ids.shape}; for a batch use jax.vmap(model)(input_ids, ...)"
            )
        seq = input_ids.shape[0]
        if seq == 0:
            raise ValueError("input_ids is empty")
        if seq > c.max_position_embeddings:
            raise ValueError(
                f"sequence length {seq} exceeds max_position_embeddings={c.max_position_embeddings}"
            )
        input_ids = _check_range(_as_int_ids(input_ids, "input_ids", seq), c.vocab_size, "input_ids")
        if attention_mask is None:
            mask = jnp.ones((seq,), jnp.float32)
        else:
            attention_mask = jnp.asarray(attention_mask)
            if attention_mask.shape != (seq,):
                raise ValueError(
                    f"attention_mask has shape {attention_mask.shape}, expected ({seq},)"
                )
            if attention_mask.dtype != jnp.bool_ and not jnp.issubdtype(
                attention_mask.dtype, jnp.integer
            ):
                raise ValueError(f"attention_mask must be 0/1 ints or bools, got {attention_mask.dtype}")
            mask = attention_mask.astype(jnp.float32)
        start = jnp.zeros((), jnp.int32)
        if past_key_values is not None:
            if not c.is_decoder:
                raise ValueError("past_key_values (a KV cache) needs a decoder (config.is_decoder)")
            start = eqx.error_if(
                past_key_values.index,
                past_key_values.index + seq > past_key_values.mask.shape[0],
                "KV cache full: more tokens than its max_length",
            )
        if encoder_hidden_states is not None:
            # Never silently ignored (HF Flax drops them in block-sparse; HF PT in encoders).
            if not c.add_cross_attention:
                raise ValueError(
                    "encoder_hidden_states given, but config.add_cross_attention is False: the "
                    "model has no cross-attention to use them"
                )
            encoder_hidden_states = jnp.asarray(encoder_hidden_states)
            if encoder_hidden_states.ndim != 2 or encoder_hidden_states.shape[1] != c.hidden_size:
                raise ValueError(
                    f"encoder_hidden_states has shape {encoder_hidden_states.shape}, expected "
                    f"(enc_seq, {c.hidden_size})"
                )
            enc_seq = encoder_hidden_states.shape[0]
            if encoder_attention_mask is None:
                encoder_mask = jnp.ones((enc_seq,), jnp.float32)
            else:
                encoder_attention_mask = jnp.asarray(encoder_attention_mask)
                if encoder_attention_mask.shape != (enc_seq,):
                    raise ValueError(
                        f"encoder_attention_mask has shape {encoder_attention_mask.shape}, "
                        f"expected ({enc_seq},)"
                    )
                encoder_mask = encoder_attention_mask.astype(jnp.float32)
        elif encoder_attention_mask is not None:
            raise ValueError("encoder_attention_mask given without encoder_hidden_states")
        else:
            encoder_mask = None
        if token_type_ids is None:
            token_type_ids = jnp.zeros((seq,), jnp.int32)
        token_type_ids = _check_range(
            _as_int_ids(token_type_ids, "token_type_ids", seq), c.type_vocab_size, "token_type_ids"
        )
        if position_ids is None:
            position_ids = start + jnp.arange(seq, dtype=jnp.int32)
        position_ids = _check_range(
            _as_int_ids(position_ids, "position_ids", seq), c.max_position_embeddings, "position_ids"
        )
        if head_mask is not None:
            head_mask = jnp.asarray(head_mask, jnp.float32)
            head_mask = jnp.broadcast_to(head_mask, (c.num_hidden_layers, c.num_attention_heads))

        padded = self.padded_length(seq)
        pad = padded - seq
        if pad:
            # Padding is masked out as keys and zeroed as queries, so its ids and positions do not
            # reach the real tokens' outputs (HF PT pads ids with pad_token_id, type ids with 0).
            pad_id = c.pad_token_id if c.pad_token_id is not None and c.pad_token_id < c.vocab_size else 0
            input_ids = jnp.pad(input_ids, (0, pad), constant_values=pad_id)
            token_type_ids = jnp.pad(token_type_ids, (0, pad))
            last = min(padded, c.max_position_embeddings)
            position_ids = jnp.concatenate(
                [position_ids, jnp.minimum(jnp.arange(seq, padded), last - 1).astype(jnp.int32)]
            )
            mask = jnp.pad(mask, (0, pad))
        if random_plan is not None:
            if not self.uses_block_sparse(seq):
                raise ValueError(
                    f"random_plan was given, but {seq} tokens run full attention "
                    f"(attention_type={c.attention_type!r}, block-sparse needs more than "
                    f"{c.max_tokens_for_full_attention} tokens)"
                )
            random_plan = jnp.asarray(random_plan, jnp.int32)
            nb = padded // c.block_size
            expected = (c.num_hidden_layers, c.num_attention_heads, nb - 2, c.num_random_blocks)
            if random_plan.shape != expected:
                raise ValueError(
                    f"random_plan has shape {random_plan.shape}, expected {expected} for {padded} "
                    "(padded) tokens"
                )

        elif self.random_attention == "fixed" and self.uses_block_sparse(seq):
            random_plan = jnp.asarray(np.stack([
                sa.paper_plan(
                    i, c.num_attention_heads, padded, c.block_size, c.num_random_blocks,
                    max_position_embeddings=c.max_position_embeddings,
                )
                for i in range(c.num_hidden_layers)
            ]))

        cache = new_mask = None
        if c.is_decoder:
            # Causal self-attention: query t (at position start + t) sees key slots <= its
            # position that hold real tokens (HF's causal mask times the padding mask).
            if past_key_values is None:
                keys_mask = mask
            else:
                keys_mask = new_mask = jax.lax.dynamic_update_slice(
                    past_key_values.mask, mask, (start,)
                )
                cache = (past_key_values.key, past_key_values.value)
            query_pos = start + jnp.arange(seq, dtype=jnp.int32)
            key_pos = jnp.arange(keys_mask.shape[0], dtype=jnp.int32)
            causal = (key_pos[None, :] <= query_pos[:, None]).astype(jnp.float32)
            self_mask = causal * keys_mask[None, :]
        else:
            self_mask = mask

        k_emb, k_enc = split_key(key)
        x = self.embeddings(
            input_ids, token_type_ids, position_ids, key=k_emb, inference=inference
        )
        h, hidden, attentions, cross, cache = self.encoder(
            x, self_mask, head_mask=head_mask, plans=random_plan, key=k_enc, inference=inference,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
            encoder_hidden_states=encoder_hidden_states, encoder_mask=encoder_mask,
            cache=cache, cache_index=start if cache is not None else None,
        )
        new_cache = None
        if past_key_values is not None:
            new_cache = KVCache(key=cache[0], value=cache[1], mask=new_mask, index=start + seq)
        pooled = None
        if self.pooler is not None:
            pooler = self.pooler
            if self.encoder.compute_dtype is not None:
                pooler = _cast_floats(pooler, self.encoder.compute_dtype)
            pooled = jnp.tanh(pooler(h[0]))
        if output_hidden_states:
            hidden = jnp.concatenate([x[None].astype(hidden.dtype), hidden], axis=0)[:, :seq]
        if output_attentions and pad and not isinstance(attentions, sa.BlockedProbs):
            attentions = attentions[:, :, :seq, :seq]
        return BigBirdModelOutput(
            last_hidden_state=h[:seq],
            pooler_output=pooled,
            hidden_states=hidden if output_hidden_states else None,
            attentions=attentions if output_attentions else None,
            cross_attentions=cross if output_attentions else None,
            past_key_values=new_cache,
        )

    @typing.no_type_check
    def __call__(self, input_ids, *args, **kwargs):
        # A batch passed by mistake is the commonest error; it is caught here, before a runtime
        # type checker (if the user switched one on) reports `_forward`'s annotations instead.
        if jnp.ndim(input_ids) != 1:
            raise ValueError(
                f"BigBirdModel is called on one example: input_ids must be 1-D (seq,), got shape "
                f"{jnp.shape(input_ids)}; for a batch use jax.vmap(model)(input_ids, ...)"
            )
        return self._forward(input_ids, *args, **kwargs)

    __call__.__doc__ = _forward.__doc__
    __call__.__signature__ = inspect.signature(_forward)

    @staticmethod
    def hf_names(config: BigBirdConfig) -> dict[str, str]:
        """Our module paths -> HF module paths (canonical `bert.`-prefixed names)."""
        from ._checkpoint import ENCODER_NAMES

        if config.add_cross_attention:
            return {**ENCODER_NAMES, **CROSS_ATTENTION_NAMES}
        return dict(ENCODER_NAMES)

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "BigBirdModel":
        """Loads a local HF BigBird directory (`config.json` + `model.safetensors` or
        `flax_model.msgpack`); see `eqx_bigbird.load_hf_weights` for the keyword arguments.
        The model comes back in inference mode, like HF's `from_pretrained`."""
        from ._checkpoint import from_pretrained

        return from_pretrained(cls, path, **kwargs)

    def save_pretrained(self, path, **kwargs) -> None:
        """Writes an HF checkpoint directory (`config.json`, `model.safetensors`, and with
        `flax=True` `flax_model.msgpack`); see `eqx_bigbird.save_pretrained`."""
        from ._export import save_pretrained

        save_pretrained(self, path, **kwargs)



def _replace_static(module, **changes):
    """A copy of `module` with some static fields changed (its arrays are shared, not copied)."""
    new = object.__new__(type(module))
    for f in dataclasses.fields(module):
        object.__setattr__(new, f.name, changes.get(f.name, getattr(module, f.name)))
    return new


_UNSET = object()


def with_options(
    model,
    *,
    scan_layers=_UNSET,
    gradient_checkpointing=_UNSET,
    compute_dtype=_UNSET,
    random_attention=_UNSET,
):
    """`model` (any module holding BigBird encoders: a `BigBirdModel` or a task head) with new
    execution options; the weights are shared. See `BigBirdEncoder` and `RANDOM_ATTENTION_MODES`.

    E.g. `with_options(head, gradient_checkpointing="dots_with_no_batch_dims_saveable",
    compute_dtype="bfloat16")` before building a train step.
    """
    encoder_changes = {
        name: value
        for name, value in dict(
            scan_layers=scan_layers, gradient_checkpointing=gradient_checkpointing,
            compute_dtype=compute_dtype,
        ).items()
        if value is not _UNSET
    }
    if encoder_changes.get("gradient_checkpointing", None) not in (None, *CHECKPOINT_POLICIES):
        raise ValueError(
            f"gradient_checkpointing={gradient_checkpointing!r}; choose one of "
            f"{sorted(CHECKPOINT_POLICIES)} or None"
        )
    if encoder_changes.get("compute_dtype", None) not in (None, *COMPUTE_DTYPES):
        raise ValueError(f"compute_dtype={compute_dtype!r}; choose one of {COMPUTE_DTYPES}")
    if random_attention is not _UNSET and random_attention not in RANDOM_ATTENTION_MODES:
        raise ValueError(
            f"random_attention={random_attention!r}; choose one of {RANDOM_ATTENTION_MODES}"
        )

    def fix(node):
        if isinstance(node, BigBirdEncoder):
            return _replace_static(node, **encoder_changes)
        if isinstance(node, BigBirdModel):
            changes = {"encoder": fix(node.encoder)}
            if random_attention is not _UNSET:
                changes["random_attention"] = random_attention
            return _replace_static(node, **changes)
        return node

    return jax.tree_util.tree_map(
        fix, model, is_leaf=lambda x: isinstance(x, (BigBirdEncoder, BigBirdModel))
    )
