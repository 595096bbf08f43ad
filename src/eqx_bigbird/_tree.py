"""Tree paths as dotted strings: the names our checkpoint formats give a model's leaves."""

import jax
import numpy as np


def path_str(path) -> str:
    """`jax.tree_util` key path -> `"encoder.layers.attention.query.weight"`."""
    parts = []
    for p in path:
        if isinstance(p, jax.tree_util.GetAttrKey):
            parts.append(p.name)
        elif isinstance(p, jax.tree_util.SequenceKey):
            parts.append(str(p.idx))
        elif isinstance(p, jax.tree_util.DictKey):
            parts.append(str(p.key))
        else:
            parts.append(str(p))
    return ".".join(parts)


def array_leaves(tree) -> list[tuple[str, jax.Array | np.ndarray]]:
    """`[(dotted path, leaf)]` for every array leaf (JAX or numpy) of `tree`, in tree order."""
    import equinox as eqx

    return [
        (path_str(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0] if eqx.is_array(x)
    ]
