"""`BigBirdModel`: the encoder (or decoder) called on one example, as a short pipeline of stages."""

import dataclasses
import typing
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, Real

from . import sparse_attention as sa
from ._attention import OutputAttentions
from ._config import BigBirdConfig
from ._layers import BigBirdEmbeddings, BigBirdEncoder, ExecutionOptions, LayerOutput
from ._nn import check_values, normal_linear, one_example, resolve_inference, split_key
from ._registry import register

MaskLike = Int[ArrayLike, " seq"] | Bool[ArrayLike, " seq"]


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
    - `attentions`: `(layers, heads, seq, kv)` attention maps (block-sparse ones densified), or
      with `output_attentions="blocked"` a `sparse_attention.BlockedProbs` stacked over layers;
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


class _Inputs(typing.NamedTuple):
    """One example's checked inputs: int32 ids, float32 mask."""

    ids: Int[Array, " seq"]
    mask: Float[Array, " seq"]
    types: Int[Array, " seq"]
    positions: Int[Array, " seq"]


def checked_ids(
    x, name: str, seq: int, upper: int, limit: str = "vocab_size"
) -> Int[Array, " seq"]:
    """`x` as int32 ids of shape `(seq,)`. Ids outside `[0, upper)` raise, also under jit; on the
    host they are checked before the cast, so an int64 id of 2**32 + 7 is not read as 7 (traced
    ids are int32 already: JAX without x64 casts when the array is made)."""
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be integer ids, got a {type(x).__name__}")
    if not isinstance(x, jax.Array):
        x = np.asarray(x)
    if x.shape != (seq,):
        raise ValueError(f"{name} has shape {x.shape}, expected ({seq},) like input_ids")
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(f"{name} must hold integers, got dtype {x.dtype}")
    x = check_values(
        x, lambda xp, v: (v < 0) | (v >= upper),
        f"{name} has values outside [0, {upper}) ({limit}={upper})",
    )
    return jnp.asarray(x).astype(jnp.int32)


def checked_mask(mask, name: str, seq: int) -> Float[Array, " seq"]:
    """A 0/1 (int or bool) mask of shape `(seq,)` as float32; all ones when `None`. Other values
    (2, -1) raise, also under jit: they would scale the attention scores."""
    if mask is None:
        return jnp.ones((seq,), jnp.float32)
    if isinstance(mask, (str, bytes)):
        raise TypeError(f"{name} must be 0/1 ints or bools, got a {type(mask).__name__}")
    if not isinstance(mask, jax.Array):
        mask = np.asarray(mask)
    if mask.shape != (seq,):
        raise ValueError(f"{name} has shape {mask.shape}, expected ({seq},)")
    if mask.dtype != jnp.bool_:
        if not jnp.issubdtype(mask.dtype, jnp.integer):
            raise ValueError(f"{name} must be 0/1 ints or bools, got {mask.dtype}")
        mask = check_values(
            mask, lambda xp, m: (m != 0) & (m != 1), f"{name} must hold only 0 and 1"
        )
    return jnp.asarray(mask).astype(jnp.float32)


def _pad(inputs: _Inputs, padded: int, config: BigBirdConfig) -> _Inputs:
    """Right-pads to `padded` tokens. Padding is masked out as keys and zeroed as queries, so its
    ids and positions never reach the real tokens' outputs."""
    seq = inputs.ids.shape[0]
    if padded == seq:
        return inputs
    pad = padded - seq
    pad_id = config.pad_token_id
    pad_id = pad_id if pad_id is not None and pad_id < config.vocab_size else 0
    last = min(padded, config.max_position_embeddings) - 1
    extra_positions = jnp.minimum(jnp.arange(seq, padded), last).astype(jnp.int32)
    return _Inputs(
        ids=jnp.pad(inputs.ids, (0, pad), constant_values=pad_id),
        mask=jnp.pad(inputs.mask, (0, pad)),
        types=jnp.pad(inputs.types, (0, pad)),
        positions=jnp.concatenate([inputs.positions, extra_positions]),
    )


