"""BigBird block-sparse attention (ITC layout) as pure functions on ONE example.

Usable without the model: masks, the random block plan (from an explicit PRNG key, jit-safe),
the five-part block computation that Hugging Face's BigBird performs, full attention, and
densified attention maps for plots. Batches go through `jax.vmap`.

Layout (as in HF and google-research/bigbird, "ITC"): the sequence is cut into `nb` blocks of
`block_size` tokens. Query blocks 0 and nb-1 are global (they attend every key). Every other query
block i attends key blocks 0 and nb-1 (global), its window i-1, i, i+1 (for i = 1 and nb-2 the window
is clipped and the global block fills in), and `r` random blocks given by a *plan*: an int32 array
`plan[head, i - 1, :]` of key-block indices. HF computes this in five parts (query block 0, 1,
2..nb-3, nb-2, nb-1), concatenating each part's keys; `block_sparse_attention` computes the same
weights with one layout for all query blocks 1..nb-2 and one softmax over separately laid out key
groups, HF's additive -10000 mask penalty and the 1/sqrt(head_dim) applied after the dot product,
so that its results match HF's to float rounding.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, Real

__all__ = [
    "MASK_PENALTY",
    "num_blocks",
    "block_masks",
    "random_block_mask",
    "eval_plan",
    "random_plan",
    "legal_random_blocks",
    "gather_blocks",
    "block_sparse_attention",
    "full_attention",
    "block_key_indices",
    "attention_pattern",
]

MASK_PENALTY = -10000.0  # HF's additive penalty for masked keys in block-sparse attention


def num_blocks(seq_len: int, block_size: int) -> int:
    """Number of blocks; raises `ValueError` unless `seq_len` is a multiple of `block_size`."""
    if seq_len % block_size != 0:
        raise ValueError(
            f"sequence length {seq_len} is not a multiple of block_size {block_size}"
        )
    return seq_len // block_size


def _check_block_count(nb: int, block_size: int):
    if nb < 5:
        raise ValueError(
            f"block-sparse attention needs at least 5 blocks of {block_size} tokens "
            f"(got {nb}); use full attention for shorter sequences"
        )


def block_masks(
    mask: Real[Array, " seq"], block_size: int
) -> tuple[Float[Array, "nb bs"], Float[Array, "nb4 bs band"]]:
    """The blocked 0/1 mask `(nb, bs)` and HF's band mask `(nb-4, bs, 3*bs)`.

    `band[l, q, k]` is 1 where query `q` of block `l+2` and key `k` of its 3-block window are both
    real tokens.
    """
    nb = num_blocks(mask.shape[0], block_size)
    blocked = mask.astype(jnp.float32).reshape(nb, block_size)
    window = jnp.concatenate([blocked[1:-3], blocked[2:-2], blocked[3:-1]], axis=1)
    band = blocked[2:-2, :, None] * window[:, None, :]
    return blocked, band


def random_block_mask(
    blocked: Float[Array, "nb bs"], plan: Int[Array, "heads rows r"]
) -> Float[Array, "heads rows bs rbs"]:
    """`(heads, nb-2, bs, r*bs)`: 1 where a query of block i and a key of its random blocks are real."""
    heads, rows, r = plan.shape
    bs = blocked.shape[1]
    to = blocked[plan].reshape(heads, rows, r * bs)
    return blocked[None, 1:-1, :, None] * to[:, :, None, :]


def legal_random_blocks(nb: int) -> Bool[Array, "rows nb"]:
    """Which key blocks query block i (row i-1, i = 1..nb-2) may pick as random blocks.

    HF's rule (`_get_single_block_row_attention`): never the global blocks 0 and nb-1, never the
    window i-1..i+1; block 1 never picks nb-2 and block nb-2 never picks 1.
    """
    i = jnp.arange(1, nb - 1)[:, None]
    j = jnp.arange(nb)[None, :]
    legal = (j >= 1) & (j <= nb - 2) & (jnp.abs(j - i) > 1)
    legal &= ~((i == 1) & (j == nb - 2))
    legal &= ~((i == nb - 2) & (j == 1))
    return legal


def eval_plan(num_heads: int, nb: int, num_random_blocks: int) -> Int[Array, "heads rows r"]:
    """HF's inference-time plan: every random block is block 0 (PT and Flax, eval mode)."""
    return jnp.zeros((num_heads, nb - 2, num_random_blocks), jnp.int32)


