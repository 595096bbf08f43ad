"""Compact block-sparse attention probabilities, their dense expansion, and the plots."""

import functools

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from eqx_bigbird import plotting
from eqx_bigbird import sparse_attention as sa


def _reference_probs(q, k, mask, pattern):
    """Dense softmax over the keys in `pattern`, with HF's -10000 penalty on masked keys."""
    scores = jnp.einsum("hqd,hkd->hqk", q, k) / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))
    scores = scores + (1.0 - mask)[None, None, :] * sa.MASK_PENALTY
    return jax.nn.softmax(jnp.where(pattern, scores, -jnp.inf), axis=-1)


@functools.partial(jax.jit, static_argnums=(4,))
def _maps(q, k, mask, plan, block_size):
    blocked = sa.blocked_probs(q, k, mask, plan, block_size=block_size)
    pattern = sa.attention_pattern(plan, q.shape[1], block_size)
    _, dense = sa.block_sparse_attention(
        q, k, k, mask, plan, block_size=block_size, return_probs=True
    )
    return blocked, sa.densify(blocked), _reference_probs(q, k, mask, pattern), dense


@pytest.mark.parametrize(
    "block_size,nb,r,heads,padded", [(4, 9, 2, 2, False), (3, 6, 1, 1, True), (2, 8, 0, 3, True)]
)
def test_densify_equals_softmax_on_the_pattern(block_size, nb, r, heads, padded):
    """A legal random plan: the dense expansion is full softmax attention restricted to
    `attention_pattern` (every real query row), and equals the dense map that
    `block_sparse_attention` returns, padded rows included; rows sum to one."""
    seq, dim = nb * block_size, 4
    kq, kk, kp, km = jr.split(jr.PRNGKey(nb * 10 + r), 4)
    q, k = jr.normal(kq, (heads, seq, dim)), jr.normal(kk, (heads, seq, dim))
    mask = jnp.ones(seq)
    if padded:
        mask = (jr.uniform(km, (seq,)) > 0.3).astype(jnp.float32).at[0].set(1.0)
    plan = sa.random_plan(kp, heads, nb, r)
    blocked, dense, ref, hf_dense = _maps(q, k, mask, plan, block_size)
    assert blocked.rows.shape == (heads, nb - 2, block_size, (5 + r) * block_size)
    assert blocked.global_rows.shape == (heads, 2, block_size, seq)
    assert dense.shape == (heads, seq, seq)
    real = np.asarray(mask) > 0
    np.testing.assert_allclose(dense[:, real], ref[:, real], atol=2e-6)
    np.testing.assert_allclose(dense, hf_dense, atol=2e-6)
    np.testing.assert_allclose(dense.sum(-1), 1.0, atol=1e-5)
    # The unused slot of the two edge rows carries no weight.
    assert np.all(np.asarray(blocked.rows[:, [0, -1], :, -block_size:]) == 0)


def test_eval_plan_counts_block_zero_r_plus_one_times():
    """HF's eval plan (every random block is block 0): the compact form keeps each copy, the
    dense map sums them, as `block_sparse_attention` (deduplicated internally) does."""
    heads, nb, bs, r, dim = 2, 7, 3, 2, 4
    q, k = (jr.normal(x, (heads, nb * bs, dim)) for x in jr.split(jr.PRNGKey(3)))
    mask = jnp.ones(nb * bs).at[-2:].set(0.0)
    blocked = sa.blocked_probs(q, k, mask, sa.EvalPlan(r), block_size=bs)
    assert np.all(np.asarray(blocked.key_blocks[:, :, 4 : 4 + r]) == 0)
    _, dense = sa.block_sparse_attention(
        q, k, k, mask, sa.EvalPlan(r), block_size=bs, return_probs=True
    )
    np.testing.assert_allclose(sa.densify(blocked), dense, atol=2e-6)


