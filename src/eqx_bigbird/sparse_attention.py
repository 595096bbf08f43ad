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

import dataclasses
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, Real

from ._hf_plans import (
    hf_block_rand_mask,
    hf_block_rand_mask_with_head,
    hf_flax_plan,
    hf_rand_attn_plan,
    paper_plan,
)

__all__ = [
    "MASK_PENALTY",
    "EvalPlan",
    "Plan",
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
    "BlockedProbs",
    "blocked_probs",
    "densify",
    "paper_plan",
    "hf_flax_plan",
    "hf_block_rand_mask_with_head",
    "hf_block_rand_mask",
    "hf_rand_attn_plan",
]

MASK_PENALTY = -10000.0  # HF's additive penalty for masked keys in block-sparse attention


@dataclasses.dataclass(frozen=True)
class EvalPlan:
    """HF's inference-time plan with `num_random_blocks` random blocks per row, all of them block 0.

    Equal in meaning to the array `eval_plan(heads, nb, r)`, but computed without its duplicate
    blocks: block 0, which every row attends anyway, gets log(1 + r) added to its scores.
    """

    num_random_blocks: int


# Random key blocks per head and query block 1..nb-2: an explicit int32 array, or HF's eval plan.
Plan = Int[Array, "heads rows r"] | EvalPlan


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
    """HF's inference-time plan as an array: every random block is block 0 (PT and Flax, eval
    mode). `EvalPlan(r)` is the same plan for the attention functions, without the duplicates."""
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


def _resolve_plan(plan: Plan, heads: int, nb: int) -> tuple[Int[Array, "heads rows r"] | None, int]:
    """`(random blocks to gather or None, r of HF's eval plan or 0)` for the kernel."""
    if isinstance(plan, EvalPlan):
        return None, plan.num_random_blocks
    if plan.shape[:2] != (heads, nb - 2):
        raise ValueError(f"plan has shape {plan.shape}, expected ({heads}, {nb - 2}, r)")
    if plan.shape[2] == 0:
        return None, 0
    return plan.astype(jnp.int32), 0


def block_sparse_attention(
    q: Float[Array, "heads seq dim"],
    k: Float[Array, "heads seq dim"],
    v: Float[Array, "heads seq dim"],
    mask: Real[Array, " seq"],
    plan: Plan,
    *,
    block_size: int,
    return_probs: bool = False,
) -> tuple[Float[Array, "heads seq dim"], Float[Array, "heads seq seq"] | None]:
    """BigBird block-sparse attention of one example, as HF computes it.

    **Arguments:**
    - `q`, `k`, `v`: per-head queries, keys, values; `seq` a multiple of `block_size`, >= 5 blocks.
    - `mask`: 1 for real tokens, 0 for padding. It is a constant here (no gradient flows to it).
    - `plan`: random key blocks per head and query block 1..nb-2 (e.g. `random_plan`), or
      `EvalPlan(r)`: HF's eval plan (every random block is block 0), without its duplicates.
    - `return_probs`: also return the dense `(heads, seq, seq)` attention map (costs O(seq^2)).

    **Returns:** `(context, probs)`; padded query rows of `context` are zero (HF's `from_mask`).

    The gradient is hand-written: the backward pass recomputes the scores from `q`, `k` and the
    saved log-sum-exp (as flash attention does), so no attention probabilities are stored for
    it, and key/value gradients go back by shifted adds and one scatter-add.
    """
    heads, seq, dim = q.shape
    nb = num_blocks(seq, block_size)
    _check_block_count(nb, block_size)
    gathered, dup_r = _resolve_plan(plan, heads, nb)
    const_mask = jax.lax.stop_gradient(mask.astype(jnp.float32))
    ctx = _sparse_context(q, k, v, const_mask, gathered, dup_r, block_size)
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