def random_plan(
    key: PRNGKeyArray, num_heads: int, nb: int, num_random_blocks: int
) -> Int[Array, "heads rows r"]:
    """A random plan: for each head and query block, `r` distinct legal key blocks, uniformly.

    Drawn inside jit from `key` (the key is traced, so a new key never recompiles). Candidates are
    the whole sequence, minus what `legal_random_blocks` forbids.
    """
    if num_random_blocks == 0:
        return eval_plan(num_heads, nb, 0)
    if nb - 5 < num_random_blocks:
        raise ValueError(
            f"{num_random_blocks} random blocks need at least {num_random_blocks + 5} blocks, got {nb}"
        )
    # The r largest of i.i.d. uniforms over the legal blocks: a uniformly random r-subset.
    scores = jax.random.uniform(key, (num_heads, nb - 2, nb))
    scores = jnp.where(legal_random_blocks(nb), scores, -1.0)
    _, idx = jax.lax.top_k(scores, num_random_blocks)
    return idx.astype(jnp.int32)


def gather_blocks(
    x: Float[Array, "heads nb bs dim"], plan: Int[Array, "heads rows r"]
) -> Float[Array, "heads rows rbs dim"]:
    """The random key (or value) blocks of every query row, `(heads, nb-2, r*bs, dim)`."""
    heads, rows, r = plan.shape
    gathered = jax.vmap(lambda xh, ph: xh[ph])(x, plan)
    return gathered.reshape(heads, rows, r * x.shape[2], x.shape[3])


def block_sparse_attention(
    q: Float[Array, "heads seq dim"],
    k: Float[Array, "heads seq dim"],
    v: Float[Array, "heads seq dim"],
    mask: Real[Array, " seq"],
    plan: Int[Array, "heads rows r"] | int,
    *,
    block_size: int,
    return_probs: bool = False,
) -> tuple[Float[Array, "heads seq dim"], Float[Array, "heads seq seq"] | None]:
    """BigBird block-sparse attention of one example, as HF computes it.

    **Arguments:**
    - `q`, `k`, `v`: per-head queries, keys, values; `seq` a multiple of `block_size`, >= 5 blocks.
    - `mask`: 1 for real tokens, 0 for padding. It is a constant here (no gradient flows to it).
    - `plan`: random key blocks per head and query block 1..nb-2 (e.g. `random_plan`), or an int
      `r`: HF's eval plan with `r` random blocks (`eval_plan`), computed without its duplicates.
    - `return_probs`: also return the dense `(heads, seq, seq)` attention map (costs O(seq^2)).

    **Returns:** `(context, probs)`; padded query rows of `context` are zero (HF's `from_mask`).

    HF's eval plan points every random block at block 0, which the other query blocks already
    attend: its keys count r + 1 times in their softmax. Adding log(1 + r) to block 0's scores
    gives the same weights without r extra copies of block 0.

    The gradient is hand-written: the backward pass recomputes the scores from `q`, `k` and the
    saved log-sum-exp (as flash attention does), so no attention probabilities are stored for
    it, and key/value gradients go back by shifted adds and one scatter-add.
    """
    heads, seq, dim = q.shape
    nb = num_blocks(seq, block_size)
    _check_block_count(nb, block_size)
    dedup = isinstance(plan, int)
    if not dedup and plan.shape[:2] != (heads, nb - 2):
        raise ValueError(f"plan has shape {plan.shape}, expected ({heads}, {nb - 2}, r)")
    if not dedup and plan.shape[2] == 0:
        plan, dedup = 0, True
    const_mask = jax.lax.stop_gradient(mask.astype(jnp.float32))
    ctx = _sparse_context(
        q, k, v, const_mask, None if dedup else plan.astype(jnp.int32), plan if dedup else 0,
        block_size,
    )
    if not return_probs:
        return ctx, None
    return ctx, densify(blocked_probs(q, k, mask, plan, block_size=block_size)).astype(q.dtype)


# The core. Every query block 1..nb-2 (a "row") sees the same key layout: a global chunk [k0,
# k_last] (one matmul for all rows), the window blocks i-1, i, i+1 (three batched matmuls over
# shifted slices of the key blocks; on the two edge rows the window block that is also global is
# left out), and the plan's random blocks (gathered). One softmax spans the chunks without
# concatenating them. Query blocks 0 and nb-1 attend every key.


