"""Small building blocks shared by every module: keys, HF-initialised layers, per-token maps."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import PRNGKeyArray


def split_key(key: PRNGKeyArray | None, num: int = 2):
    """`jr.split` that passes `None` through (inference needs no randomness)."""
    if key is None:
        return (None,) * num
    return tuple(jr.split(key, num))


def normal_linear(in_features, out_features, *, use_bias=True, std, key) -> eqx.nn.Linear:
    """An `eqx.nn.Linear` with HF's init: weight ~ N(0, std), bias zero."""
    weight = std * jr.normal(key, (out_features, in_features))
    linear = eqx.nn.Linear(in_features, out_features, use_bias=use_bias, key=key)
    linear = eqx.tree_at(lambda m: m.weight, linear, weight)
    if use_bias:
        linear = eqx.tree_at(lambda m: m.bias, linear, jnp.zeros_like(linear.bias))
    return linear


def normal_embedding(num, dim, *, std, key) -> eqx.nn.Embedding:
    return eqx.nn.Embedding(weight=std * jr.normal(key, (num, dim)))


def per_token(layer, x):
    """Applies a per-token layer (Linear, LayerNorm) to every row of `x: (seq, features)`."""
    return jax.vmap(layer)(x)


def cast_floats(tree, dtype):
    """`tree` with its floating arrays in `dtype` (`None`: unchanged)."""
    if dtype is None:
        return tree
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, tree
    )


def resolve_inference(module, inference: bool | None, key) -> bool:
    """The call's mode (`inference` overrides the module's flag); training needs a key."""
    inference = module.inference if inference is None else inference
    if not inference and key is None:
        raise ValueError(
            f"{type(module).__name__} in training mode needs `key=` (dropout, random attention); "
            "for deterministic outputs use `eqx.nn.inference_mode(model)` or `inference=True`"
        )
    return inference


def one_example(rank: int = 1):
    """Decorates a model's `__call__`: `input_ids` of the wrong rank (usually a batch passed by
    mistake) is reported as such before a runtime type checker reports the annotation."""

    def decorate(call):
        @functools.wraps(call)
        def checked(self, input_ids, *args, **kwargs):
            if jnp.ndim(input_ids) != rank:
                shape = "(seq,)" if rank == 1 else "(num_choices, seq)"
                raise ValueError(
                    f"{type(self).__name__} is called on one example: input_ids must be "
                    f"{rank}-D {shape}, got shape {jnp.shape(input_ids)}; for a batch use "
                    "jax.vmap(model)(input_ids, ...)"
                )
            return call(self, input_ids, *args, **kwargs)

        return checked

    return decorate