def _scores(qb, kb, row_keys, mask, plan, dup_r, scale, *, pairwise=False):
    """float32 scores with HF's -10000 penalty on padded keys: the global query blocks'
    `(h, 2, bs, seq)` and the row chunks `(h, R, bs, keys)` (keys: `_row_operands(kb, plan)`).

    `pairwise=True` applies HF's band and random masks as HF does, penalising a pair when either
    its query or its key is padding (the window of the middle rows, all random blocks). The
    context does not need it: padded query rows are zeroed afterwards. Attention maps do.
    """
    heads, nb, bs, dim = qb.shape
    rows = nb - 2
    blocked = mask.reshape(nb, bs)
    pen = (1.0 - blocked) * MASK_PENALTY
    query = blocked[1:-1][None, :, :, None]  # (1, R, bs, 1)

    def pair(key_mask, rows_affected=slice(None)):
        """Penalty of a key chunk `(.., R or 1, 1, keys)`, pairwise on `rows_affected`."""
        key_pen = (1.0 - key_mask) * MASK_PENALTY
        if not pairwise:
            return key_pen
        both = (1.0 - query * key_mask) * MASK_PENALTY
        affected = np.zeros((1, rows, 1, 1), bool)
        affected[:, rows_affected] = True
        return jnp.where(affected, both, key_pen)

    def dot(spec, a, b):
        return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32) * scale

    s_global = dot("hgqd,hkd->hgqk", _ends(qb), kb.reshape(heads, nb * bs, dim))
    s_global = s_global + pen.reshape(1, 1, 1, -1)

    pens = [jnp.concatenate([pen[0], pen[-1]]).reshape(1, 1, 1, -1)]
    if dup_r:
        # Eval plan: block 0 counts 1 + r times (0 extra on padded query rows, as HF masks them).
        dup = jnp.log1p(dup_r * blocked[1:-1])[None, :, :, None]
        dup = jnp.broadcast_to(dup, (1, rows, bs, bs))
        pens[0] = pens[0] + jnp.pad(dup, ((0, 0), (0, 0), (0, 0), (0, bs)))
    for j in range(3):
        left_out = np.zeros((1, rows, 1, 1), np.float32)  # the edge rows' global window block
        if j != 1:
            left_out[:, 0 if j == 0 else -1] = -np.inf
        # HF's edge rows mask their fixed key blocks by key only; the middle rows' band pairwise.
        pens.append(pair(blocked[j : j + rows][None, :, None, :], slice(1, -1)) + left_out)
    if plan is not None:
        pens.append(pair(blocked[plan].reshape(heads, rows, 1, -1)))
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


def _sparse_forward(q, k, v, plan, mask, dup_r, bs):
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


def _one_head_at_a_time(fn, per_head, *shared):
    """`fn(*per_head, *shared)` computed head by head (`lax.map`) and stacked again.

    Each head's scores and probabilities (`(rows, bs, keys)`, a few MB) then stay in cache between
    the dots and the softmax that read them; all heads at once spill them to memory, which makes
    the attention up to 2x slower on CPU (`python -m benchmarks.attention`).
    """

    def one(xs):
        out = fn(*(None if x is None else x[None] for x in xs), *shared)  # plan may be None
        return jax.tree_util.tree_map(lambda y: y[0], out)

    return jax.lax.map(one, per_head)


def _sparse_context_fwd(q, k, v, mask, plan, dup_r, bs):
    ctx, lse = _one_head_at_a_time(_sparse_forward, (q, k, v, plan), mask, dup_r, bs)
    return ctx * mask[None, :, None].astype(ctx.dtype), (q, k, v, mask, plan, ctx, lse)


def _sparse_context_bwd(dup_r, bs, res, grad):
    q, k, v, mask, plan, ctx, lse = res
    grads = _one_head_at_a_time(_sparse_backward, (q, k, v, plan, ctx, lse, grad), mask, dup_r, bs)
    return *grads, None, None


def _sparse_backward(q, k, v, plan, ctx, lse, grad, mask, dup_r, bs):
    heads, seq, dim = q.shape
    nb, dtype = seq // bs, q.dtype
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

    def over_rows(a, x):
        """`sum_{b,q} a[h,b,q,k] x[h,b,q,d]` as `(x^T a)^T`. Written `a^T x`, XLA:CPU transposes
        `a` (score-sized) to make the summed axes minor, at under 1 GB/s; this way it transposes `x`
        and the small result (attention fwd+bwd at 2048 tokens 1.3x faster)."""
        return jnp.swapaxes(dot("hbqd,hbqk->hdk", x, a.astype(dtype)), -1, -2)

    # Query blocks 0 and nb-1 (every key).
    glob_q, glob_d = _ends(qb), _ends(db)
    p = jnp.exp(s_global - _ends(lse))
    ds = p * (dot("hgqd,hkd->hgqk", glob_d, v) - _ends(delta))
    dq_glob = dot("hgqk,hkd->hgqd", ds, k) * scale
    dk = (over_rows(ds, glob_q) * scale).reshape(heads, nb, bs, dim)
    dv = over_rows(p, glob_d).reshape(heads, nb, bs, dim)

    # The rows, chunk by chunk.
    qr, dr, lse, delta = qb[:, 1:-1], db[:, 1:-1], lse[:, 1:-1], delta[:, 1:-1]
    dq, dks, dvs = 0.0, [], []
    for i, (s, kc, vc) in enumerate(zip(chunks, row_keys, row_values)):
        p = jnp.exp(s - lse)
        ds = p * (dot(_row_spec(i, "hrqd,hrkd->hrqk"), dr, vc) - delta)
        dq = dq + dot(_row_spec(i, "hrqk,hrkd->hrqd"), ds, kc)
        if i == 0:  # the global keys, shared by all rows
            dks.append(over_rows(ds, qr) * scale)
            dvs.append(over_rows(p, dr))
        else:
            dks.append(dot("hrqk,hrqd->hrkd", ds, qr) * scale)
            dvs.append(dot("hrqk,hrqd->hrkd", p, dr))

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
    return dq, route(dk, dks), route(dv, dvs)


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


