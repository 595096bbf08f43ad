"""Our reproductions of HF's random plans, bit for bit, against HF's own code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqx_bigbird import sparse_attention as sa

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers.models.big_bird import modeling_big_bird as pt_mod  # noqa: E402
from transformers.models.big_bird import modeling_flax_big_bird as fx_mod  # noqa: E402

from .hf_reference import lenient_jax  # noqa: E402

# (seq_len, block_size, r, heads): the paper lengths 1024/3072/4096 and others.
CASES = [(1024, 64, 3, 3), (4096, 64, 3, 2), (3072, 64, 2, 2), (448, 32, 3, 3), (96, 8, 2, 2),
         (2048, 64, 3, 2)]


@pytest.mark.parametrize("seq_len,bs,r,heads", CASES)
def test_flax_with_head_bit_for_bit(seq_len, bs, r, heads):
    key = jax.random.PRNGKey(seq_len)
    lengths, counts = sa.hf_rand_attn_plan(seq_len, bs, r)
    module = fx_mod.FlaxBigBirdBlockSparseAttention(transformers.BigBirdConfig())
    with lenient_jax():
        ref = np.stack(fx_mod.FlaxBigBirdBlockSparseAttention._bigbird_block_rand_mask_with_head(
            module, seq_len, seq_len, bs, bs, heads, lengths, counts, indices_prng_key=key,
            deterministic=False,
        ))

    def ours(k):
        return sa.hf_block_rand_mask_with_head(
            lambda x: jax.random.permutation(k, jnp.asarray(x)), seq_len, seq_len, bs, bs, heads,
            lengths, counts, xp=jnp,
        )

    np.testing.assert_array_equal(ours(key), ref)
    np.testing.assert_array_equal(jax.jit(ours)(key), ref)  # also under jit


@pytest.mark.parametrize("seq_len", [1024, 4096])
def test_flax_old_plan_bit_for_bit(seq_len):
    """What HF Flax trains with at 1024/3072/4096 tokens (`_bigbird_block_rand_mask`, one key)."""
    key = jax.random.PRNGKey(7)
    with lenient_jax():
        ref = np.stack([
            fx_mod.FlaxBigBirdBlockSparseAttention._bigbird_block_rand_mask(
                4096, 4096, 64, 64, 3, indices_prng_key=key, deterministic=False, last_idx=1024
            )[: seq_len // 64 - 2]
            for _ in range(2)
        ])
    np.testing.assert_array_equal(sa.hf_flax_plan(key, 2, seq_len, 64, 3), ref)


@pytest.mark.parametrize("seq_len,bs,r,heads", CASES)
def test_paper_plan_is_hf_pytorch_training_plan(seq_len, bs, r, heads):
    """HF PyTorch in training seeds numpy with the layer index on every forward."""
    cfg = transformers.BigBirdConfig(
        block_size=bs, num_random_blocks=r, num_attention_heads=heads, hidden_size=8 * heads
    )
    layer = 3
    module = pt_mod.BigBirdBlockSparseAttention(cfg, seed=layer).train()
    np.random.seed(layer)
    if seq_len in (1024, 3072, 4096):
        ref = np.stack([
            module._bigbird_block_rand_mask(4096, 4096, bs, bs, r, last_idx=1024)[: seq_len // bs - 2]
            for _ in range(heads)
        ])
    else:
        lengths, counts = sa.hf_rand_attn_plan(seq_len, bs, r)
        ref = np.stack(module._bigbird_block_rand_mask_with_head(
            from_seq_length=seq_len, to_seq_length=seq_len, from_block_size=bs,
            to_block_size=bs, num_heads=heads, plan_from_length=lengths,
            plan_num_rand_blocks=counts,
        ))
    np.testing.assert_array_equal(sa.paper_plan(layer, heads, seq_len, bs, r), ref)


def test_hf_plans_are_legal_where_ours_are():
    """HF's plans restrict random blocks to the first blocks; they still avoid window/globals."""
    plan = sa.paper_plan(0, 2, 2048, 64, 3)
    legal = np.asarray(sa.legal_random_blocks(32))
    rows = np.arange(30)[None, :, None]
    assert legal[rows, plan].all()
    assert plan.max() < 11  # (2r + 5) blocks: HF's plan draws only from the start


def test_impossible_plan_is_an_error():
    """HF crashes with a broadcasting error here; we say why."""
    lengths, counts = sa.hf_rand_attn_plan(160, 16, 3)
    with pytest.raises(ValueError, match="legal random blocks"):
        sa.hf_block_rand_mask_with_head(
            np.random.RandomState(0).permutation, 160, 160, 16, 16, 2, lengths, counts
        )
