"""What the scripts the tests run in subprocesses (tests/*_check.py) share: JAX started with
simulated CPU devices (the count must be set before JAX starts, and must not leak into the other
tests), the parent's strict promotion and runtime type checks, one tiny model and its loss."""

import os


def start(devices: int):
    """Starts JAX with `devices` CPU devices as tests/conftest.py configures the parent process;
    returns `eqx_bigbird` imported under the jaxtyping + beartype hook (as pytest's plugin does)."""
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
        " --xla_cpu_multi_thread_eigen=false"
    )
    import jax
    from jaxtyping import install_import_hook

    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")
    with install_import_hook("eqx_bigbird", "beartype.beartype"):
        import eqx_bigbird
    return eqx_bigbird


# A model whose matrices are big enough to shard (MIN_SIZE) and small enough to step in seconds.
TINY = dict(
    vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=64, max_position_embeddings=128, block_size=8, num_random_blocks=1,
    attention_probs_dropout_prob=0.0, attention_type="original_full",
)
MIN_SIZE = 256


def masked_lm_loss(model, batch, *, key):
    import jax
    import jax.random as jr

    import eqx_bigbird as eb

    keys = jr.split(key, batch["ids"].shape[0])
    logits = jax.vmap(lambda ids, k: model(ids, key=k).logits)(batch["ids"], keys)
    return eb.masked_lm_loss(logits, batch["labels"])