def layer_plans(config, options, seq, padded, random_plan, key, inference):
    """The random blocks every layer of an encoder with `config` (a `BigBirdConfig`) attends, for
    a call on `seq` tokens run at `padded`: `None` where the call runs full attention; an
    explicit `random_plan`; the paper's fixed plan (`random_attention="fixed"`); HF's eval
    plan in inference; else a fresh plan per layer, head and row drawn from `key`."""
    c = config
    if not c.uses_block_sparse(seq):
        if random_plan is not None:
            raise ValueError(
                f"random_plan was given, but {seq} tokens run full attention "
                f"(attention_type={c.attention_type!r}, block-sparse needs more than "
                f"{c.max_tokens_for_full_attention} tokens)"
            )
        return None
    nb, r = padded // c.block_size, c.num_random_blocks
    if random_plan is not None:
        random_plan = jnp.asarray(random_plan, jnp.int32)
        expected = (c.num_hidden_layers, c.num_attention_heads, nb - 2, r)
        if random_plan.shape != expected:
            raise ValueError(
                f"random_plan has shape {random_plan.shape}, expected {expected} for {padded} "
                "(padded) tokens"
            )
        # A block index outside the sequence would be clamped by the gather, silently.
        return check_values(
            random_plan, lambda xp, p: (p < 0) | (p >= nb),
            f"random_plan has block indices outside [0, {nb}) ({padded} padded tokens)",
        )
    if options.random_attention == "fixed":
        return jnp.asarray(np.stack([
            sa.paper_plan(
                i, c.num_attention_heads, padded, c.block_size, r,
                max_position_embeddings=c.max_position_embeddings,
            )
            for i in range(c.num_hidden_layers)
        ]))
    if inference:
        return sa.EvalPlan(r)
    draw = lambda k: sa.random_plan(k, c.num_attention_heads, nb, r)  # noqa: E731
    return jax.vmap(draw)(jr.split(key, c.num_hidden_layers))


