"""Our format with a bad header: each problem named in one line, nothing else read (issue 13)."""

import json

import jax.random as jr
import pytest

import eqx_bigbird as eb
from eqx_bigbird._hf_read import read_safetensors, safetensors_metadata
from eqx_bigbird._io import write_safetensors

TINY = {
    "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 32, "max_position_embeddings": 64, "attention_type": "original_full",
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ours")
    return eb.save(folder / "m.safetensors", eb.BigBirdModel(eb.BigBirdConfig(**TINY),
                                                             key=jr.PRNGKey(0)))


def _with_header(saved, tmp_path, **changes):
    meta = {**safetensors_metadata(saved), **changes}
    meta = {k: v for k, v in meta.items() if v is not None}
    state = read_safetensors(saved)
    file = tmp_path / "edited.safetensors"
    write_safetensors(file, [(k, state[k]) for k in state], meta)
    return file


@pytest.mark.parametrize("changes, expect", [
    ({"format_version": "one"}, "format_version 'one', this eqx-bigbird reads 1"),
    ({"format_version": "2"}, "format_version '2', this eqx-bigbird reads 1"),
    ({"init_kwargs": json.dumps({"teleport": True})},
     r"init_kwargs \['teleport'\] are not options of BigBirdModel"),
    ({"init_kwargs": json.dumps({"scan_layers": "yes"})}, "bad init_kwargs in header"),
    ({"init_kwargs": json.dumps([1])}, "header init_kwargs must be a JSON object"),
    ({"config": json.dumps("/etc/hostname")}, "header config must be a JSON object, got str"),
    ({"config": json.dumps({**eb.BigBirdConfig(**TINY).to_hf(), "is_decoder": "no"})},
     "bad config in header: BigBirdConfig.is_decoder='no'"),
    ({"config": None}, "eqx-bigbird header lacks 'config'"),
    ({"inference": "maybe"}, "corrupt eqx-bigbird header"),
])
def test_bad_headers(saved, tmp_path, changes, expect):
    file = _with_header(saved, tmp_path, **changes)
    with pytest.raises(eb.CheckpointError, match=rf"edited\.safetensors: {expect}"):
        eb.load(file)


def test_a_directory_without_our_file_says_so(tmp_path):
    hf = tmp_path / "hf"
    eb.save_pretrained(eb.BigBirdModel(eb.BigBirdConfig(**TINY), key=jr.PRNGKey(0)), hf)
    with pytest.raises(eb.CheckpointError, match=r"hf: a directory without "
                                                 r"eqx_bigbird\.safetensors; it looks like an HF"):
        eb.load(hf)


def test_our_file_where_an_hf_checkpoint_belongs(saved, capsys):
    from eqx_bigbird.cli import main

    with pytest.raises(eb.CheckpointError, match=r"m\.safetensors is an eqx-bigbird checkpoint, "
                                                 r"not an HF one: load it with eqx_bigbird\.load"):
        eb.BigBirdModel.from_pretrained(saved)
    assert main(["convert", saved, saved + ".out", "-q"]) == 1
    assert "is an eqx-bigbird checkpoint, not an HF one" in capsys.readouterr().err


def test_from_bert_config_that_is_not_an_object(tmp_path):
    (tmp_path / "config.json").write_text('["bert"]')
    write_safetensors(tmp_path / "model.safetensors", {})
    with pytest.raises(eb.CheckpointError, match=r"config\.json: expected a JSON object"):
        eb.from_bert(tmp_path)
