"""BigBird's task heads (HF `BigBirdFor*`): the encoder as `bert`, called on ONE example.

Every head shares `AbstractHead`: the call's mode and keys, the encoder call, the compute dtype
for the head's own modules, loading and export. Each keeps an explicit, annotated `__call__`.
Which heads hold a pooler follows what they use: PreTraining, SequenceClassification and
MultipleChoice (as HF PyTorch and Flax do); MaskedLM, CausalLM, TokenClassification and
QuestionAnswering do not (HF PyTorch keeps an unused one in the first three; its weights are then
reported as unused checkpoint keys).
"""

import dataclasses
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, Real

from . import sparse_attention as sa
from ._activations import ACTIVATIONS
from ._attention import OutputAttentions
from ._config import BigBirdConfig
from ._generation_config import GenerationConfig
from ._hub import HUB_OPTIONS, local_path
from ._model import BigBirdModel, BigBirdModelOutput, KVCache
from ._nn import (
    check_values,
    normal_linear,
    one_example,
    per_token,
    resolve_inference,
    split_key,
)
from ._registry import register

MaskLike = Int[ArrayLike, " seq"] | Bool[ArrayLike, " seq"] | None
HeadMask = Real[ArrayLike, "layers heads"] | Real[ArrayLike, " heads"] | None
HiddenStates = Float[Array, "layers_plus_1 seq hidden"] | None
Attentions = Float[Array, "layers heads seq kv"] | sa.BlockedProbs | None


# -- output records (HF's field names) ------------------------------------------------------------


class BigBirdForPreTrainingOutput(eqx.Module):
    """`prediction_logits` `(seq or n, vocab)`, `seq_relationship_logits` `(2,)`, and the encoder's
    `hidden_states` / `attentions` when asked for."""

    prediction_logits: Float[Array, "n vocab"]
    seq_relationship_logits: Float[Array, "2"]
    hidden_states: HiddenStates = None
    attentions: Attentions = None


class MaskedLMOutput(eqx.Module):
    """`logits` `(seq or n, vocab)` and, when asked for, `hidden_states` / `attentions`."""

    logits: Float[Array, "n vocab"]
    hidden_states: HiddenStates = None
    attentions: Attentions = None


class CausalLMOutputWithCrossAttentions(eqx.Module):
    """`logits` `(seq, vocab)`; `past_key_values` (the updated `KVCache`) when one was given;
    `hidden_states`, `attentions` `(layers, heads, seq, kv)`, `cross_attentions` when asked for."""

    logits: Float[Array, "seq vocab"]
    past_key_values: KVCache | None = None
    hidden_states: HiddenStates = None
    attentions: Attentions = None
    cross_attentions: Float[Array, "layers heads seq enc_seq"] | None = None


class SequenceClassifierOutput(eqx.Module):
    """`logits` `(num_labels,)` and, when asked for, `hidden_states` / `attentions`."""

    logits: Float[Array, " labels"]
    hidden_states: HiddenStates = None
    attentions: Attentions = None


class MultipleChoiceModelOutput(eqx.Module):
    """`logits` `(num_choices,)`; `hidden_states` `(choices, layers + 1, seq, hidden)` and
    `attentions` `(choices, layers, heads, seq, seq)` when asked for."""

    logits: Float[Array, " choices"]
    hidden_states: Float[Array, "choices layers_plus_1 seq hidden"] | None = None
    attentions: Float[Array, "choices layers heads seq seq"] | sa.BlockedProbs | None = None


class TokenClassifierOutput(eqx.Module):
    """`logits` `(seq, num_labels)` and, when asked for, `hidden_states` / `attentions`."""

    logits: Float[Array, "seq labels"]
    hidden_states: HiddenStates = None
    attentions: Attentions = None


class BigBirdForQuestionAnsweringModelOutput(eqx.Module):
    """`start_logits`, `end_logits` `(seq,)` (question tokens pushed down by 1e6),
    `pooler_output` (always `None`: HF's QA model has no pooler by default), and
    `hidden_states` / `attentions` when asked for."""

    start_logits: Float[Array, " seq"]
    end_logits: Float[Array, " seq"]
    pooler_output: None = None
    hidden_states: HiddenStates = None
    attentions: Attentions = None


