"""Builds HF BigBird reference models (PyTorch and Flax) with seeded random weights, saved with
`save_pretrained` into a folder that our loader reads. Imported only by tests."""

import contextlib
import functools
import os
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("flax")

TINY = dict(
    vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=37, max_position_embeddings=512, type_vocab_size=3, block_size=4,
    num_random_blocks=2, hidden_act="gelu_new",
)

_ROOT = tempfile.mkdtemp(prefix="eqx-bigbird-hf-")


@contextlib.contextmanager
def lenient_jax():
    """HF Flax relies on implicit dtype and rank promotion, which our tests otherwise forbid."""
    import jax

    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


def hf_config(**overrides):
    return transformers.BigBirdConfig(**{**TINY, **overrides})


def _perturb_torch(model, seed):
    # HF's init leaves biases at 0 and LayerNorm at 1: a swapped bias or norm would go unnoticed.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


@functools.cache
def pytorch_model(cls_name="BigBirdModel", seed=0, **overrides):
    """(model in eval mode, directory) for an HF PyTorch class with seeded random weights."""
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(hf_config(**overrides)).eval()
    _perturb_torch(model, seed)
    path = os.path.join(_ROOT, f"pt-{cls_name}-{seed}-{sorted(overrides.items())}")
    model.save_pretrained(path, safe_serialization=True)
    return model, path


@functools.cache
def flax_model(cls_name="FlaxBigBirdModel", seed=0, **overrides):
    """(model, directory) for an HF Flax class with its own seeded random weights."""
    import jax

    config = hf_config(**overrides)
    with lenient_jax():
        model = getattr(transformers, cls_name)(config, seed=seed)
    leaves, treedef = jax.tree_util.tree_flatten(model.params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    model.params = jax.tree_util.tree_unflatten(
        treedef,
        [x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)],
    )
    path = os.path.join(_ROOT, f"fx-{cls_name}-{seed}-{sorted(overrides.items())}")
    model.save_pretrained(path)
    return model, path


def call_flax(model, *args, **kwargs):
    with lenient_jax():
        return model(*args, **kwargs)


def run_pytorch(model, input_ids, attention_mask, token_type_ids, **kwargs):
    """Runs a PT BigBird on a numpy batch; undoes HF's permanent switch to full attention."""
    base = getattr(model, "bert", model)
    base.set_attention_type(base.config.attention_type)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(np.asarray(input_ids, np.int64)),
            attention_mask=torch.tensor(np.asarray(attention_mask, np.int64)),
            token_type_ids=torch.tensor(np.asarray(token_type_ids, np.int64)),
            **kwargs,
        )
    base.set_attention_type(base.config.attention_type)
    return out


def leaves_equal(a, b):
    """Asserts the same number of leaves, array leaves equal bit for bit and in dtype, the
    others equal."""
    import equinox as eqx
    import jax

    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        if eqx.is_array(x):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        else:
            assert x == y


def numpy(x):
    return x.detach().numpy() if hasattr(x, "detach") else np.asarray(x)
