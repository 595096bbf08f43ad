"""Bad HF checkpoints: corrupt safetensors headers, keys the config does not account for, NaN
weights, legacy torch files, non-float dtypes (issue 13). Checkpoints are our own exports of tiny
random models (HF's layout), edited here."""

import json
import os
import shutil

import jax.numpy as jnp
import jax.random as jr
import ml_dtypes
import numpy as np
import pytest

import eqx_bigbird as eb
from eqx_bigbird._hf_read import read_safetensors
from eqx_bigbird._io import write_safetensors

TINY = {
    "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2,
    "intermediate_size": 32, "max_position_embeddings": 64, "attention_type": "original_full",
}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """HF directories of a 3-layer BigBirdForPreTraining and BigBirdForMaskedLM."""
    root = tmp_path_factory.mktemp("hf")
    config = eb.BigBirdConfig(**TINY)
    dirs = {}
    for cls in (eb.BigBirdForPreTraining, eb.BigBirdForMaskedLM):
        dirs[cls.__name__] = root / cls.__name__
        eb.save_pretrained(cls(config, key=jr.PRNGKey(0)), dirs[cls.__name__])
    return dirs


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _header(file):
    with open(file, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write_raw(file, header, data):
    raw = json.dumps(header).encode()
    with open(file, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + data)


def _edit_tensors(folder, edit):
    """Rewrites folder/model.safetensors with `edit(dict of arrays)` (metadata kept)."""
    file = folder / "model.safetensors"
    state = read_safetensors(str(file))
    arrays = {k: np.array(state[k]) for k in state}
    edit(arrays)
    write_safetensors(file, arrays, _header(file)[0].get("__metadata__"))


def _edit_offsets(header, edit):
    names = sorted((k for k in header if k != "__metadata__"),
                   key=lambda k: header[k]["data_offsets"][0])
    edit(header, names)
    return header


@pytest.mark.parametrize("kind", ["negative", "overlap", "gap", "duplicate"])
def test_safetensors_headers_the_library_rejects(tmp_path, hf_dirs, kind):
    """Each header once loaded wrong values (and `convert` re-saved them with exit code 0)."""
    folder = _copy(hf_dirs["BigBirdForMaskedLM"], tmp_path / kind)
    file = folder / "model.safetensors"
    header, data = _header(file)

    def edit(h, names):
        a, b = h[names[1]], h[names[2]]
        if kind == "negative":  # the first tensor's range moved 4 bytes into the header
            first = h[names[0]]
            first["data_offsets"] = [first["data_offsets"][0] - 4, first["data_offsets"][1] - 4]
        elif kind == "overlap":  # b starts inside a, same size
            size = b["data_offsets"][1] - b["data_offsets"][0]
            b["data_offsets"] = [b["data_offsets"][0] - 4, b["data_offsets"][0] - 4 + size]
        elif kind == "gap":  # a hole before b
            size = b["data_offsets"][1] - b["data_offsets"][0]
            b["data_offsets"] = [b["data_offsets"][0] + 4, b["data_offsets"][0] + 4 + size]
        else:  # two tensors share bytes
            b.update(dtype=a["dtype"], shape=a["shape"], data_offsets=a["data_offsets"])

    _write_raw(file, _edit_offsets(header, edit), data + b"\0" * 8)
    with pytest.raises(eb.CheckpointError, match=rf"{kind}/model\.safetensors: .*safetensors"):
        eb.BigBirdForMaskedLM.from_pretrained(folder)


def test_bfloat16_still_reads_lazily(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4).astype(ml_dtypes.bfloat16)
    write_safetensors(tmp_path / "x.safetensors", {"a": a, "b": np.ones(2, np.float32)})
    state = read_safetensors(str(tmp_path / "x.safetensors"))
    assert state.shape("a") == (3, 4) and state["a"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(state["a"].astype(np.float32), a.astype(np.float32))


def test_more_layers_than_the_config_is_an_error(tmp_path, hf_dirs):
    folder = _copy(hf_dirs["BigBirdForMaskedLM"], tmp_path / "deep")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    with pytest.raises(
        eb.CheckpointError, match=r"num_hidden_layers=2.*bert\.encoder\.layer\.2\.attention"
    ):
        eb.BigBirdForMaskedLM.from_pretrained(folder)
    with pytest.raises(eb.CheckpointError, match=r"bert\.encoder\.layer\.2\."):
        # The encoder's layers belong to every class.
        eb.BigBirdModel.from_pretrained(folder, add_pooling_layer=False)


@pytest.mark.parametrize("extra", ["bert.embeddings.extra.weight",
                                   "bert.encoder.layer.0.attention.self.query.scale",
                                   "cls.predictions.transform.dense.scale"])
def test_extra_tensors_of_the_loaded_class_are_an_error(tmp_path, hf_dirs, extra):
    folder = _copy(hf_dirs["BigBirdForMaskedLM"], tmp_path / "extra")
    _edit_tensors(folder, lambda arrays: arrays.update({extra: np.zeros(3, np.float32)}))
    with pytest.raises(eb.CheckpointError, match=rf"not use.*{extra.replace('.', '[.]')}"):
        eb.BigBirdForMaskedLM.from_pretrained(folder)


def test_other_heads_keys_are_skipped_and_reported(hf_dirs):
    _, report = eb.BigBirdForMaskedLM.from_pretrained(
        hf_dirs["BigBirdForPreTraining"], return_report=True
    )
    assert report.unused and all(
        k.startswith(("cls.seq_relationship.", "bert.pooler.")) for k in report.unused
    )
    _, report = eb.BigBirdModel.from_pretrained(
        hf_dirs["BigBirdForPreTraining"], return_report=True
    )
    assert report.unused and all(k.startswith("cls.") for k in report.unused)
    assert "unused checkpoint keys" in str(report)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_weights_are_named_at_load(tmp_path, hf_dirs, value):
    folder = _copy(hf_dirs["BigBirdForMaskedLM"], tmp_path / "nan")
    name = "bert.encoder.layer.1.output.dense.weight"

    def poison(arrays):
        arrays[name] = arrays[name].copy()
        arrays[name][0, 0] = value

    _edit_tensors(folder, poison)
    with pytest.raises(
        eb.CheckpointError, match=r"NaN or inf in \['bert\.encoder\.layer\.\{i\}\.output\.dense"
    ):
        eb.BigBirdForMaskedLM.from_pretrained(folder)


def test_a_cast_that_overflows_is_caught(tmp_path, hf_dirs):
    folder = _copy(hf_dirs["BigBirdForMaskedLM"], tmp_path / "big")
    name = "cls.predictions.bias"
    _edit_tensors(folder, lambda arrays: arrays.update({name: np.full(50, 1e6, np.float32)}))
    assert eb.BigBirdForMaskedLM.from_pretrained(folder) is not None  # fine in float32
    with pytest.raises(eb.CheckpointError, match=r"NaN or inf in \['cls\.predictions\.bias"):
        eb.BigBirdForMaskedLM.from_pretrained(folder, dtype="float16")


def test_non_float_dtypes_are_refused(tmp_path, hf_dirs):
    with pytest.raises(ValueError, match="dtype=.*int32.*floating dtype"):
        eb.BigBirdForMaskedLM.from_pretrained(hf_dirs["BigBirdForMaskedLM"], dtype=jnp.int32)
    model = eb.BigBirdForMaskedLM.from_pretrained(hf_dirs["BigBirdForMaskedLM"])
    file = eb.save(tmp_path / "m.safetensors", model)
    with pytest.raises(ValueError, match="dtype='int8'.*floating dtype"):
        eb.load(file, dtype="int8")


def test_legacy_pytorch_bin_is_read(tmp_path, hf_dirs):
    """torch < 1.6's one-pickle format: torch cannot memory-map it, but reads it whole."""
    torch = pytest.importorskip("torch")
    folder = tmp_path / "legacy"
    folder.mkdir()
    shutil.copy(hf_dirs["BigBirdForMaskedLM"] / "config.json", folder)
    state = read_safetensors(str(hf_dirs["BigBirdForMaskedLM"] / "model.safetensors"))
    tensors = {k: torch.from_numpy(np.array(state[k])) for k in state}
    torch.save(tensors, folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    ours = eb.BigBirdForMaskedLM.from_pretrained(folder)
    ref = eb.BigBirdForMaskedLM.from_pretrained(hf_dirs["BigBirdForMaskedLM"])
    np.testing.assert_array_equal(ours.cls.bias, ref.cls.bias)
    (folder / "pytorch_model.bin").write_bytes(b"not a torch file at all")
    with pytest.raises(eb.CheckpointError, match=r"pytorch_model\.bin: not a zip archive.*"
                                                 r"refused.*model\.safetensors"):
        eb.BigBirdForMaskedLM.from_pretrained(folder)
    assert os.path.exists(folder / "pytorch_model.bin")
