"""Every task head against HF PyTorch and HF Flax (seeded random weights, `save_pretrained`, our
`from_pretrained`), inference mode, float32: every output field within 1e-5 max abs, block-sparse
and full attention, padded masks."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqx_bigbird as eb

from .hf_reference import flax_model, lenient_jax, numpy, pytorch_model, torch
from .test_hf_parity import assert_close, make_batch

# Head -> (output fields, HF overrides the head needs).
HEADS = {
    "PreTraining": (["prediction_logits", "seq_relationship_logits"], {}),
    "MaskedLM": (["logits"], {}),
    "SequenceClassification": (["logits"], dict(num_labels=3)),
    "MultipleChoice": (["logits"], {}),
    "TokenClassification": (["logits"], dict(num_labels=5)),
    "QuestionAnswering": (["start_logits", "end_logits"], {}),
    "CausalLM": (["logits"], dict(is_decoder=True)),
}
# Setup -> (attention overrides, length). 40 > (5 + 2 * 2) * 4 = 36 runs block-sparse (HF PT, HF
# Flax and ours alike); 42 is block-sparse with internal padding to 44 (HF Flax cannot run it).
SETUPS = {
    "sparse": (dict(block_size=4, num_random_blocks=2), 40),
    "sparse-padded": (dict(block_size=4, num_random_blocks=2), 42),
    "full": (dict(attention_type="original_full"), 13),
}
SEP = 66  # HF's default sep_token_id, inside the tiny vocabulary


def overrides_for(head, setup):
    attn, _ = SETUPS[setup]
    extra = HEADS[head][1]
    if head == "CausalLM":
        attn = dict(attention_type="original_full")  # decoders run full attention (see the class)
    return {**attn, **extra}


def inputs_for(head, length, seed):
    """A padded numpy batch (3 examples; MultipleChoice: 2 examples x 3 choices)."""
    ids, mask, tt = make_batch(length, seed)
    batch = dict(input_ids=ids, attention_mask=mask, token_type_ids=tt)
    if head == "MultipleChoice":
        ids2, mask2, tt2 = make_batch(length, seed + 1)
        batch = dict(
            input_ids=np.stack([ids, ids2]), attention_mask=np.stack([mask, mask2]),
            token_type_ids=np.stack([tt, tt2]),
        )
    if head == "QuestionAnswering":
        # Questions of 6 and 4 tokens; the third example has no [SEP] (question length 1, as HF).
        ids = ids.copy()
        ids[ids == SEP] = 0
        ids[0, 5], ids[1, 3] = SEP, SEP
        batch = dict(input_ids=ids, attention_mask=mask)  # default token types from the question
    return batch


def pt_forward(model, batch, **kwargs):
    base = model.bert
    base.set_attention_type(base.config.attention_type)  # undo HF's permanent switch to full
    tensors = {k: torch.tensor(np.asarray(v)) for k, v in batch.items()}
    with torch.no_grad():
        out = model(**tensors, **kwargs)
    base.set_attention_type(base.config.attention_type)
    return out


@eqx.filter_jit
def ours_forward(model, batch):
    return jax.vmap(lambda kw: model(**kw, output_hidden_states=True))(batch)


def compare(head, ours, ref, batch):
    fields, _ = HEADS[head]
    worst = 0.0
    for field in fields:
        assert_close(getattr(ours, field), getattr(ref, field), field)
        worst = max(worst, float(np.abs(np.asarray(getattr(ours, field)) - numpy(getattr(ref, field))).max()))
    length = batch["input_ids"].shape[-1]
    ref_hidden = np.stack([numpy(h) for h in ref.hidden_states], axis=1)[:, :, :length]
    ours_hidden = np.asarray(ours.hidden_states)
    if head == "MultipleChoice":
        ours_hidden = ours_hidden.reshape(-1, *ours_hidden.shape[2:])
    assert_close(ours_hidden, ref_hidden, "hidden_states")
    return worst


def _cases(setups):
    """Every head in every setup, except that decoders always run full attention (a
    block-sparse decoder config is covered by the 'full' setup)."""
    return [(h, s) for s in setups for h in HEADS if h != "CausalLM" or s == "full"]


@pytest.mark.parametrize("head,setup", _cases(list(SETUPS)))
def test_head_against_pytorch(head, setup):
    overrides = overrides_for(head, setup)
    pt, path = pytorch_model(f"BigBirdFor{head}", **overrides)
    model = getattr(eb, f"BigBirdFor{head}").from_pretrained(path)
    batch = inputs_for(head, SETUPS[setup][1], seed=11)
    ref = pt_forward(pt, batch, output_hidden_states=True)
    ours = ours_forward(model, {k: jnp.asarray(v) for k, v in batch.items()})
    compare(head, ours, ref, batch)


@pytest.mark.parametrize("head,setup", _cases(["sparse", "full"]))
def test_head_against_flax(head, setup):
    overrides = overrides_for(head, setup)
    fx, path = flax_model(f"FlaxBigBirdFor{head}", **overrides)
    model = getattr(eb, f"BigBirdFor{head}").from_pretrained(path)
    batch = inputs_for(head, SETUPS[setup][1], seed=12)
    with lenient_jax():
        ref = fx(**batch, output_hidden_states=True)
    ours = ours_forward(model, {k: jnp.asarray(v) for k, v in batch.items()})
    compare(head, ours, ref, batch)


def test_question_lengths_explicit_and_masking():
    """Explicit question lengths (HF takes them as (batch, 1)); [CLS] is never masked."""
    pt, path = pytorch_model("BigBirdForQuestionAnswering", **overrides_for("QuestionAnswering", "full"))
    model = eb.BigBirdForQuestionAnswering.from_pretrained(path)
    batch = inputs_for("QuestionAnswering", 13, seed=3)
    q_len = np.array([4, 1, 7])
    ref = pt_forward(pt, {**batch, "question_lengths": q_len[:, None]})
    ours = jax.vmap(model)(batch["input_ids"], batch["attention_mask"], q_len)
    assert_close(ours.start_logits, ref.start_logits, "start_logits")
    assert_close(ours.end_logits, ref.end_logits, "end_logits")
    assert np.all(np.asarray(ours.start_logits)[0, 1:4] < -1e5)
    assert np.all(np.asarray(ours.start_logits)[:, 0] > -1e5)


@pytest.mark.parametrize("head", ["MaskedLM", "PreTraining"])
def test_mlm_logits_at_positions(head):
    """`positions` gives the same logits as the full computation, at those rows only."""
    _, path = pytorch_model(f"BigBirdFor{head}", **overrides_for(head, "sparse"))
    model = getattr(eb, f"BigBirdFor{head}").from_pretrained(path)
    ids, mask, tt = make_batch(40, seed=4)
    positions = np.array([0, 7, 7, 39])
    full = model(ids[0], mask[0], tt[0])
    some = model(ids[0], mask[0], tt[0], positions=positions)
    field = "logits" if head == "MaskedLM" else "prediction_logits"
    assert getattr(some, field).shape == (4, 99)
    np.testing.assert_array_equal(getattr(some, field), getattr(full, field)[positions])


def test_untied_decoder_against_pytorch():
    """`tie_word_embeddings=False`: the decoder is its own matrix (stored in the checkpoint)."""
    overrides = {**overrides_for("MaskedLM", "full"), "tie_word_embeddings": False}
    pt, path = pytorch_model("BigBirdForMaskedLM", **overrides)
    model = eb.BigBirdForMaskedLM.from_pretrained(path)
    assert model.cls.decoder is not None
    assert not np.allclose(model.cls.decoder.weight, model.bert.embeddings.word_embeddings.weight)
    batch = inputs_for("MaskedLM", 13, seed=5)
    ref = pt_forward(pt, batch, output_hidden_states=True)
    compare("MaskedLM", ours_forward(model, {k: jnp.asarray(v) for k, v in batch.items()}), ref, batch)


def test_checkpoint_into_other_head_initialises_and_reports(capsys):
    """An MLM checkpoint into a classifier: encoder copied, head initialised from `key`, and the
    report names the initialised leaves and the unused MLM weights; without allow_init, an error."""
    overrides = overrides_for("MaskedLM", "sparse")
    _, path = pytorch_model("BigBirdForMaskedLM", **overrides)
    with pytest.raises(eb.CheckpointError, match="classifier"):
        eb.BigBirdForTokenClassification.from_pretrained(path)
    with pytest.warns(UserWarning, match="classifier"):
        clf = eb.BigBirdForTokenClassification.from_pretrained(
            path, allow_init=True, key=jr.PRNGKey(3), verbose=True
        )
    report = capsys.readouterr().out
    assert "newly initialised" in report and "classifier" in report
    assert "unused checkpoint keys" in report and "cls.predictions.transform.dense.weight" in report
    mlm = eb.BigBirdForMaskedLM.from_pretrained(path)
    for a, b in zip(jax.tree_util.tree_leaves(mlm.bert), jax.tree_util.tree_leaves(clf.bert)):
        np.testing.assert_array_equal(a, b)
    ids, mask, _ = make_batch(40, seed=6)
    assert clf(ids[0], mask[0]).logits.shape == (40, 2)


def test_heads_train_mode_needs_key_and_is_deterministic_in_inference():
    config = eb.BigBirdConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=64, block_size=4, num_random_blocks=2,
    ).replace(num_labels=3)
    model = eb.BigBirdForSequenceClassification(config, key=jr.PRNGKey(0))
    ids, mask, _ = make_batch(40, seed=7)
    with pytest.raises(ValueError, match="needs `key=`"):
        model(ids[0], mask[0])
    a = model(ids[0], mask[0], key=jr.PRNGKey(1)).logits
    b = model(ids[0], mask[0], key=jr.PRNGKey(2)).logits
    assert not np.allclose(a, b)
    frozen = eqx.nn.inference_mode(model)
    np.testing.assert_array_equal(frozen(ids[0], mask[0]).logits, frozen(ids[0], mask[0]).logits)
