"""Pictures of BigBird attention: the block pattern of a head (global, window and random blocks in
distinct colours) and heatmaps of dense attention maps. matplotlib is imported only when a
function is called, so `import eqx_bigbird` never needs it."""

import os

import numpy as np
from jaxtyping import ArrayLike, Float, Int

__all__ = ["block_kinds", "layer_attention", "plot_attention", "plot_block_pattern"]

# Block kinds in `block_kinds`, and their colours.
NONE, GLOBAL, WINDOW, RANDOM = 0, 1, 2, 3
KIND_NAMES = ("not attended", "global", "window", "random")
KIND_COLOURS = ("#f4f4f4", "#1f77b4", "#2ca02c", "#d62728")


def block_kinds(plan: Int[ArrayLike, "rows r"], nb: int) -> np.ndarray:
    """`(nb, nb)` int array: why query block i attends key block j, for one head's plan.

    0: not attended, 1: global (query or key block 0 or nb-1), 2: window (i-1..i+1), 3: random.
    A block that is both window and random (not possible in a legal plan) shows as window.
    """
    plan = np.asarray(plan)
    if plan.shape[0] != nb - 2:
        raise ValueError(f"plan has {plan.shape[0]} rows, expected nb - 2 = {nb - 2}")
    kinds = np.zeros((nb, nb), np.int32)
    for i in range(1, nb - 1):
        kinds[i, plan[i - 1]] = RANDOM
        kinds[i, max(i - 1, 0) : i + 2] = WINDOW
    kinds[:, [0, nb - 1]] = GLOBAL
    kinds[[0, nb - 1], :] = GLOBAL
    return kinds


def _pyplot():
    # pyplot picks a non-GUI backend by itself on a headless machine; we never switch backends.
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from None
    return plt


def _finish(fig, path):
    if path is not None:
        from ._io import atomic_savefig

        atomic_savefig(fig, path, dpi=110, bbox_inches="tight")
    return fig


def plot_block_pattern(
    plan: Int[ArrayLike, "*layers heads rows r"],
    *,
    layer: int = 0,
    head: int = 0,
    title: str | None = None,
    path: str | os.PathLike | None = None,
    ax=None,
):
    """Draws which key blocks each query block attends, coloured by kind (global, window,
    random), for one layer and head of a plan (`random_plan`, `eval_plan`, or a model's
    `(layers, heads, nb-2, r)` plans).

    **Arguments:**
    - `plan`: `(heads, nb-2, r)` or `(layers, heads, nb-2, r)`.
    - `layer`, `head`: which one to draw (`layer` only for a 4-D plan).
    - `path`: also save the figure there (PNG, SVG, ...).
    - `ax`: draw into this matplotlib axes instead of a new figure.

    **Returns:** the matplotlib figure.
    """
    plt = _pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    plan = np.asarray(plan)
    if plan.ndim == 4:
        plan = plan[layer]
    elif plan.ndim != 3:
        raise ValueError(f"plan must be 3-D or 4-D, got shape {plan.shape}")
    nb = plan.shape[1] + 2
    kinds = block_kinds(plan[head], nb)
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 5))
    else:
        fig = ax.figure
    ax.imshow(kinds, cmap=ListedColormap(KIND_COLOURS), vmin=0, vmax=3, interpolation="nearest")
    ax.set_xticks(np.arange(-0.5, nb, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, nb, 1), minor=True)
    ax.grid(which="minor", color="white", lw=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set(xlabel="key block", ylabel="query block")
    ax.set_title(title or f"layer {layer}, head {head}: {nb} blocks, {plan.shape[2]} random")
    ax.legend(
        handles=[Patch(color=c, label=n) for c, n in zip(KIND_COLOURS[1:], KIND_NAMES[1:])],
        loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
    )
    return _finish(fig, path)


def plot_attention(
    probs: Float[ArrayLike, "*heads seq seq"],
    *,
    head: int = 0,
    block_size: int | None = None,
    log: bool = True,
    title: str | None = None,
    path: str | os.PathLike | None = None,
    ax=None,
):
    """Heatmap of a dense attention map (e.g. `sparse_attention.densify(...)` or one layer of a
    model's `output_attentions`), rows = queries, columns = keys.

    **Arguments:**
    - `probs`: `(heads, seq, seq)` or `(seq, seq)`.
    - `head`: which head of a 3-D map.
    - `block_size`: draw block boundaries every `block_size` tokens.
    - `log`: log-scaled colours (attention weights span orders of magnitude); zeros stay blank.
    - `path`, `ax`: as in `plot_block_pattern`.

    **Returns:** the matplotlib figure.
    """
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    p = np.asarray(probs, dtype=np.float32)
    if p.ndim == 3:
        p = p[head]
    if p.ndim != 2 or p.shape[0] != p.shape[1]:
        raise ValueError(f"expected a (heads, seq, seq) or (seq, seq) map, got {np.shape(probs)}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
    else:
        fig = ax.figure
    shown = np.ma.masked_less_equal(p, 0.0) if log else p
    positive = p[p > 0]
    norm = None
    if log and positive.size:
        norm = LogNorm(vmin=max(positive.min(), positive.max() * 1e-6), vmax=positive.max())
    im = ax.imshow(shown, cmap="viridis", norm=norm, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if block_size:
        for b in range(block_size, p.shape[0], block_size):
            ax.axhline(b - 0.5, color="white", lw=0.3)
            ax.axvline(b - 0.5, color="white", lw=0.3)
    ax.set(xlabel="key", ylabel="query", title=title or f"attention, head {head}")
    return _finish(fig, path)


def layer_attention(model, input_ids, attention_mask=None, *, layer: int = 0):
    """The block-sparse attention probabilities of one layer of a model (a `BigBirdModel` or a
    head holding one as `.bert`), in compact form, in inference mode (HF's eval plan).

    **Arguments:**
    - `input_ids`, `attention_mask`: one example, `(seq,)`, long enough for block-sparse
      attention (`model.uses_block_sparse(seq)`).
    - `layer`: which layer.

    **Returns:** a `sparse_attention.BlockedProbs` (`sparse_attention.densify` for the dense map).
    """
    import jax

    bert = getattr(model, "bert", model)
    seq = len(input_ids)
    if not bert.uses_block_sparse(seq):
        raise ValueError(f"{seq} tokens do not run block-sparse attention in this model")
    out = bert(input_ids, attention_mask, inference=True, output_attentions="blocked")
    return jax.tree_util.tree_map(lambda a: a[layer], out.attentions)
