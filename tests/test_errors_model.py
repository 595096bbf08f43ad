"""Bad inputs to a model call: a clear error naming the input, eagerly and under jit; never a
silent wrong answer (issue 13)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eqx_bigbird as eb
from eqx_bigbird.cli.main import runtime_message

TINY = {
    "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 32, "max_position_embeddings": 64, "attention_type": "original_full",
}
IDS = np.array([1, 2, 7, 3, 9, 4], np.int64)


@pytest.fixture(scope="module")
def model():
    return eqx.nn.inference_mode(eb.BigBirdModel(eb.BigBirdConfig(**TINY), key=jr.PRNGKey(0)))


@pytest.fixture(scope="module")
def mlm():
    return eqx.nn.inference_mode(
        eb.BigBirdForMaskedLM(eb.BigBirdConfig(**TINY), key=jr.PRNGKey(1))
    )


def test_int64_ids_above_2_pow_31_are_refused_not_wrapped(model):
    wrapped = IDS.copy()
    wrapped[2] = 2**32 + 7  # int32 would read it as 7
    with pytest.raises(ValueError, match=r"input_ids has values outside \[0, 50\).*4294967303"):
        model(wrapped)
    for name in ("token_type_ids", "position_ids"):
        with pytest.raises(ValueError, match=name):
            model(IDS, **{name: np.full(6, 2**32, np.int64)})


@pytest.mark.parametrize("bad", [2, -1, 3])
def test_attention_mask_other_than_0_1_is_refused(model, bad):
    mask = np.array([1, 1, bad, 1, 0, 1])
    with pytest.raises(ValueError, match="attention_mask must hold only 0 and 1"):
        model(IDS, mask)
    with pytest.raises(eqx.EquinoxRuntimeError, match="attention_mask must hold only 0 and 1"):
        eqx.filter_jit(lambda m, x, k: m(x, k))(model, jnp.asarray(IDS, jnp.int32), mask)


def test_bool_and_0_1_masks_agree(model):
    ints = np.array([1, 1, 0, 1, 0, 1])
    a = model(IDS, ints).last_hidden_state
    b = model(IDS, ints.astype(bool)).last_hidden_state
    np.testing.assert_array_equal(a, b)


def test_out_of_range_ids_under_plain_jit_carry_one_clear_line(model):
    """Under `jax.jit` JAX wraps the check's message in pages of callback text; it is there on
    one line, and the CLI prints only that line."""
    run = jax.jit(lambda x: model(x).last_hidden_state)
    with pytest.raises(jax.errors.JaxRuntimeError) as info:
        run(jnp.array([1, 2, 50, 3], jnp.int32))
    line = "input_ids has values outside [0, 50) (vocab_size=50)"
    assert any(x.endswith(f"EquinoxRuntimeError: {line}") for x in str(info.value).splitlines())
    assert runtime_message(info.value) == line
    with pytest.raises(eqx.EquinoxRuntimeError) as info:
        eqx.filter_jit(lambda m, x: m(x))(model, jnp.array([1, -2, 3], jnp.int32))
    assert runtime_message(info.value) == line


def test_text_instead_of_ids(model, mlm):
    for m in (model, mlm):
        with pytest.raises(TypeError, match="takes token ids, got a str.*Tokenizer.encode"):
            m("hello")


def test_head_mask_of_the_wrong_shape_names_head_mask(model):
    for shape in [(3,), (2, 3), (3, 2)]:
        with pytest.raises(ValueError, match=r"head_mask has shape .*expected \(layers, heads\)"):
            model(IDS, head_mask=np.ones(shape))
    # The two shapes it takes still work, and agree.
    a = model(IDS, head_mask=np.array([1.0, 0.5])).last_hidden_state
    b = model(IDS, head_mask=np.array([[1.0, 0.5], [1.0, 0.5]])).last_hidden_state
    np.testing.assert_array_equal(a, b)


def test_mlm_positions_out_of_range(mlm):
    with pytest.raises(ValueError, match=r"positions has values outside \[0, 6\)"):
        mlm(IDS, positions=np.array([1, 6]))


@settings(max_examples=15, deadline=None)
@given(ids=st.lists(st.integers(-(2**40), 2**40) | st.integers(0, 49), min_size=1, max_size=8))
def test_any_id_outside_the_vocabulary_raises(model, ids):
    """An int64 id is accepted exactly when it lies in [0, vocab_size)."""
    ids = np.array(ids, np.int64)
    inside = bool(((ids >= 0) & (ids < TINY["vocab_size"])).all())
    if inside:
        assert model(ids).last_hidden_state.shape == (len(ids), 16)
    else:
        with pytest.raises(ValueError, match="input_ids has values outside"):
            model(ids)



def test_random_plan_block_indices_outside_the_sequence():
    """The gather would clamp them: a silent wrong answer."""
    config = eb.BigBirdConfig(**{**TINY, "attention_type": "block_sparse", "block_size": 4,
                                 "num_random_blocks": 1})
    model = eqx.nn.inference_mode(eb.BigBirdModel(config, key=jr.PRNGKey(0)))
    ids = np.arange(32) % 50  # 8 blocks, block-sparse
    plan = np.ones((2, 2, 6, 1), np.int32)
    assert model(ids, random_plan=plan).last_hidden_state.shape == (32, 16)
    for bad in (8, -1):
        plan[1, 0, 3, 0] = bad
        with pytest.raises(ValueError, match=r"random_plan has block indices outside \[0, 8\)"):
            model(ids, random_plan=plan)


def test_encoder_attention_mask_other_than_0_1():
    config = eb.BigBirdConfig(**{**TINY, "is_decoder": True, "add_cross_attention": True})
    decoder = eqx.nn.inference_mode(eb.BigBirdModel(config, key=jr.PRNGKey(0)))
    states = np.zeros((3, 16), np.float32)
    with pytest.raises(ValueError, match="encoder_attention_mask must hold only 0 and 1"):
        decoder(IDS, encoder_hidden_states=states, encoder_attention_mask=np.array([1, 2, 1]))
