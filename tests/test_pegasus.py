"""BigBird-Pegasus against HF PyTorch in the same process, float32: config, every class, both
attention kinds, lengths on both sides of the fallback and padding edges, padded masks, training
mode with HF's fixed plans, and gradients of the seq2seq loss. Agreement: 1e-5 max abs."""

import dataclasses
import json

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import eqx_bigbird as eb

from .pegasus_reference import (
    FALLBACK_EDGE,
    TINY,
    hf_config,
    make_inputs,
    numpy,
    pytorch_model,
    reset_attention,
    run_hf,
    torch,
    transformers,
)
from .test_errors_config import _wrong_value

ATOL = 1e-5
SPARSE = dict(attention_type="block_sparse")
FULL = dict(attention_type="original_full", use_bias=True)
# (overrides, length): full attention; the fallback edge (72 runs full, 73 block-sparse padded
# to 80); a multiple of block_size (160); auto-padding (163 -> 168).
CASES = [(FULL, 20), (SPARSE, FALLBACK_EDGE), (SPARSE, FALLBACK_EDGE + 1), (SPARSE, 160),
         (SPARSE, 163)]
CASE_IDS = ["full-20", "sparse-72", "sparse-73", "sparse-160", "sparse-163"]


def assert_close(ours, theirs, what, atol=ATOL):
    ours, theirs = np.asarray(ours), numpy(theirs)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    err = np.abs(ours - theirs).max()
    assert err <= atol, f"{what}: max abs diff {err:.3g}"


@eqx.filter_jit
def run_ours(model, *args, **kwargs):
    return jax.vmap(lambda *a: model(*a, **kwargs))(*args)


def _stacked(states, length=None):
    return np.stack([numpy(s)[:, :length] for s in states], axis=1)


def _loaded(cls, overrides, **kwargs):
    pt, path = pytorch_model(cls.__name__, **overrides)
    return pt, cls.from_pretrained(path, **kwargs)


# -- config ---------------------------------------------------------------------------------------


def test_config_round_trips_hf_config_json(tmp_path):
    hf = hf_config(num_labels=3, use_bias=True, num_beams=5, length_penalty=0.8)
    hf.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    ours = eb.BigBirdPegasusConfig.from_hf(tmp_path)
    assert ours.to_hf() == raw
    assert ours.num_labels == 3 and ours.encoder_layers == 2 and ours.use_bias
    assert ours.generation_defaults() == {"num_beams": 5, "length_penalty": 0.8}
    assert transformers.BigBirdPegasusConfig(**ours.to_hf()).to_dict() == hf.to_dict()


def test_config_defaults_are_hf_defaults():
    ours, hf = eb.BigBirdPegasusConfig(), transformers.BigBirdPegasusConfig()
    for key, value in ours.to_hf().items():
        assert getattr(hf, key) == value, key
    assert (ours.hidden_size, ours.num_attention_heads, ours.num_hidden_layers) == (1024, 16, 16)
    assert ours.encoder_view().max_tokens_for_full_attention == 704


@pytest.mark.parametrize(
    "field,value",
    [("d_model", 30), ("encoder_layers", 0), ("dropout", 1.5), ("activation_function", "nope"),
     ("activation_function", "prelu"), ("attention_type", "sparse"), ("attention_type", 1),
     ("pad_token_id", 99), ("bos_token_id", -1), ("use_bias", 1), ("decoder_layerdrop", -0.1),
     ("encoder_layerdrop", 1.5), ("num_random_blocks", -1), ("problem_type", "ranking"),
     # the wrong type: a bool is not an int, a string never a number or a bool, floats finite
     ("d_model", True), ("vocab_size", 99.0), ("encoder_layers", "2"), ("eos_token_id", "1"),
     ("decoder_start_token_id", None), ("init_std", True), ("init_std", float("nan")),
     ("dropout", float("inf")), ("classifier_dropout", None), ("scale_embedding", 1),
     ("is_decoder", "false"), ("tie_word_embeddings", None), ("use_cache", 0),
     ("architectures", "BigBirdPegasusForConditionalGeneration")],
)
def test_config_invalid_values_name_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=rf"^BigBirdPegasusConfig\.{field}="):
        eb.BigBirdPegasusConfig(**{**TINY, field: value})
    # Read from config.json, the error names the file as well.
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**eb.BigBirdPegasusConfig(**TINY).to_hf(), field: value}))
    with pytest.raises(ValueError, match=rf"config\.json: BigBirdPegasusConfig\.{field}="):
        eb.BigBirdPegasusConfig.from_hf(path)


