"""Every activation a config may name, against transformers' `ACT2FN` (PyTorch): values and
derivatives, float32, over the range where they differ; GELU's own derivative rules also
against JAX's autodiff of `jax.nn.gelu`, in forward and reverse mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqx_bigbird._activations import ACTIVATIONS

torch = pytest.importorskip("torch")
activations = pytest.importorskip("transformers.activations")

X = np.linspace(-12.0, 12.0, 20001, dtype=np.float32)


def _torch_value_and_slope(name):
    x = torch.tensor(X, requires_grad=True)
    y = activations.ACT2FN[name](x)
    (slope,) = torch.autograd.grad(y.sum(), x)
    return y.detach().numpy(), slope.numpy()


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_matches_hf_pytorch(name):
    f = ACTIVATIONS[name]
    y, slope = jax.vmap(jax.value_and_grad(f))(jnp.asarray(X))
    y_hf, slope_hf = _torch_value_and_slope(name)
    np.testing.assert_allclose(np.asarray(y), y_hf, rtol=1e-6, atol=1e-6)
    # Slopes to the suite's 1e-5: near x = -5 the tanh forms' slope is a difference of two
    # ~1e-5 terms built from 1 + tanh(u), which float32 rounds to 0 in one library and not in
    # the other (measured: at most 3.8e-6 apart).
    np.testing.assert_allclose(np.asarray(slope), slope_hf, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,approximate", [("gelu", False), ("gelu_new", True)])
def test_gelu_is_jax_gelu_in_value_and_both_derivative_modes(name, approximate):
    f, x = ACTIVATIONS[name], jnp.asarray(X)
    reference = lambda x: jax.nn.gelu(x, approximate=approximate)  # noqa: E731
    assert bool(jnp.all(f(x) == reference(x)))  # the same program: identical values
    ones = jnp.ones_like(x)
    forward = jax.jvp(f, (x,), (ones,))[1]
    reverse = jax.vmap(jax.grad(f))(x)
    expected = jax.vmap(jax.grad(reference))(x)
    np.testing.assert_allclose(np.asarray(forward), np.asarray(expected), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(reverse), np.asarray(expected), rtol=1e-6, atol=1e-6)
    # Second derivatives (a Hessian-vector product through the model) still work.
    second = jax.vmap(jax.grad(jax.grad(f)))(x)
    expected2 = jax.vmap(jax.grad(jax.grad(reference)))(x)
    np.testing.assert_allclose(np.asarray(second), np.asarray(expected2), rtol=1e-4, atol=1e-5)


def test_gelu_leaves_one_residual_for_the_backward_pass():
    """What makes the training step lighter: one activation-sized array saved, not three."""
    x = jnp.ones((64, 256))
    for name in ("gelu", "gelu_new"):
        _, vjp = jax.vjp(ACTIVATIONS[name], x)
        leaves = jax.tree_util.tree_leaves(vjp)
        saved = [leaf for leaf in leaves if getattr(leaf, "shape", ()) == x.shape]
        assert len(saved) == 1, (name, len(saved))
