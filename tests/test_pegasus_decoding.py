"""The decoding protocol of the BigBird-Pegasus models (`prepare_decoding` / `decode_step`):
cached decoding equals the uncached decoder at every step (also vmapped over beams), and a greedy
loop over the two methods equals HF PyTorch's greedy `generate` token for token."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_bigbird as eb

from .pegasus_reference import build_model, make_inputs, pytorch_model, torch

ATOL = 1e-5
SPARSE = dict(attention_type="block_sparse")
FULL = dict(attention_type="original_full", use_bias=True)


@eqx.filter_jit
def cached_logits(model, ids, mask, tokens):
    """Logits after the start token (or prompt), then after each of `tokens`, per beam:
    `tokens` is `(beams, n)`; `shared` is computed once, the state is per beam."""
    shared, state, first = model.prepare_decoding(ids, mask, tokens.shape[1])
    step = jax.vmap(model.decode_step, in_axes=(None, 0, 0))
    beams = tokens.shape[0]
    states = jax.tree.map(lambda x: jnp.broadcast_to(x, (beams, *x.shape)), state)

    def body(states, token):
        states, logits = step(shared, states, token)
        return states, logits

    _, logits = jax.lax.scan(body, states, tokens.T)  # (n, beams, vocab)
    return first, jnp.swapaxes(logits, 0, 1)


def test_seq2seq_cached_equals_uncached_at_every_step():
    _, path = pytorch_model("BigBirdPegasusForConditionalGeneration", **SPARSE)
    model = eb.BigBirdPegasusForConditionalGeneration.from_pretrained(path)
    ids, mask, _ = make_inputs(163, seed=1)
    ids, mask = ids[1], mask[1]  # padded document, block-sparse encoder
    tokens = np.random.default_rng(2).integers(0, 99, (2, 6)).astype(np.int32)
    first, steps = cached_logits(model, ids, mask, tokens)
    assert first.dtype == jnp.float32 and steps.shape == (2, 6, 99)
    full = eqx.filter_jit(lambda m, d: jax.vmap(lambda x: m(ids, mask, x).logits)(d))(
        model, np.concatenate([np.full((2, 1), 2, np.int32), tokens], axis=1)
    )
    np.testing.assert_allclose(first, full[0, 0], atol=ATOL)
    np.testing.assert_allclose(first, full[1, 0], atol=ATOL)
    np.testing.assert_allclose(steps, full[:, 1:], atol=ATOL)


def test_causal_lm_cached_equals_uncached_at_every_step():
    _, path = pytorch_model("BigBirdPegasusForCausalLM", **FULL)
    model = eb.BigBirdPegasusForCausalLM.from_pretrained(path)
    prompt = np.random.default_rng(3).integers(3, 99, (7,)).astype(np.int32)
    mask = np.array([0, 1, 1, 1, 1, 1, 1], np.int32)  # left padding
    tokens = np.random.default_rng(4).integers(0, 99, (2, 5)).astype(np.int32)
    first, steps = cached_logits(model, prompt, mask, tokens)
    seqs = np.concatenate([np.broadcast_to(prompt, (2, 7)), tokens], axis=1)
    masks = np.concatenate([np.broadcast_to(mask, (2, 7)), np.ones((2, 5), np.int32)], axis=1)
    full = eqx.filter_jit(lambda m, s, k: jax.vmap(lambda a, b: m(a, b).logits)(s, k))(
        model, seqs, masks
    )
    np.testing.assert_allclose(first, full[0, 6], atol=ATOL)
    np.testing.assert_allclose(steps, full[:, 7:], atol=ATOL)


@eqx.filter_jit
def greedy(model, ids, mask, max_new_tokens, eos, pad):
    """Greedy decoding with the protocol, finished rows padded as HF does."""
    shared, state, logits = model.prepare_decoding(ids, mask, max_new_tokens)

    def body(carry, _):
        state, logits, done = carry
        token = jnp.where(done, jnp.int32(pad), jnp.argmax(logits).astype(jnp.int32))
        done = done | (token == eos)
        state, logits = model.decode_step(shared, state, token)
        return (state, logits, done), token

    _, tokens = jax.lax.scan(body, (state, logits, jnp.zeros((), bool)), None, max_new_tokens)
    return tokens


def _varied(pt):
    """Random tiny models tend to repeat one token (or their input): an untied random LM head,
    spread positions and a strong cross-attention make generations differ per row, and an eos
    bias ends some early (finished rows are then padded)."""
    decoder = pt.model.decoder
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        decoder.embed_positions.weight.copy_(
            3 * torch.randn(decoder.embed_positions.weight.shape, generator=gen)
        )
        pt.lm_head.weight.copy_(torch.randn(pt.lm_head.weight.shape, generator=gen))
        for layer in decoder.layers:
            layer.encoder_attn.out_proj.weight.mul_(10)
        if hasattr(pt, "final_logits_bias"):
            pt.final_logits_bias.mul_(0.1)
            pt.final_logits_bias[0, 1] += 10.0


@pytest.mark.parametrize("overrides,length", [(SPARSE, 163), (FULL, 30)], ids=["sparse", "full"])
def test_seq2seq_greedy_equals_hf_generate(tmp_path, overrides, length):
    pt = build_model(
        "BigBirdPegasusForConditionalGeneration", seed=1, tie_word_embeddings=False, **overrides
    )
    _varied(pt)
    pt.save_pretrained(tmp_path)
    model = eb.BigBirdPegasusForConditionalGeneration.from_pretrained(tmp_path)
    ids, mask, _ = make_inputs(length, seed=5)
    with torch.no_grad():
        ref = pt.generate(
            torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=12,
            do_sample=False, num_beams=1,
        ).numpy()
    ours = jax.vmap(lambda i, m: greedy(model, i, m, 12, 1, 0))(ids, mask)
    ours = np.concatenate([np.full((2, 1), 2), np.asarray(ours)], axis=1)
    assert len(set(map(tuple, ref.tolist()))) == 2, ref  # the rows differ
    assert (ref[:, 1:] == 1).any(), ref  # and eos comes
    np.testing.assert_array_equal(ours[:, : ref.shape[1]], ref)
    assert (ours[:, ref.shape[1]:] == 0).all()  # HF stopped: every row had finished


def test_causal_lm_greedy_equals_hf_generate(tmp_path):
    pt = build_model("BigBirdPegasusForCausalLM", seed=1, tie_word_embeddings=False, **FULL)
    _varied(pt)
    pt.save_pretrained(tmp_path)
    model = eb.BigBirdPegasusForCausalLM.from_pretrained(tmp_path)
    rng = np.random.default_rng(6)
    prompts = rng.integers(3, 99, (2, 6))
    mask = np.ones((2, 6), np.int64)
    mask[1, :2] = 0  # left padding
    with torch.no_grad():
        ref = pt.generate(
            torch.tensor(prompts), attention_mask=torch.tensor(mask), max_new_tokens=10,
            do_sample=False, num_beams=1, pad_token_id=0,
        ).numpy()
    ours = jax.vmap(lambda i, m: greedy(model, i, m, 10, 1, 0))(prompts, mask)
    ours = np.concatenate([prompts, np.asarray(ours)], axis=1)
    np.testing.assert_array_equal(ours[:, : ref.shape[1]], ref)
    assert (ours[:, ref.shape[1]:] == 0).all()


def test_decoding_room_is_checked():
    _, path = pytorch_model("BigBirdPegasusForConditionalGeneration", **FULL)
    model = eb.BigBirdPegasusForConditionalGeneration.from_pretrained(path)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.prepare_decoding(jnp.ones((5,), jnp.int32), jnp.ones((5,), jnp.int32), 1024)
