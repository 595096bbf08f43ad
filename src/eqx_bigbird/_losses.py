"""The losses of HF BigBird's heads, as plain functions of logits and labels.

Each takes one example or a batch (any leading axes) and reduces the way HF's PyTorch heads do:
a mean over all entries whose label is not `IGNORE_INDEX` (-100), across the whole batch. (So the
loss of a batch is not the mean of per-example losses; vmap the model, not the loss.) As in HF, a
batch in which every label is ignored gives NaN (0 / 0).

Class labels must be integers in `[0, classes)` or the ignore index; others raise naming the loss
and the range, as HF's do (on the host for concrete labels, with `eqx.error_if` under jit).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, Real

from ._nn import check_values

IGNORE_INDEX = -100


def _cross_entropy(logits, labels, loss: str, ignore_index=IGNORE_INDEX, label_smoothing=0.0):
    """Mean cross-entropy over the entries whose label is not `ignore_index` (torch semantics,
    also of `label_smoothing`: the target is `(1 - e) one_hot + e / classes`); `loss` names the
    loss in the error a label outside `[0, classes)` raises."""
    logits = logits.astype(jnp.float32)
    if not isinstance(labels, jax.Array):
        labels = np.asarray(labels)
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"{loss}: logits {logits.shape} do not fit labels {labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{loss}: labels must be integers, got dtype {labels.dtype}")
    classes = logits.shape[-1]
    labels = jnp.asarray(check_values(
        labels, lambda xp, y: ((y < 0) | (y >= classes)) & (y != ignore_index),
        f"{loss}: labels must lie in [0, {classes}) or be the ignore index {ignore_index}",
    ))
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
    return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.sum(valid).astype(jnp.float32)


def masked_lm_loss(
    logits: Float[Array, "*batch vocab"], labels: Int[ArrayLike, "*batch"]
) -> Float[Array, ""]:
    """Masked-LM cross-entropy (HF `BigBirdForMaskedLM`).

    **Arguments:** `logits` `(..., vocab)` (all tokens, or the `positions` a head was asked for) and
    `labels` of the same leading shape, `-100` where no loss is taken.

    **Returns:** the mean over the labelled tokens.
    """
    return _cross_entropy(logits, labels, "masked_lm_loss")


def causal_lm_loss(
    logits: Float[Array, "*batch seq vocab"], labels: Int[ArrayLike, "*batch seq"]
) -> Float[Array, ""]:
    """Next-token cross-entropy (HF `BigBirdForCausalLM`): position `t`'s logits are scored against
    `labels[t + 1]`, so `labels` are simply the input ids (`-100` to skip a token).

    **Returns:** the mean over the scored tokens.
    """
    labels = jnp.asarray(labels)
    pad = [(0, 0)] * (labels.ndim - 1) + [(0, 1)]
    shifted = jnp.pad(labels, pad, constant_values=IGNORE_INDEX)[..., 1:]
    return _cross_entropy(logits, shifted, "causal_lm_loss")


def seq2seq_lm_loss(
    logits: Float[Array, "*batch seq vocab"],
    labels: Int[ArrayLike, "*batch seq"],
    label_smoothing: float = 0.0,
) -> Float[Array, ""]:
    """Cross-entropy of a seq2seq (or HF BigBird-Pegasus causal) LM, NOT shifted: `logits[t]`
    is scored against `labels[t]` (the decoder input was `shift_tokens_right(labels)`), `-100`
    ignored, as HF `BigBirdPegasusForConditionalGeneration`. `label_smoothing` is torch's
    `CrossEntropyLoss(label_smoothing=...)`, which equals HF Trainer's `label_smoothing_factor`.

    **Returns:** the mean over the labelled tokens.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing!r} must lie in [0, 1)")
    return _cross_entropy(logits, labels, "seq2seq_lm_loss", label_smoothing=label_smoothing)


def pretraining_loss(
    prediction_logits: Float[Array, "*batch seq vocab"],
    seq_relationship_logits: Float[Array, "*batch 2"],
    labels: Int[ArrayLike, "*batch seq"],
    next_sentence_label: Int[ArrayLike, "*batch"] | None = None,
) -> Float[Array, ""]:
    """HF `BigBirdForPreTraining`'s loss: masked-LM loss, plus the next-sentence cross-entropy
    (label 0: B follows A, 1: B is random) when `next_sentence_label` is given.

    **Returns:** the summed loss.
    """
    loss = _cross_entropy(prediction_logits, labels, "pretraining_loss (labels)")
    if next_sentence_label is not None:
        loss = loss + _cross_entropy(
            seq_relationship_logits, next_sentence_label, "pretraining_loss (next_sentence_label)"
        )
    return loss


