import dataclasses
import json

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from eqx_bigbird import BigBirdConfig


def test_defaults_match_hf():
    transformers = pytest.importorskip("transformers")
    ours = BigBirdConfig()
    hf = transformers.BigBirdConfig()
    for f in dataclasses.fields(ours):
        if f.name in ("id2label", "architectures", "extra"):
            continue
        assert getattr(ours, f.name) == getattr(hf, f.name), f.name
    assert ours.num_labels == hf.num_labels
    assert dict(enumerate(ours.id2label)) == hf.id2label


def test_roundtrip_hf_config_json(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.BigBirdConfig(
        hidden_size=48, num_attention_heads=3, attention_type="original_full", block_size=16,
        num_random_blocks=2, use_bias=False, rescale_embeddings=True, hidden_act="gelu_fast",
        is_decoder=True, add_cross_attention=True, num_labels=3, problem_type="regression",
        architectures=["BigBirdForMaskedLM"], classifier_dropout=0.2, sep_token_id=5,
    )
    hf.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    ours = BigBirdConfig.from_hf(tmp_path)
    assert ours.to_hf() == written
    assert ours.num_labels == 3 and ours.is_decoder and not ours.use_bias
    # ... and HF reads what we write.
    ours.save(tmp_path / "ours.json")
    again = transformers.BigBirdConfig.from_json_file(tmp_path / "ours.json")
    assert again.to_dict() == hf.to_dict()
    assert hash(ours) == hash(BigBirdConfig.from_hf(written))


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("hidden_size", 50, "hidden_size=50: must be divisible by num_attention_heads=12"),
        ("hidden_act", "gelu_newest", "hidden_act='gelu_newest': unknown activation"),
        ("hidden_act", "prelu", "learnable parameters"),
        ("attention_type", "sparse", "attention_type='sparse'"),
        ("block_size", 0, "block_size=0"),
        ("num_random_blocks", -1, "num_random_blocks=-1"),
        ("hidden_dropout_prob", 1.0, "hidden_dropout_prob"),
        ("layer_norm_eps", 0.0, "layer_norm_eps"),
        ("sep_token_id", -1, "sep_token_id"),
        ("vocab_size", 2.5, "vocab_size"),
        ("problem_type", "ranking", "problem_type"),
    ],
)
def test_invalid_configs_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        BigBirdConfig(**{field: value})


def test_unknown_keys():
    with pytest.raises(ValueError, match="unknown BigBird config key"):
        BigBirdConfig.from_hf({"hidden_size": 768, "moe_experts": 8})
    with pytest.warns(UserWarning, match="moe_experts"):
        cfg = BigBirdConfig.from_hf({"moe_experts": 8}, strict=False)
    assert cfg.to_hf()["moe_experts"] == 8
    with pytest.raises(ValueError, match="model_type='bert'.*from_bert"):
        BigBirdConfig.from_hf({"model_type": "bert"})
    with pytest.raises(ValueError, match="pruned_heads"):
        BigBirdConfig.from_hf({"pruned_heads": {"0": [1]}})


@settings(max_examples=50, deadline=None)
@given(
    heads=st.integers(1, 8),
    head_dim=st.integers(1, 16),
    block_size=st.integers(1, 128),
    r=st.integers(0, 6),
    act=st.sampled_from(["gelu", "gelu_new", "relu", "silu", "tanh", "gelu_fast", "quick_gelu"]),
    labels=st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=4, unique=True),
    attention_type=st.sampled_from(["block_sparse", "original_full"]),
)
def test_roundtrip_property(heads, head_dim, block_size, r, act, labels, attention_type):
    cfg = BigBirdConfig(
        hidden_size=heads * head_dim, num_attention_heads=heads, block_size=block_size,
        num_random_blocks=r, hidden_act=act, id2label=tuple(labels),
        attention_type=attention_type,
    )
    assert BigBirdConfig.from_hf(json.loads(json.dumps(cfg.to_hf()))) == cfg
