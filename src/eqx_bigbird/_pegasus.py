"""BigBird-Pegasus (HF PyTorch `BigBirdPegasus*`): a pre-LayerNorm encoder-decoder whose encoder
runs BigBird's block-sparse attention, called on ONE example.

The pieces are BigBird's: the attention modules of `_attention` (built from the
`BigBirdConfig` views of `BigBirdPegasusConfig`), the random plans of `_model.layer_plans`, the
layer loop of `_layers.run_layers`, and the kernel of `sparse_attention`. What is Pegasus' own:
pre-LN layers, the final `layernorm_embedding` of each stack, scaled token embeddings plus learned
positions (no offset, no embedding LayerNorm), the encoder's padding with `scale * W[pad]` rows,
and the heads.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from . import sparse_attention as sa
from ._activations import ACTIVATIONS
from ._attention import ATTENTION_CLASSES, AbstractAttention, FullAttention, OutputAttentions
from ._heads import CausalLMOutputWithCrossAttentions
from ._layers import ExecutionOptions, LayerOutput, run_layers
from ._model import KVCache, checked_ids, checked_mask, layer_plans
from ._nn import (
    normal_embedding,
    normal_linear,
    one_example,
    per_token,
    resolve_inference,
    split_key,
)
from ._pegasus_config import BigBirdPegasusConfig
from ._registry import register

LAYER_NORM_EPS = 1e-5  # HF's `nn.LayerNorm(d)`: not configurable
MaskLike = Int[ArrayLike, " seq"] | Bool[ArrayLike, " seq"]
DecoderMaskLike = Int[ArrayLike, " dec_seq"] | Bool[ArrayLike, " dec_seq"]
Attentions = Float[Array, "layers heads seq kv"] | sa.BlockedProbs | None
HiddenStates = Float[Array, "layers_plus_1 seq hidden"] | None
DecoderHiddenStates = Float[Array, "layers_plus_1 dec_seq hidden"] | None


def shift_tokens_right(
    input_ids: Int[ArrayLike, "*batch seq"], pad_token_id: int, decoder_start_token_id: int
) -> Int[Array, "*batch seq"]:
    """HF's `shift_tokens_right`: `[start] + ids[:-1]` along the last axis, then -100 -> pad.
    The decoder inputs of a seq2seq example whose labels are `input_ids`."""
    ids = jnp.asarray(input_ids, jnp.int32)
    start = jnp.full(ids.shape[:-1] + (1,), decoder_start_token_id, jnp.int32)
    shifted = jnp.concatenate([start, ids[..., :-1]], axis=-1)
    return jnp.where(shifted == -100, jnp.int32(pad_token_id), shifted)


def _embed(weight, ids, scale: float, pad: int):
    """`weight[ids] * scale`; as torch's `padding_idx`, the pad row gets no gradient here."""
    rows = weight[ids]
    rows = jnp.where((ids == pad)[:, None], jax.lax.stop_gradient(rows), rows)
    return rows * jnp.asarray(scale, rows.dtype)


def _merge_heads(ctx: Float[Array, "heads seq dim"]) -> Float[Array, "seq hidden"]:
    heads, seq, dim = ctx.shape
    return ctx.transpose(1, 0, 2).reshape(seq, heads * dim)


def _layerdrop(rate, out, h, key, inference):
    """HF's LayerDrop: in training a layer is skipped (its input passed on) with prob `rate`."""
    if inference or rate == 0 or key is None:
        return out
    return jnp.where(jr.uniform(key) < rate, h, out)


# -- layers ---------------------------------------------------------------------------------------


class PegasusEncoderLayer(eqx.Module):
    """Pre-LN: `h = x + drop(out(attn(LN(x))))`, `y = h + drop(fc2(act(fc1(LN(h)))))` (HF has no
    activation dropout in the encoder)."""

    self_attn: AbstractAttention
    self_attn_output: eqx.nn.Linear
    self_attn_layer_norm: eqx.nn.LayerNorm
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    final_layer_norm: eqx.nn.LayerNorm
    dropout: eqx.nn.Dropout
    activation_function: str = eqx.field(static=True)

    def __init__(self, config: BigBirdPegasusConfig, *, key: PRNGKeyArray):
        ka, ko, k1, k2 = jr.split(key, 4)
        view = config.encoder_view()
        d, f, std = config.d_model, config.encoder_ffn_dim, config.init_std
        self.self_attn = ATTENTION_CLASSES[view.self_attention_type](view, key=ka)
        self.self_attn_output = normal_linear(d, d, use_bias=config.use_bias, std=std, key=ko)
        self.self_attn_layer_norm = eqx.nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.fc1 = normal_linear(d, f, std=std, key=k1)
        self.fc2 = normal_linear(f, d, std=std, key=k2)
        self.final_layer_norm = eqx.nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.dropout = eqx.nn.Dropout(config.dropout)
        self.activation_function = config.activation_function

    def __call__(
        self,
        x: Float[Array, "seq hidden"],
        mask: Float[Array, " seq"],
        *,
        plan: sa.Plan | None,
        key: PRNGKeyArray | None,
        inference: bool,
        output_attentions: OutputAttentions,
    ) -> LayerOutput:
        k_attn, k1, k2 = split_key(key, 3)
        attn = self.self_attn(
            per_token(self.self_attn_layer_norm, x), mask, plan=plan, key=k_attn,
            inference=inference, output_attentions=output_attentions,
        )
        h = x + self.dropout(
            per_token(self.self_attn_output, attn.context), key=k1, inference=inference
        )
        act = ACTIVATIONS[self.activation_function]
        y = per_token(self.fc2, act(per_token(self.fc1, per_token(self.final_layer_norm, h))))
        return LayerOutput(h + self.dropout(y, key=k2, inference=inference), attn.probs)


Cache = tuple[Float[Array, "layers heads kv dim"], Float[Array, "layers heads kv dim"]]
CrossKV = tuple[Float[Array, "heads enc_seq dim"], Float[Array, "heads enc_seq dim"]]


