"""A train step that raises on a bad batch leaves the caller's state usable, donation on (issue
13)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
import pytest

import eqx_bigbird as eb
from eqx_bigbird.training import TrainState, make_train_step

TINY = {
    "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
    "intermediate_size": 32, "max_position_embeddings": 32, "attention_type": "original_full",
}


def loss_fn(model, batch, *, key):
    keys = jr.split(key, batch["ids"].shape[0])
    logits = jax.vmap(lambda ids, k: model(ids, key=k).logits)(batch["ids"], keys)
    return eb.sequence_classification_loss(logits, batch["label"])


def test_bad_batch_with_donation_leaves_the_state_usable(tmp_path):
    config = eb.BigBirdConfig(**TINY).replace(num_labels=3)
    model = eb.BigBirdForSequenceClassification(config, key=jr.PRNGKey(0))
    optimizer = optax.adam(1e-3)
    state = TrainState.create(model, optimizer)
    step = make_train_step(loss_fn, optimizer)  # donate=True
    good = {"ids": jnp.ones((2, 8), jnp.int32), "label": jnp.array([0, 2], jnp.int32)}
    bad_ids = {**good, "ids": good["ids"].at[1, 3].set(50)}
    bad_labels = {**good, "label": jnp.array([0, 3], jnp.int32)}
    for bad, message in ((bad_ids, "input_ids has values outside"),
                         (bad_labels, r"labels must lie in \[0, 3\)")):
        with pytest.raises(eqx.EquinoxRuntimeError, match=message):
            step(state, bad, jr.PRNGKey(1))
        leaves = jax.tree_util.tree_leaves(eqx.filter(state, eqx.is_array))
        assert not any(x.is_deleted() for x in leaves)
    eb.save(tmp_path / "state.safetensors", state.model)  # still savable
    new, metrics = step(state, good, jr.PRNGKey(2))  # and continues
    assert int(new.step) == 1 and bool(jnp.isfinite(metrics["loss"]))
    assert state.model.classifier.out_proj.weight.is_deleted()  # donated once a step succeeds

