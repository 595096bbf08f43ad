"""`generate`: HF's greedy search, sampling and beam search as compiled loops over the decoding
protocol, plus `init_cache` for hand-written decoding loops.

The decoding protocol is what `generate` needs from a model (one example, inference mode):

- `model.prepare_decoding(input_ids, attention_mask, max_new_tokens, **model_kwargs)` ->
  `(shared, state, logits)`: runs what runs once (the prompt into a self-attention cache; for an
  encoder-decoder the encoder, the cross-attention keys/values and the decoder start token), and
  gives the next-token logits. `shared` is the same for every beam, `state` is per beam (its
  leaves are arrays, so beams can be stacked and reordered).
- `model.decode_step(shared, state, token)` -> `(state, logits)`: appends one token.

`model.config.is_encoder_decoder` (missing means False) says what the sequences hold: the prompt
then the new tokens, or `decoder_start_token_id` then the new tokens, as HF's `generate`.
"""

import dataclasses
import functools
import typing
from types import EllipsisType
from typing import Literal

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from ._compile import outermost_jit
from ._config import BigBirdConfig
from ._generation_config import GenerationConfig, resolve
from ._logits_process import Knobs, Processors
from ._model import KVCache

# HF's sentinel score for "no hypothesis here" (float32: -1e9 + x == -1e9 for |x| < 32).
_NONE = -1.0e9


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


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What is static in one `generate` call (hashable: the compiled program's key)."""

    encoder_decoder: bool
    prompt_len: int  # the decoder's prompt: the input ids, or the start token
    max_length: int
    num_beams: int
    processors: Processors
    eos: int | None
    fill: int  # what follows a finished sequence
    start: int | None  # decoder_start_token_id (encoder-decoder)

    @property
    def max_new_tokens(self) -> int:
        return self.max_length - self.prompt_len


class _Knobs(typing.NamedTuple):
    """What is traced in one `generate` call: changing these does not recompile."""

    processors: Knobs
    length_divisors: Float[Array, " max_length_plus_1"]  # t ** length_penalty
    early_stopping: Bool[Array, ""]  # early_stopping is True
    best_at_max_length: Bool[Array, ""]  # HF's heuristic for early_stopping="never", lp > 0


def _length_divisors(max_length: int, length_penalty: float) -> np.ndarray:
    """`t ** length_penalty` for t in [0, max_length], computed as HF does (a Python number, then
    float32 in the division), so that scores round the same."""
    out = [1.0 if t == 0 else t**length_penalty for t in range(max_length + 1)]
    return np.asarray(out, np.float32)


def _stack(tree, n: int):
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), tree)


def _search(plan: _Plan, knobs: _Knobs, model, shared, state, logits, ids, key):
    """Greedy search or sampling (HF's `_sample`): one hypothesis, stopped by eos or length."""
    length, process, eos = plan.max_length, plan.processors, plan.eos

    def body(carry):
        cur, ids, state, logits, _, key = carry
        scores = process(knobs.processors, ids, cur, logits.astype(jnp.float32))
        if process.sample:
            key, sub = jr.split(key)
            token = jr.categorical(sub, scores).astype(jnp.int32)
        else:
            token = jnp.argmax(scores).astype(jnp.int32)
        ids = ids.at[cur].set(token)
        done = cur + 1 >= length
        if eos is not None:
            done = done | (token == eos)
        # The last step's logits go unused; one loop body keeps one traced decoder step.
        state, logits = model.decode_step(shared, state, token)
        return cur + 1, ids, state, logits, done, key

    init = (jnp.int32(plan.prompt_len), ids, state, logits, jnp.bool_(False), key)
    return jax.lax.while_loop(lambda c: ~c[4], body, init)[1]


