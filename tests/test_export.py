"""HF export: what HF PyTorch and HF Flax `from_pretrained` load, with no missing or unexpected
keys and the same outputs (1e-5), and the lossless round trip HF -> ours -> HF -> ours."""

import os
import subprocess

import equinox as eqx
import jax
import numpy as np
import pytest
from safetensors import safe_open

import eqx_bigbird as eb

from .hf_reference import (
    TINY,
    flax_model,
    leaves_equal,
    lenient_jax,
    numpy,
    pytorch_model,
    run_pytorch,
)

transformers = pytest.importorskip("transformers")
ATOL = 1e-5
OVERRIDES = dict(block_size=4, num_random_blocks=2)  # block-sparse above 36 tokens


def batch(length, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 99, (2, length))
    mask = np.ones((2, length), np.int64)
    mask[1, length - 5 :] = 0
    return ids, mask, rng.integers(0, 3, (2, length))


@eqx.filter_jit
def run_ours(model, ids, mask, types):
    return jax.vmap(model)(ids, mask, types)


def keys(file):
    with safe_open(file, "np") as f:
        return set(f.keys())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """HF PT model -> ours -> our HF export (with Flax)."""
    pt, hf_dir = pytorch_model("BigBirdModel", **OVERRIDES)
    ours = eb.BigBirdModel.from_pretrained(hf_dir)
    out = str(tmp_path_factory.mktemp("export"))
    ours.save_pretrained(out, flax=True)
    return pt, hf_dir, ours, out


def test_hf_pytorch_loads_export(exported):
    pt, hf_dir, ours, out = exported
    assert keys(os.path.join(out, "model.safetensors")) == keys(
        os.path.join(hf_dir, "model.safetensors")
    )
    loaded, info = transformers.BigBirdModel.from_pretrained(out, output_loading_info=True)
    assert info == {
        "missing_keys": [],
        "unexpected_keys": [],
        "mismatched_keys": [],
        "error_msgs": [],
    }
    for length in (40, 64):  # block-sparse, with and without internal padding
        ids, mask, tt = batch(length)
        want = run_pytorch(loaded.eval(), ids, mask, tt)
        got = run_ours(ours, ids, mask, tt)
        assert (
            np.abs(np.asarray(got.last_hidden_state) - numpy(want.last_hidden_state)).max() <= ATOL
        )
        assert np.abs(np.asarray(got.pooler_output) - numpy(want.pooler_output)).max() <= ATOL


def test_hf_flax_loads_export(exported):
    import flax.serialization
    import flax.traverse_util

    _, hf_dir, ours, out = exported
    with open(os.path.join(out, "flax_model.msgpack"), "rb") as f:
        ours_flat = flax.traverse_util.flatten_dict(flax.serialization.msgpack_restore(f.read()))
    with lenient_jax():
        # HF's own PT -> Flax conversion of the same weights: same keys, shapes, values, bit for bit
        # (a missing kernel transpose would show on the square q/k/v matrices).
        ref = transformers.FlaxBigBirdModel.from_pretrained(hf_dir, from_pt=True)
        loaded = transformers.FlaxBigBirdModel.from_pretrained(out)
    ref_flat = flax.traverse_util.flatten_dict(ref.params)
    assert set(ours_flat) == set(ref_flat)
    for k in ref_flat:
        np.testing.assert_array_equal(ours_flat[k], np.asarray(ref_flat[k]), err_msg=str(k))
    ids, mask, tt = batch(64)
    with lenient_jax():
        want = loaded(ids, mask, tt)
    got = run_ours(ours, ids, mask, tt)
    assert (
        np.abs(np.asarray(got.last_hidden_state) - np.asarray(want.last_hidden_state)).max() <= ATOL
    )


@pytest.mark.parametrize("source", ["pytorch", "flax"])
def test_lossless_round_trip(tmp_path, source):
    """HF -> ours -> HF -> ours: bit-identical leaves, and the re-exported HF tensors equal the
    original HF file's."""
    if source == "pytorch":
        _, hf_dir = pytorch_model("BigBirdModel", **OVERRIDES)
    else:
        _, hf_dir = flax_model("FlaxBigBirdModel", **OVERRIDES)
    first = eb.BigBirdModel.from_pretrained(hf_dir)
    first.save_pretrained(tmp_path / "hf", flax=True)
    for again in (tmp_path / "hf", tmp_path / "hf" / "flax_model.msgpack"):
        leaves_equal(first, eb.BigBirdModel.from_pretrained(again))
    eb.save(tmp_path / "ours.safetensors", first)
    leaves_equal(first, eb.load(tmp_path / "ours.safetensors"))
    if source == "pytorch":
        with (
            safe_open(os.path.join(hf_dir, "model.safetensors"), "np") as a,
            safe_open(str(tmp_path / "hf" / "model.safetensors"), "np") as b,
        ):
            for k in a.keys():
                np.testing.assert_array_equal(a.get_tensor(k), b.get_tensor(k))


