"""Small building blocks shared by every module: keys, HF-initialised layers, per-token maps."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
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
    if isinstance(layer, eqx.nn.Linear) and x.ndim == 2:
        # One `(seq, in) x (out, in) -> (seq, out)` product. `jax.vmap` of the layer's
        # matrix-vector product gives XLA the `(out, seq)` product and a transpose, and `x @ W.T`
        # a transposed weight kept for the backward pass; XLA:CPU materialises both (in every
        # layer, forward and backward) at a fraction of the memory bandwidth.
        y = jax.lax.dot_general(x, layer.weight, (((1,), (1,)), ((), ())))
        return y if layer.bias is None else y + layer.bias[None]
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


def check_values(x, is_bad, message: str):
    """`x`, after checking that no entry is bad: `is_bad(xp, x)` (`xp` is numpy or jax.numpy)
    gives a boolean array.

    A concrete `x` (numpy, or a jax array outside `jit`) is checked on the host, in its own dtype
    (so int64 ids above 2**31 are seen before any cast), and raises `ValueError(message)`, naming
    the first bad entry. A traced `x` is checked with `eqx.error_if`: the same message at run
    time, as an `EquinoxRuntimeError` under `eqx.filter_jit` (under plain `jax.jit` JAX wraps it
    in an `XlaRuntimeError` whose text contains the message).
    """
    if isinstance(x, jax.core.Tracer):
        return eqx.error_if(x, is_bad(jnp, x), message)
    host = np.asarray(x)
    bad = np.asarray(is_bad(np, host))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{message} (entry {where if len(where) > 1 else where[0]} is "
                         f"{host[where].item()!r})")
    return x


def one_example(rank: int = 1):
    """Decorates a model's `__call__`: `input_ids` of the wrong rank (usually a batch passed by
    mistake) is reported as such before a runtime type checker reports the annotation."""

    def decorate(call):
        @functools.wraps(call)
        def checked(self, input_ids, *args, **kwargs):
            if isinstance(input_ids, (str, bytes)):
                raise TypeError(
                    f"{type(self).__name__} takes token ids, got a {type(input_ids).__name__} "
                    "(text): encode it first, e.g. Tokenizer.encode(text).input_ids"
                )
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