def _beam_search(plan: _Plan, knobs: _Knobs, model, shared, state, logits, ids):
    """HF's `_beam_search` (4.57) for one example: `2 * num_beams` candidates per step, finished
    hypotheses scored by `sum log p / generated_length ** length_penalty`, the same stopping
    heuristic per `early_stopping`. Returns the best finished hypothesis."""
    k, prompt, length = plan.num_beams, plan.prompt_len, plan.max_length
    vocab = logits.shape[-1]
    divisors, es_true = knobs.length_divisors, knobs.early_stopping
    step = jax.vmap(model.decode_step, in_axes=(None, 0, 0))
    process = jax.vmap(functools.partial(plan.processors, knobs.processors), in_axes=(0, None, 0))
    is_top_k = jnp.arange(2 * k) < k

    def body(carry):
        cur, run_ids, run_scores, ids, scores, finished, unsat, state, logits, _ = carry
        log_probs = process(run_ids, cur, jax.nn.log_softmax(logits.astype(jnp.float32), -1))
        total = (log_probs + run_scores[:, None]).reshape(-1)
        top, index = jax.lax.top_k(total, 2 * k)
        source, token = index // vocab, (index % vocab).astype(jnp.int32)
        candidates = run_ids[source].at[:, cur].set(token)
        hits = jnp.broadcast_to(cur + 1 >= length, (2 * k,))
        if plan.eos is not None:
            hits = hits | (token == plan.eos)
        # The next running beams: the best candidates that did not just finish.
        running = top + hits.astype(jnp.float32) * _NONE
        nxt = jax.lax.top_k(running, k)[1]
        run_ids, run_scores, source = candidates[nxt], running[nxt], source[nxt]
        # Finished hypotheses: the top-k candidates that hit a stop, merged with the kept ones.
        new = top / divisors[cur + 1 - prompt]
        new = new + (jnp.all(finished) & es_true).astype(jnp.float32) * _NONE
        new = new + (~unsat).astype(jnp.float32) * _NONE
        just = hits & is_top_k
        new = new + (~just).astype(jnp.float32) * _NONE
        merged = jax.lax.top_k(jnp.concatenate([scores, new]), k)[1]
        ids = jnp.concatenate([ids, candidates])[merged]
        scores = jnp.concatenate([scores, new])[merged]
        finished = jnp.concatenate([finished, just])[merged]
        state = jax.tree.map(lambda x: x[source], state)
        state, logits = step(shared, state, run_ids[:, cur])
        cur = cur + 1
        # HF's early-stop heuristic: can the best running beam still beat the worst kept one?
        best_length = jnp.where(knobs.best_at_max_length, length - prompt, cur - prompt)
        best = run_scores[0] / divisors[best_length]
        worst = jnp.where(finished, jnp.min(scores), _NONE)
        unsat = unsat & jnp.any(best > worst)
        go_on = unsat & ~(jnp.all(finished) & es_true) & ~jnp.all(hits)
        return cur, run_ids, run_scores, ids, scores, finished, unsat, state, logits, go_on

    beams = _stack(ids, k)
    init = (
        jnp.int32(prompt), beams, jnp.full((k,), _NONE, jnp.float32).at[0].set(0.0), beams,
        jnp.full((k,), _NONE, jnp.float32), jnp.zeros((k,), bool), jnp.bool_(True),
        _stack(state, k), _stack(logits, k), jnp.bool_(True),
    )
    return jax.lax.while_loop(lambda c: c[-1], body, init)[3][0]


def _run(plan: _Plan, knobs: _Knobs, model, input_ids, attention_mask, key, model_kwargs):
    shared, state, logits = model.prepare_decoding(
        input_ids, attention_mask, plan.max_new_tokens, **model_kwargs
    )
    prefix = jnp.full((1,), plan.start, jnp.int32) if plan.encoder_decoder else input_ids
    ids = jnp.full((plan.max_length,), plan.fill, jnp.int32).at[: plan.prompt_len].set(prefix)
    if plan.num_beams == 1:
        return _search(plan, knobs, model, shared, state, logits, ids, key)
    return _beam_search(plan, knobs, model, shared, state, logits, ids)


_compiled_run = outermost_jit(_run)


def model_generation_config(model) -> GenerationConfig:
    own = getattr(model, "generation_config", None)
    return own if own is not None else GenerationConfig.from_model_config(model.config)


