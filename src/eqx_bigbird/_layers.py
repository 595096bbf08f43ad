"""Embeddings, one transformer layer, the scanned layer stack, and the execution options."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, Int, PRNGKeyArray, Real

from . import sparse_attention as sa
from ._activations import ACTIVATIONS
from ._attention import ATTENTION_CLASSES, AbstractAttention, FullAttention, OutputAttentions
from ._config import BigBirdConfig
from ._nn import cast_floats, normal_embedding, normal_linear, per_token, split_key

# Gradient checkpointing policies for the scanned layer body (`jax.checkpoint_policies`).
# "dots_with_no_batch_dims_saveable" keeps the projection/FFN matmul outputs and recomputes the
# batched attention einsums: JAX's suggested heuristic for transformers, and BigBird's split.
CHECKPOINT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# How block-sparse attention picks its random blocks when no explicit `random_plan` is given:
# - "resample" (default): HF's behaviour in inference (its eval plan: every random block is block
#   0, so converted checkpoints give HF's numbers), and in training a fresh plan per call, layer,
#   head and row drawn from the call's key (`sparse_attention.random_plan`).
# - "fixed": the original paper's (and HF PyTorch training's) fixed plan per layer, numpy-seeded
#   with the layer index (`sparse_attention.paper_plan`), in training AND inference.
RANDOM_ATTENTION_MODES = ("resample", "fixed")


@dataclasses.dataclass(frozen=True)
class ExecutionOptions:
    """How a model runs; they never change what it computes (up to float rounding).

    - `scan_layers`: `lax.scan` over the stacked layers (one layer traced once); `False` unrolls
      the same stacked weights into a Python loop.
    - `gradient_checkpointing`: a `CHECKPOINT_POLICIES` name; the scanned layer body is wrapped in
      `eqx.filter_checkpoint` with that policy, trading recomputation for activation memory.
    - `compute_dtype`: run the layers and heads in "bfloat16"/"float16" with float32 parameters
      (cast per layer inside the scan); softmax and LayerNorm statistics stay float32.
    - `random_attention`: a `RANDOM_ATTENTION_MODES` name.
    """

    scan_layers: bool = True
    gradient_checkpointing: str | None = None
    compute_dtype: str | None = None
    random_attention: str = "resample"

    def __post_init__(self):
        for name, allowed in (
            ("gradient_checkpointing", (None, *CHECKPOINT_POLICIES)),
            ("compute_dtype", (None, *COMPUTE_DTYPES)),
            ("random_attention", RANDOM_ATTENTION_MODES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {allowed}")
        if not isinstance(self.scan_layers, bool):
            raise ValueError(f"scan_layers={self.scan_layers!r} must be a bool")

    def cast(self, tree):
        """`tree`'s floating arrays in the compute dtype (unchanged without one)."""
        return cast_floats(tree, self.compute_dtype)


