"""Incremental decoding with a key/value cache: `init_cache` and a jit-compiled `generate`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from ._config import BigBirdConfig
from ._heads import BigBirdForCausalLM
from ._model import KVCache


def init_cache(config: BigBirdConfig, max_length: int) -> KVCache:
    """An empty `KVCache` for one example with room for `max_length` positions.

    **Arguments:** the decoder's `config` (`is_decoder=True`), `max_length` (prompt plus new
    tokens, at most `max_position_embeddings`).

    **Returns:** a `KVCache` to pass as `past_key_values`.
    """
    if not config.is_decoder:
        raise ValueError("a KV cache needs a decoder config (is_decoder=True)")
    if not 0 < max_length <= config.max_position_embeddings:
        raise ValueError(
            f"max_length={max_length} must lie in [1, max_position_embeddings="
            f"{config.max_position_embeddings}]"
        )
    return KVCache.empty(config, max_length)


def _choose(logits, key, do_sample, temperature, top_k):
    if not do_sample:
        return jnp.argmax(logits).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        # HF's TopKLogitsWarper: everything below the k-th largest logit is -inf (ties kept).
        kth = jax.lax.top_k(logits, top_k)[0][-1]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jr.categorical(key, logits).astype(jnp.int32)


def _stop_tokens(config, eos_token_id, pad_token_id) -> tuple[int | None, int | None]:
    """`(eos, pad)`: -1 means the config's; without a pad token, eos pads."""
    eos = config.eos_token_id if eos_token_id == -1 else eos_token_id
    pad = config.pad_token_id if pad_token_id == -1 else pad_token_id
    return eos, (eos if eos is not None and pad is None else pad)


def _prompt_positions(mask):
    """HF's `generate` positions: `cumsum(mask) - 1` over the prompt (1 on padding), and the
    position of the first new token."""
    positions = jnp.where(mask == 0, 1, jnp.cumsum(mask) - 1).astype(jnp.int32)
    return positions, jnp.sum(mask).astype(jnp.int32)


@eqx.filter_jit
def generate(
    model: BigBirdForCausalLM,
    input_ids: Int[ArrayLike, " prompt"],
    max_new_tokens: int,
    *,
    attention_mask: Int[ArrayLike, " prompt"] | Bool[ArrayLike, " prompt"] | None = None,
    encoder_hidden_states: Float[ArrayLike, "enc_seq hidden"] | None = None,
    encoder_attention_mask: Int[ArrayLike, " enc_seq"] | Bool[ArrayLike, " enc_seq"] | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    key: PRNGKeyArray | None = None,
    eos_token_id: int | None = -1,
    pad_token_id: int | None = -1,
) -> Int[Array, " total"]:
    """Extends one prompt by `max_new_tokens` tokens (greedy, or sampled), in inference mode.

    The prompt runs once, filling a `KVCache`; each new token then runs alone against the cache
    (one `lax.scan`, compiled once per prompt length and `max_new_tokens`). Positions follow HF's
    `generate`: `cumsum(attention_mask) - 1` over the prompt, then one more per new token.

    **Arguments:**
    - `model`: a `BigBirdForCausalLM` (`config.is_decoder`).
    - `input_ids`: `(prompt,)`; `attention_mask`: `(prompt,)` (default all real).
    - `encoder_hidden_states`, `encoder_attention_mask`: for decoders with cross-attention.
    - `do_sample`: sample from `softmax(logits / temperature)`, restricted to the `top_k` most
      likely tokens if given; needs `key`. Otherwise greedy (argmax).
    - `eos_token_id`, `pad_token_id`: after `eos_token_id` every further token is `pad_token_id`,
      as in HF (default: the config's; `None` disables stopping).

    **Returns:** `(prompt + max_new_tokens,)` token ids: the prompt, then the new tokens.
    """
    config = model.config
    if not config.is_decoder:
        raise ValueError("generate needs a decoder (config.is_decoder=True)")
    if do_sample and key is None:
        raise ValueError("sampling (do_sample=True) needs `key=`")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be positive")
    eos, pad = _stop_tokens(config, eos_token_id, pad_token_id)
    input_ids = jnp.asarray(input_ids, jnp.int32)
    prompt = input_ids.shape[0]
    mask = (
        jnp.ones((prompt,), jnp.int32)
        if attention_mask is None
        else jnp.asarray(attention_mask).astype(jnp.int32)
    )
    positions, next_position = _prompt_positions(mask)
    cross = dict(
        encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask
    )
    cache = init_cache(config, prompt + max_new_tokens)
    out = model(
        input_ids, mask, position_ids=positions, past_key_values=cache, inference=True, **cross
    )
    keys = jr.split(key, max_new_tokens) if do_sample else jnp.zeros((max_new_tokens,), jnp.int32)

    def step(carry, xs):
        cache, logits, position, finished = carry
        step_key, _ = xs
        token = _choose(logits, step_key if do_sample else None, do_sample, temperature, top_k)
        if eos is not None:
            token = jnp.where(finished, jnp.int32(pad), token)
            finished = finished | (token == eos)
        out = model(
            token[None], jnp.ones((1,), jnp.int32), position_ids=position[None],
            past_key_values=cache, inference=True, **cross,
        )
        return (out.past_key_values, out.logits[0], position + 1, finished), token

    init = (out.past_key_values, out.logits[-1], next_position, jnp.zeros((), bool))
    # The last step's model call is wasted (its logits are never used); keeping one loop body
    # keeps the compile to a single traced decoder step.
    _, new = jax.lax.scan(step, init, (keys, jnp.arange(max_new_tokens)))
    return jnp.concatenate([input_ids, new])
