"""The BigBird encoder: embeddings, self-attention kinds, the scanned layer stack, the model."""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, Real

from . import sparse_attention as sa
from ._activations import ACTIVATIONS
from ._config import BigBirdConfig


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
        output_attentions: bool = False,
    ) -> tuple[Float[Array, "seq hidden"], Float[Array, "heads seq seq"] | None]:
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
        if probs is not None:
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
        output_attentions: bool = False,
    ) -> tuple[Float[Array, "seq hidden"], Float[Array, "heads seq seq"] | None]:
        if plan is not None:
            raise ValueError("a random-block plan was given to full attention")
        ctx, probs = self._full(x, mask, head_mask, key, inference)
        return _finish(ctx, probs, head_mask, output_attentions)


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
        output_attentions: bool = False,
    ) -> tuple[Float[Array, "seq hidden"], Float[Array, "heads seq seq"] | None]:
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
                plan = sa.eval_plan(self.num_heads, nb, self.num_random_blocks)
            else:
                if key is None:
                    raise ValueError("block-sparse attention in training needs a `key`")
                plan = sa.random_plan(key, self.num_heads, nb, self.num_random_blocks)
        q, k, v = self._heads(x)
        ctx, probs = sa.block_sparse_attention(
            q, k, v, mask, plan, block_size=self.block_size, return_probs=output_attentions
        )
        return _finish(ctx, probs, head_mask, output_attentions)


_ATTENTION_KINDS = {"original_full": FullSelfAttention, "block_sparse": BlockSparseSelfAttention}


class BigBirdLayer(eqx.Module):
    """One post-LayerNorm transformer layer: attention, then the feed-forward block."""

    attention: AbstractSelfAttention
    attention_output: eqx.nn.Linear
    attention_norm: eqx.nn.LayerNorm
    intermediate: eqx.nn.Linear
    output: eqx.nn.Linear
    output_norm: eqx.nn.LayerNorm
    dropout: eqx.nn.Dropout
    hidden_act: str = eqx.field(static=True)

    def __init__(self, config: BigBirdConfig, *, key: PRNGKeyArray):
        ka, ko, ki, kf = jr.split(key, 4)
        h, i, std = config.hidden_size, config.intermediate_size, config.initializer_range
        self.attention = _ATTENTION_KINDS[config.attention_type](config, key=ka)
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
        mask: Real[Array, " seq"],
        *,
        head_mask: Float[Array, " heads"] | None = None,
        plan: Int[Array, "heads rows r"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool = False,
        output_attentions: bool = False,
    ) -> tuple[Float[Array, "seq hidden"], Float[Array, "heads seq seq"] | None]:
        k_attn, k_drop1, k_drop2 = split_key(key, 3)
        ctx, probs = self.attention(
            x, mask, head_mask=head_mask, plan=plan, key=k_attn, inference=inference,
            output_attentions=output_attentions,
        )
        h = self.dropout(_apply(self.attention_output, ctx), key=k_drop1, inference=inference)
        h = _apply(self.attention_norm, h + x)
        f = _apply(self.output, ACTIVATIONS[self.hidden_act](_apply(self.intermediate, h)))
        f = self.dropout(f, key=k_drop2, inference=inference)
        return _apply(self.output_norm, f + h), probs