@register
class BigBirdModel(eqx.Module):
    """The BigBird encoder (HF `BigBirdModel` / `FlaxBigBirdModel`), called on ONE example.

    Batches: `jax.vmap(model)(input_ids, ...)` (or `eqx.filter_vmap`).
    `eqx.nn.inference_mode(model)` turns off dropout and random attention everywhere; outside
    inference mode every call needs a `key`. Sequences whose length is not a multiple of
    `block_size` are padded internally (block-sparse) and every output is un-padded.
    """

    embeddings: BigBirdEmbeddings
    encoder: BigBirdEncoder
    pooler: eqx.nn.Linear | None
    config: BigBirdConfig = eqx.field(static=True)
    options: ExecutionOptions = eqx.field(static=True)
    inference: bool = False

    def __init__(
        self, config: BigBirdConfig, *, key: PRNGKeyArray, add_pooling_layer: bool = True, **options
    ):
        """**Arguments:** `config`; `key` for the initial weights; `add_pooling_layer`; execution
        options (`scan_layers`, `gradient_checkpointing`, `compute_dtype`, `random_attention`,
        see `ExecutionOptions`)."""
        if config.add_cross_attention and not config.is_decoder:
            raise ValueError("add_cross_attention=True needs is_decoder=True (as in HF BigBird)")
        if config.decoder_attention and config.attention_type == "block_sparse":
            warnings.warn(
                "BigBird decoder (is_decoder/add_cross_attention) with attention_type="
                "'block_sparse': using full (causal) attention, since block-sparse attention "
                "cannot be causal, cached or cross-attend (same weights; HF PyTorch switches "
                "likewise for cross-attention)",
                stacklevel=2,
            )
        ke, kl, kp = jr.split(key, 3)
        self.config = config
        self.options = ExecutionOptions(**options)
        self.embeddings = BigBirdEmbeddings(config, key=ke)
        self.encoder = BigBirdEncoder(config, key=kl)
        h = config.hidden_size
        self.pooler = (
            normal_linear(h, h, std=config.initializer_range, key=kp) if add_pooling_layer else None
        )
        self.inference = False

    def uses_block_sparse(self, seq_len: int) -> bool:
        """Whether a call on `seq_len` tokens runs block-sparse (else: full attention)."""
        return self.config.uses_block_sparse(seq_len)

    def padded_length(self, seq_len: int) -> int:
        """The length the encoder actually runs at (a multiple of block_size when block-sparse)."""
        return self.config.padded_length(seq_len)

    def init_kwargs(self) -> dict:
        """The constructor keywords that rebuild this model's structure and options."""
        return {"add_pooling_layer": self.pooler is not None, **dataclasses.asdict(self.options)}

    @one_example()
    def __call__(
        self,
        input_ids: Int[ArrayLike, " seq"],
        attention_mask: MaskLike | None = None,
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
        inference = resolve_inference(self, inference, key)
        start = self._cache_start(past_key_values, jnp.shape(input_ids)[0])
        inputs = self._check_inputs(input_ids, attention_mask, token_type_ids, position_ids, start)
        encoder_states, encoder_mask = self._check_cross(
            encoder_hidden_states, encoder_attention_mask
        )
        seq = inputs.ids.shape[0]
        inputs = _pad(inputs, self.config.padded_length(seq), self.config)
        k_emb, k_enc, k_plan = split_key(key, 3)
        plans = self._plans(seq, inputs.ids.shape[0], random_plan, k_plan, inference)
        self_mask, slots = self._self_attention_mask(inputs.mask, past_key_values, start)
        cache = None if past_key_values is None else (past_key_values.key, past_key_values.value)
        x = self.embeddings(
            inputs.ids, inputs.types, inputs.positions, key=k_emb, inference=inference
        )
        h, layers = self.encoder(
            x, self_mask, options=self.options, plans=plans, head_mask=self._head_mask(head_mask),
            key=k_enc, inference=inference, output_hidden_states=output_hidden_states,
            output_attentions=output_attentions, encoder_states=encoder_states,
            encoder_mask=encoder_mask, cache=cache, cache_index=None if cache is None else start,
        )
        new_cache = None
        if past_key_values is not None:
            k, v = layers.cache
            new_cache = KVCache(key=k, value=v, mask=slots, index=start + seq)
        return self._outputs(seq, x, h, layers, new_cache)

    # -- the stages ----------------------------------------------------------------------------

    def _cache_start(self, cache: KVCache | None, seq: int) -> Int[Array, ""]:
        """The position of the first new token: the cache's index, or 0."""
        if cache is None:
            return jnp.zeros((), jnp.int32)
        if not self.config.is_decoder:
            raise ValueError("past_key_values (a KV cache) needs a decoder (config.is_decoder)")
        full = cache.index + seq > cache.mask.shape[0]
        return eqx.error_if(cache.index, full, "KV cache full: more tokens than its max_length")

    def _check_inputs(self, input_ids, attention_mask, token_type_ids, position_ids, start):
        """Shapes, dtypes and id ranges of one example's inputs, with HF's defaults."""
        c = self.config
        seq = jnp.shape(input_ids)[0]
        if seq == 0:
            raise ValueError("input_ids is empty")
        if seq > c.max_position_embeddings:
            raise ValueError(
                f"sequence length {seq} exceeds max_position_embeddings={c.max_position_embeddings}"
            )
        if token_type_ids is None:
            token_type_ids = jnp.zeros((seq,), jnp.int32)
        if position_ids is None:
            position_ids = start + jnp.arange(seq, dtype=jnp.int32)
        return _Inputs(
            ids=checked_ids(input_ids, "input_ids", seq, c.vocab_size, "vocab_size"),
            mask=checked_mask(attention_mask, "attention_mask", seq),
            types=checked_ids(
                token_type_ids, "token_type_ids", seq, c.type_vocab_size, "type_vocab_size"
            ),
            positions=checked_ids(
                position_ids, "position_ids", seq, c.max_position_embeddings,
                "max_position_embeddings",
            ),
        )

    def _check_cross(self, states, mask):
        """Encoder states to cross-attend to, never silently ignored (HF Flax drops them in
        block-sparse; HF PT in encoders)."""
        if states is None:
            if mask is not None:
                raise ValueError("encoder_attention_mask given without encoder_hidden_states")
            return None, None
        if not self.config.add_cross_attention:
            raise ValueError(
                "encoder_hidden_states given, but config.add_cross_attention is False: the "
                "model has no cross-attention to use them"
            )
        states = jnp.asarray(states)
        if states.ndim != 2 or states.shape[1] != self.config.hidden_size:
            raise ValueError(
                f"encoder_hidden_states has shape {states.shape}, expected "
                f"(enc_seq, {self.config.hidden_size})"
            )
        return states, checked_mask(mask, "encoder_attention_mask", states.shape[0])

    def _head_mask(self, head_mask) -> Float[Array, "layers heads"] | None:
        if head_mask is None:
            return None
        c = self.config
        shapes = ((c.num_hidden_layers, c.num_attention_heads), (c.num_attention_heads,))
        if jnp.shape(head_mask) not in shapes:
            raise ValueError(
                f"head_mask has shape {jnp.shape(head_mask)}, expected (layers, heads) = "
                f"{shapes[0]} or (heads,) = {shapes[1]}"
            )
        head_mask = jnp.asarray(head_mask)
        if not (jnp.issubdtype(head_mask.dtype, jnp.number) or head_mask.dtype == jnp.bool_):
            raise ValueError(f"head_mask must hold numbers, got dtype {head_mask.dtype}")
        head_mask = head_mask.astype(jnp.float32)
        return jnp.broadcast_to(head_mask, shapes[0])

    def _plans(self, seq, padded, random_plan, key, inference):
        return layer_plans(self.config, self.options, seq, padded, random_plan, key, inference)

    def _self_attention_mask(self, mask, cache: KVCache | None, start):
        """`(self-attention mask, cache slot mask)`: an encoder's `(seq,)` key mask, or a decoder's
        causal `(seq, kv)` mask over its own tokens or the cache's slots (HF's causal mask times
        the padding mask), with the new tokens' mask written into the cache's slots."""
        if not self.config.is_decoder:
            return mask, None
        slots = None
        if cache is not None:
            slots = jax.lax.dynamic_update_slice(cache.mask, mask, (start,))
        keys_mask = mask if slots is None else slots
        query_pos = start + jnp.arange(mask.shape[0], dtype=jnp.int32)
        key_pos = jnp.arange(keys_mask.shape[0], dtype=jnp.int32)
        causal = (key_pos[None, :] <= query_pos[:, None]).astype(jnp.float32)
        return causal * keys_mask[None, :], slots

    def _outputs(self, seq, x, h, layers: LayerOutput, cache) -> BigBirdModelOutput:
        """Pools and un-pads every output to the caller's `seq` tokens."""
        pooled = None
        if self.pooler is not None:
            pooled = jnp.tanh(self.options.cast(self.pooler)(h[0]))
        hidden = layers.hidden
        if hidden is not None:
            hidden = jnp.concatenate([x[None].astype(hidden.dtype), hidden], axis=0)[:, :seq]
        attentions = layers.attentions
        if isinstance(attentions, sa.BlockedProbs):
            attentions = dataclasses.replace(attentions, length=seq)
        elif attentions is not None and h.shape[0] > seq:  # padded: block-sparse encoders only
            attentions = attentions[:, :, :seq, :seq]
        return BigBirdModelOutput(
            last_hidden_state=h[:seq],
            pooler_output=pooled,
            hidden_states=hidden,
            attentions=attentions,
            cross_attentions=layers.cross_attentions,
            past_key_values=cache,
        )

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "BigBirdModel":
        """Loads an HF BigBird directory (`config.json` + `model.safetensors` or
        `flax_model.msgpack`) or a Hub repo id (`"google/bigbird-roberta-base"`, through the HF
        cache; `revision=`, `cache_dir=`, `local_files_only=`, `token=`); see
        `eqx_bigbird._hf_load.from_pretrained` for the keywords. The model comes back in
        inference mode, like HF's `from_pretrained`."""
        from ._hf_load import from_pretrained

        return from_pretrained(cls, path, **kwargs)

    def save_pretrained(self, path, **kwargs) -> None:
        """Writes an HF checkpoint directory (`config.json`, `model.safetensors`, and with
        `flax=True` `flax_model.msgpack`); see `eqx_bigbird.save_pretrained`."""
        from ._export import save_pretrained

        save_pretrained(self, path, **kwargs)


def with_options(model, **changes):
    """`model` (a `BigBirdModel` or a BigBird-Pegasus model, or any module holding one: a task
    head) with new execution options (`ExecutionOptions` fields); the weights are shared.

    E.g. `with_options(head, gradient_checkpointing="dots_with_no_batch_dims_saveable",
    compute_dtype="bfloat16")` before building a train step.
    """
    unknown = set(changes) - {f.name for f in dataclasses.fields(ExecutionOptions)}
    if unknown:
        raise TypeError(f"with_options: unknown option(s) {sorted(unknown)}")

    def change(node):
        if not is_model(node):
            return node
        new = object.__new__(type(node))  # a copy with one static field changed
        for f in dataclasses.fields(node):
            object.__setattr__(new, f.name, getattr(node, f.name))
        object.__setattr__(new, "options", dataclasses.replace(node.options, **changes))
        return new

    # Every module that owns options: `BigBirdModel`, the Pegasus base model and causal LM.
    is_model = lambda x: isinstance(x, eqx.Module) and isinstance(  # noqa: E731
        getattr(x, "options", None), ExecutionOptions
    )
    return jax.tree_util.tree_map(change, model, is_leaf=is_model)
