"""Our encoder against HF BigBird (Flax and PyTorch) running in the same process, float32.

Both references get seeded random weights (perturbed so biases and norms are not trivial), are
saved with `save_pretrained`, and are loaded by our `from_pretrained`. Agreement: 1e-5 max abs.
"""

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import eqx_bigbird as eb

from .hf_reference import flax_model, hf_config, lenient_jax, numpy, pytorch_model, run_pytorch

ATOL = 1e-5

# (overrides, lengths). Block-sparse falls back to full attention at <= (5 + 2r) * block_size
# tokens: 36 for (4, 2), 56 for (8, 1), 22 for (2, 3). Lengths cover both sides of that edge and
# of the padding edge (multiples of block_size).
CONFIGS = {
    "bs4-r2": (dict(block_size=4, num_random_blocks=2), [5, 36, 37, 40, 61, 64]),
    "bs8-r1": (dict(block_size=8, num_random_blocks=1), [56, 57, 64, 99]),
    "bs2-r3": (dict(block_size=2, num_random_blocks=3), [22, 23, 56]),
    "bs4-r2-nobias-rescale-gelu": (
        dict(block_size=4, num_random_blocks=2, use_bias=False, rescale_embeddings=True,
             hidden_act="gelu"),
        [48, 50],
    ),
    "full": (dict(attention_type="original_full"), [7, 64, 61]),
}
CASES = [(name, length) for name, (_, lengths) in CONFIGS.items() for length in lengths]