class PegasusDecoderLayer(eqx.Module):
    """Pre-LN (MBart order): causal self-attention, cross-attention, feed-forward, each
    `x + drop(...)`; activation dropout inside the feed-forward."""

    self_attn: FullAttention
    self_attn_output: eqx.nn.Linear
    self_attn_layer_norm: eqx.nn.LayerNorm
    encoder_attn: FullAttention
    encoder_attn_output: eqx.nn.Linear
    encoder_attn_layer_norm: eqx.nn.LayerNorm
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    final_layer_norm: eqx.nn.LayerNorm
    dropout: eqx.nn.Dropout
    activation_dropout: eqx.nn.Dropout
    activation_function: str = eqx.field(static=True)

    def __init__(self, config: BigBirdPegasusConfig, *, key: PRNGKeyArray):
        ks, kso, kc, kco, k1, k2 = jr.split(key, 6)
        view = config.decoder_view()
        d, f, std, bias = config.d_model, config.decoder_ffn_dim, config.init_std, config.use_bias
        self.self_attn = FullAttention(view, key=ks)
        self.self_attn_output = normal_linear(d, d, use_bias=bias, std=std, key=kso)
        self.self_attn_layer_norm = eqx.nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.encoder_attn = FullAttention(view, key=kc)
        self.encoder_attn_output = normal_linear(d, d, use_bias=bias, std=std, key=kco)
        self.encoder_attn_layer_norm = eqx.nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.fc1 = normal_linear(d, f, std=std, key=k1)
        self.fc2 = normal_linear(f, d, std=std, key=k2)
        self.final_layer_norm = eqx.nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.dropout = eqx.nn.Dropout(config.dropout)
        self.activation_dropout = eqx.nn.Dropout(config.activation_dropout)
        self.activation_function = config.activation_function

    def cross_kv(self, states: Float[Array, "enc_seq hidden"]) -> CrossKV:
        """The cross-attention keys and values of the encoder states (computed once per
        document when decoding)."""
        attn = self.encoder_attn
        return attn.split_heads(attn.key, states), attn.split_heads(attn.value, states)

    def __call__(
        self,
        x: Float[Array, "seq hidden"],
        mask: Float[Array, "seq kv"],
        *,
        cross_kv: CrossKV | None,
        cross_mask: Float[Array, " enc_seq"] | None,
        cache: tuple[Float[Array, "heads kv dim"], Float[Array, "heads kv dim"]] | None,
        cache_index: Int[Array, ""] | None,
        key: PRNGKeyArray | None,
        inference: bool,
        output_attentions: bool,
    ) -> LayerOutput:
        k_sa, k_ca, k1, k2, k3, k4 = split_key(key, 6)
        attn = self.self_attn(
            per_token(self.self_attn_layer_norm, x), mask, cache=cache, cache_index=cache_index,
            key=k_sa, inference=inference, output_attentions=output_attentions,
        )
        x = x + self.dropout(
            per_token(self.self_attn_output, attn.context), key=k1, inference=inference
        )
        cross_probs = None
        if cross_kv is not None:
            q = self.encoder_attn.split_heads(
                self.encoder_attn.query, per_token(self.encoder_attn_layer_norm, x)
            )
            rate = 0.0 if inference else self.encoder_attn.dropout_rate
            ctx, probs = sa.full_attention(q, *cross_kv, cross_mask, dropout_rate=rate, key=k_ca)
            x = x + self.dropout(
                per_token(self.encoder_attn_output, _merge_heads(ctx)), key=k2, inference=inference
            )
            cross_probs = probs if output_attentions else None
        act = ACTIVATIONS[self.activation_function]
        y = act(per_token(self.fc1, per_token(self.final_layer_norm, x)))
        y = per_token(self.fc2, self.activation_dropout(y, key=k3, inference=inference))
        x = x + self.dropout(y, key=k4, inference=inference)
        return LayerOutput(x, attn.probs, cross_probs, attn.cache)


# -- the two stacks -------------------------------------------------------------------------------


def _stacked_hidden(x, outs, last):
    """HF's `*_hidden_states`: the inputs of every layer, then the final LayerNorm's output."""
    return jnp.concatenate([x[None].astype(last.dtype), outs[:-1], last[None]], axis=0)


class PegasusEncoder(eqx.Module):
    """Learned positions, the stacked encoder layers (`lax.scan`) and the final LayerNorm."""

    embed_positions: eqx.nn.Embedding
    layers: PegasusEncoderLayer
    layernorm_embedding: eqx.nn.LayerNorm
    dropout: eqx.nn.Dropout
    num_layers: int = eqx.field(static=True)
    layerdrop: float = eqx.field(static=True)

    def __init__(self, config: BigBirdPegasusConfig, *, key: PRNGKeyArray):
        kp, kl = jr.split(key)
        d = config.d_model
        self.embed_positions = normal_embedding(
            config.max_position_embeddings, d, std=config.init_std, key=kp
        )
        keys = jr.split(kl, config.encoder_layers)
        self.layers = eqx.filter_vmap(lambda k: PegasusEncoderLayer(config, key=k))(keys)
        self.layernorm_embedding = eqx.nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.dropout = eqx.nn.Dropout(config.dropout)
        self.num_layers = config.encoder_layers
        self.layerdrop = config.encoder_layerdrop

    def __call__(
        self,
        embed_tokens: Float[Array, "vocab hidden"],
        input_ids: Int[Array, " seq"],
        mask: Float[Array, " seq"],
        *,
        config: BigBirdPegasusConfig,
        options: ExecutionOptions,
        random_plan: Int[ArrayLike, "layers heads rows r"] | None,
        key: PRNGKeyArray | None,
        inference: bool,
        output_hidden_states: bool,
        output_attentions: OutputAttentions,
    ) -> tuple[Float[Array, "seq hidden"], HiddenStates, Attentions]:
        """**Returns:** `(last_hidden_state, hidden_states, attentions)`, un-padded to `seq`."""
        view = config.encoder_view()
        seq = input_ids.shape[0]
        padded = view.padded_length(seq)
        k_emb, k_layers, k_plan = split_key(key, 3)
        x = _embed(embed_tokens, input_ids, config.embed_scale, config.pad_token_id)
        x = x + self.embed_positions.weight[jnp.arange(seq)]
        x = self.dropout(x, key=k_emb, inference=inference)
        if padded > seq:  # HF pads the embedded sequence: `scale * W[pad]`, no position
            pad_row = embed_tokens[config.pad_token_id] * jnp.asarray(config.embed_scale, x.dtype)
            x = jnp.concatenate([x, jnp.broadcast_to(pad_row, (padded - seq, x.shape[1]))])
            mask = jnp.pad(mask, (0, padded - seq))
        plans = layer_plans(view, options, seq, padded, random_plan, k_plan, inference)
        params, static = eqx.partition(self.layers, eqx.is_array)
        xs = {"params": params, "key": None if key is None else jr.split(k_layers, self.num_layers)}
        shared_plan = plans
        if isinstance(plans, jax.Array):
            xs["plan"], shared_plan = plans, None

        def step(h, xs):
            layer = options.cast(eqx.combine(xs["params"], static))
            k_layer, k_drop = split_key(xs["key"])
            out = layer(
                h, mask, plan=xs.get("plan", shared_plan), key=k_layer, inference=inference,
                output_attentions=output_attentions,
            )
            new = _layerdrop(self.layerdrop, out.hidden, h, k_drop, inference)
            return new, (new if output_hidden_states else None, out.attentions)

        h, (outs, attentions) = run_layers(step, x, xs, options, self.num_layers)
        h = per_token(options.cast(self.layernorm_embedding), h)
        hidden = _stacked_hidden(x, outs, h)[:, :seq] if output_hidden_states else None
        if isinstance(attentions, sa.BlockedProbs):
            attentions = dataclasses.replace(attentions, length=seq)
        elif attentions is not None:
            attentions = attentions[:, :, :seq, :seq]
        return h[:seq], hidden, attentions