@pytest.mark.parametrize(
    "field", dataclasses.fields(eb.BigBirdPegasusConfig),
    ids=lambda f: f.name,
)
def test_config_every_field_is_type_checked(field):
    """Derived from the dataclass, so a new field is covered without touching this test."""
    with pytest.raises(ValueError, match=rf"BigBirdPegasusConfig\.{field.name}="):
        eb.BigBirdPegasusConfig(**{**TINY, field.name: _wrong_value(field.type)})


def test_config_refuses_unknown_and_inconsistent_keys():
    raw = hf_config().to_diff_dict()
    with pytest.raises(ValueError, match="unknown BigBird-Pegasus config key"):
        eb.BigBirdPegasusConfig.from_hf({**raw, "frobnicate": 1})
    with pytest.raises(ValueError, match="num_hidden_layers"):
        eb.BigBirdPegasusConfig.from_hf({**raw, "num_hidden_layers": 5})
    with pytest.raises(ValueError, match="model_type"):
        eb.BigBirdPegasusConfig.from_hf({**raw, "model_type": "big_bird"})


def test_shift_tokens_right():
    out = eb.shift_tokens_right(np.array([[5, 6, -100, 1]]), 0, 2)
    np.testing.assert_array_equal(out, [[2, 5, 6, 0]])


# -- every class against HF -----------------------------------------------------------------------


@pytest.mark.parametrize("overrides,length", CASES, ids=CASE_IDS)
def test_conditional_generation_against_pytorch(overrides, length):
    pt, ours = _loaded(eb.BigBirdPegasusForConditionalGeneration, overrides)
    ids, mask, dec = make_inputs(length, seed=length)
    dec_mask = np.ones_like(dec)
    dec_mask[1, -3:] = 0  # decoder pads are attended unless masked
    attentions = overrides is FULL
    ref = run_hf(
        pt, ids, mask, dec, dec_mask, output_hidden_states=True, output_attentions=attentions
    )
    out = run_ours(
        ours, ids, mask, dec, dec_mask, output_hidden_states=True, output_attentions=attentions
    )
    assert_close(out.logits, ref.logits, "logits")
    assert_close(out.encoder_last_hidden_state, ref.encoder_last_hidden_state, "encoder state")
    # HF keeps the encoder's hidden states at the padded length; ours are un-padded.
    assert_close(out.encoder_hidden_states, _stacked(ref.encoder_hidden_states, length), "enc hs")
    assert_close(out.decoder_hidden_states, _stacked(ref.decoder_hidden_states), "dec hs")
    if attentions:
        assert_close(out.encoder_attentions, _stacked(ref.encoder_attentions), "enc attn")
        assert_close(out.decoder_attentions, _stacked(ref.decoder_attentions), "dec attn")
        assert_close(out.cross_attentions, _stacked(ref.cross_attentions), "cross attn")


@pytest.mark.parametrize("overrides,length", [CASES[0], CASES[-1]], ids=[CASE_IDS[0], CASE_IDS[-1]])
def test_base_classification_and_qa_against_pytorch(overrides, length):
    """The base model and the two heads that derive decoder inputs from `input_ids`."""
    ids, mask, _ = make_inputs(length, seed=3 + length)
    pt, ours = _loaded(eb.BigBirdPegasusModel, overrides)
    ref, out = run_hf(pt, ids, mask), run_ours(ours, ids, mask)
    assert_close(out.last_hidden_state, ref.last_hidden_state, "last_hidden_state")
    assert_close(out.encoder_last_hidden_state, ref.encoder_last_hidden_state, "encoder")
    pt, ours = _loaded(eb.BigBirdPegasusForSequenceClassification, {**overrides, "num_labels": 3})
    assert_close(run_ours(ours, ids, mask).logits, run_hf(pt, ids, mask).logits, "seqcls")
    pt, ours = _loaded(eb.BigBirdPegasusForQuestionAnswering, overrides)
    ref, out = run_hf(pt, ids, mask), run_ours(ours, ids, mask)
    assert_close(out.start_logits, ref.start_logits, "start_logits")
    assert_close(out.end_logits, ref.end_logits, "end_logits")


def test_sequence_classification_pools_the_last_eos():
    pt, ours = _loaded(eb.BigBirdPegasusForSequenceClassification, {**FULL, "num_labels": 3})
    ids, mask, _ = make_inputs(20, seed=1)
    ids[:, 10] = 1  # two eos per row: HF pools the last
    assert_close(run_ours(ours, ids, mask).logits, run_hf(pt, ids, mask).logits, "two eos")
    with pytest.raises(Exception, match="eos"):
        run_ours(ours, np.full((2, 20), 5), mask)


@pytest.mark.parametrize("cross", [False, True])
def test_causal_lm_against_pytorch(cross):
    pt, ours = _loaded(eb.BigBirdPegasusForCausalLM, FULL)
    ids, mask, _ = make_inputs(17, seed=4)
    kwargs = {}
    if cross:
        rng = np.random.default_rng(5)
        states = rng.normal(size=(2, 12, 32)).astype(np.float32)
        enc_mask = np.ones((2, 12), np.int64)
        enc_mask[0, 8:] = 0
        kwargs = dict(encoder_hidden_states=states, encoder_attention_mask=enc_mask)
    ref = run_hf(pt, ids, mask, output_hidden_states=True, **kwargs)
    out = eqx.filter_jit(
        lambda m, *a, **kw: jax.vmap(lambda *b, **c: m(*b, output_hidden_states=True, **c))(
            *a, **kw
        )
    )(ours, ids, mask, **kwargs)
    assert ours.config.is_decoder and not ours.config.is_encoder_decoder
    assert_close(out.logits, ref.logits, "logits")
    assert_close(out.hidden_states, _stacked(ref.hidden_states), "hidden_states")


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(length=st.integers(1, 100), data=st.data())
def test_property_lengths_and_masks(length, data):
    """Random lengths on either side of every edge and random masks (first token kept)."""
    pt, ours = _loaded(eb.BigBirdPegasusForConditionalGeneration, SPARSE)
    ids, _, dec = make_inputs(length, seed=length, batch=1)
    mask = np.asarray(data.draw(st.lists(st.booleans(), min_size=length, max_size=length)))
    mask = mask.astype(np.int64)[None]
    mask[0, 0] = 1
    ref = run_hf(pt, ids, mask, dec)
    out = run_ours(ours, ids, mask, dec)
    assert_close(out.logits, ref.logits, "logits")
    assert_close(out.encoder_last_hidden_state, ref.encoder_last_hidden_state, "encoder")


# -- training mode, the loss and its gradients ----------------------------------------------------

TRAIN = dict(attention_type="block_sparse", dropout=0.0, attention_dropout=0.0)


def _labels(dec_len, seed):
    labels = np.random.default_rng(seed).integers(0, 99, (2, dec_len))
    labels[0, -2:] = -100
    return labels


def test_train_step_gradients_against_pytorch_autograd():
    """`make_train_step` with `seq2seq_lm_loss` (label smoothing 0.1) under gradient
    checkpointing: its SGD update is `-lr * grad`, and every parameter's gradient is HF PyTorch
    autograd's within 1e-4 relative to its largest entry. HF in training mode runs its fixed,
    numpy-seeded plan per layer, which is `random_attention="fixed"`; block-sparse at 163 tokens
    (auto-padded), dropout 0."""
    import optax

    from eqx_bigbird import training
    from eqx_bigbird._export import hf_state

    pt, path = pytorch_model("BigBirdPegasusForConditionalGeneration", **TRAIN)
    ours = eb.BigBirdPegasusForConditionalGeneration.from_pretrained(
        path, random_attention="fixed", gradient_checkpointing="dots_with_no_batch_dims_saveable"
    )
    ids, mask, _ = make_inputs(163, seed=9)
    labels = _labels(7, seed=10)
    dec = np.asarray(eb.shift_tokens_right(labels, 0, 2))

    pt.train()
    reset_attention(pt)
    pt.zero_grad()
    logits = pt(torch.tensor(ids), torch.tensor(mask), torch.tensor(dec)).logits
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 99), torch.tensor(labels).reshape(-1), label_smoothing=0.1
    )
    loss.backward()
    pt.eval()
    theirs = {k: v.grad.numpy() for k, v in pt.named_parameters() if v.grad is not None}

    def loss_fn(model, batch, *, key):
        keys = jr.split(key, batch["ids"].shape[0])
        out = jax.vmap(lambda i, m, d, k: model(i, m, d, key=k, inference=False))(
            batch["ids"], batch["mask"], batch["dec"], keys
        )
        return eb.seq2seq_lm_loss(out.logits, batch["labels"], label_smoothing=0.1)

    lr = 1e4  # large, so that the update is far above the parameters' rounding
    optimizer = optax.sgd(lr)
    before = {name: value.copy() for name, value, _ in hf_state(ours)}
    step = training.make_train_step(loss_fn, optimizer)
    state, metrics = step(
        training.TrainState.create(ours, optimizer),
        dict(ids=ids, mask=mask, dec=dec, labels=labels), jr.PRNGKey(0),
    )
    np.testing.assert_allclose(float(metrics["loss"]), loss.item(), rtol=1e-5)
    grads = {
        name: (before[name].astype(np.float64) - value) / lr
        for name, value, _ in hf_state(state.model)
    }
    assert set(theirs) <= set(grads)
    np.testing.assert_array_equal(grads["final_logits_bias"], 0)  # HF: a buffer, never trained
    for name, g in theirs.items():
        err = np.abs(grads[name] - g).max() / np.abs(g).max()
        assert err <= 1e-4, f"{name}: relative gradient error {err:.3g}"


def test_seq2seq_lm_loss_matches_torch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 11)).astype(np.float32)
    labels = rng.integers(0, 11, (2, 5))
    labels[1, 3:] = -100
    for eps in (0.0, 0.2):
        theirs = torch.nn.functional.cross_entropy(
            torch.tensor(logits).reshape(-1, 11), torch.tensor(labels).reshape(-1),
            label_smoothing=eps,
        )
        ours = eb.seq2seq_lm_loss(jnp.asarray(logits), labels, label_smoothing=eps)
        np.testing.assert_allclose(float(ours), theirs.item(), rtol=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        eb.seq2seq_lm_loss(jnp.asarray(logits), labels, label_smoothing=1.0)


# -- execution options ----------------------------------------------------------------------------


def test_execution_options_do_not_change_outputs():
    pt, path = pytorch_model("BigBirdPegasusForConditionalGeneration", **SPARSE)
    ids, mask, dec = make_inputs(163, seed=2)
    base = run_ours(eb.BigBirdPegasusForConditionalGeneration.from_pretrained(path), ids, mask, dec)
    # (Gradient checkpointing is exercised by the gradient test.)
    model = eb.BigBirdPegasusForConditionalGeneration.from_pretrained(path, scan_layers=False)
    assert_close(run_ours(model, ids, mask, dec).logits, base.logits, "unrolled")
    model = eb.with_options(
        eb.BigBirdPegasusForConditionalGeneration.from_pretrained(path), compute_dtype="bfloat16"
    )
    low = run_ours(model, ids, mask, dec).logits
    assert low.dtype == jnp.bfloat16
    assert np.abs(np.asarray(low, np.float32) - np.asarray(base.logits)).max() < 0.5


def test_training_needs_a_key_and_layerdrop_is_hf_s():
    """LayerDrop 1.0 in training skips every layer in both stacks, in HF and here (dropout 0, so
    the call is deterministic); training without a key is refused."""
    overrides = {**FULL, "dropout": 0.0, "encoder_layerdrop": 1.0, "decoder_layerdrop": 1.0}
    pt, ours = _loaded(eb.BigBirdPegasusForConditionalGeneration, overrides)
    ids, mask, dec = make_inputs(20, seed=8)
    with pytest.raises(ValueError, match="key"):
        ours(ids[0], mask[0], dec[0], inference=False)
    pt.train()
    try:
        ref = run_hf(pt, ids, mask, dec)
    finally:
        pt.eval()
    out = run_ours(ours, ids, mask, dec, key=jr.PRNGKey(0), inference=False)
    assert_close(out.logits, ref.logits, "logits")
    assert np.abs(numpy(ref.logits) - numpy(run_hf(pt, ids, mask, dec).logits)).max() > 1e-2