def resolve_problem_type(problem_type: str | None, num_labels: int, labels) -> str:
    """HF's rule when `config.problem_type` is None: one label -> regression; integer labels ->
    single-label classification; else multi-label."""
    if problem_type is not None:
        return problem_type
    if num_labels == 1:
        return "regression"
    if jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
        return "single_label_classification"
    return "multi_label_classification"


def sequence_classification_loss(
    logits: Float[Array, "*batch labels"],
    labels: Real[ArrayLike, "*batch"] | Real[ArrayLike, "*batch labels"],
    problem_type: str | None = None,
) -> Float[Array, ""]:
    """HF `BigBirdForSequenceClassification`'s loss, by `problem_type` (`config.problem_type`;
    None: decided from `num_labels` and the labels' dtype, as HF does).

    - `"regression"`: mean squared error (one output: `labels` of the batch shape).
    - `"single_label_classification"`: cross-entropy over integer labels (-100 ignored).
    - `"multi_label_classification"`: mean binary cross-entropy with logits, float 0/1 labels
      `(..., num_labels)`.

    **Returns:** the loss.
    """
    num_labels = logits.shape[-1]
    labels = labels if isinstance(labels, jax.Array) else np.asarray(labels)
    kind = resolve_problem_type(problem_type, num_labels, labels)
    if kind == "regression":
        x = logits.astype(jnp.float32)
        y = labels.astype(jnp.float32)
        if num_labels == 1:
            x = x[..., 0]
            y = y[..., 0] if y.shape == x.shape + (1,) else y
        _same_shape(x, y, "regression")
        return jnp.mean(jnp.square(x - y))
    if kind == "single_label_classification":
        return _cross_entropy(logits, labels, "sequence_classification_loss")
    if kind == "multi_label_classification":
        x = logits.astype(jnp.float32)
        y = labels.astype(jnp.float32)
        _same_shape(x, y, "multi_label_classification")
        # log(1 + exp(-|x|)) form, as torch's BCEWithLogits: stable for large |x|.
        return jnp.mean(jnp.maximum(x, 0.0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x))))
    raise ValueError(f"unknown problem_type {kind!r}")


def _same_shape(x, y, kind: str):
    # Broadcasting would silently pair each logit with the wrong label.
    if x.shape != y.shape:
        raise ValueError(
            f"sequence_classification_loss ({kind}): labels {y.shape} do not fit logits {x.shape}"
        )


def multiple_choice_loss(
    logits: Float[Array, "*batch choices"], labels: Int[ArrayLike, "*batch"]
) -> Float[Array, ""]:
    """Cross-entropy over the choices (HF `BigBirdForMultipleChoice`)."""
    return _cross_entropy(logits, labels, "multiple_choice_loss")


def token_classification_loss(
    logits: Float[Array, "*batch seq labels"], labels: Int[ArrayLike, "*batch seq"]
) -> Float[Array, ""]:
    """Per-token cross-entropy, `-100` ignored (HF `BigBirdForTokenClassification`)."""
    return _cross_entropy(logits, labels, "token_classification_loss")


def question_answering_loss(
    start_logits: Float[Array, "*batch seq"],
    end_logits: Float[Array, "*batch seq"],
    start_positions: Int[ArrayLike, "*batch"],
    end_positions: Int[ArrayLike, "*batch"],
) -> Float[Array, ""]:
    """Span loss of HF `BigBirdForQuestionAnswering`: positions are clamped to `[0, seq]` and
    `seq` (an answer outside the sequence) is ignored; the mean of the start and end
    cross-entropies.

    **Returns:** `(start_loss + end_loss) / 2`.
    """
    seq = start_logits.shape[-1]
    start = jnp.clip(jnp.asarray(start_positions), 0, seq)
    end = jnp.clip(jnp.asarray(end_positions), 0, seq)
    start_loss = _cross_entropy(start_logits, start, "question_answering_loss", ignore_index=seq)
    end_loss = _cross_entropy(end_logits, end, "question_answering_loss", ignore_index=seq)
    return (start_loss + end_loss) / 2
