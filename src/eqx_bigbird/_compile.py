"""Compiler options for the programs we compile ourselves (`generate`, the training step,
`eqx-bigbird summarize`)."""

import functools

import equinox as eqx
import jax

try:  # private, but the one test JAX has; without it no options (slower, never an error)
    from jax._src.core import trace_state_clean as _trace_state_clean
except ImportError:
    _trace_state_clean = None

# XLA:CPU (jaxlib 0.10) fuses a LayerNorm into the YNNPACK dot that reads it; with the weight a
# runtime argument the fused dot runs 2-4x slower than the two apart, which costs the pre-LN
# Pegasus stacks most (`python -m benchmarks.ynn_fusion`). The MLM loss's vocabulary dot fused
# with its log-softmax max is 3x slower too. Dots stay YNNPACK calls of their own.
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def _supported() -> bool:
    if jax.default_backend() != "cpu":
        return False
    try:  # a jaxlib without the option (older, or one that dropped it) rejects it by name
        jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(1.0).compile()
    except (TypeError, RuntimeError):
        return False
    return True


def jit_options() -> dict:
    """Keyword arguments for `jax.jit` / `eqx.filter_jit` that `generate` and `make_train_step`
    compile with: on XLA:CPU, every dot its own YNNPACK call, so no LayerNorm is fused into it
    (2-4x faster projections after a LayerNorm; the BigBird-Pegasus encoder at 4096 tokens
    1.3-1.4x) and no reduction into the MLM loss's vocabulary dot; elsewhere,
    or where this jaxlib lacks the option, `{}`. JAX takes compiler options on the outermost jit
    only: pass them to your own jit of a model call, a training step, or a function that calls
    `generate` (under `jax.vmap`, say): `eqx.filter_jit(fn, **eqx_bigbird.jit_options())`. The
    first call starts JAX's backend.
    """
    return {"compiler_options": dict(CPU_OPTIONS)} if _supported() else {}


def at_top_level() -> bool:
    """Whether no JAX transformation is tracing now, so a jit here is the outermost one."""
    return _trace_state_clean is not None and _trace_state_clean()


def outermost_jit(fn, **jit_kwargs):
    """`eqx.filter_jit(fn, **jit_kwargs)` that compiles with `jit_options()` when called outside
    any JAX transformation (JAX takes compiler options on the outermost jit only) and without
    them inside one (a user's own jit, vmap or scan around it)."""
    plain = eqx.filter_jit(fn, **jit_kwargs)

    @functools.cache
    def tuned():  # lazily: the options need JAX's backend
        return eqx.filter_jit(fn, **jit_kwargs, **jit_options())

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return (tuned() if at_top_level() else plain)(*args, **kwargs)

    return call
