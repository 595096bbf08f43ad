"""Hugging Face's random block plans, reproduced bit for bit (re-exported by `sparse_attention`).

HF (and google-research/bigbird before it) builds a plan by walking rows and heads in a fixed order
and, for each, permuting a candidate range and keeping the first r legal blocks. PyTorch draws the
permutations from numpy seeded with the layer index (the original paper's fixed per-layer plan);
Flax draws them with `jax.random.permutation` from ONE key reused for every row and head. Both are
reproduced here by passing the corresponding `permute` function to the same walk.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int, PRNGKeyArray


def hf_rand_attn_plan(seq_len: int, block_size: int, num_random_blocks: int):
    """HF's `_get_rand_attn_plan`: `(plan_from_length, plan_num_rand_blocks)`."""
    nb, r = seq_len // block_size, num_random_blocks
    if 2 * r + 5 < nb:
        return [(2 * r + 5) * block_size, seq_len], [r, 0]
    if r + 5 < nb:
        return [(r + 5) * block_size, seq_len], [r // 2, r - r // 2]
    return [seq_len], [r]


def _first_legal(perm, illegal, count, xp):
    """The first `count` entries of `perm` not in the static set `illegal`, in order."""
    legal = ~xp.isin(perm, xp.asarray(sorted(illegal), dtype=perm.dtype))
    order = xp.argsort(~legal, stable=True)[:count]
    return perm[order]


def _single_row(permute, xp, block_id, to_start, to_end, r, wl=1, wr=1, gl=1, gr=1):
    """HF's `_get_single_block_row_attention`."""
    perm = permute(np.arange(to_start, to_end, dtype=np.int32))
    illegal = set(range(block_id - wl, block_id + wr + 1)) | set(range(gl))
    illegal |= set(range(to_end - gr, to_end))
    if block_id == 1:
        illegal.add(to_end - 2)
    if block_id == to_end - 2:
        illegal.add(1)
    available = sum(1 for b in range(to_start, to_end) if b not in illegal)
    if available < r:
        raise ValueError(
            f"query block {block_id} has {available} legal random blocks in [{to_start}, {to_end}), "
            f"needs {r}"
        )
    return _first_legal(perm, illegal, r, xp)


def hf_block_rand_mask_with_head(
    permute, from_seq_length, to_seq_length, from_block_size, to_block_size, num_heads,
    plan_from_length, plan_num_rand_blocks, window_block_left=1, window_block_right=1,
    global_block_top=1, global_block_bottom=1, global_block_left=1, global_block_right=1,
    *, xp=np,
):
    """HF's `_bigbird_block_rand_mask_with_head` (training branch), with permutations from
    `permute(int32 array) -> permuted array` (numpy or jax; `xp` is the matching array module).
    **Returns:** `(heads, nb - 2, sum(plan_num_rand_blocks))` int32."""
    if from_seq_length // from_block_size != to_seq_length // to_block_size:
        raise ValueError("from and to sequences need the same number of blocks")
    if from_seq_length not in plan_from_length:
        raise ValueError("from_seq_length is not in plan_from_length")
    nb = from_seq_length // from_block_size
    plan_blocks = [length // from_block_size for length in plan_from_length]
    max_plan_idx = plan_from_length.index(from_seq_length)
    rand = [
        xp.zeros((nb, sum(plan_num_rand_blocks[: max_plan_idx + 1])), dtype=xp.int32)
        for _ in range(num_heads)
    ]
    window = dict(
        wl=window_block_left, wr=window_block_right, gl=global_block_left, gr=global_block_right
    )

    def fill(row, start, stop, to_start, to_end, r):
        for h in range(num_heads):
            picks = _single_row(permute, xp, row, to_start, to_end, r, **window)
            if xp is np:
                rand[h][row, start:stop] = picks
            else:
                rand[h] = rand[h].at[row, start:stop].set(picks)

    for plan_idx in range(max_plan_idx + 1):
        rnd_r_cnt = 0
        if plan_idx > 0:
            if plan_num_rand_blocks[plan_idx] > 0:
                rnd_r_cnt = sum(plan_num_rand_blocks[:plan_idx])
                curr_r_cnt = sum(plan_num_rand_blocks[: plan_idx + 1])
                for row in range(global_block_top, plan_blocks[plan_idx - 1]):
                    fill(row, rnd_r_cnt, curr_r_cnt, plan_blocks[plan_idx - 1],
                         plan_blocks[plan_idx], plan_num_rand_blocks[plan_idx])
            for pl_id in range(plan_idx):
                if plan_num_rand_blocks[pl_id] == 0:
                    continue
                for row in range(plan_blocks[plan_idx - 1], plan_blocks[plan_idx]):
                    rnd_r_cnt = sum(plan_num_rand_blocks[:pl_id]) if pl_id > 0 else 0
                    to_start = plan_blocks[pl_id - 1] if pl_id > 0 else 0
                    curr_r_cnt = sum(plan_num_rand_blocks[: pl_id + 1])
                    fill(row, rnd_r_cnt, curr_r_cnt, to_start, plan_blocks[pl_id],
                         plan_num_rand_blocks[pl_id])
        if plan_num_rand_blocks[plan_idx] == 0:
            continue
        curr_r_cnt = sum(plan_num_rand_blocks[: plan_idx + 1])
        from_start, to_start = global_block_top, 0
        if plan_idx > 0:
            rnd_r_cnt = sum(plan_num_rand_blocks[:plan_idx])
            from_start = to_start = plan_blocks[plan_idx - 1]
        for row in range(from_start, plan_blocks[plan_idx]):
            fill(row, rnd_r_cnt, curr_r_cnt, to_start, plan_blocks[plan_idx],
                 plan_num_rand_blocks[plan_idx])
    return xp.stack([x[global_block_top : nb - global_block_bottom] for x in rand])


def hf_block_rand_mask(
    permute, from_seq_length, to_seq_length, from_block_size, to_block_size, num_rand_blocks,
    last_idx=-1, *, xp=np,
):
    """HF's `_bigbird_block_rand_mask` (training branch; the "old plan" for 1024, 3072 and 4096
    tokens, which draws random blocks only below `last_idx`). **Returns:** `(nb - 2, r)` int32."""
    if from_seq_length // from_block_size != to_seq_length // to_block_size:
        raise ValueError("from and to sequences need the same number of blocks")
    nb = from_seq_length // from_block_size
    middle = np.arange(1, to_seq_length // to_block_size - 1, dtype=np.int32)
    last = to_seq_length // to_block_size - 1
    if last_idx > 2 * to_block_size:
        last = last_idx // to_block_size - 1
    r = num_rand_blocks
    rows = []
    for i in range(1, nb - 1):
        start, end = i - 2, i
        if i == 1:
            candidates = middle[2:last]
        elif i == 2:
            candidates = middle[3:last]
        elif i in (nb - 3, nb - 2):
            candidates = middle[:last]  # HF's comments: "Missing -3" / "Missing -4"
        elif start > last:
            candidates = middle[:last]
        elif end + 1 == last:
            candidates = middle[:start]
        else:
            candidates = np.concatenate((middle[:start], middle[end + 1 : last]))
        rows.append(permute(candidates)[:r])
    return xp.stack(rows).astype(xp.int32)


def _hf_plan(permute, xp, num_heads, seq_len, block_size, num_random_blocks, max_seqlen):
    """The plan HF's block-sparse attention builds for `seq_len` with permutations `permute`."""
    nb = seq_len // block_size
    if seq_len in (1024, 3072, 4096):  # HF's "old plans used in paper"
        return xp.stack([
            hf_block_rand_mask(
                permute, max_seqlen, max_seqlen, block_size, block_size, num_random_blocks,
                last_idx=1024, xp=xp,
            )[: nb - 2]
            for _ in range(num_heads)
        ])
    lengths, counts = hf_rand_attn_plan(seq_len, block_size, num_random_blocks)
    return hf_block_rand_mask_with_head(
        permute, seq_len, seq_len, block_size, block_size, num_heads, lengths, counts, xp=xp
    )


def paper_plan(
    layer_index: int, num_heads: int, seq_len: int, block_size: int, num_random_blocks: int,
    *, max_position_embeddings: int = 4096,
) -> np.ndarray:
    """The original paper's fixed plan for one layer (numpy seeded with the layer index), which
    HF PyTorch uses in training: the same blocks every step. **Returns:** `(heads, nb-2, r)`."""
    rng = np.random.RandomState(layer_index)
    return _hf_plan(
        rng.permutation, np, num_heads, seq_len, block_size, num_random_blocks,
        max_position_embeddings,
    )


def hf_flax_plan(
    key: PRNGKeyArray, num_heads: int, seq_len: int, block_size: int, num_random_blocks: int,
    *, max_position_embeddings: int = 4096,
) -> Int[Array, "heads rows r"]:
    """The plan HF Flax's training code computes from `indices_rng` (its one key reused for
    every row and head). Jit-safe. Note that HF Flax itself only uses it for 1024, 3072 and 4096
    tokens: for other lengths its call site drops `deterministic` and it uses zeros."""
    return _hf_plan(
        lambda x: jax.random.permutation(key, jnp.asarray(x)), jnp, num_heads, seq_len, block_size,
        num_random_blocks, max_position_embeddings,
    )