class BigBirdEncoder(eqx.Module):
    """`num_hidden_layers` layers stored stacked (leading axis) and run with `lax.scan`.

    `scan_layers=False` (static) unrolls the same stacked weights into a Python loop instead.
    """

    layers: BigBirdLayer
    num_layers: int = eqx.field(static=True)
    scan_layers: bool = eqx.field(static=True)

    def __init__(self, config: BigBirdConfig, *, key: PRNGKeyArray, scan_layers: bool = True):
        keys = jr.split(key, config.num_hidden_layers)
        self.layers = eqx.filter_vmap(lambda k: BigBirdLayer(config, key=k))(keys)
        self.num_layers = config.num_hidden_layers
        self.scan_layers = scan_layers

    def __call__(
        self,
        x: Float[Array, "seq hidden"],
        mask: Real[Array, " seq"],
        *,
        head_mask: Float[Array, "layers heads"] | None = None,
        plans: Int[Array, "layers heads rows r"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> tuple[
        Float[Array, "seq hidden"],
        Float[Array, "layers seq hidden"] | None,
        Float[Array, "layers heads seq seq"] | None,
    ]:
        dynamic, static = eqx.partition(self.layers, eqx.is_array)
        per_layer = {"params": dynamic}
        if key is not None:
            per_layer["key"] = jr.split(key, self.num_layers)
        if head_mask is not None:
            per_layer["head_mask"] = head_mask
        if plans is not None:
            per_layer["plan"] = plans

        def step(h, xs):
            layer = eqx.combine(xs["params"], static)
            h, probs = layer(
                h, mask, head_mask=xs.get("head_mask"), plan=xs.get("plan"), key=xs.get("key"),
                inference=inference, output_attentions=output_attentions,
            )
            return h, (h if output_hidden_states else None, probs)

        if self.scan_layers:
            x, (hidden, attentions) = jax.lax.scan(step, x, per_layer)
        else:
            outs = []
            for i in range(self.num_layers):
                x, out = step(x, jax.tree_util.tree_map(lambda a: a[i], per_layer))
                outs.append(out)
            hidden, attentions = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *outs)
        return x, hidden, attentions


class BigBirdModelOutput(eqx.Module):
    """What `BigBirdModel` returns (fields not asked for are `None`).

    - `last_hidden_state`: `(seq, hidden)`.
    - `pooler_output`: `(hidden,)`, `tanh(dense(h[0]))`; `None` without a pooler.
    - `hidden_states`: `(layers + 1, seq, hidden)`: the embeddings, then every layer's output.
    - `attentions`: `(layers, heads, seq, seq)` attention maps (block-sparse ones densified).
    """

    last_hidden_state: Float[Array, "seq hidden"]
    pooler_output: Float[Array, " hidden"] | None = None
    hidden_states: Float[Array, "layers_plus_1 seq hidden"] | None = None
    attentions: Float[Array, "layers heads seq seq"] | None = None


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
    inference: bool = False

    def __init__(
        self,
        config: BigBirdConfig,
        *,
        key: PRNGKeyArray,
        add_pooling_layer: bool = True,
        scan_layers: bool = True,
    ):
        ke, kl, kp = jr.split(key, 3)
        self.config = config
        self.embeddings = BigBirdEmbeddings(config, key=ke)
        self.encoder = BigBirdEncoder(config, key=kl, scan_layers=scan_layers)
        h = config.hidden_size
        self.pooler = (
            _normal_linear(h, h, std=config.initializer_range, key=kp) if add_pooling_layer else None
        )
        self.inference = False

    def uses_block_sparse(self, seq_len: int) -> bool:
        """Whether a call on `seq_len` tokens runs block-sparse (else: full attention)."""
        c = self.config
        return c.attention_type == "block_sparse" and seq_len > c.max_tokens_for_full_attention

    def padded_length(self, seq_len: int) -> int:
        """The length the encoder actually runs at (a multiple of block_size when block-sparse)."""
        if not self.uses_block_sparse(seq_len):
            return seq_len
        return -(-seq_len // self.config.block_size) * self.config.block_size

    def __call__(
        self,
        input_ids: Int[ArrayLike, " seq"],
        attention_mask: Int[ArrayLike, " seq"] | Bool[ArrayLike, " seq"] | None = None,
        token_type_ids: Int[ArrayLike, " seq"] | None = None,
        position_ids: Int[ArrayLike, " seq"] | None = None,
        head_mask: Real[ArrayLike, "layers heads"] | Real[ArrayLike, " heads"] | None = None,
        *,
        random_plan: Int[ArrayLike, "layers heads rows r"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BigBirdModelOutput:
        """Encodes one sequence.

        **Arguments:**
        - `input_ids`: `(seq,)` token ids in `[0, vocab_size)`.
        - `attention_mask`: `(seq,)`, 1/True for real tokens (default: all real).
        - `token_type_ids`, `position_ids`: `(seq,)` (defaults: zeros, `arange(seq)`).
        - `head_mask`: `(layers, heads)` or `(heads,)` multipliers of each head's output; works for
          both attention kinds (HF ignores it in block-sparse).
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
        if token_type_ids is None:
            token_type_ids = jnp.zeros((seq,), jnp.int32)
        token_type_ids = _check_range(
            _as_int_ids(token_type_ids, "token_type_ids", seq), c.type_vocab_size, "token_type_ids"
        )
        if position_ids is None:
            position_ids = jnp.arange(seq, dtype=jnp.int32)
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

        k_emb, k_enc = split_key(key)
        x = self.embeddings(
            input_ids, token_type_ids, position_ids, key=k_emb, inference=inference
        )
        h, hidden, attentions = self.encoder(
            x, mask, head_mask=head_mask, plans=random_plan, key=k_enc, inference=inference,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
        )
        pooled = None
        if self.pooler is not None:
            pooled = jnp.tanh(self.pooler(h[0]))
        if output_hidden_states:
            hidden = jnp.concatenate([x[None], hidden], axis=0)[:, :seq]
        if output_attentions:
            attentions = attentions[:, :, :seq, :seq]
        return BigBirdModelOutput(
            last_hidden_state=h[:seq],
            pooler_output=pooled,
            hidden_states=hidden if output_hidden_states else None,
            attentions=attentions if output_attentions else None,
        )

    @staticmethod
    def hf_names(config: BigBirdConfig) -> dict[str, str]:
        """Our module paths -> HF module paths (canonical `bert.`-prefixed names)."""
        from ._checkpoint import ENCODER_NAMES

        return dict(ENCODER_NAMES)

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "BigBirdModel":
        """Loads a local HF BigBird directory (`config.json` + `model.safetensors` or
        `flax_model.msgpack`); see `eqx_bigbird.load_hf_weights` for the keyword arguments.
        The model comes back in inference mode, like HF's `from_pretrained`."""
        from ._checkpoint import from_pretrained

        return from_pretrained(cls, path, **kwargs)