class BigBirdLMPredictionHead(eqx.Module):
    """dense -> activation -> LayerNorm -> decoder + bias (HF `cls.predictions`).

    The decoder is the word-embedding matrix when `config.tie_word_embeddings` (HF's default; the
    checkpoint then stores no decoder), else its own `(vocab, hidden)` matrix. The output bias is
    separate either way.
    """

    transform: eqx.nn.Linear
    transform_norm: eqx.nn.LayerNorm
    bias: Float[Array, " vocab"]
    decoder: eqx.nn.Linear | None
    hidden_act: str = eqx.field(static=True)

    def __init__(self, config: BigBirdConfig, *, key: PRNGKeyArray):
        kt, kd = jr.split(key)
        h, std = config.hidden_size, config.initializer_range
        self.transform = normal_linear(h, h, std=std, key=kt)
        self.transform_norm = eqx.nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.bias = jnp.zeros((config.vocab_size,))
        self.decoder = (
            None
            if config.tie_word_embeddings
            else normal_linear(h, config.vocab_size, use_bias=False, std=std, key=kd)
        )
        self.hidden_act = config.hidden_act

    def __call__(
        self, h: Float[Array, "n hidden"], word_embeddings: Float[Array, "vocab hidden"]
    ) -> Float[Array, "n vocab"]:
        x = per_token(self.transform, h)
        x = per_token(self.transform_norm, ACTIVATIONS[self.hidden_act](x))
        weight = word_embeddings if self.decoder is None else self.decoder.weight
        return _add_vocab_bias(x @ weight.T, self.bias)


@jax.custom_vjp
def _add_vocab_bias(logits, bias):
    return logits + bias[None, :].astype(logits.dtype)


def _add_vocab_bias_fwd(logits, bias):
    return _add_vocab_bias(logits, bias), bias


def _add_vocab_bias_bwd(bias, grad):
    # The bias gradient is a column sum of the (n, vocab) logits gradient; XLA:CPU's column
    # reduction over ~50k columns is ~30x slower than the same sum as a vector-matrix product.
    ones = jnp.ones((grad.shape[0],), grad.dtype)
    return grad, jnp.matmul(ones, grad, preferred_element_type=jnp.float32).astype(bias.dtype)


_add_vocab_bias.defvjp(_add_vocab_bias_fwd, _add_vocab_bias_bwd)


def _at_positions(h, positions):
    """The rows of `h` at `positions` (all rows if None): MLM training needs logits only at the
    masked tokens, so the `(n, vocab)` product is paid for `n` tokens, not the whole sequence."""
    if positions is None:
        return h
    positions = jnp.asarray(positions)
    if positions.ndim != 1 or not jnp.issubdtype(positions.dtype, jnp.integer):
        raise ValueError(
            f"positions must be a 1-D integer array, got {positions.shape} {positions.dtype}"
        )
    seq = h.shape[0]
    positions = check_values(
        positions, lambda xp, p: (p < 0) | (p >= seq),
        f"positions has values outside [0, {seq}) (the sequence length)",
    )
    return h[jnp.asarray(positions)]


def _classifier_dropout(config):
    p = config.classifier_dropout
    return config.hidden_dropout_prob if p is None else p


