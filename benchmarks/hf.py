"""HF Flax runs under JAX's standard (implicit) promotion rules."""

import contextlib


@contextlib.contextmanager
def lenient():
    import jax

    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield
