"""Decoder mode: causal self-attention and cross-attention against HF, the KV cache against the
uncached forward step by step (`generate` itself: test_generate.py)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqx_bigbird as eb

from .hf_reference import flax_model, lenient_jax, numpy, pytorch_model, torch
from .test_hf_parity import assert_close, make_batch

DECODER = dict(is_decoder=True, attention_type="original_full")
CROSS = dict(DECODER, add_cross_attention=True)
ENC_LEN = 9


def encoder_batch(seed):
    rng = np.random.default_rng(seed)
    states = rng.normal(size=(3, ENC_LEN, 32)).astype(np.float32)
    mask = np.ones((3, ENC_LEN), np.int64)
    mask[1, 6:] = 0
    mask[2, [2, 5]] = 0
    return states, mask


def _patch_pytorch_cross_attention(pt):
    """HF PyTorch 4.57 BigBird bugs, undone for comparison: `BigBirdLayer.forward` also passes
    `encoder_hidden_states` to the *self*-attention (which then attends to the encoder, not
    causally to the decoder), and calls the cross-attention with `encoder_attention_mask=None` (so
    encoder padding is not masked). HF Flax has neither bug; we compute what Flax computes."""

    def patched(layer):
        self_forward, cross_forward = layer.attention.forward, layer.crossattention.forward

        def self_attention(*a, **k):
            return self_forward(*a, **{**k, "encoder_hidden_states": None, "encoder_attention_mask": None})

        def cross_attention(*a, **k):
            return cross_forward(*a, **{**k, "encoder_attention_mask": k.get("attention_mask")})

        return self_attention, cross_attention

    for layer in pt.bert.encoder.layer:
        layer.attention.forward, layer.crossattention.forward = patched(layer)


def _unpatch(pt):
    for layer in pt.bert.encoder.layer:
        del layer.attention.forward, layer.crossattention.forward


def test_cross_attention_decoder_against_pytorch_and_flax():
    """Causal self-attention plus cross-attention to padded encoder states, both references."""
    ids, mask, tt = make_batch(11, seed=31)
    states, enc_mask = encoder_batch(32)
    pt, pt_path = pytorch_model("BigBirdForCausalLM", **CROSS)
    fx, fx_path = flax_model("FlaxBigBirdForCausalLM", **CROSS)

    def run_pt():
        with torch.no_grad():
            return pt(
                input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                token_type_ids=torch.tensor(tt), encoder_hidden_states=torch.tensor(states),
                encoder_attention_mask=torch.tensor(enc_mask), output_attentions=True,
                use_cache=False,
            )

    buggy = run_pt()
    _patch_pytorch_cross_attention(pt)
    try:
        ref_pt = run_pt()
    finally:
        _unpatch(pt)
    with lenient_jax():
        ref_fx = fx(ids, mask, tt, encoder_hidden_states=states, encoder_attention_mask=enc_mask)
    run = eqx.filter_jit(
        lambda m, *a: jax.vmap(
            lambda i, am, t, s, sm: m(
                i, am, t, encoder_hidden_states=s, encoder_attention_mask=sm,
                output_attentions=True,
            )
        )(*a)
    )
    for path, ref in ((fx_path, ref_fx), (pt_path, ref_pt)):
        model = eb.BigBirdForCausalLM.from_pretrained(path)
        assert model.bert.encoder.layers.crossattention is not None
        out = run(model, ids, mask, tt, states, enc_mask)
        assert_close(out.logits, ref.logits, "logits")
    assert_close(out.cross_attentions, np.stack([numpy(a) for a in ref_pt.cross_attentions], 1), "cross")
    assert_close(out.attentions, np.stack([numpy(a) for a in ref_pt.attentions], 1), "attentions")
    # The bug is real (if HF fixes it, this line says so and the patch can go).
    assert np.abs(numpy(buggy.logits) - np.asarray(out.logits)).max() > 1e-2


@pytest.mark.parametrize("cross", [False, True])
def test_cached_decoding_equals_uncached_step_by_step(cross):
    overrides = CROSS if cross else DECODER
    _, path = pytorch_model("BigBirdForCausalLM", **overrides)
    model = eb.BigBirdForCausalLM.from_pretrained(path)
    ids, mask, _ = make_batch(12, seed=33)
    ids, mask = ids[2], mask[2]  # the example with holes in its mask
    states, enc_mask = encoder_batch(34)
    kw = dict(encoder_hidden_states=states[1], encoder_attention_mask=enc_mask[1]) if cross else {}
    prompt = 5
    run = eqx.filter_jit(lambda m, *a, **k: m(*a, **k))

    cache = eb.init_cache(model.config, 12)
    out = run(model, ids[:prompt], mask[:prompt], past_key_values=cache, **kw)
    full = run(model, ids[:prompt], mask[:prompt], **kw)
    assert_close(out.logits, full.logits, "prefill")
    cache = out.past_key_values
    for t in range(prompt, 12):
        step = run(model, ids[t : t + 1], mask[t : t + 1], past_key_values=cache, **kw)
        cache = step.past_key_values
        assert int(cache.index) == t + 1
        full = run(model, ids[: t + 1], mask[: t + 1], **kw)
        assert_close(step.logits[0], full.logits[t], f"step {t}")


def test_block_sparse_decoder_config_warns_and_runs_full_attention():
    _, path = pytorch_model("BigBirdForCausalLM", **DECODER)
    full = eb.BigBirdForCausalLM.from_pretrained(path)
    with pytest.warns(UserWarning, match="block-sparse attention cannot be causal"):
        sparse = eb.BigBirdForCausalLM.from_pretrained(
            path, config_overrides=dict(attention_type="block_sparse", block_size=4, num_random_blocks=2)
        )
    ids, mask, tt = make_batch(48, seed=35)  # long enough for block-sparse in an encoder
    assert not sparse.bert.uses_block_sparse(48)
    np.testing.assert_array_equal(sparse(ids[0], mask[0]).logits, full(ids[0], mask[0]).logits)


def test_encoder_states_and_cache_are_never_silently_dropped():
    _, path = pytorch_model("BigBirdForCausalLM", **DECODER)
    decoder = eb.BigBirdForCausalLM.from_pretrained(path)
    ids = np.array([4, 5, 6])
    with pytest.raises(ValueError, match="add_cross_attention"):
        decoder(ids, encoder_hidden_states=jnp.zeros((4, 32)))
    _, mlm_path = pytorch_model("BigBirdForMaskedLM", attention_type="original_full")
    encoder = eb.BigBirdModel.from_pretrained(mlm_path)
    with pytest.raises(ValueError, match="decoder"):
        encoder(ids, past_key_values=eb.init_cache(decoder.config, 8))
    with pytest.raises(ValueError, match="is_decoder"):
        eb.BigBirdConfig(add_cross_attention=True) and eb.BigBirdModel(
            eb.BigBirdConfig(add_cross_attention=True, hidden_size=32, num_attention_heads=2,
                             num_hidden_layers=1, intermediate_size=8, vocab_size=10),
            key=jr.PRNGKey(0),
        )
    cache = eb.init_cache(decoder.config, 4)
    with pytest.raises(Exception, match="KV cache full"):
        jax.block_until_ready(decoder(np.arange(5), past_key_values=cache).logits)
