"""HF's logits processors and sampling warpers (`transformers.generation.logits_process`), as pure
functions of one hypothesis: its token buffer `ids` `(max_length,)`, of which the first `cur_len`
are real (prompt or decoder start token, then generated tokens), and the next-token `scores`."""

import dataclasses
import typing

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

Scores = Float[Array, " vocab"]


def _token_mask(ids: Int[Array, " n"], keep, vocab: int) -> jax.Array:
    """`(vocab,)` bool: True at every `ids[i]` with `keep[i]`."""
    return jnp.zeros((vocab,), bool).at[jnp.where(keep, ids, vocab)].set(True, mode="drop")


def repetition_penalty(ids, cur_len, scores: Scores, penalty) -> Scores:
    """`RepetitionPenaltyLogitsProcessor`: every token already in `ids[:cur_len]` has its score
    multiplied by `penalty` if negative, else divided by it."""
    seen = _token_mask(ids, jnp.arange(ids.shape[0]) < cur_len, scores.shape[0])
    penalized = jnp.where(scores < 0, scores * penalty, scores / penalty)
    return jnp.where(seen, penalized, scores)


def no_repeat_ngram(ids, cur_len, scores: Scores, n: int) -> Scores:
    """`NoRepeatNGramLogitsProcessor`: once `cur_len + 1 >= n`, bans every token that would
    complete an n-gram already present in `ids[:cur_len]`."""
    length = ids.shape[0]
    if n > length:
        return scores
    starts = jnp.arange(length - n + 1)
    # The last n - 1 tokens (the start is clamped while inactive; `active` masks it out).
    last = jax.lax.dynamic_slice(ids, (jnp.maximum(cur_len - n + 1, 0),), (n - 1,))
    windows = ids[starts[:, None] + jnp.arange(n - 1)[None, :]]
    match = jnp.all(windows == last[None, :], axis=1) & (starts + n - 1 < cur_len)
    banned = _token_mask(ids[starts + n - 1], match & (cur_len + 1 >= n), scores.shape[0])
    return jnp.where(banned, -jnp.inf, scores)


def min_length(cur_len, scores: Scores, minimum, eos: int) -> Scores:
    """`MinLengthLogitsProcessor`: eos is impossible while `cur_len < minimum`."""
    return scores.at[eos].set(jnp.where(cur_len < minimum, -jnp.inf, scores[eos]))


def forced_eos(cur_len, scores: Scores, max_length: int, eos: int) -> Scores:
    """`ForcedEOSTokenLogitsProcessor`: the last position can only be eos (score 0)."""
    forced = jnp.full_like(scores, -jnp.inf).at[eos].set(0.0)
    return jnp.where(cur_len == max_length - 1, forced, scores)


def top_k_filter(scores: Scores, k: int, min_keep: int = 1) -> Scores:
    """`TopKLogitsWarper`: scores below the k-th largest become -inf (ties at the k-th kept)."""
    k = min(max(k, min_keep), scores.shape[0])
    kth = jax.lax.top_k(scores, k)[0][-1]
    return jnp.where(scores < kth, -jnp.inf, scores)


def top_p_filter(scores: Scores, cut, min_keep: int = 1) -> Scores:
    """`TopPLogitsWarper` with `cut = 1 - top_p` (rounded to float32 as HF's comparison does):
    sorted ascending, tokens whose cumulative probability is at most `cut` become -inf, except
    the `min_keep` most likely."""
    order = jnp.argsort(scores)
    cumulative = jnp.cumsum(jax.nn.softmax(scores[order]))
    remove = cumulative <= cut
    remove = remove.at[-min_keep:].set(False)
    return jnp.where(jnp.zeros_like(remove).at[order].set(remove), -jnp.inf, scores)


class Knobs(typing.NamedTuple):
    """The processors' numeric settings, traced (changing one does not recompile)."""

    repetition_penalty: Float[Array, ""]
    min_length: Int[Array, ""]
    temperature: Float[Array, ""]
    top_p_cut: Float[Array, ""]  # 1 - top_p


@dataclasses.dataclass(frozen=True)
class Processors:
    """Which processors run, in HF's order (`_get_logits_processor`): repetition penalty,
    no-repeat n-gram, min length, forced eos; then, when sampling, temperature, top-k, top-p.
    Static: what changes the program's shape; their numbers come as `Knobs`."""

    max_length: int
    eos: int | None
    repetition_penalty: bool = False
    no_repeat_ngram_size: int = 0
    min_length: bool = False
    forced_eos: int | None = None
    sample: bool = False
    temperature: bool = False
    top_k: int | None = None
    top_p: bool = False

    def __call__(self, knobs: Knobs, ids, cur_len, scores: Scores) -> Scores:
        if self.repetition_penalty:
            scores = repetition_penalty(ids, cur_len, scores, knobs.repetition_penalty)
        if self.no_repeat_ngram_size > 0:
            scores = no_repeat_ngram(ids, cur_len, scores, self.no_repeat_ngram_size)
        if self.eos is not None and self.min_length:
            scores = min_length(cur_len, scores, knobs.min_length, self.eos)
        if self.forced_eos is not None:
            scores = forced_eos(cur_len, scores, self.max_length, self.forced_eos)
        if self.sample:
            if self.temperature:
                scores = scores / knobs.temperature
            if self.top_k is not None and self.top_k != 0:
                scores = top_k_filter(scores, self.top_k)
            if self.top_p:
                scores = top_p_filter(scores, knobs.top_p_cut)
        return scores