def test_export_writes_config_hf_reads(exported):
    _, _, ours, out = exported
    config = transformers.BigBirdConfig.from_pretrained(out)
    assert config.architectures == ["BigBirdModel"]
    assert eb.BigBirdConfig.from_hf(out).replace(architectures=None) == ours.config.replace(
        architectures=None
    )


@pytest.mark.parametrize("pooler,scan", [(False, True), (True, False)])
def test_export_without_pooler_and_unrolled(tmp_path, getkey, pooler, scan):
    model = eb.BigBirdModel(
        eb.BigBirdConfig(**TINY), key=getkey(), add_pooling_layer=pooler, scan_layers=scan
    )
    model.save_pretrained(tmp_path)
    back = eb.BigBirdModel.from_pretrained(tmp_path, add_pooling_layer=pooler, scan_layers=scan)
    leaves_equal(eqx.nn.inference_mode(model), back)


def test_export_with_tied_keys_loads_in_hf(tmp_path):
    """`include_tied=True` writes HF's tied decoder keys as copies; HF loads them as its own."""
    _, hf_dir = pytorch_model("BigBirdForPreTraining", **OVERRIDES)
    ours = eb.BigBirdForPreTraining.from_pretrained(hf_dir)
    eb.save_pretrained(ours, tmp_path, include_tied=True, flax=True)
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    want = keys(os.path.join(hf_dir, "model.safetensors")) | tied
    assert keys(tmp_path / "model.safetensors") == want
    loaded, info = transformers.BigBirdForPreTraining.from_pretrained(
        tmp_path, output_loading_info=True
    )
    assert info == {
        "missing_keys": [],
        "unexpected_keys": [],
        "mismatched_keys": [],
        "error_msgs": [],
    }
    np.testing.assert_array_equal(
        numpy(loaded.cls.predictions.decoder.weight),
        np.asarray(ours.bert.embeddings.word_embeddings.weight),
    )
    back, report = eb.BigBirdForPreTraining.from_pretrained(tmp_path, return_report=True)
    assert sorted(report.tied) == sorted(tied) and not report.unused
    leaves_equal(ours, back)
    # Flax's LM head has no decoder to tie: the Flax file is the one written without the copies.
    eb.save_pretrained(ours, tmp_path / "untied", flax=True)
    flax_bytes = (tmp_path / "untied" / "flax_model.msgpack").read_bytes()
    assert (tmp_path / "flax_model.msgpack").read_bytes() == flax_bytes


HF5 = os.environ.get("EQX_BIGBIRD_HF5_PYTHON")


@pytest.mark.skipif(not HF5, reason="EQX_BIGBIRD_HF5_PYTHON (a Python with transformers 5.x) unset")
def test_transformers_5_loads_export(exported):
    """transformers 5.x PyTorch (a separate venv, see .ci/run) loads our export with no missing or
    unexpected keys and computes the same hidden states."""
    _, _, ours, out = exported
    ids, mask, tt = batch(64)
    np.savez(os.path.join(out, "inputs.npz"), ids=ids, mask=mask, tt=tt)
    script = f"""
import sys, numpy as np, torch, transformers
assert transformers.__version__.startswith("5."), transformers.__version__
m, info = transformers.BigBirdModel.from_pretrained({out!r}, output_loading_info=True)
bad = {{k: v for k, v in info.items() if v}}
assert not bad, bad
d = np.load({os.path.join(out, "inputs.npz")!r})
with torch.no_grad():
    o = m.eval()(input_ids=torch.tensor(d["ids"]), attention_mask=torch.tensor(d["mask"]),
                 token_type_ids=torch.tensor(d["tt"]))
np.save({os.path.join(out, "hf5.npy")!r}, o.last_hidden_state.numpy())
"""
    proc = subprocess.run([HF5, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = np.load(os.path.join(out, "hf5.npy"))
    got = run_ours(ours, ids, mask, tt)
    assert np.abs(np.asarray(got.last_hidden_state) - want).max() <= ATOL
