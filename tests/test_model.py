"""Model behaviour that needs no reference: jit/scan/vmap invariance, modes, keys, bad input."""

import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqx_bigbird as eb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = eb.BigBirdConfig(
    vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
    intermediate_size=24, max_position_embeddings=128, block_size=4, num_random_blocks=1,
)  # block-sparse above (5 + 2) * 4 = 28 tokens


def ids_and_mask(length, batch=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (length,) if batch is None else (batch, length)
    ids = rng.integers(0, CONFIG.vocab_size, shape)
    mask = np.ones(shape, np.int32)
    mask[..., length - 3 :] = 0
    return jnp.asarray(ids), jnp.asarray(mask)


@pytest.fixture(scope="module")
def model():
    return eqx.nn.inference_mode(eb.BigBirdModel(CONFIG, key=jr.PRNGKey(0)))


def tree_equal(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("length", [20, 29, 41])
def test_jit_scan_vmap_invariance(model, length):
    ids, mask = ids_and_mask(length)
    eager = model(ids, mask, output_hidden_states=True, output_attentions=True)
    jitted = eqx.filter_jit(
        lambda m, i, a: m(i, a, output_hidden_states=True, output_attentions=True)
    )(model, ids, mask)
    unrolled_model = eqx.nn.inference_mode(
        eb.BigBirdModel(CONFIG, key=jr.PRNGKey(0), scan_layers=False)
    )
    tree_equal(eqx.filter(model, eqx.is_array), eqx.filter(unrolled_model, eqx.is_array))
    unrolled = unrolled_model(ids, mask, output_hidden_states=True, output_attentions=True)
    for other in (jitted, unrolled):
        np.testing.assert_allclose(other.last_hidden_state, eager.last_hidden_state, atol=1e-6)
        np.testing.assert_allclose(other.hidden_states, eager.hidden_states, atol=1e-6)
        np.testing.assert_allclose(other.attentions, eager.attentions, atol=1e-6)
    assert eager.hidden_states.shape == (4, length, 16)
    assert eager.attentions.shape == (3, 2, length, length)

    batch_ids, batch_mask = ids_and_mask(length, batch=3, seed=1)
    batched = jax.vmap(model)(batch_ids, batch_mask)
    for i in range(3):
        one = model(batch_ids[i], batch_mask[i])
        np.testing.assert_allclose(batched.last_hidden_state[i], one.last_hidden_state, atol=1e-6)
        np.testing.assert_allclose(batched.pooler_output[i], one.pooler_output, atol=1e-6)


def test_inference_mode_and_keys():
    train = eb.BigBirdModel(CONFIG, key=jr.PRNGKey(0))
    assert train.inference is False
    ids, mask = ids_and_mask(40)
    with pytest.raises(ValueError, match="needs `key=`"):
        train(ids, mask)
    a = train(ids, mask, key=jr.PRNGKey(1)).last_hidden_state
    b = train(ids, mask, key=jr.PRNGKey(1)).last_hidden_state
    c = train(ids, mask, key=jr.PRNGKey(2)).last_hidden_state
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    frozen = eqx.nn.inference_mode(train)
    assert all(
        m.inference
        for m in jax.tree_util.tree_leaves(frozen, is_leaf=lambda x: hasattr(x, "inference"))
        if hasattr(m, "inference")
    )
    d = frozen(ids, mask).last_hidden_state
    e = frozen(ids, mask, key=jr.PRNGKey(5)).last_hidden_state  # a key changes nothing
    np.testing.assert_array_equal(d, e)
    np.testing.assert_array_equal(train(ids, mask, inference=True).last_hidden_state, d)


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "unsafe_rbg"])
def test_training_takes_a_key_of_any_prng_implementation(impl):
    """`key=jr.key(seed, impl="rbg")` is the cheaper-dropout option (README): dropout masks and
    random plans take a typed key of any implementation, under jit and vmap, and depend on it."""
    model = eb.BigBirdModel(CONFIG, key=jr.PRNGKey(0))
    ids, mask = ids_and_mask(40, batch=2)  # block-sparse: a random plan per layer
    run = eqx.filter_jit(
        lambda m, i, a, k: jax.vmap(lambda i, a, k: m(i, a, key=k).last_hidden_state)(i, a, k)
    )
    keys = jr.split(jr.key(1, impl=impl), 2)
    a = run(model, ids, mask, keys)
    np.testing.assert_array_equal(a, run(model, ids, mask, keys))  # a function of the key
    assert np.isfinite(a).all()
    other = run(model, ids, mask, jr.split(jr.key(2, impl=impl), 2))
    assert not np.allclose(a, other)
    np.testing.assert_allclose(  # inference ignores the key, whatever its kind
        model(ids[0], mask[0], inference=True).last_hidden_state,
        model(ids[0], mask[0], key=keys[0], inference=True).last_hidden_state,
    )


