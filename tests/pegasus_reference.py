"""HF PyTorch BigBird-Pegasus reference models with seeded random weights, saved with
`save_pretrained` into folders our loader reads. Imported only by tests."""

import functools
import os
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# 2 + 2 layers, d 32, 4 heads, block 8 with 2 random blocks: block-sparse needs more than
# (5 + 2 * 2) * 8 = 72 tokens; max_pos 1024 reaches HF's "old plan" length.
TINY = dict(
    vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=37,
    decoder_ffn_dim=37, encoder_attention_heads=4, decoder_attention_heads=4,
    max_position_embeddings=1024, block_size=8, num_random_blocks=2,
)
FALLBACK_EDGE = 72
_ROOT = tempfile.mkdtemp(prefix="eqx-bigbird-pegasus-")


def hf_config(**overrides):
    return transformers.BigBirdPegasusConfig(**{**TINY, **overrides})


def _perturb(model, seed):
    # HF's init leaves biases, LayerNorms and final_logits_bias trivial: a swapped bias or norm
    # would go unnoticed.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.add_(torch.randn(model.final_logits_bias.shape, generator=gen))


def build_model(cls_name, seed=0, **overrides):
    """An HF class in eval mode with seeded, perturbed random weights (a fresh one per call)."""
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(hf_config(**overrides)).eval()
    _perturb(model, seed)
    return model


@functools.cache
def pytorch_model(cls_name, seed=0, **overrides):
    """(model in eval mode, directory) for an HF class with seeded, perturbed random weights,
    saved with `save_pretrained`; cached, so not to be modified."""
    model = build_model(cls_name, seed, **overrides)
    path = os.path.join(_ROOT, f"{cls_name}-{seed}-{sorted(overrides.items())}")
    model.save_pretrained(path, safe_serialization=True)
    return model, path


def reset_attention(model):
    """Undoes HF's permanent switch to full attention after a short input."""
    encoder = getattr(getattr(model, "model", model), "encoder", None)
    if encoder is not None:
        encoder.set_attention_type(model.config.attention_type)


def run_hf(model, *args, **kwargs):
    reset_attention(model)
    tensors = [None if a is None else torch.as_tensor(np.asarray(a)) for a in args]
    kwargs = {
        k: torch.as_tensor(np.asarray(v)) if isinstance(v, np.ndarray) else v
        for k, v in kwargs.items()
    }
    with torch.no_grad():
        return model(*tensors, **kwargs)


def numpy(x):
    return x.detach().numpy() if hasattr(x, "detach") else np.asarray(x)


def make_inputs(length, seed, batch=2, dec_len=9, vocab=99):
    """ids (no special tokens but one eos at the end), a right-padded + holes mask, decoder ids."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, (batch, length))
    ids[:, -1] = 1
    mask = np.ones((batch, length), np.int64)
    if batch > 1:
        mask[1, length - max(1, length // 4):] = 0
        holes = rng.random(length) < 0.3
        holes[0] = False
        mask[1, holes] = 0
    dec = rng.integers(3, vocab, (batch, dec_len))
    dec[:, 0] = 2
    return ids, mask, dec