def generate(
    model,
    input_ids: Int[ArrayLike, " prompt"],
    *,
    attention_mask: Int[ArrayLike, " prompt"] | Bool[ArrayLike, " prompt"] | None = None,
    max_new_tokens: int | None = None,
    max_length: int | None = None,
    min_length: int | None = None,
    num_beams: int | None = None,
    length_penalty: float | None = None,
    early_stopping: bool | Literal["never"] | None = None,
    no_repeat_ngram_size: int | None = None,
    repetition_penalty: float | None = None,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    key: PRNGKeyArray | None = None,
    eos_token_id: int | None | EllipsisType = ...,
    pad_token_id: int | None | EllipsisType = ...,
    decoder_start_token_id: int | None | EllipsisType = ...,
    forced_eos_token_id: int | None | EllipsisType = ...,
    generation_config: GenerationConfig | None = None,
    **model_kwargs,
) -> Int[Array, " max_length"]:
    """Generates from one example as HF's `generate` does: greedy search, sampling, or beam
    search (`num_beams > 1`), each one compiled `lax.while_loop` that stops when every hypothesis
    has finished.

    **Arguments** (HF's names and meanings; `None` / `...` means "from the generation config"):
    - `model`: a model with the decoding protocol (`BigBirdForCausalLM`, or an encoder-decoder).
    - `input_ids` `(prompt,)`, `attention_mask` `(prompt,)`: the prompt (decoder-only) or the
      document (encoder-decoder). Without a mask, `input_ids != pad_token_id` when pad differs
      from eos, else all ones (HF's rule). Decoder-only prompts may be left-padded.
    - `max_new_tokens`, or `max_length` (the whole sequence: prompt or start token included).
      Neither: `max_length` from the generation config, where HF's global default 20 means 20
      new tokens (at most `max_position_embeddings` in all).
    - `min_length` (eos banned before it, prompt included), `no_repeat_ngram_size`,
      `repetition_penalty`, `forced_eos_token_id`: HF's logits processors, in HF's order.
    - `num_beams`, `length_penalty`, `early_stopping` (`True`, `False` or `"never"`): beam search.
    - `do_sample` with `temperature`, `top_k` (HF's default 50; 0 switches it off), `top_p`, and
      `key` (required): sampling from the processed distribution. Not with beams.
    - `eos_token_id`, `pad_token_id` (`None`: no eos, or pad = eos), `decoder_start_token_id`.
    - `generation_config`: a `GenerationConfig` whose non-default fields override the model's.
    - `model_kwargs`: passed to `model.prepare_decoding` (e.g. `encoder_hidden_states`,
      `encoder_attention_mask` for a `BigBirdForCausalLM` with cross-attention).

    Precedence (`_generation_config.resolve`): these arguments > `generation_config` > the
    model's (`model.generation_config`, read from `generation_config.json` by `from_pretrained`,
    else the generation keys of `model.config`) > HF's global defaults.

    **Returns:** `(max_length,)` int32: the prompt (or the start token) and the new tokens, then
    padding after the sequence ends. Greedy search and sampling pad with `pad_token_id`; beam
    search pads with `pad_token_id or eos_token_id` (HF's fill: eos when pad is 0). HF returns
    the shortest array that holds its sequences; ours has the static length (crop at the first
    eos after the prompt). Batches: `jax.vmap` over `input_ids`, `attention_mask` (and `key`s);
    each row stops on its own, which gives HF's batched tokens.
    """
    config = model.config
    if not getattr(config, "is_encoder_decoder", False) and not getattr(config, "is_decoder", True):
        raise ValueError("generate needs a decoder (config.is_decoder=True)")
    given = {
        "max_new_tokens": max_new_tokens, "max_length": max_length, "min_length": min_length,
        "num_beams": num_beams, "length_penalty": length_penalty, "early_stopping": early_stopping,
        "no_repeat_ngram_size": no_repeat_ngram_size, "repetition_penalty": repetition_penalty,
        "do_sample": do_sample, "temperature": temperature, "top_k": top_k, "top_p": top_p,
    }
    given = {k: v for k, v in given.items() if v is not None}
    tokens = {
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "decoder_start_token_id": decoder_start_token_id,
        "forced_eos_token_id": forced_eos_token_id,
    }
    given.update({k: v for k, v in tokens.items() if v is not ...})
    gc = resolve(model_generation_config(model), generation_config, given)
    plan = _plan(model, gc, jnp.shape(input_ids), "max_length" in given)
    if gc.do_sample and key is None:
        raise ValueError("sampling (do_sample=True) needs `key=`")
    input_ids = jnp.asarray(input_ids).astype(jnp.int32)
    if attention_mask is None:
        pad = gc.pad_token_id
        if pad is not None and pad != gc.eos_token_id:
            attention_mask = (input_ids != pad).astype(jnp.int32)
        else:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    mask = jnp.asarray(attention_mask).astype(jnp.int32)
    if mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {mask.shape} and input_ids {input_ids.shape} differ")
    key = key if gc.do_sample else None
    return _compiled_run(plan, _knobs(plan, gc), model, input_ids, mask, key, model_kwargs)