def test_random_attention_only_in_training():
    """Dropout off: training still differs from inference, through the random plan alone."""
    cfg = CONFIG.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = eb.BigBirdModel(cfg, key=jr.PRNGKey(0))
    ids, mask = ids_and_mask(64)
    inf = model(ids, mask, inference=True).last_hidden_state
    t1 = model(ids, mask, key=jr.PRNGKey(1)).last_hidden_state
    t2 = model(ids, mask, key=jr.PRNGKey(2)).last_hidden_state
    assert not np.allclose(inf, t1) and not np.allclose(t1, t2)
    # An explicit all-zero plan in training is HF's eval plan.
    zeros = jnp.zeros((3, 2, 14, 1), jnp.int32)
    t0 = model(ids, mask, random_plan=zeros, key=jr.PRNGKey(1)).last_hidden_state
    np.testing.assert_allclose(t0, inf, atol=1e-6)


def test_new_key_does_not_recompile():
    model = eb.BigBirdModel(CONFIG, key=jr.PRNGKey(0))
    traces = []

    @eqx.filter_jit
    def run(m, ids, key):
        traces.append(None)
        return m(ids, key=key).last_hidden_state

    ids, _ = ids_and_mask(48)
    outs = [run(model, ids, jr.PRNGKey(i)) for i in range(3)]
    assert len(traces) == 1
    assert not np.allclose(outs[0], outs[1])


def test_attention_mask_bool_equals_int(model):
    ids, mask = ids_and_mask(33)
    a = model(ids, mask).last_hidden_state
    b = model(ids, mask.astype(bool)).last_hidden_state
    np.testing.assert_array_equal(a, b)


def test_padding_is_invisible(model):
    """A length that is not a multiple of block_size gives the same real-token outputs as the
    same tokens padded by hand (with mask 0) to a multiple."""
    ids, _ = ids_and_mask(30)
    a = model(ids).last_hidden_state
    padded = jnp.concatenate([ids, jnp.zeros(2, ids.dtype)])
    b = model(padded, jnp.arange(32) < 30).last_hidden_state
    assert a.shape == (30, 16)
    np.testing.assert_allclose(a, b[:30], atol=1e-6)


def test_head_mask_in_block_sparse(model):
    """head_mask scales each head's output: masking head 0 of layer 0 equals zeroing that head's
    slice of the attention output projection."""
    ids, mask = ids_and_mask(48)
    assert model.uses_block_sparse(48)
    ones = model(ids, mask, head_mask=jnp.ones((3, 2))).last_hidden_state
    np.testing.assert_allclose(ones, model(ids, mask).last_hidden_state, atol=1e-6)
    hm = jnp.ones((3, 2)).at[0, 0].set(0.0)
    masked = model(ids, mask, head_mask=hm).last_hidden_state
    w = model.encoder.layers.attention_output.weight  # (layers, out, in); head 0 = in[:8]
    edited = eqx.tree_at(
        lambda m: m.encoder.layers.attention_output.weight, model, w.at[0, :, :8].set(0.0)
    )
    np.testing.assert_allclose(masked, edited(ids, mask).last_hidden_state, atol=1e-5)
    assert not np.allclose(masked, ones)


def test_fallback_to_full_attention_is_per_call(model):
    """At or below (5 + 2r) * block_size tokens a call runs full attention; longer calls after it
    still run block-sparse (HF PyTorch switches the module permanently)."""
    assert not model.uses_block_sparse(28) and model.uses_block_sparse(29)
    full = eqx.nn.inference_mode(
        eb.BigBirdModel(CONFIG.replace(attention_type="original_full"), key=jr.PRNGKey(0))
    )
    ids, mask = ids_and_mask(28)
    np.testing.assert_allclose(
        model(ids, mask).last_hidden_state, full(ids, mask).last_hidden_state, atol=1e-6
    )
    ids, mask = ids_and_mask(64)
    assert not np.allclose(
        model(ids, mask).last_hidden_state, full(ids, mask).last_hidden_state, atol=1e-3
    )


BAD_INPUTS = [
    # (call, message of our own check, the argument a type checker names)
    ("model(ids[None])", "use jax.vmap", "input_ids"),
    ("model(jnp.zeros(129, jnp.int32))",
     "sequence length 129 exceeds max_position_embeddings=128", None),
    ("model(ids, mask[:-1])", "attention_mask has shape", "attention_mask"),
    ("model(ids, mask.astype(jnp.float32))", "attention_mask must be 0/1 ints or bools",
     "attention_mask"),
    ("model(ids.astype(jnp.float32))", "input_ids must hold integers", "input_ids"),
    ("model(ids, random_plan=jnp.zeros((3, 2, 7, 1), jnp.int32))", "random_plan has shape", None),
    ("model(ids[:20], random_plan=jnp.zeros((3, 2, 3, 1), jnp.int32))", "run full attention",
     None),
]


