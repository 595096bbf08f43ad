"""The standalone block-sparse attention module: plans, masks, and the dense equivalent."""

import functools

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from hypothesis import given, settings

from eqx_bigbird import sparse_attention as sa


def _reference_attention(q, k, v, mask, pattern):
    """Dense softmax over the keys in `pattern`, with HF's -10000 penalty on masked keys."""
    scores = jnp.einsum("hqd,hkd->hqk", q, k) / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))
    scores = scores + (1.0 - mask)[None, None, :] * sa.MASK_PENALTY
    scores = jnp.where(pattern, scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("hqk,hkd->hqd", probs, v), probs


@functools.partial(jax.jit, static_argnums=5)
def _compare(q, k, v, mask, plan, block_size):
    ctx, probs = sa.block_sparse_attention(
        q, k, v, mask, plan, block_size=block_size, return_probs=True
    )
    pattern = sa.attention_pattern(plan, q.shape[1], block_size)
    return ctx, probs, *_reference_attention(q, k, v, mask, pattern)


def _random_case(block_size, r, extra_blocks, heads, seed, dim=4):
    """q, k, v, a cotangent, a mask with holes (token 0 real) and a legal random plan."""
    nb = r + 5 + extra_blocks
    seq = nb * block_size
    kq, kk, kv, kg, kp, km = jr.split(jr.PRNGKey(seed), 6)
    q, k, v, cot = (jr.normal(x, (heads, seq, dim)) for x in (kq, kk, kv, kg))
    mask = (jr.uniform(km, (seq,)) > 0.3).astype(jnp.float32).at[0].set(1.0)
    return q, k, v, cot, mask, sa.random_plan(kp, heads, nb, r)


@settings(max_examples=30, deadline=None)
@given(
    block_size=st.integers(1, 6),
    r=st.integers(0, 3),
    extra_blocks=st.integers(0, 6),
    heads=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_dense_softmax_on_its_pattern(block_size, r, extra_blocks, heads, seed):
    """With a legal plan (no key block twice in a row), block-sparse attention is exactly dense
    softmax attention restricted to `attention_pattern`, for every real query row."""
    q, k, v, _, mask, plan = _random_case(block_size, r, extra_blocks, heads, seed)
    ctx, probs, ref_ctx, ref_probs = _compare(q, k, v, mask, plan, block_size)
    real = mask > 0
    np.testing.assert_allclose(ctx[:, real], ref_ctx[:, real], atol=2e-5)
    np.testing.assert_allclose(probs[:, real], ref_probs[:, real], atol=2e-6)
    # Padded query rows are zeroed (HF's from_mask); the dense map reproduces the context.
    assert np.all(np.asarray(ctx[:, ~real]) == 0)
    np.testing.assert_allclose(
        jnp.einsum("hqk,hkd->hqd", probs, v)[:, real], ctx[:, real], atol=2e-5
    )


@functools.partial(jax.jit, static_argnums=6)
def _gradients(q, k, v, mask, plan, cotangent, block_size):
    """Gradients of <context, cotangent> w.r.t. q, k, v: ours (hand-written backward) and
    autodiff through the dense reference (padded query rows zeroed, as ours are)."""
    pattern = sa.attention_pattern(plan, q.shape[1], block_size)

    def ours(q, k, v):
        ctx, _ = sa.block_sparse_attention(q, k, v, mask, plan, block_size=block_size)
        return jnp.sum(ctx * cotangent)

    def reference(q, k, v):
        ctx, _ = _reference_attention(q, k, v, mask, pattern)
        return jnp.sum(ctx * mask[None, :, None] * cotangent)

    args = (0, 1, 2)
    return jax.grad(ours, args)(q, k, v), jax.grad(reference, args)(q, k, v)


@settings(max_examples=15, deadline=None)
@given(
    block_size=st.integers(1, 5),
    r=st.integers(0, 3),
    extra_blocks=st.integers(0, 5),
    heads=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_gradients_match_dense_softmax_on_its_pattern(block_size, r, extra_blocks, heads, seed):
    """The hand-written backward (recomputed scores, shifted adds, scatter-add of the random
    blocks) equals autodiff through dense softmax attention on the same pattern."""
    q, k, v, cot, mask, plan = _random_case(block_size, r, extra_blocks, heads, seed)
    ours, reference = _gradients(q, k, v, mask, plan, cot, block_size)
    for name, a, b in zip("qkv", ours, reference):
        np.testing.assert_allclose(a, b, atol=2e-5, err_msg=f"d{name}")


def test_eval_plan_gradients_equal_explicit_duplicates():
    """`EvalPlan(r)` (block 0 weighted log(1 + r), no copies) has the gradients of the same
    plan given as an array (block 0 gathered r times as random blocks)."""
    heads, nb, bs, r, dim = 2, 9, 3, 2, 4
    seq = nb * bs
    q, k, v, cot = (jr.normal(jr.PRNGKey(i), (heads, seq, dim)) for i in range(4))
    mask = jnp.ones(seq).at[jnp.array([5, 6, 20])].set(0.0)

    def grads(plan):
        def f(q, k, v):
            ctx, _ = sa.block_sparse_attention(q, k, v, mask, plan, block_size=bs)
            return jnp.sum(ctx * cot)

        return jax.grad(f, (0, 1, 2))(q, k, v)

    for name, a, b in zip("qkv", grads(sa.EvalPlan(r)), grads(sa.eval_plan(heads, nb, r))):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"d{name}")


def test_eval_plan_counts_block_zero_repeatedly():
    """HF's eval plan points every random block at block 0, whose keys then weigh r + 1 times in
    the middle rows: the dense map sums those duplicate weights."""
    heads, nb, bs, r = 2, 9, 3, 2
    seq = nb * bs
    q, k, v = (jr.normal(jr.PRNGKey(i), (heads, seq, 4)) for i in range(3))
    plan = sa.eval_plan(heads, nb, r)
    ctx, probs = sa.block_sparse_attention(
        q, k, v, jnp.ones(seq), plan, block_size=bs, return_probs=True
    )
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(jnp.einsum("hqk,hkd->hqd", probs, v), ctx, atol=1e-5)
    # A middle query row sees block 0 r + 1 times (global + r "random"), so its keys weigh r + 1
    # shares of exp(score) in the softmax.
    row = 4 * bs
    keys = np.r_[0:bs, 3 * bs : 6 * bs, (nb - 1) * bs : seq]
    counts = np.where(keys < bs, r + 1, 1)
    s = np.asarray(jnp.einsum("hd,hkd->hk", q[:, row], k[:, keys])) / 2.0
    w = counts * np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(probs[:, row, keys], w / w.sum(-1, keepdims=True), atol=1e-6)


@pytest.mark.parametrize("nb,r", [(6, 1), (11, 3), (40, 3), (64, 5)])
def test_random_plan_is_legal(nb, r):
    plan = np.asarray(sa.random_plan(jr.PRNGKey(nb), 4, nb, r))
    assert plan.shape == (4, nb - 2, r) and plan.dtype == np.int32
    legal = np.asarray(sa.legal_random_blocks(nb))
    for h in range(4):
        for row in range(nb - 2):
            picks = plan[h, row]
            assert len(set(picks.tolist())) == r, "distinct blocks"
            assert legal[row, picks].all(), (row + 1, picks)
            i = row + 1
            assert not set(picks.tolist()) & {0, nb - 1, i - 1, i, i + 1}


def test_legal_random_blocks_matches_hf_rule():
    nb = 9
    legal = np.asarray(sa.legal_random_blocks(nb))
    for i in range(1, nb - 1):
        illegal = {i - 1, i, i + 1, 0, nb - 1}
        if i == 1:
            illegal.add(nb - 2)
        if i == nb - 2:
            illegal.add(1)
        assert set(np.flatnonzero(~legal[i - 1]).tolist()) == illegal


def test_random_plan_keys():
    a = sa.random_plan(jr.PRNGKey(0), 2, 20, 3)
    b = sa.random_plan(jr.PRNGKey(0), 2, 20, 3)
    c = sa.random_plan(jr.PRNGKey(1), 2, 20, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Heads and rows get their own draws (HF Flax reuses one key for all of them).
    assert not np.array_equal(a[0], a[1])


def test_random_plan_compiles_once_for_any_key():
    traces = []

    @jax.jit
    def plan(key):
        traces.append(None)
        return sa.random_plan(key, 2, 20, 3)

    outs = [plan(jr.PRNGKey(i)) for i in range(5)]
    assert len(traces) == 1
    assert len({np.asarray(o).tobytes() for o in outs}) == 5


def test_random_plan_rejects_too_few_blocks():
    with pytest.raises(ValueError, match="at least 8 blocks"):
        sa.random_plan(jr.PRNGKey(0), 1, 7, 3)


def test_shape_errors():
    q = jnp.zeros((2, 30, 4))
    with pytest.raises(ValueError, match="not a multiple of block_size 4"):
        sa.block_sparse_attention(q, q, q, jnp.ones(30), sa.eval_plan(2, 7, 1), block_size=4)
    with pytest.raises(ValueError, match="at least 5 blocks"):
        sa.block_sparse_attention(q, q, q, jnp.ones(30), sa.eval_plan(2, 3, 1), block_size=10)
    with pytest.raises(ValueError, match="plan has shape"):
        sa.block_sparse_attention(q, q, q, jnp.ones(30), sa.eval_plan(2, 5, 1), block_size=5)


def test_full_attention_dropout():
    q = jr.normal(jr.PRNGKey(0), (2, 8, 4))
    ctx, probs = sa.full_attention(q, q, q, jnp.ones(8))
    ctx_d, _ = sa.full_attention(q, q, q, jnp.ones(8), dropout_rate=0.5, key=jr.PRNGKey(1))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    assert not np.allclose(ctx, ctx_d)