class AbstractHead(eqx.Module):
    """What every task head shares: the encoder as `bert`, the `inference` flag, the call's
    prologue (`_encode`), its compute dtype (`_own`), loading and export."""

    bert: BigBirdModel
    inference: bool = eqx.field(default=False, kw_only=True)

    def _init_encoder(self, config, *, key, add_pooling_layer: bool, options: dict):
        """Builds `bert` (every head's `__init__` calls this first)."""
        self.bert = BigBirdModel(config, key=key, add_pooling_layer=add_pooling_layer, **options)
        self.inference = False

    @property
    def config(self) -> BigBirdConfig:
        return self.bert.config

    def init_kwargs(self) -> dict:
        """The constructor keywords that rebuild this head's structure and options."""
        return dataclasses.asdict(self.bert.options)

    def _encode(
        self, *inputs, key, inference, **kwargs
    ) -> tuple[BigBirdModelOutput, PRNGKeyArray | None, bool]:
        """Runs the encoder on `inputs` (and `kwargs`, e.g. a decoder's cache) in the call's
        mode. **Returns:** `(encoder output, the head's own key, inference)`."""
        inference = resolve_inference(self, inference, key)
        k_bert, k_head = split_key(key)
        out = self.bert(*inputs, key=k_bert, inference=inference, **kwargs)
        return out, k_head, inference

    def _own(self, tree):
        """`tree` (a module of this head, or the tied embeddings) in the compute dtype."""
        return self.bert.options.cast(tree)

    def _word_embeddings(self) -> Float[Array, "vocab hidden"]:
        return self._own(self.bert.embeddings.word_embeddings.weight)

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        """Loads an HF BigBird directory or Hub repo id into this head (inference mode).

        The encoder comes from the checkpoint's `bert.` weights (a base-model checkpoint works
        too); with `allow_init=True` head weights the checkpoint lacks (e.g. an MLM checkpoint
        loaded into a classifier) are initialised from `key` and named in a warning, and
        `verbose=True` prints the full report, unused checkpoint keys included. Other keyword
        arguments: see `BigBirdModel.from_pretrained`.
        """
        from ._hf_load import from_pretrained

        return from_pretrained(cls, path, **kwargs)

    def save_pretrained(self, path, **kwargs) -> None:
        """Writes an HF checkpoint directory; see `eqx_bigbird.save_pretrained`."""
        from ._export import save_pretrained

        save_pretrained(self, path, **kwargs)


# -- the heads ------------------------------------------------------------------------------------