def _plan(model, gc: GenerationConfig, shape, max_length_given: bool) -> _Plan:
    """The static plan of one call: lengths and special tokens resolved as HF's `generate`."""
    config = model.config
    if len(shape) != 1 or shape[0] < 1:
        raise ValueError(
            f"input_ids has shape {tuple(shape)}; generate takes one example (prompt,): use "
            "jax.vmap for a batch"
        )
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    prompt = 1 if encoder_decoder else shape[0]
    limit = config.max_position_embeddings
    if gc.max_new_tokens is not None:
        max_length = prompt + gc.max_new_tokens
    elif not max_length_given and gc.max_length == GenerationConfig().max_length:
        max_length = min(gc.max_length + prompt, limit)
    else:
        max_length = gc.max_length
    if max_length <= prompt:
        raise ValueError(
            f"max_length={max_length} leaves no room for new tokens after the "
            f"{'decoder start token' if encoder_decoder else f'{prompt}-token prompt'}"
        )
    if max_length > limit:
        raise ValueError(
            f"max_length={max_length} exceeds max_position_embeddings={limit}"
        )
    if gc.num_beams > 1 and gc.do_sample:
        raise ValueError("beam sampling (num_beams > 1 with do_sample=True) is not supported")
    eos = gc.eos_token_id
    # HF: without a pad token, eos pads.
    pad = eos if gc.pad_token_id is None else gc.pad_token_id
    start = None
    if encoder_decoder:
        start = gc.decoder_start_token_id
        if start is None:
            start = gc.bos_token_id
        if start != config.decoder_start_token_id:
            raise ValueError(
                f"decoder_start_token_id={start} differs from the model's "
                f"config.decoder_start_token_id={config.decoder_start_token_id}, which its "
                "prepare_decoding runs; change the config instead"
            )
    if gc.num_beams > 1:
        # HF's beam buffers: `pad_token_id or eos_token_id` (so eos when pad is 0).
        fill = (pad or eos) if eos is not None else -1
    else:
        fill = 0 if pad is None else pad
    vocab = config.vocab_size
    for name, token in (("eos_token_id", eos), ("forced_eos_token_id", gc.forced_eos_token_id)):
        if token is not None and token >= vocab:
            raise ValueError(f"{name}={token} is outside the vocabulary ({vocab})")
    processors = Processors(
        max_length=max_length, eos=eos, repetition_penalty=gc.repetition_penalty != 1.0,
        no_repeat_ngram_size=gc.no_repeat_ngram_size, min_length=gc.min_length > 0,
        forced_eos=gc.forced_eos_token_id, sample=gc.do_sample,
        temperature=gc.temperature != 1.0, top_k=gc.top_k,
        top_p=gc.top_p is not None and gc.top_p < 1.0,
    )
    return _Plan(
        encoder_decoder=encoder_decoder, prompt_len=prompt, max_length=max_length,
        num_beams=gc.num_beams, processors=processors, eos=eos, fill=fill, start=start,
    )


def _knobs(plan: _Plan, gc: GenerationConfig) -> _Knobs:
    top_p = 1.0 if gc.top_p is None else gc.top_p
    return _Knobs(
        processors=Knobs(
            repetition_penalty=jnp.float32(gc.repetition_penalty),
            min_length=jnp.int32(gc.min_length),
            temperature=jnp.float32(gc.temperature),
            top_p_cut=jnp.float32(1 - top_p),
        ),
        length_divisors=jnp.asarray(_length_divisors(plan.max_length, gc.length_penalty)),
        early_stopping=jnp.bool_(gc.early_stopping is True),
        best_at_max_length=jnp.bool_(gc.early_stopping == "never" and gc.length_penalty > 0),
    )