def _row_operands(xb, plan):
    """Keys (or values) of the row chunks: global `(h, 2bs, d)`, then per-row `(h, R, *, d)`."""
    rows = xb.shape[1] - 2
    chunks = [jnp.concatenate([xb[:, 0], xb[:, -1]], axis=1)]
    chunks += [xb[:, j : j + rows] for j in range(3)]
    if plan is not None:
        chunks.append(gather_blocks(xb, plan))
    return chunks


def _row_spec(i, spec):
    """Einsum spec for chunk `i`: the global chunk's keys are shared by all rows."""
    return spec.replace("hrk", "hk", 1) if i == 0 else spec


def _scores(qb, kb, row_keys, mask, plan, dup_r, scale):
    """float32 scores with HF's -10000 penalty on padded keys: the global query blocks'
    `(h, 2, bs, seq)` and the row chunks `(h, R, bs, keys)` (keys: `_row_operands(kb, plan)`)."""
    heads, nb, bs, dim = qb.shape
    rows = nb - 2
    pen = (1.0 - mask.reshape(nb, bs)) * MASK_PENALTY

    def dot(spec, a, b):
        return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32) * scale

    s_global = dot("hgqd,hkd->hgqk", _ends(qb), kb.reshape(heads, nb * bs, dim))
    s_global = s_global + pen.reshape(1, 1, 1, -1)

    pens = [jnp.concatenate([pen[0], pen[-1]]).reshape(1, 1, 1, -1)]
    if dup_r:
        # Eval plan: block 0 counts 1 + r times (0 extra on padded query rows, as HF masks them).
        dup = jnp.log1p(dup_r * mask.reshape(nb, bs)[1:-1])[None, :, :, None]
        dup = jnp.broadcast_to(dup, (1, rows, bs, bs))
        pens[0] = pens[0] + jnp.pad(dup, ((0, 0), (0, 0), (0, 0), (0, bs)))
    for j in range(3):
        left_out = np.zeros((rows, 1), np.float32)  # the edge rows' global window block
        if j != 1:
            left_out[0 if j == 0 else -1] = -np.inf
        pens.append((pen[j : j + rows] + left_out)[None, :, None, :])
    if plan is not None:
        pens.append(pen[plan].reshape(heads, rows, 1, -1))
    qr = qb[:, 1:-1]
    chunks = [
        dot(_row_spec(i, "hrqd,hrkd->hrqk"), qr, x) + p
        for i, (x, p) in enumerate(zip(row_keys, pens))
    ]
    return s_global, chunks


def _softmax_parts(chunks):
    top = functools.reduce(jnp.maximum, [s.max(-1) for s in chunks])
    exps = [jnp.exp(s - top[..., None]) for s in chunks]
    total = sum(e.sum(-1) for e in exps)
    return exps, total, top + jnp.log(total)


def _ends(x):
    """Blocks 0 and nb-1 of `(h, nb, ...)`, stacked: `(h, 2, ...)`."""
    return jnp.stack([x[:, 0], x[:, -1]], axis=1)


def _rejoin(glob, rows, shape):
    """Global query blocks `(h, 2, ...)` and rows `(h, R, ...)` back in sequence order."""
    return jnp.concatenate([glob[:, :1], rows, glob[:, 1:]], axis=1).reshape(shape)


def _sparse_forward(q, k, v, mask, plan, dup_r, bs):
    heads, seq, dim = q.shape
    nb, dtype, f32 = seq // bs, q.dtype, jnp.float32
    qb, kb, vb = (x.reshape(heads, nb, bs, dim) for x in (q, k, v))
    s_global, chunks = _scores(
        qb, kb, _row_operands(kb, plan), mask, plan, dup_r, 1.0 / math.sqrt(dim)
    )
    (e,), total_g, lse_g = _softmax_parts([s_global])
    ctx_g = jnp.einsum("hgqk,hkd->hgqd", e.astype(dtype), v, preferred_element_type=f32)
    exps, total, lse = _softmax_parts(chunks)
    ctx = sum(
        jnp.einsum(_row_spec(i, "hrqk,hrkd->hrqd"), e.astype(dtype), x, preferred_element_type=f32)
        for i, (e, x) in enumerate(zip(exps, _row_operands(vb, plan)))
    )
    ctx = _rejoin(ctx_g / total_g[..., None], ctx / total[..., None], (heads, seq, dim))
    return ctx.astype(dtype), _rejoin(lse_g, lse, (heads, seq))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _sparse_context(q, k, v, mask, plan, dup_r, bs):
    return _sparse_context_fwd(q, k, v, mask, plan, dup_r, bs)[0]