@pytest.mark.parametrize("call,ours,arg", BAD_INPUTS)
def test_bad_input(model, call, ours, arg):
    """Under this suite's jaxtyping + beartype hook, the annotation may catch a bad argument first
    (a TypeError naming it); otherwise our own ValueError explains it."""
    ids, mask = ids_and_mask(40)
    with pytest.raises((ValueError, TypeError)) as info:
        eval(call, {"model": model, "ids": ids, "mask": mask, "jnp": jnp})
    message = str(info.value)
    assert ours in message or (arg is not None and arg in message), message


def test_bad_input_messages_without_type_checker():
    """What a user sees by default (no runtime type checker): our messages."""
    code = f"""
import equinox as eqx, jax.numpy as jnp, jax.random as jr
import eqx_bigbird as eb
from tests.test_model import BAD_INPUTS, CONFIG, ids_and_mask
model = eqx.nn.inference_mode(eb.BigBirdModel(CONFIG, key=jr.PRNGKey(0)))
ids, mask = ids_and_mask(40)
for call, ours, _ in BAD_INPUTS:
    try:
        eval(call, {{"model": model, "ids": ids, "mask": mask, "jnp": jnp}})
    except ValueError as e:
        assert ours in str(e), (call, str(e))
    else:
        raise AssertionError(call)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("jit", [False, True])
def test_token_ids_out_of_range_raise(model, jit):
    call = eqx.filter_jit(lambda m, i, t: m(i, token_type_ids=t)) if jit else (
        lambda m, i, t: m(i, token_type_ids=t)
    )
    ids, _ = ids_and_mask(40)
    types = jnp.zeros(40, jnp.int32)
    with pytest.raises(Exception, match=r"input_ids has values outside \[0, 50\)"):
        jax.block_until_ready(call(model, ids.at[3].set(50), types))
    with pytest.raises(Exception, match=r"input_ids has values outside"):
        jax.block_until_ready(call(model, ids.at[3].set(-1), types))
    with pytest.raises(Exception, match=r"token_type_ids has values outside \[0, 2\)"):
        jax.block_until_ready(call(model, ids, types.at[0].set(2)))


def test_grad_flows(model):
    """Gradients through block-sparse attention are finite and reach every parameter."""
    ids, mask = ids_and_mask(48)

    @eqx.filter_grad
    def grad(m):
        return jnp.sum(m(ids, mask).last_hidden_state ** 2)

    g = grad(model)
    leaves = jax.tree_util.tree_leaves(eqx.filter(g, eqx.is_array))
    assert all(np.isfinite(np.asarray(x)).all() for x in leaves)
    assert np.abs(np.asarray(g.encoder.layers.attention.query.weight)).max() > 0


def test_running_needs_no_torch_flax_or_transformers(tmp_path):
    """Loading and running our models never imports the reference libraries."""
    from safetensors.numpy import save_file

    model = eb.BigBirdModel(CONFIG, key=jr.PRNGKey(0))
    # A checkpoint in HF PyTorch naming, written without HF (the model stacks layers).
    state = {
        "embeddings.word_embeddings.weight": model.embeddings.word_embeddings.weight,
        "embeddings.position_embeddings.weight": model.embeddings.position_embeddings.weight,
        "embeddings.token_type_embeddings.weight": model.embeddings.token_type_embeddings.weight,
        "embeddings.LayerNorm.weight": model.embeddings.layer_norm.weight,
        "embeddings.LayerNorm.bias": model.embeddings.layer_norm.bias,
        "pooler.weight": model.pooler.weight,
        "pooler.bias": model.pooler.bias,
    }
    from eqx_bigbird._hf_names import ENCODER_NAMES

    layers = model.encoder.layers
    for ours, theirs in ENCODER_NAMES.items():
        if not ours.startswith("encoder.layers."):
            continue
        module = layers
        for part in ours.split(".")[2:]:
            module = getattr(module, part)
        for i in range(CONFIG.num_hidden_layers):
            for leaf in ("weight", "bias"):
                # Written the way HF's base class saves: without the `bert.` prefix.
                name = theirs.format(i=i).removeprefix("bert.")
                state[f"{name}.{leaf}"] = getattr(module, leaf)[i]
    save_file({k: np.asarray(v) for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    CONFIG.save(tmp_path / "config.json")
    code = f"""
import sys, numpy as np, jax
import eqx_bigbird as eb
m = eb.BigBirdModel.from_pretrained({str(tmp_path)!r})
out = jax.vmap(m)(np.ones((2, 40), np.int32))
assert out.last_hidden_state.shape == (2, 40, 16)
bad = sorted(k for k in ("torch", "flax", "transformers") if k in sys.modules)
assert not bad, bad
print(float(out.last_hidden_state.sum()))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ref = jax.vmap(eqx.nn.inference_mode(model))(jnp.ones((2, 40), jnp.int32))
    np.testing.assert_allclose(float(result.stdout), float(ref.last_hidden_state.sum()), rtol=1e-5)