class BigBirdEmbeddings(eqx.Module):
    """Word + token-type + position embeddings, dropout, LayerNorm (HF BigBird's order)."""

    word_embeddings: eqx.nn.Embedding
    position_embeddings: eqx.nn.Embedding
    token_type_embeddings: eqx.nn.Embedding
    layer_norm: eqx.nn.LayerNorm
    dropout: eqx.nn.Dropout
    rescale: float | None = eqx.field(static=True)

    def __init__(self, config: BigBirdConfig, *, key: PRNGKeyArray):
        kw, kp, kt = jr.split(key, 3)
        std, hidden = config.initializer_range, config.hidden_size
        self.word_embeddings = normal_embedding(config.vocab_size, hidden, std=std, key=kw)
        self.position_embeddings = normal_embedding(
            config.max_position_embeddings, hidden, std=std, key=kp
        )
        self.token_type_embeddings = normal_embedding(
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
        return per_token(self.layer_norm, x)


class LayerOutput(eqx.Module):
    """One layer's (or, stacked, every layer's) outputs; the extras are `None` unless asked for."""

    hidden: Float[Array, "*layers seq hidden"] | None
    attentions: Float[Array, "*layers heads seq kv"] | sa.BlockedProbs | None = None
    cross_attentions: Float[Array, "*layers heads seq enc_seq"] | None = None
    cache: tuple[Float[Array, "*layers heads kv d"], Float[Array, "*layers heads kv d"]] | None = (
        None
    )


class BigBirdLayer(eqx.Module):
    """One post-LayerNorm transformer layer: self-attention, cross-attention (decoders with
    `add_cross_attention`), then the feed-forward block; each with dropout and a residual."""

    attention: AbstractAttention
    attention_output: eqx.nn.Linear
    attention_norm: eqx.nn.LayerNorm
    intermediate: eqx.nn.Linear
    output: eqx.nn.Linear
    output_norm: eqx.nn.LayerNorm
    dropout: eqx.nn.Dropout
    crossattention: FullAttention | None
    crossattention_output: eqx.nn.Linear | None
    crossattention_norm: eqx.nn.LayerNorm | None
    hidden_act: str = eqx.field(static=True)

    def __init__(self, config: BigBirdConfig, *, key: PRNGKeyArray):
        ka, ko, ki, kf = jr.split(key, 4)
        h, i, std = config.hidden_size, config.intermediate_size, config.initializer_range
        self.attention = ATTENTION_CLASSES[config.self_attention_type](config, key=ka)
        self.crossattention = self.crossattention_output = self.crossattention_norm = None
        if config.add_cross_attention:
            kc, kco = jr.split(jr.fold_in(key, 1))
            self.crossattention = FullAttention(config, key=kc)
            self.crossattention_output = normal_linear(h, h, std=std, key=kco)
            self.crossattention_norm = eqx.nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.attention_output = normal_linear(h, h, std=std, key=ko)
        self.attention_norm = eqx.nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.intermediate = normal_linear(h, i, std=std, key=ki)
        self.output = normal_linear(i, h, std=std, key=kf)
        self.output_norm = eqx.nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = eqx.nn.Dropout(config.hidden_dropout_prob)
        self.hidden_act = config.hidden_act

    def _residual(self, dense, norm, y, x, key, inference):
        """`norm(x + dropout(dense(y)))`, HF's `*Output` blocks."""
        y = self.dropout(per_token(dense, y), key=key, inference=inference)
        return per_token(norm, y + x)

    def __call__(
        self,
        x: Float[Array, "seq hidden"],
        mask: Real[Array, " seq"] | Real[Array, "seq kv"],
        *,
        plan: sa.Plan | None = None,
        head_mask: Float[Array, " heads"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool = False,
        output_attentions: OutputAttentions = False,
        encoder_states: Float[Array, "enc_seq hidden"] | None = None,
        encoder_mask: Real[Array, " enc_seq"] | None = None,
        cache: tuple[Float[Array, "heads kv dim"], Float[Array, "heads kv dim"]] | None = None,
        cache_index: Int[Array, ""] | None = None,
    ) -> LayerOutput:
        """One layer. `mask` is `(seq,)` for an encoder and `(seq, kv)` (causal, over the cache
        slots when `cache` is given) for a decoder."""
        k_attn, k_drop1, k_drop2 = split_key(key, 3)
        common = dict(head_mask=head_mask, inference=inference, output_attentions=output_attentions)
        attn = self.attention(
            x, mask, plan=plan, cache=cache, cache_index=cache_index, key=k_attn, **common
        )
        h = self._residual(
            self.attention_output, self.attention_norm, attn.context, x, k_drop1, inference
        )
        cross = None
        if encoder_states is not None:
            if self.crossattention is None:
                raise ValueError(
                    "encoder_hidden_states given, but the layer has no cross-attention "
                    "(config.add_cross_attention=False)"
                )
            # A key stream of its own, so the encoder-only path draws the same keys either way.
            k_cross, k_drop_c = split_key(None if key is None else jr.fold_in(key, 1))
            cross = self.crossattention(
                h, encoder_mask, states=encoder_states, key=k_cross, **common
            )
            h = self._residual(
                self.crossattention_output, self.crossattention_norm, cross.context, h, k_drop_c,
                inference,
            )
        f = per_token(self.output, ACTIVATIONS[self.hidden_act](per_token(self.intermediate, h)))
        out = per_token(self.output_norm, self.dropout(f, key=k_drop2, inference=inference) + h)
        return LayerOutput(out, attn.probs, None if cross is None else cross.probs, attn.cache)


class BigBirdEncoder(eqx.Module):
    """`num_hidden_layers` layers stored stacked (leading axis) and run with `lax.scan`."""

    layers: BigBirdLayer
    num_layers: int = eqx.field(static=True)

    def __init__(self, config: BigBirdConfig, *, key: PRNGKeyArray):
        keys = jr.split(key, config.num_hidden_layers)
        self.layers = eqx.filter_vmap(lambda k: BigBirdLayer(config, key=k))(keys)
        self.num_layers = config.num_hidden_layers

    def __call__(
        self,
        x: Float[Array, "seq hidden"],
        mask: Real[Array, " seq"] | Real[Array, "seq kv"],
        *,
        options: ExecutionOptions = ExecutionOptions(),
        plans: Int[Array, "layers heads rows r"] | sa.EvalPlan | None = None,
        head_mask: Float[Array, "layers heads"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool = False,
        output_hidden_states: bool = False,
        output_attentions: OutputAttentions = False,
        encoder_states: Float[Array, "enc_seq hidden"] | None = None,
        encoder_mask: Real[Array, " enc_seq"] | None = None,
        cache: tuple[Float[Array, "layers heads kv dim"], Float[Array, "layers heads kv dim"]]
        | None = None,
        cache_index: Int[Array, ""] | None = None,
    ) -> tuple[Float[Array, "seq hidden"], LayerOutput]:
        """Runs every layer. Per-layer inputs (weights, keys, head mask, an array plan, the
        decoder's cache slices) are scan inputs; per-layer outputs come back stacked.

        **Returns:** `(last hidden state, stacked LayerOutput)`; its `hidden` holds every
        layer's output when `output_hidden_states`.
        """
        params, static = eqx.partition(self.layers, eqx.is_array)
        xs = {"params": params, "key": None if key is None else jr.split(key, self.num_layers)}
        xs.update(head_mask=head_mask, cache=cache)
        shared_plan = plans
        if isinstance(plans, jax.Array):
            xs["plan"], shared_plan = plans, None

        def step(h, xs):
            layer = options.cast(eqx.combine(xs["params"], static))
            out = layer(
                h, mask, plan=xs.get("plan", shared_plan), head_mask=xs["head_mask"], key=xs["key"],
                inference=inference, output_attentions=output_attentions,
                encoder_states=encoder_states, encoder_mask=encoder_mask, cache=xs["cache"],
                cache_index=cache_index,
            )
            kept = out.hidden if output_hidden_states else None
            return out.hidden, dataclasses.replace(out, hidden=kept)

        return run_layers(step, x, xs, options, self.num_layers)


def run_layers(step, x, xs, options: ExecutionOptions, num_layers: int):
    """`step(h, xs_i) -> (h, out_i)` over the layers as the options say: `lax.scan` or unrolled,
    checkpointed with the chosen policy, in the compute dtype. **Returns:** `(h, stacked outs)`."""
    if options.gradient_checkpointing is not None:
        policy = CHECKPOINT_POLICIES[options.gradient_checkpointing]
        step = eqx.filter_checkpoint(step, policy=policy)
    x = options.cast(x)
    if options.scan_layers:
        return jax.lax.scan(step, x, xs)
    outs = []
    for i in range(num_layers):
        x, out = step(x, jax.tree_util.tree_map(lambda a: a[i], xs))
        outs.append(out)
    return x, jax.tree_util.tree_map(lambda *a: jnp.stack(a), *outs)
