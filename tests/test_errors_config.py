"""Bad `config.json` files: every field type-checked on load, naming the field and the file; files
that are not JSON, not UTF-8 or not an object named as such (issue 13)."""

import dataclasses
import json
import typing

import pytest

import eqx_bigbird as eb
from eqx_bigbird._io import write_safetensors

TINY = {"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 32}


def _write(tmp_path, raw) -> str:
    path = tmp_path / "config.json"
    path.write_bytes(raw if isinstance(raw, bytes) else json.dumps(raw).encode())
    return str(path)


def _hf(**changes) -> dict:
    return {**eb.BigBirdConfig(**TINY).to_hf(), **changes}


@pytest.mark.parametrize("field, value", [
    ("is_decoder", "false"), ("use_bias", "no"), ("add_cross_attention", 0),
    ("tie_word_embeddings", "true"), ("rescale_embeddings", None),
    ("layer_norm_eps", "1e-12"), ("hidden_size", "16"), ("vocab_size", 50.0),
    ("hidden_dropout_prob", "0.1"), ("initializer_range", True), ("block_size", [64]),
    ("pad_token_id", "0"), ("classifier_dropout", "0.1"), ("attention_type", 1),
    ("hidden_act", None), ("architectures", "BigBirdForMaskedLM"), ("chunk_size_feed_forward", 0.5),
])
def test_a_value_of_the_wrong_type_names_field_and_file(tmp_path, field, value):
    path = _write(tmp_path, _hf(**{field: value}))
    with pytest.raises(ValueError, match=rf"config\.json: BigBirdConfig\.{field}=.*must be"):
        eb.BigBirdConfig.from_hf(path)


def _wrong_value(tp):
    """A JSON value that the annotation `tp` does not admit."""
    args = typing.get_args(tp)
    takes_str = tp is str or str in args or typing.get_origin(tp) is typing.Literal
    return 12345 if takes_str else "1"


@pytest.mark.parametrize("field", [f for f in dataclasses.fields(eb.BigBirdConfig)
                                   if f.name not in ("id2label", "extra")], ids=lambda f: f.name)
def test_every_field_is_type_checked(field):
    """Derived from the dataclass itself, so a new field is covered without touching this test."""
    with pytest.raises(ValueError, match=rf"BigBirdConfig\.{field.name}="):
        eb.BigBirdConfig(**{**TINY, field.name: _wrong_value(field.type)})


def test_non_finite_floats_are_refused(tmp_path):
    for field in ("layer_norm_eps", "initializer_range"):
        for value in (float("nan"), float("inf")):
            path = _write(tmp_path, _hf(**{field: value}))
            with pytest.raises(ValueError, match=rf"{field}=.*must be finite"):
                eb.BigBirdConfig.from_hf(path)


@pytest.mark.parametrize("raw, expect", [
    (b"\xff\xfe{}", "not UTF-8"),
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object, not a list"),
])
def test_unreadable_files_are_named(tmp_path, raw, expect):
    _write(tmp_path, raw)
    with pytest.raises(ValueError, match=rf"config\.json: {expect}"):
        eb.BigBirdConfig.from_hf(tmp_path)  # a directory holding it
    write_safetensors(tmp_path / "model.safetensors", {})  # the config is read first
    with pytest.raises(eb.CheckpointError, match=rf"config\.json: {expect}"):
        eb.BigBirdModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("changes, expect", [
    ({"id2label": ["a", "b"]}, "id2label must be a JSON object, not list"),
    ({"num_labels": "2"}, "num_labels='2' must be a positive integer"),
    ({"label2id": {"LABEL_0": "0", "LABEL_1": "1"}}, "label2id values must be integers"),
    ({"id2label": {"zero": "a"}}, "id2label keys must be integers"),
    ({"id2label": {"0": 1, "1": 2}}, "id2label values must be label names"),
])
def test_label_fields(tmp_path, changes, expect):
    with pytest.raises(ValueError, match=rf"config\.json: .*{expect}"):
        eb.BigBirdConfig.from_hf(_write(tmp_path, _hf(**changes)))


def test_valid_configs_still_round_trip(tmp_path):
    config = eb.BigBirdConfig(**TINY, classifier_dropout=0.2, pad_token_id=None,
                              architectures=("BigBirdForMaskedLM",)).replace(num_labels=3)
    assert eb.BigBirdConfig.from_hf(_write(tmp_path, config.to_hf())) == config
    # JSON writes an integral float as an int: a float field takes it.
    assert eb.BigBirdConfig.from_hf(_hf(layer_norm_eps=1)).layer_norm_eps == 1
