import os

# Two cores, many small programs: keep XLA from oversubscribing and tests deterministic.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import jax
import jax.random as jr
import pytest

# Our code runs under strict dtype and rank promotion (HF Flax code does not: see
# `hf_reference.lenient_jax`).
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def getkey():
    """A fresh PRNG key per call, from a per-test seed."""
    keys = iter(jr.split(jr.PRNGKey(0), 1000))
    return lambda: next(keys)
