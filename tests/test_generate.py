"""`generate` against HF PyTorch's `generate` (4.57) on `BigBirdForCausalLM`: greedy search, the
logits processors, beam search (and batches through `jax.vmap`) token for token; sampling by
distribution (torch's RNG cannot be replayed); generation defaults from the checkpoint."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqx_bigbird as eb

from .hf_reference import _ROOT, _perturb_torch, hf_config, torch, transformers

DECODER = dict(is_decoder=True, attention_type="original_full")
# Beam search needs a vocabulary without near-ties and logits that are not flat: vocab 211, the
# LM head's LayerNorm scaled so the top token has 10-60% of the mass, and eos made likely enough
# that hypotheses end at different lengths (checked by `test_the_cases_are_not_trivial`).
SHARP = dict(DECODER, vocab_size=211, max_position_embeddings=64)
EOS, PAD = 2, 0
NEW = 16
PROMPTS = np.random.default_rng(0).integers(3, 211, (6, 5))
# Beam search: prompts and a length where early_stopping True, False and "never" all differ.
BEAM_PROMPTS, BEAM_NEW = np.random.default_rng(1).integers(3, 211, (24, 5))[[0, 3, 19]], 30


@functools.cache
def sharp_decoder(seed=0):
    """(HF PyTorch model, our model): seeded random weights with sharpened logits."""
    torch.manual_seed(seed)
    pt = transformers.BigBirdForCausalLM(hf_config(**SHARP)).eval()
    _perturb_torch(pt, seed)
    with torch.no_grad():
        pt.cls.predictions.transform.LayerNorm.weight.mul_(5.0)
        pt.cls.predictions.bias[EOS] += 1.5
    path = os.path.join(_ROOT, f"sharp-decoder-{seed}")
    pt.save_pretrained(path, safe_serialization=True)
    return pt, eb.BigBirdForCausalLM.from_pretrained(path)


def hf_generate(pt, prompts, mask=None, **kwargs) -> list[np.ndarray]:
    prompts = torch.tensor(np.atleast_2d(prompts))
    mask = torch.ones_like(prompts) if mask is None else torch.tensor(np.atleast_2d(mask))
    with torch.no_grad():
        out = pt.generate(prompts, attention_mask=mask, **kwargs).numpy()
    return list(out)


@functools.cache
def _hf_one(prompt: tuple, kwargs: tuple) -> np.ndarray:
    (ref,) = hf_generate(sharp_decoder()[0], np.array(prompt), **dict(kwargs))
    return ref


def hf_one(prompt, **kwargs) -> np.ndarray:
    """HF's `generate` on one prompt of the sharp decoder, computed once per session."""
    return _hf_one(tuple(int(t) for t in prompt), tuple(sorted(kwargs.items())))


def assert_same(ours, ref, fill):
    """Our static-length output equals HF's cropped one, then holds only `fill`."""
    ours = np.asarray(ours)
    np.testing.assert_array_equal(ours[: len(ref)], ref)
    assert np.all(ours[len(ref) :] == fill), ours


# -- greedy search --------------------------------------------------------------------------------


def test_greedy_generate_matches_pytorch():
    """Greedy search; after eos every token is pad (HF's rule; eos does occur here)."""
    pt, model = sharp_decoder()
    ended = 0
    for prompt in PROMPTS:
        (ref,) = hf_generate(pt, prompt, max_new_tokens=NEW, do_sample=False)
        ours = np.asarray(eb.generate(model, prompt, max_new_tokens=NEW))
        assert ours.shape == (5 + NEW,)
        # HF stops when the sequence ends (eos), returning fewer tokens; ours pads to full length.
        assert_same(ours, ref, PAD)
        ended += len(ref) < 5 + NEW
    assert 0 < ended < len(PROMPTS)


