"""`generate` on `BigBirdPegasusForConditionalGeneration` against HF PyTorch's `generate` (4.57):
greedy and beam search token for token (num_beams 4, no_repeat_ngram_size 3, length penalties 0.8
and 2.0, early_stopping True and False), on a short document (the encoder falls back to full
attention) and a long one (block-sparse encoder; eval mode, where HF's random blocks are block 0
as ours in inference mode), a padded batch through `jax.vmap`; sampling by its distribution."""

import functools

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqx_bigbird as eb

from .pegasus_reference import _ROOT, FALLBACK_EDGE, build_model, reset_attention, torch
from .test_generate import assert_follows, hf_warped_probs
from .test_pegasus_decoding import _varied

EOS, PAD = 1, 0
NEW = 16
SHORT, LONG = 30, 163  # full-attention fallback (<= 72) and block-sparse (padded to 168)
BEAM_CASES = [
    dict(no_repeat_ngram_size=3, length_penalty=lp, early_stopping=es)
    for lp in (0.8, 2.0) for es in (True, False)
]
CASE_IDS = [f"lp{c['length_penalty']}-es{c['early_stopping']}" for c in BEAM_CASES]


def documents(length, n=3, seed=0):
    rng = np.random.default_rng(seed + length)
    docs = rng.integers(3, 99, (n, length))
    docs[:, -1] = EOS
    return docs


@functools.cache
def sharp_summarizer():
    """(HF PyTorch model, our model). Random tiny seq2seq models repeat one summary whatever the
    document: an untied random LM head, spread decoder positions and a strong cross-attention
    (`_varied`) make the summaries depend on the document, and a moderate eos bias ends them at
    different lengths (checked by `test_the_cases_are_not_trivial`)."""
    pt = build_model(
        "BigBirdPegasusForConditionalGeneration", seed=1, tie_word_embeddings=False,
        attention_type="block_sparse",
    )
    _varied(pt)
    with torch.no_grad():
        pt.final_logits_bias[0, EOS] -= 3.0
    path = f"{_ROOT}/sharp-summarizer"
    pt.save_pretrained(path, safe_serialization=True)
    return pt, eb.BigBirdPegasusForConditionalGeneration.from_pretrained(path)


def hf_generate(docs, mask=None, **kwargs) -> list[np.ndarray]:
    pt = sharp_summarizer()[0]
    reset_attention(pt)  # HF switches to full attention for good after a short document
    docs = torch.tensor(np.atleast_2d(docs))
    mask = torch.ones_like(docs) if mask is None else torch.tensor(np.atleast_2d(mask))
    with torch.no_grad():
        out = pt.generate(docs, attention_mask=mask, max_new_tokens=NEW, **kwargs).numpy()
    return list(out)


@functools.cache
def _hf_one(doc: tuple, kwargs: tuple) -> np.ndarray:
    (ref,) = hf_generate(np.array(doc), **dict(kwargs))
    return ref


def hf_one(doc, **kwargs) -> np.ndarray:
    """HF's summary of one document, computed once per session (shared by the tests)."""
    return _hf_one(tuple(int(t) for t in doc), tuple(sorted(kwargs.items())))


def assert_same(ours, ref, fill):
    """Our static-length output equals HF's cropped one, then holds only `fill`."""
    ours = np.asarray(ours)
    assert ours.shape == (1 + NEW,)
    np.testing.assert_array_equal(ours[: len(ref)], ref)
    assert np.all(ours[len(ref):] == fill), ours


@pytest.mark.parametrize("length", [SHORT, LONG])
def test_greedy_matches_pytorch(length):
    assert (length <= FALLBACK_EDGE) == (length == SHORT)
    _, model = sharp_summarizer()
    for doc in documents(length):
        ours = eb.generate(model, doc, max_new_tokens=NEW)
        assert_same(ours, hf_one(doc, num_beams=1), PAD)