def make_batch(length, seed, vocab=99, type_vocab=3):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (3, length))
    mask = np.ones((3, length), np.int64)
    mask[1, length - max(1, length // 4) :] = 0  # right padding
    holes = rng.random(length) < 0.3  # arbitrary holes, first token kept
    holes[0] = False
    mask[2, holes] = 0
    token_types = rng.integers(0, type_vocab, (3, length))
    return ids, mask, token_types


@eqx.filter_jit
def run_ours(model, ids, mask, token_types):
    return jax.vmap(model)(ids, mask, token_types)


def assert_close(ours, theirs, what):
    ours, theirs = np.asarray(ours), numpy(theirs)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    err = np.abs(ours - theirs).max()
    assert err <= ATOL, f"{what}: max abs diff {err:.3g}"


@pytest.mark.parametrize("name,length", CASES)
def test_against_pytorch(name, length):
    overrides, _ = CONFIGS[name]
    pt, path = pytorch_model("BigBirdModel", **overrides)
    model = eb.BigBirdModel.from_pretrained(path)
    ids, mask, tt = make_batch(length, seed=length)
    ref = run_pytorch(pt, ids, mask, tt)
    out = run_ours(model, ids, mask, tt)
    assert_close(out.last_hidden_state, ref.last_hidden_state, "last_hidden_state")
    assert_close(out.pooler_output, ref.pooler_output, "pooler_output")


def run_flax(name, length, ids, mask, tt, **kwargs):
    """HF Flax has no fallback to full attention and no padding: below the edge we run its
    `original_full` module on the same weights, which is what HF PyTorch (and we) compute there."""
    overrides, _ = CONFIGS[name]
    fx, path = flax_model("FlaxBigBirdModel", **overrides)
    cfg = hf_config(**overrides)
    if cfg.attention_type == "block_sparse" and length <= (5 + 2 * cfg.num_random_blocks) * cfg.block_size:
        import transformers

        full = transformers.FlaxBigBirdModel(
            hf_config(**{**overrides, "attention_type": "original_full"}), _do_init=False
        )
        with lenient_jax():
            return full(ids, mask, tt, params=fx.params, **kwargs), path
    with lenient_jax():
        return fx(ids, mask, tt, **kwargs), path


def _flax_can_run(name, length):
    """HF Flax block-sparse raises unless the length is a multiple of block_size."""
    cfg = hf_config(**CONFIGS[name][0])
    edge = (5 + 2 * cfg.num_random_blocks) * cfg.block_size
    return cfg.attention_type == "original_full" or length <= edge or length % cfg.block_size == 0


FLAX_CASES = [(name, length) for name, length in CASES if _flax_can_run(name, length)]


@pytest.mark.parametrize("name,length", FLAX_CASES)
def test_against_flax(name, length):
    ids, mask, tt = make_batch(length, seed=100 + length)
    ref, path = run_flax(name, length, ids, mask, tt, output_hidden_states=True)
    model = eb.BigBirdModel.from_pretrained(path)
    out = eqx.filter_jit(
        lambda m, *a: jax.vmap(lambda *b: m(*b, output_hidden_states=True))(*a)
    )(model, ids, mask, tt)
    assert_close(out.last_hidden_state, ref.last_hidden_state, "last_hidden_state")
    assert_close(out.pooler_output, ref.pooler_output, "pooler_output")
    assert_close(out.hidden_states, np.stack(ref.hidden_states, axis=1), "hidden_states")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(["bs4-r2", "bs2-r3"]),
    length=st.integers(1, 90),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_property_against_pytorch(name, length, seed, data):
    """Random lengths (either side of every edge), random masks and token types."""
    overrides, _ = CONFIGS[name]
    pt, path = pytorch_model("BigBirdModel", **overrides)
    model = _loaded(path)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 99, (1, length))
    mask = data.draw(st.lists(st.booleans(), min_size=length, max_size=length))
    mask = np.asarray(mask, np.int64)[None]
    mask[0, 0] = 1  # HF gives garbage-in-garbage-out for all-padding rows in both frameworks
    tt = rng.integers(0, 3, (1, length))
    ref = run_pytorch(pt, ids, mask, tt)
    out = run_ours(model, ids, mask.astype(bool), tt)
    assert_close(out.last_hidden_state, ref.last_hidden_state, "last_hidden_state")
    assert_close(out.pooler_output, ref.pooler_output, "pooler_output")


_LOADED = {}


def _loaded(path):
    if path not in _LOADED:
        _LOADED[path] = eb.BigBirdModel.from_pretrained(path)
    return _LOADED[path]


TRAIN_OVERRIDES = dict(
    block_size=4, num_random_blocks=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
)


def _inject_flax_plans(monkeypatch, plans):
    from transformers.models.big_bird import modeling_flax_big_bird as fx_mod

    def fixed_plan(self, *args, **kwargs):
        path = self.scope.path
        layer = int(path[path.index("layer") + 1])
        return list(jnp.asarray(plans[layer]))

    monkeypatch.setattr(
        fx_mod.FlaxBigBirdBlockSparseAttention, "_bigbird_block_rand_mask_with_head", fixed_plan
    )


@pytest.mark.parametrize("length", [48, 50])
def test_training_mode_with_injected_plan(monkeypatch, getkey, length):
    """Dropout 0 and the same random plan on all three sides: HF PT, HF Flax, ours."""
    pt, pt_path = pytorch_model("BigBirdModel", **TRAIN_OVERRIDES)
    fx, fx_path = flax_model("FlaxBigBirdModel", **TRAIN_OVERRIDES)
    cfg = hf_config(**TRAIN_OVERRIDES)
    padded = -(-length // 4) * 4
    plans = jnp.stack(
        [
            eb.sparse_attention.random_plan(
                getkey(), cfg.num_attention_heads, padded // 4, cfg.num_random_blocks
            )
            for _ in range(cfg.num_hidden_layers)
        ]
    )  # (layers, heads, nb - 2, r)
    assert not np.array_equal(plans[0], plans[1])
    ids, mask, tt = make_batch(length, seed=7)

    # PyTorch: each layer's attention module returns its layer's plan.
    pt.train()
    try:
        for i, layer in enumerate(pt.encoder.layer):
            layer.attention.self._bigbird_block_rand_mask_with_head = (
                lambda *a, _p=np.asarray(plans[i]), **k: list(_p)
            )
        ref_pt = run_pytorch(pt, ids, mask, tt)
    finally:
        pt.eval()
        for layer in pt.encoder.layer:
            del layer.attention.self._bigbird_block_rand_mask_with_head
    ref_eval = run_pytorch(pt, ids, mask, tt)

    ours_pt = eb.BigBirdModel.from_pretrained(pt_path)
    out = jax.vmap(
        lambda *a: ours_pt(*a, random_plan=plans, key=jax.random.PRNGKey(0), inference=False)
    )(ids, mask, tt)
    assert_close(out.last_hidden_state, ref_pt.last_hidden_state, "train vs PT")
    # The plan matters: training output differs from the eval-plan output.
    assert np.abs(numpy(ref_pt.last_hidden_state) - numpy(ref_eval.last_hidden_state)).max() > 1e-3

    if length % 4 == 0:
        _inject_flax_plans(monkeypatch, plans)
        with lenient_jax():
            ref_fx = fx(
                ids, mask, tt, train=True, dropout_rng=jax.random.PRNGKey(1),
                indices_rng=jax.random.PRNGKey(2),
            )
        ours_fx = eb.BigBirdModel.from_pretrained(fx_path)
        out = jax.vmap(
            lambda *a: ours_fx(*a, random_plan=plans, key=jax.random.PRNGKey(0), inference=False)
        )(ids, mask, tt)
        assert_close(out.last_hidden_state, ref_fx.last_hidden_state, "train vs Flax")


def test_full_attention_maps_and_head_mask_against_pytorch():
    """`original_full`: attention maps and a fractional head mask, as HF PyTorch."""
    overrides, _ = CONFIGS["full"]
    pt, path = pytorch_model("BigBirdModel", **overrides)
    model = eb.BigBirdModel.from_pretrained(path)
    ids, mask, tt = make_batch(20, seed=3)
    head_mask = np.array([[1.0, 0.5], [0.0, 1.0]], np.float32)
    import torch

    ref = run_pytorch(pt, ids, mask, tt, head_mask=torch.tensor(head_mask), output_attentions=True)
    out = jax.vmap(
        lambda *a: model(*a, head_mask=head_mask, output_attentions=True)
    )(ids, mask, tt)
    assert_close(out.last_hidden_state, ref.last_hidden_state, "last_hidden_state")
    assert_close(out.attentions, np.stack([numpy(a) for a in ref.attentions], 1), "attentions")


def test_flax_and_safetensors_layouts_load_identically(tmp_path):
    """The same weights through HF's own PT -> Flax conversion: our two readers agree exactly
    (a missing kernel transpose would show on the square q/k/v matrices)."""
    import transformers

    _, pt_path = pytorch_model("BigBirdModel", **CONFIGS["bs4-r2"][0])
    with lenient_jax():
        fx = transformers.FlaxBigBirdModel.from_pretrained(pt_path, from_pt=True)
    fx.save_pretrained(tmp_path)
    a = eb.BigBirdModel.from_pretrained(pt_path)
    b = eb.BigBirdModel.from_pretrained(tmp_path)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("cls_name", ["BigBirdForMaskedLM", "BigBirdForPreTraining"])
def test_loads_encoder_from_head_checkpoints(cls_name):
    """Head checkpoints nest the encoder under `bert.`; the head's own weights are reported unused."""
    overrides = CONFIGS["bs4-r2"][0]
    pt, path = pytorch_model(cls_name, **overrides)
    model = eb.BigBirdModel.from_pretrained(path)
    ids, mask, tt = make_batch(40, seed=5)
    ref = run_pytorch(pt.bert, ids, mask, tt)
    out = run_ours(model, ids, mask, tt)
    assert_close(out.last_hidden_state, ref.last_hidden_state, "last_hidden_state")