def _sparse_context_fwd(q, k, v, mask, plan, dup_r, bs):
    ctx, lse = _sparse_forward(q, k, v, mask, plan, dup_r, bs)
    return ctx * mask[None, :, None].astype(ctx.dtype), (q, k, v, mask, plan, ctx, lse)


def _sparse_context_bwd(dup_r, bs, res, grad):
    q, k, v, mask, plan, ctx, lse = res
    heads, seq, dim = q.shape
    nb, rows, dtype = seq // bs, seq // bs - 2, q.dtype
    scale = 1.0 / math.sqrt(dim)
    d_ctx = (grad * mask[None, :, None].astype(grad.dtype)).astype(dtype)
    # sum_k P dP of each query row, from the output (flash attention's "delta").
    delta = jnp.sum(d_ctx.astype(jnp.float32) * ctx.astype(jnp.float32), axis=-1)
    qb, kb, vb, db = (x.reshape(heads, nb, bs, dim) for x in (q, k, v, d_ctx))
    lse, delta = lse.reshape(heads, nb, bs, 1), delta.reshape(heads, nb, bs, 1)
    row_keys, row_values = _row_operands(kb, plan), _row_operands(vb, plan)
    s_global, chunks = _scores(qb, kb, row_keys, mask, plan, dup_r, scale)

    def dot(spec, a, b):
        return jnp.einsum(spec, a.astype(dtype), b, preferred_element_type=jnp.float32)

    # Query blocks 0 and nb-1 (every key).
    glob_q, glob_d = _ends(qb), _ends(db)
    p = jnp.exp(s_global - _ends(lse))
    ds = p * (dot("hgqd,hkd->hgqk", glob_d, v) - _ends(delta))
    dq_glob = dot("hgqk,hkd->hgqd", ds, k) * scale
    dk = (dot("hgqk,hgqd->hkd", ds, glob_q) * scale).reshape(heads, nb, bs, dim)
    dv = dot("hgqk,hgqd->hkd", p, glob_d).reshape(heads, nb, bs, dim)

    # The rows, chunk by chunk.
    qr, dr, lse, delta = qb[:, 1:-1], db[:, 1:-1], lse[:, 1:-1], delta[:, 1:-1]
    dq, dks, dvs = 0.0, [], []
    for i, (s, kc, vc) in enumerate(zip(chunks, row_keys, row_values)):
        p = jnp.exp(s - lse)
        ds = p * (dot(_row_spec(i, "hrqd,hrkd->hrqk"), dr, vc) - delta)
        dq = dq + dot(_row_spec(i, "hrqk,hrkd->hrqd"), ds, kc)
        dks.append(dot(_row_spec(i, "hrqk,hrqd->hrkd"), ds, qr) * scale)
        dvs.append(dot(_row_spec(i, "hrqk,hrqd->hrkd"), p, dr))

    def route(acc, grads):
        """Adds the chunks' key (value) gradients into their blocks."""
        glob, *window = grads[:4]
        acc = acc + jnp.pad(glob[:, None, :bs], ((0, 0), (0, nb - 1), (0, 0), (0, 0)))
        acc = acc + jnp.pad(glob[:, None, bs:], ((0, 0), (nb - 1, 0), (0, 0), (0, 0)))
        for j, g in enumerate(window):
            acc = acc + jnp.pad(g, ((0, 0), (j, 2 - j), (0, 0), (0, 0)))
        if plan is not None:
            rand = grads[4].reshape(heads, -1, bs, dim)
            acc = jax.vmap(lambda a, g, i: a.at[i].add(g))(acc, rand, plan.reshape(heads, -1))
        return acc.reshape(heads, seq, dim).astype(dtype)

    dq = _rejoin(dq_glob, dq * scale, (heads, seq, dim)).astype(dtype)
    return dq, route(dk, dks), route(dv, dvs), None, None


_sparse_context.defvjp(_sparse_context_fwd, _sparse_context_bwd)