@register
class BigBirdForPreTraining(AbstractHead):
    """Masked-LM and next-sentence heads on the encoder (HF `BigBirdForPreTraining`)."""

    cls: BigBirdLMPredictionHead
    seq_relationship: eqx.nn.Linear

    def __init__(self, config: BigBirdConfig, *, key: PRNGKeyArray, **options):
        """**Arguments:** `config`, `key`, execution options (see `ExecutionOptions`)."""
        kb, kc, ks = jr.split(key, 3)
        self._init_encoder(config, key=kb, add_pooling_layer=True, options=options)
        self.cls = BigBirdLMPredictionHead(config, key=kc)
        self.seq_relationship = normal_linear(
            config.hidden_size, 2, std=config.initializer_range, key=ks
        )

    @one_example()
    def __call__(
        self,
        input_ids: Int[ArrayLike, " seq"],
        attention_mask: MaskLike = None,
        token_type_ids: Int[ArrayLike, " seq"] | None = None,
        position_ids: Int[ArrayLike, " seq"] | None = None,
        head_mask: HeadMask = None,
        *,
        positions: Int[ArrayLike, " n"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        output_hidden_states: bool = False,
        output_attentions: OutputAttentions = False,
    ) -> BigBirdForPreTrainingOutput:
        """MLM logits and next-sentence logits of one sequence.

        **Arguments:** as `BigBirdModel`, plus `positions`: `(n,)` token indices at which to
        compute the MLM logits (default: every token).

        **Returns:** a `BigBirdForPreTrainingOutput`.
        """
        out, _, _ = self._encode(
            input_ids, attention_mask, token_type_ids, position_ids, head_mask, key=key,
            inference=inference, output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        h = _at_positions(out.last_hidden_state, positions)
        return BigBirdForPreTrainingOutput(
            prediction_logits=self._own(self.cls)(h, self._word_embeddings()),
            seq_relationship_logits=self._own(self.seq_relationship)(out.pooler_output),
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


@register
class BigBirdForMaskedLM(AbstractHead):
    """The masked-LM head on the encoder (HF `BigBirdForMaskedLM`)."""

    cls: BigBirdLMPredictionHead

    def __init__(self, config: BigBirdConfig, *, key: PRNGKeyArray, **options):
        """**Arguments:** `config`, `key`, execution options (see `ExecutionOptions`)."""
        kb, kc = jr.split(key)
        self._init_encoder(config, key=kb, add_pooling_layer=False, options=options)
        self.cls = BigBirdLMPredictionHead(config, key=kc)

    @one_example()
    def __call__(
        self,
        input_ids: Int[ArrayLike, " seq"],
        attention_mask: MaskLike = None,
        token_type_ids: Int[ArrayLike, " seq"] | None = None,
        position_ids: Int[ArrayLike, " seq"] | None = None,
        head_mask: HeadMask = None,
        *,
        positions: Int[ArrayLike, " n"] | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        output_hidden_states: bool = False,
        output_attentions: OutputAttentions = False,
    ) -> MaskedLMOutput:
        """MLM logits of one sequence.

        **Arguments:** as `BigBirdModel`, plus `positions`: `(n,)` token indices at which to
        compute the logits (default: every token).

        **Returns:** a `MaskedLMOutput` (`logits`: `(seq, vocab)`, or `(n, vocab)`).
        """
        out, _, _ = self._encode(
            input_ids, attention_mask, token_type_ids, position_ids, head_mask, key=key,
            inference=inference, output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        h = _at_positions(out.last_hidden_state, positions)
        return MaskedLMOutput(
            logits=self._own(self.cls)(h, self._word_embeddings()),
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


@register
class BigBirdForCausalLM(AbstractHead):
    """The LM head on a decoder (HF `BigBirdForCausalLM`): causal self-attention, optional
    cross-attention to an encoder's states, and a `KVCache` for incremental decoding (see
    `eqx_bigbird.generate`).

    Decoders always run full attention (`BigBirdConfig.self_attention_type`). A config with
    `attention_type="block_sparse"` is accepted with a warning and runs full attention on the same
    weights. (HF PyTorch switches to full attention only when `add_cross_attention`; otherwise it
    runs a non-causal block-sparse "decoder" on long inputs. HF Flax silently drops encoder states
    in block-sparse. We do neither.) Set `is_decoder=True` for causal attention, as HF requires.

    With encoder states we compute what HF Flax computes. HF PyTorch 4.57 differs: its layer also
    hands `encoder_hidden_states` to the self-attention (which then attends to the encoder instead
    of causally to the decoder) and runs the cross-attention without `encoder_attention_mask`.
    """

    cls: BigBirdLMPredictionHead
    generation_config: GenerationConfig | None = eqx.field(static=True, default=None, kw_only=True)

    def __init__(
        self,
        config: BigBirdConfig,
        *,
        key: PRNGKeyArray,
        generation_config: GenerationConfig | None = None,
        **options,
    ):
        """**Arguments:** `config`, `key`, `generation_config` (`generate`'s defaults; `None`:
        the generation keys of `config`), execution options (see `ExecutionOptions`)."""
        kb, kc = jr.split(key)
        self._init_encoder(config, key=kb, add_pooling_layer=False, options=options)
        self.cls = BigBirdLMPredictionHead(config, key=kc)
        self.generation_config = generation_config

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        """As `AbstractHead.from_pretrained`; also reads the directory's
        `generation_config.json`, if any, into `generation_config` (as HF does)."""
        if "generation_config" not in kwargs:
            hub = {k: kwargs.pop(k) for k in HUB_OPTIONS if k in kwargs}
            path = local_path(path, "model", **hub)  # a Hub id -> its snapshot directory
            if os.path.isdir(path):
                kwargs["generation_config"] = GenerationConfig.from_pretrained(path)
        return super().from_pretrained(path, **kwargs)

    def save_pretrained(self, path, **kwargs) -> None:
        """As `AbstractHead.save_pretrained`, plus `generation_config.json` when one is set."""
        super().save_pretrained(path, **kwargs)
        if self.generation_config is not None:
            self.generation_config.save(path)

    @one_example()
    def __call__(
        self,
        input_ids: Int[ArrayLike, " seq"],
        attention_mask: MaskLike = None,
        token_type_ids: Int[ArrayLike, " seq"] | None = None,
        position_ids: Int[ArrayLike, " seq"] | None = None,
        head_mask: HeadMask = None,
        *,
        encoder_hidden_states: Float[ArrayLike, "enc_seq hidden"] | None = None,
        encoder_attention_mask: Int[ArrayLike, " enc_seq"] | Bool[ArrayLike, " enc_seq"]
        | None = None,
        past_key_values: KVCache | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        output_hidden_states: bool = False,
        output_attentions: OutputAttentions = False,
    ) -> CausalLMOutputWithCrossAttentions:
        """Next-token logits of one sequence (or of the next tokens, given a cache).

        **Arguments:** as `BigBirdModel` (`encoder_hidden_states`, `encoder_attention_mask`,
        `past_key_values` included). With a cache, `attention_mask` covers the new tokens only
        (the cache remembers the earlier ones).

        **Returns:** a `CausalLMOutputWithCrossAttentions`.
        """
        out, _, _ = self._encode(
            input_ids, attention_mask, token_type_ids, position_ids, head_mask, key=key,
            inference=inference, output_hidden_states=output_hidden_states,
            output_attentions=output_attentions, encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask, past_key_values=past_key_values,
        )
        return CausalLMOutputWithCrossAttentions(
            logits=self._own(self.cls)(out.last_hidden_state, self._word_embeddings()),
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            cross_attentions=out.cross_attentions,
        )

    # -- the decoding protocol of `eqx_bigbird.generate` --

    def prepare_decoding(
        self,
        input_ids: Int[ArrayLike, " prompt"],
        attention_mask: Int[ArrayLike, " prompt"] | Bool[ArrayLike, " prompt"],
        max_new_tokens: int,
        *,
        encoder_hidden_states: Float[ArrayLike, "enc_seq hidden"] | None = None,
        encoder_attention_mask: Int[ArrayLike, " enc_seq"] | Bool[ArrayLike, " enc_seq"]
        | None = None,
    ) -> tuple[dict, tuple[KVCache, Int[Array, ""]], Float[Array, " vocab"]]:
        """Runs the prompt into a `KVCache` with room for `max_new_tokens` more positions, in
        inference mode. Positions follow HF's `generate`: `cumsum(attention_mask) - 1` over the
        prompt (1 on padding), then one more per new token.

        **Returns:** `(shared, state, logits)`: the encoder states (for cross-attention) as
        `shared`, `(cache, next position)` as `state`, and the next-token logits.
        """
        mask = jnp.asarray(attention_mask).astype(jnp.int32)
        positions = jnp.where(mask == 0, 1, jnp.cumsum(mask) - 1).astype(jnp.int32)
        if not self.config.is_decoder:
            raise ValueError("decoding needs a decoder config (is_decoder=True)")
        cache = KVCache.empty(self.config, mask.shape[0] + max_new_tokens)
        shared = {
            "encoder_hidden_states": encoder_hidden_states,
            "encoder_attention_mask": encoder_attention_mask,
        }
        out = self(
            input_ids, mask, position_ids=positions, past_key_values=cache, inference=True,
            **shared,
        )
        return shared, (out.past_key_values, jnp.sum(mask).astype(jnp.int32)), out.logits[-1]

    def decode_step(
        self, shared: dict, state: tuple[KVCache, Int[Array, ""]], token: Int[Array, ""]
    ) -> tuple[tuple[KVCache, Int[Array, ""]], Float[Array, " vocab"]]:
        """Appends `token` at the state's position. **Returns:** `(state, next-token logits)`."""
        cache, position = state
        out = self(
            token[None], jnp.ones((1,), jnp.int32), position_ids=position[None],
            past_key_values=cache, inference=True, **shared,
        )
        return (out.past_key_values, position + 1), out.logits[0].astype(jnp.float32)


class BigBirdClassificationHead(eqx.Module):
    """HF BigBird's sentence classifier: first token -> dropout -> dense -> activation ->
    dropout -> out_proj (it does not use the pooler)."""

    dense: eqx.nn.Linear
    out_proj: eqx.nn.Linear
    dropout: eqx.nn.Dropout
    hidden_act: str = eqx.field(static=True)

    def __init__(self, config: BigBirdConfig, *, key: PRNGKeyArray):
        kd, ko = jr.split(key)
        h, std = config.hidden_size, config.initializer_range
        self.dense = normal_linear(h, h, std=std, key=kd)
        self.out_proj = normal_linear(h, config.num_labels, std=std, key=ko)
        self.dropout = eqx.nn.Dropout(_classifier_dropout(config))
        self.hidden_act = config.hidden_act

    def __call__(
        self, h: Float[Array, "seq hidden"], *, key: PRNGKeyArray | None, inference: bool
    ) -> Float[Array, " labels"]:
        k1, k2 = split_key(key)
        x = self.dropout(h[0], key=k1, inference=inference)
        x = ACTIVATIONS[self.hidden_act](self.dense(x))
        x = self.dropout(x, key=k2, inference=inference)
        return self.out_proj(x)


@register
class BigBirdForSequenceClassification(AbstractHead):
    """Sequence classification / regression (HF `BigBirdForSequenceClassification`);
    `config.num_labels` outputs (see `eqx_bigbird.sequence_classification_loss` for the loss per
    `config.problem_type`)."""

    classifier: BigBirdClassificationHead

    def __init__(self, config: BigBirdConfig, *, key: PRNGKeyArray, **options):
        """**Arguments:** `config`, `key`, execution options (see `ExecutionOptions`)."""
        kb, kc = jr.split(key)
        # HF computes (and stores) a pooler here that the classifier never reads.
        self._init_encoder(config, key=kb, add_pooling_layer=True, options=options)
        self.classifier = BigBirdClassificationHead(config, key=kc)

    @one_example()
    def __call__(
        self,
        input_ids: Int[ArrayLike, " seq"],
        attention_mask: MaskLike = None,
        token_type_ids: Int[ArrayLike, " seq"] | None = None,
        position_ids: Int[ArrayLike, " seq"] | None = None,
        head_mask: HeadMask = None,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        output_hidden_states: bool = False,
        output_attentions: OutputAttentions = False,
    ) -> SequenceClassifierOutput:
        """Class logits (or regression outputs) of one sequence.

        **Arguments:** as `BigBirdModel`.

        **Returns:** a `SequenceClassifierOutput` (`logits`: `(num_labels,)`).
        """
        out, k_head, inference = self._encode(
            input_ids, attention_mask, token_type_ids, position_ids, head_mask, key=key,
            inference=inference, output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        classifier = self._own(self.classifier)
        return SequenceClassifierOutput(
            logits=classifier(out.last_hidden_state, key=k_head, inference=inference),
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


@register
class BigBirdForMultipleChoice(AbstractHead):
    """Multiple choice (HF `BigBirdForMultipleChoice`): each choice is encoded, its pooled output
    goes through dropout and a dense layer to one score. One example is `(num_choices, seq)`."""

    classifier: eqx.nn.Linear
    dropout: eqx.nn.Dropout

    def __init__(self, config: BigBirdConfig, *, key: PRNGKeyArray, **options):
        """**Arguments:** `config`, `key`, execution options (see `ExecutionOptions`)."""
        kb, kc = jr.split(key)
        self._init_encoder(config, key=kb, add_pooling_layer=True, options=options)
        self.classifier = normal_linear(config.hidden_size, 1, std=config.initializer_range, key=kc)
        self.dropout = eqx.nn.Dropout(config.hidden_dropout_prob)

    @one_example(rank=2)
    def __call__(
        self,
        input_ids: Int[ArrayLike, "choices seq"],
        attention_mask: Int[ArrayLike, "choices seq"] | Bool[ArrayLike, "choices seq"]
        | None = None,
        token_type_ids: Int[ArrayLike, "choices seq"] | None = None,
        position_ids: Int[ArrayLike, "choices seq"] | None = None,
        head_mask: HeadMask = None,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        output_hidden_states: bool = False,
        output_attentions: OutputAttentions = False,
    ) -> MultipleChoiceModelOutput:
        """Scores of the choices of one example.

        **Arguments:** as `BigBirdModel`, each `(num_choices, seq)`.

        **Returns:** a `MultipleChoiceModelOutput` (`logits`: `(num_choices,)`).
        """
        inference = resolve_inference(self, inference, key)
        input_ids = jnp.asarray(input_ids)
        k_bert, k_drop = split_key(key)
        keys = None if k_bert is None else jr.split(k_bert, input_ids.shape[0])

        def encode(ids, mask, types, pos, k):
            return self.bert(
                ids, mask, types, pos, head_mask, key=k, inference=inference,
                output_hidden_states=output_hidden_states, output_attentions=output_attentions,
            )

        optional = [
            None if a is None else jnp.asarray(a)
            for a in (attention_mask, token_type_ids, position_ids)
        ]
        out = jax.vmap(encode)(input_ids, *optional, keys)
        pooled = self.dropout(out.pooler_output, key=k_drop, inference=inference)
        return MultipleChoiceModelOutput(
            logits=per_token(self._own(self.classifier), pooled)[:, 0],
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


@register
class BigBirdForTokenClassification(AbstractHead):
    """Per-token classification (HF `BigBirdForTokenClassification`): dropout, dense."""

    classifier: eqx.nn.Linear
    dropout: eqx.nn.Dropout

    def __init__(self, config: BigBirdConfig, *, key: PRNGKeyArray, **options):
        """**Arguments:** `config`, `key`, execution options (see `ExecutionOptions`)."""
        kb, kc = jr.split(key)
        self._init_encoder(config, key=kb, add_pooling_layer=False, options=options)
        self.classifier = normal_linear(
            config.hidden_size, config.num_labels, std=config.initializer_range, key=kc
        )
        self.dropout = eqx.nn.Dropout(_classifier_dropout(config))

    @one_example()
    def __call__(
        self,
        input_ids: Int[ArrayLike, " seq"],
        attention_mask: MaskLike = None,
        token_type_ids: Int[ArrayLike, " seq"] | None = None,
        position_ids: Int[ArrayLike, " seq"] | None = None,
        head_mask: HeadMask = None,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        output_hidden_states: bool = False,
        output_attentions: OutputAttentions = False,
    ) -> TokenClassifierOutput:
        """Label logits for every token of one sequence.

        **Arguments:** as `BigBirdModel`.

        **Returns:** a `TokenClassifierOutput` (`logits`: `(seq, num_labels)`).
        """
        out, k_drop, inference = self._encode(
            input_ids, attention_mask, token_type_ids, position_ids, head_mask, key=key,
            inference=inference, output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        h = self.dropout(out.last_hidden_state, key=k_drop, inference=inference)
        return TokenClassifierOutput(
            logits=per_token(self._own(self.classifier), h),
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


class BigBirdQuestionAnsweringHead(eqx.Module):
    """HF's QA head: dropout -> intermediate (dense, activation) -> output (dense, dropout,
    residual LayerNorm) -> dense to 2 (start, end)."""

    intermediate: eqx.nn.Linear
    output: eqx.nn.Linear
    output_norm: eqx.nn.LayerNorm
    qa_outputs: eqx.nn.Linear
    dropout: eqx.nn.Dropout
    hidden_act: str = eqx.field(static=True)

    def __init__(self, config: BigBirdConfig, *, key: PRNGKeyArray):
        ki, ko, kq = jr.split(key, 3)
        h, i, std = config.hidden_size, config.intermediate_size, config.initializer_range
        self.intermediate = normal_linear(h, i, std=std, key=ki)
        self.output = normal_linear(i, h, std=std, key=ko)
        self.output_norm = eqx.nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.qa_outputs = normal_linear(h, 2, std=std, key=kq)
        self.dropout = eqx.nn.Dropout(config.hidden_dropout_prob)
        self.hidden_act = config.hidden_act

    def __call__(
        self, h: Float[Array, "seq hidden"], *, key: PRNGKeyArray | None, inference: bool
    ) -> Float[Array, "seq 2"]:
        k1, k2 = split_key(key)
        x = self.dropout(h, key=k1, inference=inference)
        x = ACTIVATIONS[self.hidden_act](per_token(self.intermediate, x))
        # HF PyTorch drops out here in training (HF Flax never does: a missing `deterministic`).
        x = self.dropout(per_token(self.output, x), key=k2, inference=inference)
        return per_token(self.qa_outputs, per_token(self.output_norm, x + h))


@register
class BigBirdForQuestionAnswering(AbstractHead):
    """Extractive QA (HF `BigBirdForQuestionAnswering`): start and end logits per token, with the
    question's tokens (except [CLS]) pushed down by 1e6 as HF does. `config.num_labels` is set to 2.
    """

    qa_classifier: BigBirdQuestionAnsweringHead

    def __init__(self, config: BigBirdConfig, *, key: PRNGKeyArray, **options):
        """**Arguments:** `config`, `key`, execution options (see `ExecutionOptions`)."""
        if config.num_labels != 2:
            config = config.replace(num_labels=2)  # HF forces it as well
        kb, kq = jr.split(key)
        self._init_encoder(config, key=kb, add_pooling_layer=False, options=options)
        self.qa_classifier = BigBirdQuestionAnsweringHead(config, key=kq)

    @one_example()
    def __call__(
        self,
        input_ids: Int[ArrayLike, " seq"],
        attention_mask: MaskLike = None,
        question_lengths: Int[ArrayLike, ""] | None = None,
        token_type_ids: Int[ArrayLike, " seq"] | None = None,
        position_ids: Int[ArrayLike, " seq"] | None = None,
        head_mask: HeadMask = None,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        output_hidden_states: bool = False,
        output_attentions: OutputAttentions = False,
    ) -> BigBirdForQuestionAnsweringModelOutput:
        """Span start/end logits of one `[CLS] question [SEP] context [SEP]` sequence.

        **Arguments:** as `BigBirdModel`, plus `question_lengths`: `()` the number of leading
        tokens that are the question (default, as HF: up to and including the first
        `sep_token_id`). Tokens `1 .. question_lengths - 1` get `-1e6` on both logits ([CLS] is
        kept, for "no answer"); default `token_type_ids` are 0 there and on [CLS], 1 after.

        **Returns:** a `BigBirdForQuestionAnsweringModelOutput`.
        """
        input_ids = jnp.asarray(input_ids)
        in_question = self._question(input_ids, question_lengths)
        if in_question is not None and token_type_ids is None:
            token_type_ids = (~in_question).astype(jnp.int32)
        out, k_head, inference = self._encode(
            input_ids, attention_mask, token_type_ids, position_ids, head_mask, key=key,
            inference=inference, output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        qa = self._own(self.qa_classifier)
        logits = qa(out.last_hidden_state, key=k_head, inference=inference)
        if in_question is not None:
            pushed = in_question.at[0].set(False)  # [CLS] stays, for "no answer"
            logits = logits - pushed[:, None].astype(logits.dtype) * 1e6
        return BigBirdForQuestionAnsweringModelOutput(
            start_logits=logits[:, 0],
            end_logits=logits[:, 1],
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )

    def _question(self, input_ids, question_lengths) -> Bool[Array, " seq"] | None:
        """Which tokens are the question (HF's default: through the first `sep_token_id`)."""
        if question_lengths is None:
            if self.config.sep_token_id is None:
                return None
            question_lengths = jnp.argmax(input_ids == self.config.sep_token_id) + 1
        q_len = jnp.asarray(question_lengths)
        if q_len.shape != ():
            raise ValueError(f"question_lengths must be a scalar per example, got {q_len.shape}")
        if not jnp.issubdtype(q_len.dtype, jnp.integer):
            raise ValueError(f"question_lengths must be an integer, got dtype {q_len.dtype}")
        return jnp.arange(input_ids.shape[-1]) < q_len.astype(jnp.int32)
