"""Each loss function against the HF PyTorch head's `loss` for the same labels (1e-5), our loss
computed on our own logits (so the whole path, head and loss, is checked)."""

import equinox as eqx
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


# -- bad labels (issue 13): HF raises; so do we, naming the loss and the range, under jit too ------


@pytest.mark.parametrize("loss, logits_shape, labels", [
    (eb.masked_lm_loss, (3, 5), [0, 5, 1]),
    (eb.masked_lm_loss, (3, 5), [-5, 1, -100]),
    (eb.token_classification_loss, (2, 4), [1, 4]),
    (eb.multiple_choice_loss, (2, 3), [3, 0]),
    (lambda lg, y: eb.sequence_classification_loss(lg, y), (2, 2), [0, 2]),
    (lambda lg, y: eb.causal_lm_loss(lg, y), (3, 4), [0, 1, 9]),
])
def test_labels_outside_the_classes_raise(loss, logits_shape, labels):
    logits = jnp.zeros(logits_shape)
    labels = np.array(labels, np.int32)
    with pytest.raises(ValueError, match=r"_loss: labels must lie in \[0, \d\) or be the ignore"):
        loss(logits, labels)
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"_loss: labels must lie in \[0, \d\)"):
        eqx.filter_jit(loss)(logits, jnp.asarray(labels))


def test_ignore_index_and_valid_labels_still_work():
    logits = jnp.zeros((3, 4))
    assert float(eb.masked_lm_loss(logits, np.array([0, -100, 3]))) == pytest.approx(np.log(4))
    assert float(eb.masked_lm_loss(logits, np.array([1, -100, 3], np.int64))) > 0
    with pytest.raises(ValueError, match="entry 0 is 4294967297"):  # not wrapped to 1
        eb.masked_lm_loss(logits, np.array([2**32 + 1, -100, 3], np.int64))


def test_sequence_classification_labels_that_do_not_fit():
    logits = jnp.zeros((3, 3))
    with pytest.raises(ValueError, match=r"multi_label_classification\): labels \(3,\)"):
        eb.sequence_classification_loss(logits, np.zeros(3, np.float32),
                                        "multi_label_classification")
    with pytest.raises(ValueError, match=r"regression\): labels \(3,\) do not fit logits"):
        eb.sequence_classification_loss(logits, np.zeros(3, np.float32), "regression")