def block_key_indices(plan: Int[Array, "heads rows r"], nb: int) -> Int[Array, "heads rows keys"]:
    """For each head and query block 1..nb-2, the key blocks in HF's order (`5 + r` per row).

    Row 1: [0, 1, 2, nb-1, rand..., pad]; middle row i: [0, i-1, i, i+1, rand..., nb-1];
    row nb-2: [0, nb-3, nb-2, nb-1, rand..., pad]. `pad` (= -1) marks the unused slot of the two
    edge rows, which have 4 + r key blocks.
    """
    heads, rows, r = plan.shape
    i = jnp.arange(2, nb - 2)
    middle_fixed = jnp.stack([jnp.zeros_like(i), i - 1, i, i + 1], axis=1)
    fixed = jnp.concatenate(
        [jnp.array([[0, 1, 2, nb - 1]]), middle_fixed, jnp.array([[0, nb - 3, nb - 2, nb - 1]])]
    )
    tail = jnp.full((rows, 1), nb - 1).at[0].set(-1).at[-1].set(-1)
    fixed = jnp.broadcast_to(fixed, (heads, rows, 4))
    tail = jnp.broadcast_to(tail, (heads, rows, 1))
    return jnp.concatenate([fixed, plan, tail], axis=2).astype(jnp.int32)


def _scatter_key_blocks(rows, key_idx, nb):
    """Sums per-key-block weights `(h, rows, bs, keys*bs)` into dense `(h, rows, bs, nb*bs)`."""
    heads, nrows, bs, _ = rows.shape
    one_hot = jax.nn.one_hot(key_idx, nb, dtype=rows.dtype)  # -1 -> all zeros
    dense = jnp.einsum(
        "hrqkb,hrkn->hrqnb", rows.reshape(heads, nrows, bs, -1, bs), one_hot
    )
    return dense.reshape(heads, nrows, bs, nb * bs)


def attention_pattern(
    plan: Int[Array, "heads rows r"], seq_len: int, block_size: int
) -> Bool[Array, "heads seq seq"]:
    """Which (query, key) pairs each head attends under `plan`, before padding masks: for plots."""
    heads = plan.shape[0]
    nb = num_blocks(seq_len, block_size)
    _check_block_count(nb, block_size)
    ones = jnp.ones((heads, nb - 2, block_size, (5 + plan.shape[2]) * block_size))
    rows = _scatter_key_blocks(ones, block_key_indices(plan, nb), nb) > 0
    glob = jnp.ones((heads, block_size, seq_len), bool)
    return jnp.concatenate([glob, rows.reshape(heads, -1, seq_len), glob], axis=1)


def full_attention(
    q: Float[Array, "heads qseq dim"],
    k: Float[Array, "heads kseq dim"],
    v: Float[Array, "heads kseq dim"],
    mask: Real[Array, " kseq"] | Real[Array, "qseq kseq"] | None = None,
    *,
    dropout_rate: float = 0.0,
    key: PRNGKeyArray | None = None,
) -> tuple[Float[Array, "heads qseq dim"], Float[Array, "heads qseq kseq"]]:
    """Dense softmax attention as HF BigBird's `original_full` computes it.

    Masked keys get `finfo(dtype).min` added (HF's full-attention mask value). With a `key` and
    `dropout_rate > 0` the probabilities are dropped out (inverted dropout), as in HF training.
    **Returns:** `(context, probs)`, the probs before dropout.
    """
    dim = q.shape[-1]
    scores = jnp.einsum("hqd,hkd->hqk", q, k) * (1.0 / jnp.sqrt(jnp.asarray(dim, q.dtype)))
    if mask is not None:
        bias = (1.0 - mask.astype(q.dtype)) * jnp.finfo(q.dtype).min
        scores = scores + (bias[None, None, :] if mask.ndim == 1 else bias[None])
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(q.dtype)
    dropped = probs
    if key is not None and dropout_rate > 0.0:
        keep = jax.random.bernoulli(key, 1.0 - dropout_rate, probs.shape)
        dropped = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    return jnp.einsum("hqk,hkd->hqd", dropped, v), probs


# -- Reproducing Hugging Face's random plans ---------------------------------------------------------
#
# HF (and google-research/bigbird before it) builds a plan by walking rows and heads in a fixed order
# and, for each, permuting a candidate range and keeping the first r legal blocks. PyTorch draws the
# permutations from numpy seeded with the layer index (the original paper's fixed per-layer plan);
# Flax draws them with `jax.random.permutation` from ONE key reused for every row and head. Both are
# reproduced below by passing the corresponding `permute` function to the same walk.


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


# -- Attention probabilities in their compact blocked form ------------------------------------------

import equinox as eqx  # (this section was added after the rest, so its import is here)

__all__ += ["BlockedProbs", "blocked_probs", "densify"]


