"""`jit_options`: on XLA:CPU every dot is compiled as its own YNNPACK call, values unchanged."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import eqx_bigbird as eb
from eqx_bigbird import _compile
from eqx_bigbird.training import TrainState, make_train_step


def layer_norm_then_dot(x, gamma, beta, w):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return ((x - mean) * jax.lax.rsqrt(var + 1e-5) * gamma[None] + beta[None]) @ w


def ynn_fusion_bodies(hlo: str) -> list[list[str]]:
    """The opcodes (parameters left out) of every computation a `__ynn_fusion` calls."""
    bodies, opcodes, name = {}, None, None
    for line in hlo.splitlines():
        if m := re.match(r"\s*%?([\w.-]+) \(.*\{$", line):
            name, opcodes = m.group(1), []
        elif line.strip() == "}" and name is not None:
            bodies[name], name = opcodes, None
        elif name is not None and (m := re.search(r"= \S+ (\w[\w-]*)\(", line)):
            if m.group(1) != "parameter":
                opcodes.append(m.group(1))
    called = re.findall(r"calls=%?([\w.-]+),.*\"kind\":\"__ynn_fusion\"", hlo)
    return [bodies[c] for c in called]


def test_options_on_this_cpu_jaxlib():
    assert jax.default_backend() == "cpu"
    assert eb.jit_options() == {"compiler_options": _compile.CPU_OPTIONS}


def test_layer_norm_is_not_fused_into_the_dot_and_values_are_unchanged():
    rng = np.random.default_rng(0)
    args = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in [(96, 64), (64,), (64,),
                                                                      (64, 128)]]
    compiled = jax.jit(layer_norm_then_dot, **eb.jit_options()).lower(*args).compile()
    bodies = ynn_fusion_bodies(compiled.as_text())
    assert bodies, "no YNNPACK call at all: the dot left YNNPACK"
    assert all(body == ["dot"] for body in bodies), bodies
    default = jax.jit(layer_norm_then_dot)(*args)
    np.testing.assert_allclose(compiled(*args), default, atol=1e-5, rtol=0)


def test_an_option_this_jaxlib_does_not_know_means_no_options(monkeypatch):
    monkeypatch.setattr(_compile, "CPU_OPTIONS", {"xla_cpu_no_such_option": "1"})
    _compile._supported.cache_clear()
    try:
        assert eb.jit_options() == {}
    finally:
        monkeypatch.undo()
        _compile._supported.cache_clear()
    assert eb.jit_options()


def test_generate_takes_the_options_only_where_its_jit_is_the_outermost():
    seen = []
    jax.jit(lambda x: seen.append(_compile.at_top_level()) or x)(1.0)
    jax.vmap(lambda x: seen.append(_compile.at_top_level()) or x)(jnp.ones(2))
    assert _compile.at_top_level() and seen == [False, False]
    # A tiny causal model: eagerly, and nested in a jit, vmap and eval_shape (where JAX would
    # reject compiler options), the same tokens.
    config = eb.BigBirdConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                              num_attention_heads=2, intermediate_size=32, is_decoder=True,
                              attention_type="original_full", max_position_embeddings=32)
    model = eb.BigBirdForCausalLM(config, key=jax.random.PRNGKey(0))
    prompt = jnp.arange(3, 8)
    run = lambda ids: eb.generate(model, ids, max_new_tokens=6, eos_token_id=None)  # noqa: E731
    eager = run(prompt)
    np.testing.assert_array_equal(jax.jit(run)(prompt), eager)
    np.testing.assert_array_equal(jax.vmap(run)(prompt[None])[0], eager)
    assert jax.eval_shape(run, prompt).shape == eager.shape


def test_outermost_jit_applies_the_options_at_top_level_only(monkeypatch):
    # An option XLA rejects makes the options visible: the compile fails exactly where they apply.
    bad = {"compiler_options": {"xla_cpu_no_such_option": "1"}}
    monkeypatch.setattr(_compile, "jit_options", lambda: bad)
    double = _compile.outermost_jit(lambda x: 2 * x)
    assert float(jax.jit(double)(1.0)) == 2.0
    np.testing.assert_array_equal(jax.vmap(double)(jnp.ones(2)), [2.0, 2.0])
    with pytest.raises((TypeError, RuntimeError)):
        double(1.0)


def test_train_step_at_top_level_and_inside_a_jit_agree():
    """`make_train_step` compiles with `jit_options()` on its own and without them inside a
    user's jit (where JAX refuses compiler options); both give the same update."""
    config = eb.BigBirdConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=32, block_size=4,
                              num_random_blocks=1, max_position_embeddings=64)
    model = eqx.nn.inference_mode(eb.BigBirdForMaskedLM(config, key=jr.PRNGKey(0)), False)
    optimizer = optax.adam(1e-2)

    def loss_fn(model, batch, *, key):
        logits = jax.vmap(lambda ids, k: model(ids, key=k).logits)(
            batch["ids"], jr.split(key, batch["ids"].shape[0])
        )
        return eb.masked_lm_loss(logits, batch["ids"])

    batch = {"ids": jnp.asarray(np.random.default_rng(0).integers(5, 60, (2, 48)), jnp.int32)}
    step = make_train_step(loss_fn, optimizer, donate=False)
    top, metrics = step(TrainState.create(model, optimizer), batch, jr.PRNGKey(1))
    nested, nested_metrics = eqx.filter_jit(step)(TrainState.create(model, optimizer), batch,
                                                  jr.PRNGKey(1))
    np.testing.assert_allclose(metrics["loss"], nested_metrics["loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(eqx.filter(top.model, eqx.is_array)),
                    jax.tree.leaves(eqx.filter(nested.model, eqx.is_array))):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