@pytest.mark.parametrize("length", [SHORT, LONG])
def test_beam_search_matches_pytorch(length):
    """The four settings share one compiled program per length (they are traced)."""
    _, model = sharp_summarizer()
    for case in BEAM_CASES:
        for doc in documents(length):
            ours = eb.generate(model, doc, max_new_tokens=NEW, num_beams=4, **case)
            # HF's beam buffers hold `pad or eos`: eos, since pad is 0.
            assert_same(ours, hf_one(doc, num_beams=4, **case), EOS)


def test_the_cases_are_not_trivial():
    """Summaries depend on the document, beams differ from greedy, the length penalties and the
    early_stopping values change some results, and summaries end (eos) at several lengths, for
    each encoder path. (HF's outputs, shared with the tests above.)"""
    for length in (SHORT, LONG):
        docs = documents(length)
        greedy = [tuple(hf_one(d, num_beams=1)) for d in docs]
        beams = {
            CASE_IDS[i]: [tuple(hf_one(d, num_beams=4, **c)) for d in docs]
            for i, c in enumerate(BEAM_CASES)
        }
        every = [greedy, *beams.values()]
        assert any(len(set(outs)) > 1 for outs in every), length  # depends on the document
        assert any(greedy != outs for outs in beams.values()), length
        assert len({len(s) for outs in every for s in outs}) >= 2, length
    lengths = {len(hf_one(d, num_beams=1)) for n in (SHORT, LONG) for d in documents(n)}
    assert len(lengths) >= 3, lengths
    both = {
        length: {k: [hf_one(d, num_beams=4, **c) for d in documents(length)]
                 for k, c in zip(CASE_IDS, BEAM_CASES)}
        for length in (SHORT, LONG)
    }

    def differ(a, b):
        return any(
            len(x) != len(y) or np.any(x != y)
            for length in both for x, y in zip(both[length][a], both[length][b])
        )

    assert differ("lp0.8-esFalse", "lp2.0-esFalse")
    assert differ("lp2.0-esTrue", "lp2.0-esFalse")


def test_sampling_follows_hf_warped_distribution():
    """The first sampled summary token over 4000 keys (block-sparse encoder) against HF's
    temperature -> top-k -> top-p distribution of its first decoder logits."""
    pt, model = sharp_summarizer()
    reset_attention(pt)
    doc = documents(LONG)[0]
    start = torch.tensor([[pt.config.decoder_start_token_id]])
    with torch.no_grad():
        logits = pt(torch.tensor(doc[None]), decoder_input_ids=start).logits[:, -1].float()
    probs = hf_warped_probs(logits, start, temperature=1.3, top_k=30, top_p=0.95)
    sample = jax.vmap(
        lambda k: eb.generate(
            model, doc, max_new_tokens=1, do_sample=True, temperature=1.3, top_k=30, top_p=0.95,
            forced_eos_token_id=None, key=k,  # HF's would force eos at the one new position
        )[-1]
    )
    assert_follows(sample, jr.split(jr.PRNGKey(3), 4000), probs)


def test_padded_batch_through_vmap_matches_pytorch_batched():
    """Right-padded documents in one HF beam-search batch = `jax.vmap(generate)`, each row
    stopping on its own."""
    _, model = sharp_summarizer()
    docs = documents(LONG)
    mask = np.ones_like(docs)
    for row, pad in enumerate((0, 40, 11)):
        if pad:
            docs[row, -pad:], mask[row, -pad:] = PAD, 0
            docs[row, -pad - 1] = EOS
    kwargs = dict(num_beams=4, **BEAM_CASES[0])
    refs = hf_generate(docs, mask, **kwargs)
    run = jax.vmap(lambda i, m: eb.generate(model, i, attention_mask=m, max_new_tokens=NEW,
                                            **kwargs))
    ours = np.asarray(run(jnp.asarray(docs), jnp.asarray(mask)))
    for row, ref in zip(ours, refs):
        ref = ref[: 1 + int(np.argmax(np.append(ref[1:], EOS) == EOS)) + 1]  # HF pads the batch
        assert_same(row, ref, EOS)
    assert len({tuple(r) for r in ours}) > 1
