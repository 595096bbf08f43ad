"""Each loss function against the HF PyTorch head's `loss` for the same labels (1e-5), our loss
computed on our own logits (so the whole path, head and loss, is checked)."""

import jax.numpy as jnp
import numpy as np
import pytest

import eqx_bigbird as eb

from .hf_reference import pytorch_model
from .test_heads import inputs_for, ours_forward, overrides_for, pt_forward

ATOL = 1e-5
LENGTH = 13  # full attention (shared with the head tests' models)


def setup(head, **extra):
    overrides = {**overrides_for(head, "full"), **extra}
    pt, path = pytorch_model(f"BigBirdFor{head}", **overrides)
    model = getattr(eb, f"BigBirdFor{head}").from_pretrained(path)
    batch = inputs_for(head, LENGTH, seed=21)
    ours = ours_forward(model, {k: jnp.asarray(v) for k, v in batch.items()})
    return pt, batch, ours


def token_labels(shape, high, seed):
    """Random labels with about half the entries ignored (-100), at least one kept."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, high, shape)
    labels[rng.random(shape) < 0.5] = -100
    labels.flat[0] = 1
    return labels


def check(ours, theirs):
    theirs = float(theirs.loss)
    assert np.isfinite(theirs)
    assert abs(float(ours) - theirs) <= ATOL, (float(ours), theirs)


def test_masked_lm_loss():
    pt, batch, ours = setup("MaskedLM")
    labels = token_labels((3, LENGTH), 99, seed=1)
    ref = pt_forward(pt, {**batch, "labels": labels})
    check(eb.masked_lm_loss(ours.logits, labels), ref)


def test_masked_lm_loss_at_positions_equals_full():
    pt, batch, ours = setup("MaskedLM")
    labels = token_labels((3, LENGTH), 99, seed=2)
    rows, cols = np.nonzero(labels != -100)
    at_positions = eb.masked_lm_loss(ours.logits[rows, cols], labels[rows, cols])
    assert abs(float(at_positions) - float(eb.masked_lm_loss(ours.logits, labels))) <= 1e-6


def test_causal_lm_loss():
    pt, batch, ours = setup("CausalLM")
    labels = token_labels((3, LENGTH), 99, seed=3)
    ref = pt_forward(pt, {**batch, "labels": labels})
    check(eb.causal_lm_loss(ours.logits, labels), ref)


@pytest.mark.parametrize("with_nsp", [False, True])
def test_pretraining_loss(with_nsp):
    pt, batch, ours = setup("PreTraining")
    labels = token_labels((3, LENGTH), 99, seed=4)
    nsp = np.array([0, 1, 1]) if with_nsp else None
    extra = {"labels": labels} | ({"next_sentence_label": nsp} if with_nsp else {})
    ref = pt_forward(pt, {**batch, **extra})
    check(eb.pretraining_loss(ours.prediction_logits, ours.seq_relationship_logits, labels, nsp), ref)


@pytest.mark.parametrize(
    "extra,labels",
    [
        (dict(num_labels=3), np.array([2, 0, 1])),
        (dict(num_labels=3), np.array([2, -100, 1])),
        (dict(num_labels=1), np.array([0.5, -1.25, 2.0], np.float32)),
        (
            dict(num_labels=3, problem_type="multi_label_classification"),
            np.array([[1, 0, 1], [0, 0, 0], [1, 1, 0]], np.float32),
        ),
    ],
    ids=["single", "single-ignored", "regression", "multi-label"],
)
def test_sequence_classification_loss(extra, labels):
    pt, batch, ours = setup("SequenceClassification", **extra)
    ref = pt_forward(pt, {**batch, "labels": labels})
    loss = eb.sequence_classification_loss(ours.logits, labels, extra.get("problem_type"))
    check(loss, ref)


def test_multiple_choice_loss():
    pt, batch, ours = setup("MultipleChoice")
    labels = np.array([2, 0])
    ref = pt_forward(pt, {**batch, "labels": labels})
    check(eb.multiple_choice_loss(ours.logits, labels), ref)


def test_token_classification_loss():
    pt, batch, ours = setup("TokenClassification")
    labels = token_labels((3, LENGTH), 5, seed=5)
    ref = pt_forward(pt, {**batch, "labels": labels})
    check(eb.token_classification_loss(ours.logits, labels), ref)


def test_question_answering_loss_with_clamping():
    """Out-of-range positions are clamped to [0, seq]; seq itself is ignored (HF's rule)."""
    pt, batch, ours = setup("QuestionAnswering")
    start = np.array([7, -3, 40])  # -3 -> 0 (kept), 40 -> 13 (ignored)
    end = np.array([9, 12, 11])
    ref = pt_forward(pt, {**batch, "start_positions": start, "end_positions": end})
    check(eb.question_answering_loss(ours.start_logits, ours.end_logits, start, end), ref)


def test_loss_of_one_example_and_all_ignored():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 7)), jnp.float32)
    labels = np.array([1, -100, 3, -100])
    expected = -np.mean(
        [np.asarray(logits[i, labels[i]] - jax_logsumexp(logits[i])) for i in (0, 2)]
    )
    assert abs(float(eb.masked_lm_loss(logits, labels)) - expected) <= 1e-6
    assert np.isnan(float(eb.masked_lm_loss(logits, np.full(4, -100))))  # as torch: 0 / 0


def jax_logsumexp(x):
    import jax

    return jax.nn.logsumexp(x)