@pytest.mark.parametrize(
    "settings",
    [
        dict(repetition_penalty=1.3, min_length=14),
        dict(repetition_penalty=0.6, min_length=9),  # a penalty < 1 favours repeats
        dict(repetition_penalty=1.8, min_length=1),
    ],
)
def test_greedy_with_processors_matches_pytorch(settings):
    """Repetition penalty (the prompt counts) and min_length (prompt included), in HF's order;
    one compiled program for all three (the numbers are traced)."""
    pt, model = sharp_decoder()
    refs = hf_generate(pt, PROMPTS[:3], max_new_tokens=NEW, **settings)
    for prompt, ref in zip(PROMPTS[:3], refs):
        ref = ref[: 5 + int(np.argmax(np.append(ref[5:], EOS) == EOS)) + 1]  # HF pads the batch
        assert_same(eb.generate(model, prompt, max_new_tokens=NEW, **settings), ref, PAD)
        assert len(ref) >= settings["min_length"]


# -- beam search ----------------------------------------------------------------------------------

BEAM_CASES = [
    *(dict(no_repeat_ngram_size=3, length_penalty=lp, early_stopping=es)
      for lp in (0.8, 2.0) for es in (True, False)),
    dict(no_repeat_ngram_size=3, length_penalty=2.0, early_stopping="never"),
    dict(length_penalty=0.8, early_stopping=False),  # no n-gram processor: another program
    dict(length_penalty=-0.5, early_stopping=False),
]