class DecoderOutput(eqx.Module):
    """What the decoder stack returns (the extras `None` unless asked for)."""

    last_hidden_state: Float[Array, "seq hidden"]
    hidden_states: HiddenStates = None
    attentions: Float[Array, "layers heads seq kv"] | None = None
    cross_attentions: Float[Array, "layers heads seq enc_seq"] | None = None
    cache: Cache | None = None


class PegasusDecoder(eqx.Module):
    """Learned positions, the stacked decoder layers (`lax.scan`) and the final LayerNorm."""

    embed_positions: eqx.nn.Embedding
    layers: PegasusDecoderLayer
    layernorm_embedding: eqx.nn.LayerNorm
    dropout: eqx.nn.Dropout
    num_layers: int = eqx.field(static=True)
    layerdrop: float = eqx.field(static=True)

    def __init__(self, config: BigBirdPegasusConfig, *, key: PRNGKeyArray):
        kp, kl = jr.split(key)
        d = config.d_model
        self.embed_positions = normal_embedding(
            config.max_position_embeddings, d, std=config.init_std, key=kp
        )
        keys = jr.split(kl, config.decoder_layers)
        self.layers = eqx.filter_vmap(lambda k: PegasusDecoderLayer(config, key=k))(keys)
        self.layernorm_embedding = eqx.nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.dropout = eqx.nn.Dropout(config.dropout)
        self.num_layers = config.decoder_layers
        self.layerdrop = config.decoder_layerdrop

    def cross_kv(self, states: Float[Array, "enc_seq hidden"], options: ExecutionOptions):
        """Every layer's cross-attention keys and values, stacked `(layers, heads, enc, dim)`."""
        layers = options.cast(self.layers)
        return eqx.filter_vmap(lambda layer: layer.cross_kv(options.cast(states)))(layers)

    def __call__(
        self,
        embed_tokens: Float[Array, "vocab hidden"],
        ids: Int[Array, " seq"],
        self_mask: Float[Array, "seq kv"],
        positions: Int[Array, " seq"],
        *,
        config: BigBirdPegasusConfig,
        options: ExecutionOptions,
        encoder_states: Float[Array, "enc_seq hidden"] | None = None,
        cross_kv: tuple[Float[Array, "layers heads enc_seq dim"], ...] | None = None,
        cross_mask: Float[Array, " enc_seq"] | None = None,
        cache: Cache | None = None,
        cache_index: Int[Array, ""] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> DecoderOutput:
        """Runs the decoder on `ids` at `positions`. Cross-attention reads `cross_kv` (stacked,
        precomputed) or computes it per layer from `encoder_states`; neither: no cross-attention
        (HF's standalone decoder). With `cache`, the new keys/values are written at
        `cache_index` and `self_mask` is over the cache's slots."""
        k_emb, k_layers = split_key(key)
        x = _embed(embed_tokens, ids, config.embed_scale, config.pad_token_id)
        x = self.dropout(
            x + self.embed_positions.weight[positions], key=k_emb, inference=inference
        )
        params, static = eqx.partition(self.layers, eqx.is_array)
        xs = {"params": params, "key": None if key is None else jr.split(k_layers, self.num_layers)}
        xs.update(cache=cache, cross_kv=cross_kv)

        def step(h, xs):
            layer = options.cast(eqx.combine(xs["params"], static))
            kv = xs["cross_kv"]
            if kv is None and encoder_states is not None:
                kv = layer.cross_kv(options.cast(encoder_states))
            k_layer, k_drop = split_key(xs["key"])
            out = layer(
                h, self_mask, cross_kv=kv, cross_mask=cross_mask, cache=xs["cache"],
                cache_index=cache_index, key=k_layer, inference=inference,
                output_attentions=output_attentions,
            )
            new = _layerdrop(self.layerdrop, out.hidden, h, k_drop, inference)
            kept = new if output_hidden_states else None
            return new, (kept, out.attentions, out.cross_attentions, out.cache)

        h, (outs, attentions, cross, new_cache) = run_layers(
            step, x, xs, options, self.num_layers
        )
        h = per_token(options.cast(self.layernorm_embedding), h)
        hidden = _stacked_hidden(x, outs, h) if output_hidden_states else None
        return DecoderOutput(h, hidden, attentions, cross, new_cache)


def _causal_mask(mask: Float[Array, " kv"], query_positions: Int[Array, " seq"]):
    """HF's causal mask times the key padding mask, `(seq, kv)`."""
    keys = jnp.arange(mask.shape[0], dtype=jnp.int32)
    causal = (keys[None, :] <= query_positions[:, None]).astype(jnp.float32)
    return causal * mask[None, :]


# -- output records (HF's field names) ------------------------------------------------------------


class Seq2SeqModelOutput(eqx.Module):
    """`last_hidden_state`: the decoder's `(dec_seq, hidden)`; the decoder's `hidden_states` /
    `attentions` / `cross_attentions` and the encoder's when asked for (un-padded)."""

    last_hidden_state: Float[Array, "dec_seq hidden"]
    encoder_last_hidden_state: Float[Array, "seq hidden"]
    decoder_hidden_states: DecoderHiddenStates = None
    decoder_attentions: Float[Array, "layers heads dec_seq dec_seq"] | None = None
    cross_attentions: Float[Array, "layers heads dec_seq seq"] | None = None
    encoder_hidden_states: HiddenStates = None
    encoder_attentions: Attentions = None


class Seq2SeqLMOutput(eqx.Module):
    """`logits` `(dec_seq, vocab)` and the fields of `Seq2SeqModelOutput` but the last state."""

    logits: Float[Array, "dec_seq vocab"]
    encoder_last_hidden_state: Float[Array, "seq hidden"]
    decoder_hidden_states: DecoderHiddenStates = None
    decoder_attentions: Float[Array, "layers heads dec_seq dec_seq"] | None = None
    cross_attentions: Float[Array, "layers heads dec_seq seq"] | None = None
    encoder_hidden_states: HiddenStates = None
    encoder_attentions: Attentions = None


class Seq2SeqSequenceClassifierOutput(eqx.Module):
    """`logits` `(num_labels,)` and the fields of `Seq2SeqModelOutput` but the last state."""

    logits: Float[Array, " labels"]
    encoder_last_hidden_state: Float[Array, "seq hidden"]
    decoder_hidden_states: DecoderHiddenStates = None
    decoder_attentions: Float[Array, "layers heads dec_seq dec_seq"] | None = None
    cross_attentions: Float[Array, "layers heads dec_seq seq"] | None = None
    encoder_hidden_states: HiddenStates = None
    encoder_attentions: Attentions = None


class Seq2SeqQuestionAnsweringModelOutput(eqx.Module):
    """`start_logits`, `end_logits` `(dec_seq,)` (over the decoder's positions, as HF) and the
    fields of `Seq2SeqModelOutput` but the last state."""

    start_logits: Float[Array, " dec_seq"]
    end_logits: Float[Array, " dec_seq"]
    encoder_last_hidden_state: Float[Array, "seq hidden"]
    decoder_hidden_states: DecoderHiddenStates = None
    decoder_attentions: Float[Array, "layers heads dec_seq dec_seq"] | None = None
    cross_attentions: Float[Array, "layers heads dec_seq seq"] | None = None
    encoder_hidden_states: HiddenStates = None
    encoder_attentions: Attentions = None


def _fields(out: Seq2SeqModelOutput) -> dict:
    """Every field of `out` but the decoder's last state (what the heads pass on)."""
    return {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}


class EncoderDecoderShared(eqx.Module):
    """What decoding needs of the document, the same for every beam: every decoder layer's
    cross-attention keys and values `(layers, heads, enc_seq, dim)` and the encoder's mask."""

    cross_key: Float[Array, "layers heads enc_seq dim"]
    cross_value: Float[Array, "layers heads enc_seq dim"]
    encoder_mask: Float[Array, " enc_seq"]


# -- the base model -------------------------------------------------------------------------------


class _Loadable(eqx.Module):
    """Loading and export, shared by the Pegasus classes."""

    config_class = BigBirdPegasusConfig

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        """Loads a local HF BigBird-Pegasus directory (`config.json` and `model.safetensors`,
        sharded safetensors, or `pytorch_model.bin` when torch is installed), in inference mode;
        see `eqx_bigbird._hf_load.from_pretrained` for the keywords."""
        from ._hf_load import from_pretrained

        return from_pretrained(cls, path, **kwargs)

    def save_pretrained(self, path, **kwargs) -> None:
        """Writes an HF checkpoint directory that HF PyTorch loads; see
        `eqx_bigbird.save_pretrained`."""
        from ._export import save_pretrained

        save_pretrained(self, path, **kwargs)


@register
class BigBirdPegasusModel(_Loadable):
    """The BigBird-Pegasus encoder-decoder (HF `BigBirdPegasusModel`), called on ONE example.

    `shared` is the token embedding of both stacks (HF ties `encoder.embed_tokens` and
    `decoder.embed_tokens` to it). Batches: `jax.vmap(model)(...)`. `eqx.nn.inference_mode(model)`
    turns off dropout; outside it every call needs a `key`.
    """

    shared: eqx.nn.Embedding
    encoder: PegasusEncoder
    decoder: PegasusDecoder
    config: BigBirdPegasusConfig = eqx.field(static=True)
    options: ExecutionOptions = eqx.field(static=True)
    inference: bool = False

    def __init__(self, config: BigBirdPegasusConfig, *, key: PRNGKeyArray, **options):
        """**Arguments:** `config`; `key` for the initial weights; execution options
        (`scan_layers`, `gradient_checkpointing`, `compute_dtype`, `random_attention`: see
        `ExecutionOptions`; they apply to both stacks)."""
        ks, ke, kd = jr.split(key, 3)
        self.config = config
        self.options = ExecutionOptions(**options)
        weight = config.init_std * jr.normal(ks, (config.vocab_size, config.d_model))
        self.shared = eqx.nn.Embedding(weight=weight.at[config.pad_token_id].set(0.0))
        self.encoder = PegasusEncoder(config, key=ke)
        self.decoder = PegasusDecoder(config, key=kd)
        self.inference = False

    def init_kwargs(self) -> dict:
        """The constructor keywords that rebuild this model's structure and options."""
        return dataclasses.asdict(self.options)

    def encode(
        self,
        input_ids: Int[ArrayLike, " seq"],
        attention_mask: MaskLike | None = None,
        *,
        random_plan: Int[ArrayLike, "layers heads rows r"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        output_hidden_states: bool = False,
        output_attentions: OutputAttentions = False,
    ) -> tuple[Float[Array, "seq hidden"], HiddenStates, Attentions, Float[Array, " seq"]]:
        """The encoder alone. Block-sparse runs when `config.encoder_view().uses_block_sparse`
        (more than `(5 + 2r) * block_size` tokens), decided per call from the shape; shorter
        inputs run full attention on the same weights. **Returns:** `(last_hidden_state,
        hidden_states, attentions, mask)`, all un-padded to the input's length."""
        inference = resolve_inference(self, inference, key)
        c = self.config
        seq = jnp.shape(input_ids)[0]
        if seq == 0:
            raise ValueError("input_ids is empty")
        if seq > c.max_position_embeddings:
            raise ValueError(
                f"sequence length {seq} exceeds max_position_embeddings={c.max_position_embeddings}"
            )
        ids = checked_ids(input_ids, "input_ids", seq, c.vocab_size)
        mask = checked_mask(attention_mask, "attention_mask", seq)
        h, hidden, attentions = self.encoder(
            self.shared.weight, ids, mask, config=c, options=self.options,
            random_plan=random_plan, key=key, inference=inference,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
        )
        return h, hidden, attentions, mask

    def decode(
        self,
        decoder_input_ids: Int[ArrayLike, " dec_seq"],
        decoder_attention_mask: DecoderMaskLike | None,
        encoder_states: Float[Array, "seq hidden"] | None,
        encoder_mask: Float[Array, " seq"] | None,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> DecoderOutput:
        """The decoder on a whole target sequence (no cache): positions `0..dec_seq-1` (HF
        ignores the decoder mask for positions); decoder pads are attended unless
        `decoder_attention_mask` masks them."""
        c = self.config
        seq = jnp.shape(decoder_input_ids)[0]
        if seq == 0:
            raise ValueError("decoder_input_ids is empty")
        if seq > c.max_position_embeddings:
            raise ValueError(
                f"decoder length {seq} exceeds max_position_embeddings={c.max_position_embeddings}"
            )
        ids = checked_ids(decoder_input_ids, "decoder_input_ids", seq, c.vocab_size)
        mask = checked_mask(decoder_attention_mask, "decoder_attention_mask", seq)
        positions = jnp.arange(seq, dtype=jnp.int32)
        return self.decoder(
            self.shared.weight, ids, _causal_mask(mask, positions), positions,
            config=c, options=self.options, encoder_states=encoder_states, cross_mask=encoder_mask,
            key=key, inference=inference, output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )

    @one_example()
    def __call__(
        self,
        input_ids: Int[ArrayLike, " seq"],
        attention_mask: MaskLike | None = None,
        decoder_input_ids: Int[ArrayLike, " dec_seq"] | None = None,
        decoder_attention_mask: DecoderMaskLike | None = None,
        *,
        random_plan: Int[ArrayLike, "layers heads rows r"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        output_hidden_states: bool = False,
        output_attentions: OutputAttentions = False,
    ) -> Seq2SeqModelOutput:
        """Encodes `input_ids` and decodes `decoder_input_ids` against it.

        **Arguments:**
        - `input_ids`, `attention_mask`: `(seq,)` the document and its mask (default all real).
        - `decoder_input_ids`, `decoder_attention_mask`: `(dec_seq,)`; default, as HF's
          `BigBirdPegasusModel`: `shift_tokens_right(input_ids)`, no decoder mask. For training
          on `labels`, pass `shift_tokens_right(labels, pad, decoder_start_token_id)`.
        - `random_plan`: explicit random blocks `(encoder_layers, heads, nb - 2, r)` for the
          padded length (default: HF's eval plan in inference, see `ExecutionOptions`).
        - `key`: dropout (and random attention) in training; `inference` overrides the flag.

        **Returns:** a `Seq2SeqModelOutput`.
        """
        inference = resolve_inference(self, inference, key)
        k_enc, k_dec = split_key(key)
        enc, enc_hidden, enc_attn, enc_mask = self.encode(
            input_ids, attention_mask, random_plan=random_plan, key=k_enc, inference=inference,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
        )
        if decoder_input_ids is None:
            if decoder_attention_mask is not None:
                raise ValueError("decoder_attention_mask given without decoder_input_ids")
            c = self.config
            decoder_input_ids = shift_tokens_right(
                input_ids, c.pad_token_id, c.decoder_start_token_id
            )
        dec = self.decode(
            decoder_input_ids, decoder_attention_mask, enc, enc_mask, key=k_dec,
            inference=inference, output_hidden_states=output_hidden_states,
            output_attentions=bool(output_attentions),
        )
        return Seq2SeqModelOutput(
            last_hidden_state=dec.last_hidden_state,
            encoder_last_hidden_state=enc,
            decoder_hidden_states=dec.hidden_states,
            decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions,
            encoder_hidden_states=enc_hidden,
            encoder_attentions=enc_attn,
        )

    # -- decoding ------------------------------------------------------------------------------

    def prepare_decoding(
        self, input_ids: Int[Array, " seq"], attention_mask: Int[Array, " seq"],
        max_new_tokens: int,
    ) -> tuple[EncoderDecoderShared, KVCache]:
        """Encodes once, computes every layer's cross K/V once, and returns `(shared, an empty
        self-attention cache with room for 1 + max_new_tokens positions)`."""
        enc, _, _, mask = self.encode(input_ids, attention_mask, inference=True)
        k, v = self.decoder.cross_kv(enc, self.options)
        shared = EncoderDecoderShared(cross_key=k, cross_value=v, encoder_mask=mask)
        return shared, _empty_cache(self.config, 1 + max_new_tokens, k.dtype)

    def step(self, shared: EncoderDecoderShared, state: KVCache, tokens: Int[Array, " n"]):
        """Runs `tokens` at the cache's next positions. **Returns:** `(state, decoder states)`."""
        return _cached_step(
            self.decoder, self.shared.weight, self.config, self.options,
            shared, state, tokens, jnp.ones(tokens.shape, jnp.float32),
        )


def _cached_step(decoder, embed_tokens, config, options, shared, state: KVCache, tokens, mask):
    """`tokens` (with key `mask`) through `decoder` at positions `state.index, ...`, their K/V
    written into the cache in place (inference). **Returns:** `(new state, decoder states)`."""
    n = tokens.shape[0]
    index = eqx.error_if(
        state.index, state.index + n > state.mask.shape[0],
        "decoding cache full: more tokens than its room",
    )
    slots = jax.lax.dynamic_update_slice(state.mask, mask, (index,))
    positions = index + jnp.arange(n, dtype=jnp.int32)
    dec = decoder(
        embed_tokens, tokens, _causal_mask(slots, positions), positions, config=config,
        options=options,
        cross_kv=None if shared is None else (shared.cross_key, shared.cross_value),
        cross_mask=None if shared is None else shared.encoder_mask,
        cache=(state.key, state.value), cache_index=index, inference=True,
    )
    k, v = dec.cache
    return KVCache(key=k, value=v, mask=slots, index=index + n), dec.last_hidden_state


def _check_room(config, length: int, what: str):
    if not 0 < length <= config.max_position_embeddings:
        raise ValueError(
            f"{what} = {length} positions must lie in [1, max_position_embeddings="
            f"{config.max_position_embeddings}]"
        )


def _empty_cache(config: BigBirdPegasusConfig, length: int, dtype) -> KVCache:
    heads = config.decoder_attention_heads
    shape = (config.decoder_layers, heads, length, config.d_model // heads)
    return KVCache(
        key=jnp.zeros(shape, dtype), value=jnp.zeros(shape, dtype),
        mask=jnp.zeros((length,), jnp.float32), index=jnp.zeros((), jnp.int32),
    )


# -- the heads ------------------------------------------------------------------------------------


class _Seq2SeqHead(_Loadable):
    """The base model as `model`, the `inference` flag, and the call's prologue."""

    model: BigBirdPegasusModel
    inference: bool = eqx.field(default=False, kw_only=True)

    @property
    def config(self) -> BigBirdPegasusConfig:
        return self.model.config

    def init_kwargs(self) -> dict:
        return self.model.init_kwargs()

    def _own(self, tree):
        """`tree` (a module of this head, or the tied embeddings) in the compute dtype."""
        return self.model.options.cast(tree)

    def _run(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, *,
             random_plan, key, inference, output_hidden_states, output_attentions):
        inference = resolve_inference(self, inference, key)
        k_model, k_head = split_key(key)
        out = self.model(
            input_ids, attention_mask, decoder_input_ids, decoder_attention_mask,
            random_plan=random_plan, key=k_model, inference=inference,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
        )
        return out, k_head, inference


@register
class BigBirdPegasusForConditionalGeneration(_Seq2SeqHead):
    """The summarisation model (HF `BigBirdPegasusForConditionalGeneration`): logits are
    `decoder_state @ shared.T + final_logits_bias`. The LM head is the (unscaled) shared
    embedding when `config.tie_word_embeddings` (HF's default), else its own `lm_head`.
    `final_logits_bias` is a buffer in HF: loaded and saved, never trained (no gradient here).
    """

    lm_head: eqx.nn.Linear | None
    final_logits_bias: Float[Array, "1 vocab"]

    def __init__(self, config: BigBirdPegasusConfig, *, key: PRNGKeyArray, **options):
        """**Arguments:** `config`, `key`, execution options (see `ExecutionOptions`)."""
        km, kh = jr.split(key)
        self.model = BigBirdPegasusModel(config, key=km, **options)
        self.lm_head = None
        if not config.tie_word_embeddings:
            self.lm_head = normal_linear(
                config.d_model, config.vocab_size, use_bias=False, std=config.init_std, key=kh
            )
        self.final_logits_bias = jnp.zeros((1, config.vocab_size))
        self.inference = False

    def logits(self, h: Float[Array, "n hidden"]) -> Float[Array, "n vocab"]:
        """The LM head on decoder states."""
        weight = self.model.shared.weight if self.lm_head is None else self.lm_head.weight
        logits = h @ self._own(weight).T
        return logits + jax.lax.stop_gradient(self.final_logits_bias).astype(logits.dtype)

    @one_example()
    def __call__(
        self,
        input_ids: Int[ArrayLike, " seq"],
        attention_mask: MaskLike | None = None,
        decoder_input_ids: Int[ArrayLike, " dec_seq"] | None = None,
        decoder_attention_mask: DecoderMaskLike | None = None,
        *,
        random_plan: Int[ArrayLike, "layers heads rows r"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        output_hidden_states: bool = False,
        output_attentions: OutputAttentions = False,
    ) -> Seq2SeqLMOutput:
        """Next-token logits over the decoder's positions. Arguments as `BigBirdPegasusModel`
        (train on `labels` with `decoder_input_ids=shift_tokens_right(labels, ...)` and
        `seq2seq_lm_loss(out.logits, labels)`). **Returns:** a `Seq2SeqLMOutput`."""
        out, _, _ = self._run(
            input_ids, attention_mask, decoder_input_ids, decoder_attention_mask,
            random_plan=random_plan, key=key, inference=inference,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
        )
        fields = _fields(out)
        return Seq2SeqLMOutput(logits=self.logits(fields.pop("last_hidden_state")), **fields)

    # -- the decoding protocol (see `eqx_bigbird.generate`) -------------------------------------

    def prepare_decoding(
        self, input_ids: Int[Array, " seq"], attention_mask: Int[Array, " seq"],
        max_new_tokens: int,
    ) -> tuple[EncoderDecoderShared, KVCache, Float[Array, " vocab"]]:
        """Runs the encoder once, computes every decoder layer's cross-attention keys/values once
        (`shared`), and runs `decoder_start_token_id` into a self-attention cache with room for
        `1 + max_new_tokens` positions (`state`). **Returns:** `(shared, state, logits)`: the
        float32 next-token logits after the start token."""
        c = self.config
        _check_room(c, 1 + max_new_tokens, "1 + max_new_tokens")
        shared, state = self.model.prepare_decoding(input_ids, attention_mask, max_new_tokens)
        state, logits = self.decode_step(shared, state, jnp.int32(c.decoder_start_token_id))
        return shared, state, logits

    def decode_step(
        self, shared: EncoderDecoderShared, state: KVCache, token: Int[Array, ""]
    ) -> tuple[KVCache, Float[Array, " vocab"]]:
        """Appends `token` at `state.index` (its K/V written into the cache in place).
        **Returns:** `(new state, float32 next-token logits)`."""
        state, h = self.model.step(shared, state, jnp.asarray(token, jnp.int32)[None])
        return state, self.logits(h)[0].astype(jnp.float32)


class _ClassificationHead(eqx.Module):
    """dropout -> dense -> tanh -> dropout -> out_proj (HF's `classification_head`)."""

    dense: eqx.nn.Linear
    out_proj: eqx.nn.Linear
    dropout: eqx.nn.Dropout

    def __init__(self, config: BigBirdPegasusConfig, *, key):
        kd, ko = jr.split(key)
        d, std = config.d_model, config.init_std
        self.dense = normal_linear(d, d, std=std, key=kd)
        self.out_proj = normal_linear(d, config.num_labels, std=std, key=ko)
        self.dropout = eqx.nn.Dropout(config.classifier_dropout)

    def __call__(self, x, *, key, inference):
        k1, k2 = split_key(key)
        x = jnp.tanh(self.dense(self.dropout(x, key=k1, inference=inference)))
        return self.out_proj(self.dropout(x, key=k2, inference=inference))


@register
class BigBirdPegasusForSequenceClassification(_Seq2SeqHead):
    """HF `BigBirdPegasusForSequenceClassification`: the classification head on the decoder's
    last state at the LAST `eos_token_id` of `input_ids` (the decoder, fed the shifted input,
    has not seen that eos yet). An input without eos is an error."""

    classification_head: _ClassificationHead

    def __init__(self, config: BigBirdPegasusConfig, *, key: PRNGKeyArray, **options):
        """**Arguments:** `config`, `key`, execution options (see `ExecutionOptions`)."""
        if config.eos_token_id is None:
            raise ValueError("BigBirdPegasusForSequenceClassification needs config.eos_token_id")
        km, kh = jr.split(key)
        self.model = BigBirdPegasusModel(config, key=km, **options)
        self.classification_head = _ClassificationHead(config, key=kh)
        self.inference = False

    @one_example()
    def __call__(
        self,
        input_ids: Int[ArrayLike, " seq"],
        attention_mask: MaskLike | None = None,
        decoder_input_ids: Int[ArrayLike, " dec_seq"] | None = None,
        decoder_attention_mask: DecoderMaskLike | None = None,
        *,
        random_plan: Int[ArrayLike, "layers heads rows r"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        output_hidden_states: bool = False,
        output_attentions: OutputAttentions = False,
    ) -> Seq2SeqSequenceClassifierOutput:
        """Class logits of one document; arguments as `BigBirdPegasusModel`.
        **Returns:** a `Seq2SeqSequenceClassifierOutput`."""
        out, k_head, inference = self._run(
            input_ids, attention_mask, decoder_input_ids, decoder_attention_mask,
            random_plan=random_plan, key=key, inference=inference,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
        )
        fields = _fields(out)
        h = fields.pop("last_hidden_state")
        if h.shape[0] != jnp.shape(input_ids)[0]:
            raise ValueError(
                f"decoder length {h.shape[0]} differs from input length {jnp.shape(input_ids)[0]}:"
                " the eos position is read from input_ids (as HF does)"
            )
        is_eos = jnp.asarray(input_ids) == self.config.eos_token_id
        last = h.shape[0] - 1 - jnp.argmax(is_eos[::-1])
        last = eqx.error_if(last, ~jnp.any(is_eos), "input_ids holds no eos_token_id")
        logits = self._own(self.classification_head)(h[last], key=k_head, inference=inference)
        return Seq2SeqSequenceClassifierOutput(logits=logits, **fields)


@register
class BigBirdPegasusForQuestionAnswering(_Seq2SeqHead):
    """HF `BigBirdPegasusForQuestionAnswering`: `qa_outputs` `(hidden -> 2)` on the decoder's
    states (HF forces `num_labels=2` by mutating the config; here the head simply has 2
    outputs)."""

    qa_outputs: eqx.nn.Linear

    def __init__(self, config: BigBirdPegasusConfig, *, key: PRNGKeyArray, **options):
        """**Arguments:** `config`, `key`, execution options (see `ExecutionOptions`)."""
        km, kh = jr.split(key)
        self.model = BigBirdPegasusModel(config, key=km, **options)
        self.qa_outputs = normal_linear(config.d_model, 2, std=config.init_std, key=kh)
        self.inference = False

    @one_example()
    def __call__(
        self,
        input_ids: Int[ArrayLike, " seq"],
        attention_mask: MaskLike | None = None,
        decoder_input_ids: Int[ArrayLike, " dec_seq"] | None = None,
        decoder_attention_mask: DecoderMaskLike | None = None,
        *,
        random_plan: Int[ArrayLike, "layers heads rows r"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        output_hidden_states: bool = False,
        output_attentions: OutputAttentions = False,
    ) -> Seq2SeqQuestionAnsweringModelOutput:
        """Span logits over the decoder's positions; arguments as `BigBirdPegasusModel`.
        **Returns:** a `Seq2SeqQuestionAnsweringModelOutput` (loss: `question_answering_loss`)."""
        out, _, _ = self._run(
            input_ids, attention_mask, decoder_input_ids, decoder_attention_mask,
            random_plan=random_plan, key=key, inference=inference,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
        )
        fields = _fields(out)
        logits = per_token(self._own(self.qa_outputs), fields.pop("last_hidden_state"))
        return Seq2SeqQuestionAnsweringModelOutput(
            start_logits=logits[:, 0], end_logits=logits[:, 1], **fields
        )


@register
class BigBirdPegasusForCausalLM(_Loadable):
    """HF `BigBirdPegasusForCausalLM`: the decoder alone (HF's `model.decoder`) with its own
    token embedding and an LM head tied to it (no `final_logits_bias`). As HF, the config is
    switched to `is_decoder=True, is_encoder_decoder=False`; positions are `0..seq-1` whatever
    the mask (HF's `cache_position`). Cross-attention runs when `encoder_hidden_states` is given.
    The loss is NOT shifted in HF (`seq2seq_lm_loss(logits, labels)` reproduces it).
    """

    decoder: PegasusDecoder
    embed_tokens: eqx.nn.Embedding
    lm_head: eqx.nn.Linear | None
    config: BigBirdPegasusConfig = eqx.field(static=True)
    options: ExecutionOptions = eqx.field(static=True)
    inference: bool = False

    def __init__(self, config: BigBirdPegasusConfig, *, key: PRNGKeyArray, **options):
        """**Arguments:** `config`, `key`, execution options (see `ExecutionOptions`)."""
        config = config.replace(is_decoder=True, is_encoder_decoder=False)
        ke, kd, kh = jr.split(key, 3)
        self.config = config
        self.options = ExecutionOptions(**options)
        weight = config.init_std * jr.normal(ke, (config.vocab_size, config.d_model))
        self.embed_tokens = eqx.nn.Embedding(weight=weight.at[config.pad_token_id].set(0.0))
        self.decoder = PegasusDecoder(config, key=kd)
        self.lm_head = None
        if not config.tie_word_embeddings:
            self.lm_head = normal_linear(
                config.d_model, config.vocab_size, use_bias=False, std=config.init_std, key=kh
            )
        self.inference = False

    def init_kwargs(self) -> dict:
        return dataclasses.asdict(self.options)

    def logits(self, h: Float[Array, "n hidden"]) -> Float[Array, "n vocab"]:
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return h @ self.options.cast(weight).T

    @one_example()
    def __call__(
        self,
        input_ids: Int[ArrayLike, " seq"],
        attention_mask: MaskLike | None = None,
        *,
        encoder_hidden_states: Float[ArrayLike, "enc_seq hidden"] | None = None,
        encoder_attention_mask: Int[ArrayLike, " enc_seq"] | Bool[ArrayLike, " enc_seq"]
        | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> CausalLMOutputWithCrossAttentions:
        """Next-token logits of one sequence (causal; pads attended unless `attention_mask`
        masks them). **Returns:** a `CausalLMOutputWithCrossAttentions`."""
        inference = resolve_inference(self, inference, key)
        c = self.config
        seq = jnp.shape(input_ids)[0]
        if seq == 0:
            raise ValueError("input_ids is empty")
        _check_room(c, seq, "the sequence length")
        ids = checked_ids(input_ids, "input_ids", seq, c.vocab_size)
        mask = checked_mask(attention_mask, "attention_mask", seq)
        states, enc_mask = None, None
        if encoder_hidden_states is not None:
            states = jnp.asarray(encoder_hidden_states)
            if states.ndim != 2 or states.shape[1] != c.d_model:
                raise ValueError(
                    f"encoder_hidden_states has shape {states.shape}, expected (enc_seq, "
                    f"{c.d_model})"
                )
            if encoder_attention_mask is not None:
                enc_mask = checked_mask(
                    encoder_attention_mask, "encoder_attention_mask", states.shape[0]
                )
        elif encoder_attention_mask is not None:
            raise ValueError("encoder_attention_mask given without encoder_hidden_states")
        positions = jnp.arange(seq, dtype=jnp.int32)
        dec = self.decoder(
            self.embed_tokens.weight, ids, _causal_mask(mask, positions),
            positions, config=c, options=self.options, encoder_states=states,
            cross_mask=enc_mask, key=key, inference=inference,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
        )
        return CausalLMOutputWithCrossAttentions(
            logits=self.logits(dec.last_hidden_state), hidden_states=dec.hidden_states,
            attentions=dec.attentions, cross_attentions=dec.cross_attentions,
        )

    # -- the decoding protocol (see `eqx_bigbird.generate`) -------------------------------------

    def prepare_decoding(
        self, input_ids: Int[Array, " seq"], attention_mask: Int[Array, " seq"],
        max_new_tokens: int,
    ) -> tuple[None, KVCache, Float[Array, " vocab"]]:
        """Runs the prompt into a self-attention cache with room for `len(prompt) +
        max_new_tokens` positions (positions `0..`, as HF's `cache_position`; masked prompt
        tokens stay masked as keys). **Returns:** `(None, state, float32 logits after the
        prompt)`; there is nothing shared (no encoder)."""
        c = self.config
        seq = jnp.shape(input_ids)[0]
        _check_room(c, seq + max_new_tokens, "len(prompt) + max_new_tokens")
        ids = checked_ids(input_ids, "input_ids", seq, c.vocab_size)
        state = _empty_cache(c, seq + max_new_tokens, self.embed_tokens.weight.dtype)
        state, h = _cached_step(
            self.decoder, self.embed_tokens.weight, c, self.options, None,
            state, ids, checked_mask(attention_mask, "attention_mask", seq),
        )
        return None, state, self.logits(h[-1:])[0].astype(jnp.float32)

    def decode_step(
        self, shared: None, state: KVCache, token: Int[Array, ""]
    ) -> tuple[KVCache, Float[Array, " vocab"]]:
        """Appends `token`. **Returns:** `(new state, float32 next-token logits)`."""
        state, h = _cached_step(
            self.decoder, self.embed_tokens.weight, self.config, self.options,
            shared, state, jnp.asarray(token, jnp.int32)[None], jnp.ones((1,), jnp.float32),
        )
        return state, self.logits(h)[0].astype(jnp.float32)