def test_block_kinds_and_plots(tmp_path):
    nb, r = 8, 2
    plan = sa.random_plan(jr.PRNGKey(0), 2, nb, r)
    kinds = plotting.block_kinds(plan[1], nb)
    assert (kinds[0] == plotting.GLOBAL).all() and (kinds[:, -1] == plotting.GLOBAL).all()
    assert kinds[4, 3] == kinds[4, 4] == kinds[4, 5] == plotting.WINDOW
    assert sorted(np.flatnonzero(kinds[4] == plotting.RANDOM)) == sorted(np.asarray(plan[1, 3]))
    assert ((kinds > 0) == np.asarray(sa.attention_pattern(plan, nb, 1)[1])).all()

    import matplotlib

    matplotlib.use("Agg")
    fig = plotting.plot_block_pattern(plan[None], layer=0, head=1, path=tmp_path / "pattern.png")
    q = jr.normal(jr.PRNGKey(1), (2, nb * 4, 4))
    dense = sa.densify(sa.blocked_probs(q, q, jnp.ones(nb * 4), plan, block_size=4))
    fig2 = plotting.plot_attention(dense, head=1, block_size=4, path=tmp_path / "map.png")
    for name in ("pattern.png", "map.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.pyplot as plt

    plt.close(fig)
    plt.close(fig2)
    with pytest.raises(ValueError, match="expected nb - 2"):
        plotting.block_kinds(plan[0], nb + 1)


def test_layer_attention_densifies_to_the_models_output_attentions(getkey):
    """A model's compact per-layer probabilities expand to its `output_attentions` maps."""
    import eqx_bigbird as eb

    config = eb.BigBirdConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=128, block_size=8, num_random_blocks=1,
    )
    model = eb.BigBirdModel(config, key=getkey())
    ids = jr.randint(getkey(), (96,), 0, 50)
    mask = jnp.ones(96, jnp.int32).at[90:].set(0)
    dense = model(ids, mask, inference=True, output_attentions=True).attentions
    for layer in range(2):
        blocked = plotting.layer_attention(model, ids, mask, layer=layer)
        np.testing.assert_allclose(sa.densify(blocked), dense[layer], atol=2e-6)
    with pytest.raises(ValueError, match="do not run block-sparse"):
        plotting.layer_attention(model, ids[:32])


def test_model_blocked_attentions_densify_to_the_dense_maps():
    """`output_attentions="blocked"` gives each block-sparse layer's compact probabilities;
    densified, they are the dense maps that `output_attentions=True` returns."""
    import equinox as eqx
    import jax
    import jax.random as jr

    import eqx_bigbird as eb

    config = eb.BigBirdConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=24, max_position_embeddings=128, block_size=4, num_random_blocks=1,
    )
    model = eqx.nn.inference_mode(eb.BigBirdModel(config, key=jr.PRNGKey(0)))
    ids = jr.randint(jr.PRNGKey(1), (48,), 0, 50)
    mask = jnp.arange(48) < 45
    head_mask = jnp.array([[1.0, 0.5], [0.0, 1.0]])
    dense = model(ids, mask, head_mask=head_mask, output_attentions=True).attentions
    blocked = model(ids, mask, head_mask=head_mask, output_attentions="blocked").attentions
    assert isinstance(blocked, eb.sparse_attention.BlockedProbs)
    for layer in range(2):
        one = jax.tree_util.tree_map(lambda a: a[layer], blocked)
        np.testing.assert_allclose(
            eb.sparse_attention.densify(one)[:, mask], dense[layer][:, mask], atol=1e-6
        )


def test_blocked_attentions_are_unpadded_like_every_other_output():
    """A length that is not a multiple of `block_size` runs padded; the blocked probabilities
    carry the caller's length, so `densify` gives `(heads, seq, seq)` maps equal to
    `output_attentions=True`'s, as every other output is un-padded."""
    import equinox as eqx

    import eqx_bigbird as eb

    config = eb.BigBirdConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=24, max_position_embeddings=128, block_size=4, num_random_blocks=1,
    )
    model = eqx.nn.inference_mode(eb.BigBirdModel(config, key=jr.PRNGKey(0)))
    seq = 46
    assert model.padded_length(seq) == 48
    ids = jr.randint(jr.PRNGKey(1), (seq,), 0, 50)
    mask = jnp.arange(seq) < 43
    dense = model(ids, mask, output_attentions=True).attentions
    blocked = model(ids, mask, output_attentions="blocked").attentions
    assert dense.shape == (2, 2, seq, seq)
    for layer in range(2):
        one = sa.densify(jax.tree_util.tree_map(lambda a: a[layer], blocked))
        assert one.shape == (2, seq, seq)
        np.testing.assert_allclose(one, dense[layer], atol=1e-6)