class BlockedProbs(eqx.Module):
    """Block-sparse attention probabilities of one example, O(seq) memory.

    - `global_rows`: the rows of query blocks 0 and nb-1, which attend every key.
    - `rows`: for query blocks 1..nb-2, the weights of each key block listed in `key_blocks`
      (`(5 + r) * bs` keys per row, slot `s` holds keys `key_blocks[..., s]`); a key block listed
      twice (HF's eval plan) has its weight in each slot. Slot -1 of the edge rows is unused (0).
    - `key_blocks`: `block_key_indices(plan, nb)`.
    """

    global_rows: Float[Array, "heads 2 bs seq"]
    rows: Float[Array, "heads rows bs keys"]
    key_blocks: Int[Array, "heads rows slots"]


def blocked_probs(
    q: Float[Array, "heads seq dim"],
    k: Float[Array, "heads seq dim"],
    mask: Real[Array, " seq"],
    plan: Int[Array, "heads rows r"] | int,
    *,
    block_size: int,
) -> BlockedProbs:
    """The probabilities `block_sparse_attention` uses, in compact form (see `BlockedProbs`).

    **Arguments:** as `block_sparse_attention` (an int `plan` is HF's eval plan, `eval_plan`).

    **Returns:** a `BlockedProbs`; `densify` turns it into the dense `(heads, seq, seq)` map.
    """
    heads, seq, dim = q.shape
    bs = block_size
    nb = num_blocks(seq, bs)
    _check_block_count(nb, bs)
    if isinstance(plan, int):
        plan = eval_plan(heads, nb, plan)
    if plan.shape[:2] != (heads, nb - 2):
        raise ValueError(f"plan has shape {plan.shape}, expected ({heads}, {nb - 2}, r)")
    r = plan.shape[2]
    rsqrt_d = 1.0 / jnp.sqrt(jnp.asarray(dim, q.dtype))
    m = mask.astype(jnp.float32)
    blocked = m.reshape(nb, bs)
    qb = q.reshape(heads, nb, bs, dim)
    kb = k.reshape(heads, nb, bs, dim)

    glob_q = jnp.stack([qb[:, 0], qb[:, -1]], axis=1)
    s = jnp.einsum("hgqd,hkd->hgqk", glob_q, k) * rsqrt_d
    s = s.astype(jnp.float32) + ((1.0 - m) * MASK_PENALTY)[None, None, None]
    global_rows = jax.nn.softmax(s, axis=-1)

    idx = block_key_indices(plan, nb)
    safe = jnp.maximum(idx, 0)
    keys = jax.vmap(lambda kh, ih: kh[ih])(kb, safe)  # (heads, rows, slots, bs, dim)
    s = jnp.einsum("hrqd,hrsbd->hrqsb", qb[:, 1:-1], keys) * rsqrt_d
    # HF's masks: global and (edge rows') fixed key blocks mask keys only; window blocks of the
    # middle rows and all random blocks mask (query, key) pairs (its band and random masks).
    slot = jnp.arange(5 + r)[None, :]
    row = jnp.arange(nb - 2)[:, None]
    edge = (row == 0) | (row == nb - 3)
    pairwise = ((slot >= 1) & (slot <= 3) & ~edge) | ((slot >= 4) & (slot < 4 + r))
    key_mask = blocked[safe][:, :, None]  # (heads, rows, 1, slots, bs)
    query_mask = blocked[1:-1][None, :, :, None, None]  # (1, rows, bs, 1, 1)
    both = key_mask * jnp.where(pairwise[None, :, None, :, None], query_mask, 1.0)
    s = s.astype(jnp.float32) + (1.0 - both) * MASK_PENALTY
    s = jnp.where((idx < 0)[:, :, None, :, None], -jnp.inf, s)
    rows = jax.nn.softmax(s.reshape(heads, nb - 2, bs, (5 + r) * bs), axis=-1)
    return BlockedProbs(global_rows.astype(q.dtype), rows.astype(q.dtype), idx)


def densify(blocked: BlockedProbs) -> Float[Array, "heads seq seq"]:
    """The dense `(heads, seq, seq)` attention map of `blocked_probs` (a key block listed twice
    gets the sum of its weights, as in HF's eval plan). Costs O(seq^2): for plots and checks."""
    heads, _, bs, seq = blocked.global_rows.shape
    nb = seq // bs
    dense_rows = _scatter_key_blocks(blocked.rows, blocked.key_blocks, nb)
    return jnp.concatenate(
        [
            blocked.global_rows[:, 0],
            dense_rows.reshape(heads, (nb - 2) * bs, seq),
            blocked.global_rows[:, 1],
        ],
        axis=1,
    )