@pytest.mark.parametrize("case", BEAM_CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_beam_search_matches_pytorch(case):
    _, model = sharp_decoder()
    for prompt in BEAM_PROMPTS:
        ref = hf_one(prompt, max_new_tokens=BEAM_NEW, num_beams=4, **case)
        # HF's beam buffers are filled with `pad or eos`: eos here, since pad is 0.
        ours = eb.generate(model, prompt, max_new_tokens=BEAM_NEW, num_beams=4, **case)
        assert_same(ours, ref, EOS)


def test_the_cases_are_not_trivial():
    """The settings above change the result: beams differ from greedy, length penalties from each
    other, the three early_stopping values from each other, and hypotheses end (eos) at several
    lengths. (HF's outputs, shared with the tests above.)"""
    beams = {
        tuple(c.items()): [
            hf_one(p, max_new_tokens=BEAM_NEW, num_beams=4, **c) for p in BEAM_PROMPTS
        ]
        for c in BEAM_CASES
    }

    def differ(a, b):
        return any(len(x) != len(y) or np.any(x != y) for x, y in zip(beams[a], beams[b]))

    def case(lp, es):
        return (("no_repeat_ngram_size", 3), ("length_penalty", lp), ("early_stopping", es))

    greedy = hf_generate(sharp_decoder()[0], BEAM_PROMPTS, max_new_tokens=BEAM_NEW)
    assert any(not np.array_equal(g[: len(b)], b) for g, b in zip(greedy, beams[case(0.8, False)]))
    assert differ(case(0.8, False), case(2.0, False))
    assert differ(case(2.0, True), case(2.0, False))
    assert differ(case(2.0, False), case(2.0, "never"))
    assert differ(case(2.0, True), case(2.0, "never"))
    lengths = {len(r) for refs in beams.values() for r in refs}
    assert len(lengths) >= 3, lengths


def test_batches_through_vmap_match_pytorch_batched():
    """Left-padded prompts of different lengths in one HF beam-search batch =
    `jax.vmap(generate)`: each row stops on its own, which leaves the tokens HF's batch-wide loop
    gives (its heuristic and finished set freeze per row)."""
    pt, model = sharp_decoder()
    ids = PROMPTS[:4].copy()
    mask = np.ones_like(ids)
    for row, pad in enumerate((0, 2, 1, 3)):
        ids[row, :pad], mask[row, :pad] = PAD, 0
    kwargs = dict(num_beams=4, no_repeat_ngram_size=3, length_penalty=0.8, max_new_tokens=NEW)
    refs = hf_generate(pt, ids, mask, **kwargs)
    run = jax.vmap(lambda i, m: eb.generate(model, i, attention_mask=m, **kwargs))
    ours = np.asarray(run(jnp.asarray(ids), jnp.asarray(mask)))
    for row, ref in zip(ours, refs):
        assert_same(row, ref, EOS)
    # Without a mask, HF's rule (ids != pad, as pad != eos) gives the same.
    np.testing.assert_array_equal(eb.generate(model, ids[1], **kwargs), ours[1])


# -- sampling -------------------------------------------------------------------------------------


def hf_warped_probs(logits, ids, temperature, top_k, top_p) -> np.ndarray:
    """HF's temperature -> top-k -> top-p distribution of one row of next-token `logits`."""
    from transformers.generation import logits_process as lp

    with torch.no_grad():
        for warper in (
            lp.TemperatureLogitsWarper(temperature), lp.TopKLogitsWarper(top_k),
            lp.TopPLogitsWarper(top_p),
        ):
            logits = warper(ids, logits)
        return torch.softmax(logits, -1)[0].numpy().astype(np.float64)


def assert_follows(sample, keys, probs):
    """`sample(keys)` (one token per key) is key-determined, never outside `probs`' support, and
    passes a chi-square test against `probs` at p > 1e-4 (fixed keys: a deterministic outcome)."""
    from scipy.stats import chi2

    n = keys.shape[0]
    tokens = np.asarray(sample(keys))
    np.testing.assert_array_equal(sample(keys), tokens)  # the key decides
    support = probs > 0
    assert support.sum() >= 4  # the test is about a real distribution
    assert np.all(support[tokens]), "sampled a token HF's warpers exclude"
    counts = np.bincount(tokens, minlength=probs.size)[support]
    expected = n * probs[support]
    # Pool the rare tokens so every bin expects at least 5.
    rare = expected < 5
    counts = np.append(counts[~rare], counts[rare].sum())
    expected = np.append(expected[~rare], expected[rare].sum())
    keep = expected > 0
    stat = float((((counts - expected) ** 2)[keep] / expected[keep]).sum())
    assert chi2.sf(stat, keep.sum() - 1) > 1e-4, (stat, keep.sum())


@pytest.mark.parametrize("temperature,top_p", [(0.7, 0.9), (1.6, 0.97)])
def test_sampling_follows_hf_warped_distribution(temperature, top_p):
    """The first sampled token over 4000 keys against HF's temperature -> top-k -> top-p
    distribution."""
    pt, model = sharp_decoder()
    prompt = PROMPTS[1]
    with torch.no_grad():
        logits = pt(torch.tensor(prompt[None])).logits[:, -1].float()
    probs = hf_warped_probs(logits, torch.tensor(prompt[None]), temperature, 20, top_p)
    sample = jax.vmap(
        lambda k: eb.generate(
            model, prompt, max_new_tokens=1, do_sample=True, temperature=temperature, top_k=20,
            top_p=top_p, key=k,
        )[-1]
    )
    assert_follows(sample, jr.split(jr.PRNGKey(int(temperature * 10)), 4000), probs)
    with pytest.raises(ValueError, match="key"):
        eb.generate(model, prompt, max_new_tokens=4, do_sample=True)


# -- generation defaults --------------------------------------------------------------------------


def test_defaults_come_from_the_checkpoint_as_in_hf(tmp_path):
    """`generation_config.json` (read by `from_pretrained`), else the legacy generation keys of
    `config.json`: `generate(model, ids)` with no options equals HF's `generate(ids)`."""
    pt, _ = sharp_decoder()
    prompt = PROMPTS[3]
    settings = dict(num_beams=4, no_repeat_ngram_size=3, length_penalty=2.0, max_length=21)
    # generation_config.json, as HF writes it.
    modern = tmp_path / "modern"
    pt.generation_config = transformers.GenerationConfig(
        **settings, eos_token_id=EOS, pad_token_id=PAD
    )
    pt.save_pretrained(modern, safe_serialization=True)
    pt.generation_config = transformers.GenerationConfig.from_model_config(pt.config)
    model = eb.BigBirdForCausalLM.from_pretrained(modern)
    assert model.generation_config.num_beams == 4
    ref = transformers.BigBirdForCausalLM.from_pretrained(modern).eval()
    (expected,) = hf_generate(ref, prompt)
    assert_same(eb.generate(model, prompt), expected, EOS)
    # Legacy keys in config.json only (how the public BigBird-Pegasus checkpoints ship them).
    legacy = tmp_path / "legacy"
    pt.save_pretrained(legacy, safe_serialization=True)
    os.remove(legacy / "generation_config.json")
    config = json.loads((legacy / "config.json").read_text())
    (legacy / "config.json").write_text(json.dumps({**config, **settings}))
    model = eb.BigBirdForCausalLM.from_pretrained(legacy)
    assert model.generation_config is None
    theirs = transformers.BigBirdForCausalLM.from_pretrained(legacy).generation_config
    ours = eb._generate.model_generation_config(model)
    for name in (*settings, "eos_token_id", "pad_token_id", "bos_token_id", "early_stopping"):
        assert getattr(ours, name) == getattr(theirs, name), name
    # Arguments win over the checkpoint; HF's global max_length 20 means 20 new tokens.
    def shape(**kwargs):
        return jax.eval_shape(lambda: eb.generate(model, prompt, **kwargs)).shape

    assert shape(num_beams=1, max_length=12) == (12,)
    assert shape(num_beams=1, max_new_tokens=3) == (8,)
    # A given GenerationConfig's non-default fields win; its defaults defer to the model's.
    assert shape(generation_config=eb.GenerationConfig(num_beams=2)) == (21,)
    fresh = eb.BigBirdForCausalLM.from_pretrained(modern, generation_config=eb.GenerationConfig())
    assert shape_of(fresh, prompt) == (25,)  # HF's global default: 20 new tokens


def shape_of(model, prompt, **kwargs):
    return jax.eval_shape(lambda: eb.generate(model, prompt, **kwargs)).shape


def test_generation_config_round_trip_and_errors(tmp_path):
    gc = eb.GenerationConfig(
        num_beams=3, length_penalty=0.8, early_stopping="never", eos_token_id=1
    )
    gc.save(tmp_path)
    assert eb.GenerationConfig.from_pretrained(tmp_path) == gc
    hf = transformers.GenerationConfig.from_pretrained(tmp_path)
    assert (hf.num_beams, hf.length_penalty, hf.early_stopping) == (3, 0.8, "never")
    assert eb.GenerationConfig.from_pretrained(tmp_path / "nowhere") is None
    with pytest.raises(ValueError, match="bad_words_ids"):
        eb.GenerationConfig.from_dict({"bad_words_ids": [[5]]})
    with pytest.raises(ValueError, match="colour"):
        eb.GenerationConfig.from_dict({"colour": "blue"})
    with pytest.raises(ValueError, match="num_beams"):
        eb.GenerationConfig(num_beams=0)
    with pytest.raises(ValueError, match="early_stopping"):
        eb.GenerationConfig(early_stopping="sometimes")
    with pytest.raises(ValueError, match="eos_token_id"):
        eb.GenerationConfig(eos_token_id=[1, 2])
    assert eb.GenerationConfig(eos_token_id=[7]).eos_token_id == 7
    _, model = sharp_decoder()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        eb.generate(model, PROMPTS[0], max_new_tokens=100)
    with pytest.raises(ValueError, match="no room"):
        eb.generate(model, PROMPTS[0], max_length=5)
    with pytest.raises(ValueError, match="beam sampling"):
        eb.generate(model, PROMPTS[0], num_beams=2, do_sample=True, key=jr.PRNGKey(0))
    with pytest.raises((ValueError, TypeError)):  # the annotation's checker, when on, is first
        eb.generate(model, PROMPTS[:2], max_new_tokens=2)