# -- Attention probabilities in their compact blocked form ----------------------------------------


class BlockedProbs(eqx.Module):
    """Block-sparse attention probabilities of one example, O(seq) memory.

    - `global_rows`: the rows of query blocks 0 and nb-1, which attend every key.
    - `rows`: for query blocks 1..nb-2, the weights of each key block listed in `key_blocks`
      (`(5 + r) * bs` keys per row, slot `s` holds keys `key_blocks[..., s]`); a key block listed
      twice (HF's eval plan) has its weight in each slot. Slot -1 of the edge rows is unused (0).
    - `key_blocks`: `block_key_indices(plan, nb)`.
    - `length`: the number of real (un-padded) positions `densify` keeps; `None`: all.

    A model's output stacks one per layer (a leading `layers` axis on every array).
    """

    global_rows: Float[Array, "*layers heads 2 bs seq"]
    rows: Float[Array, "*layers heads rows bs keys"]
    key_blocks: Int[Array, "*layers heads rows slots"]
    length: int | None = eqx.field(static=True, default=None)


def _hf_slot_order(glob, w0, w1, w2, rand):
    """The row chunks' weights in HF's key order (`block_key_indices`): middle rows
    [0, i-1, i, i+1, rand, nb-1]; the edge rows [0, 1, 2, nb-1, rand, -] and
    [0, nb-3, nb-2, nb-1, rand, -], whose window block that is also global is in `glob`."""
    bs = w0.shape[-1]
    first, last = glob[..., :bs], glob[..., bs:]
    unused = jnp.zeros_like(first)
    middle = jnp.concatenate([first, w0, w1, w2, rand, last], axis=-1)
    top = jnp.concatenate([first, w1, w2, last, rand, unused], axis=-1)
    bottom = jnp.concatenate([first, w0, w1, last, rand, unused], axis=-1)
    return middle.at[:, 0].set(top[:, 0]).at[:, -1].set(bottom[:, -1])


def blocked_probs(
    q: Float[Array, "heads seq dim"],
    k: Float[Array, "heads seq dim"],
    mask: Real[Array, " seq"],
    plan: Plan,
    *,
    block_size: int,
) -> BlockedProbs:
    """The probabilities `block_sparse_attention` uses, in compact form (see `BlockedProbs`),
    computed by the same score code as its forward pass, with HF's masks on padded query rows.

    **Arguments:** as `block_sparse_attention`.

    **Returns:** a `BlockedProbs`; `densify` turns it into the dense `(heads, seq, seq)` map.
    """
    heads, seq, dim = q.shape
    nb = num_blocks(seq, block_size)
    _check_block_count(nb, block_size)
    gathered, dup_r = _resolve_plan(plan, heads, nb)
    m = mask.astype(jnp.float32)
    qb, kb = (x.reshape(heads, nb, block_size, dim) for x in (q, k))
    s_global, chunks = _scores(
        qb, kb, _row_operands(kb, gathered), m, gathered, dup_r, 1.0 / math.sqrt(dim),
        pairwise=True,
    )
    (e,), total, _ = _softmax_parts([s_global])
    global_rows = e / total[..., None]
    exps, total, _ = _softmax_parts(chunks)
    glob, w0, w1, w2, *rand = (e / total[..., None] for e in exps)
    if dup_r:
        # Block 0's merged weight, split evenly over its 1 + r copies (1 on padded query rows).
        real = m.reshape(nb, block_size)[1:-1][None, :, :, None]
        single = glob[..., :block_size] / (1.0 + dup_r * real)
        glob = glob.at[..., :block_size].set(single)
        rand = [jnp.concatenate([single * real] * dup_r, axis=-1)]
        gathered = eval_plan(heads, nb, dup_r)
    elif gathered is None:
        rand, gathered = [w0[..., :0]], eval_plan(heads, nb, 0)
    rows = _hf_slot_order(glob, w0, w1, w2, rand[0])
    key_blocks = block_key_indices(gathered, nb)
    return BlockedProbs(global_rows.astype(q.dtype), rows.astype(q.dtype), key_blocks)


def densify(blocked: BlockedProbs) -> Float[Array, "heads seq seq"]:
    """The dense `(heads, seq, seq)` attention map of `blocked_probs` (a key block listed twice
    gets the sum of its weights, as in HF's eval plan), cut to `blocked.length` positions.
    Costs O(seq^2): for plots and checks."""
    heads, _, bs, seq = blocked.global_rows.shape
    nb = seq // bs
    dense_rows = _scatter_key_blocks(blocked.rows, blocked.key_blocks, nb)
    dense = jnp.concatenate(
        [
            blocked.global_rows[:, 0],
            dense_rows.reshape(heads, (nb - 2) * bs, seq),
            blocked.global_rows[:, 1],
        ],
        axis=1,
    )
    n = seq if blocked.length is None else blocked.length
    return dense[:, :n, :n]
