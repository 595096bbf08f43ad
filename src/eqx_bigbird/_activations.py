"""The activation functions HF BigBird configs may name (`hidden_act`), as JAX functions."""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp


# GELU's own derivative rules: differentiated as written, each GELU leaves three activation-sized
# residuals for the backward pass (under `scan` they are stacked over layers and written every
# step); with the derivative given, one is left (the derivative at x). Values are jax.nn.gelu's.
@jax.custom_jvp
def _gelu_tanh(x):
    return jax.nn.gelu(x, approximate=True)


@_gelu_tanh.defjvp
def _gelu_tanh_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    c = math.sqrt(2.0 / math.pi)
    t = jnp.tanh(c * (x + 0.044715 * x**3))
    slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * x * x)
    return _gelu_tanh(x), slope * dx


@jax.custom_jvp
def _gelu_erf(x):
    return jax.nn.gelu(x, approximate=False)


@_gelu_erf.defjvp
def _gelu_erf_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    cdf = 0.5 * jax.lax.erfc(-x * math.sqrt(0.5))
    pdf = jnp.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return _gelu_erf(x), (cdf + x * pdf) * dx


def _gelu_fast(x):
    return 0.5 * x * (1.0 + jnp.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def _laplace(x, mu=0.707107, sigma=0.282095):
    return 0.5 * (1.0 + jax.lax.erf((x - mu) / (sigma * math.sqrt(2.0))))


def _mish(x):
    return x * jnp.tanh(jax.nn.softplus(x))


# Names and formulas follow transformers' `ACT2FN` (PyTorch side), which is a superset of the
# Flax side. `gelu_new`, `gelu_pytorch_tanh`, `gelu_python_tanh` and `gelu_accurate` are all the
# tanh approximation 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))).
ACTIVATIONS: dict[str, Callable] = {
    "gelu": _gelu_erf,
    "gelu_python": _gelu_erf,
    "gelu_10": lambda x: jnp.clip(_gelu_erf(x), -10.0, 10.0),
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_python_tanh": _gelu_tanh,
    "gelu_accurate": _gelu_tanh,
    "gelu_fast": _gelu_fast,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "laplace": _laplace,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, negative_slope=0.01),
    "linear": lambda x: x,
    "mish": _mish,
    "relu": jax.nn.relu,
    "relu2": lambda x: jnp.square(jax.nn.relu(x)),
    "relu6": jax.nn.relu6,
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}

# HF activations with learnable parameters: they would need weights that BigBird checkpoints do
# not have, so a config naming them is refused rather than approximated.
UNSUPPORTED_ACTIVATIONS = ("prelu", "xielu")
