"""Our checkpoint format (save/load), every HF source layout, bad input, atomic writes, the CLI."""

import copy
import json
import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open

import eqx_bigbird as eb
import eqx_bigbird._io as io_module
from eqx_bigbird.cli import main as cli

from .hf_reference import TINY, pytorch_model
from .hf_reference import leaves_equal as same_leaves

torch = pytest.importorskip("torch")
OVERRIDES = dict(block_size=4, num_random_blocks=2)


def leaves_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    same_leaves(a, b)


# -- our format --------------------------------------------------------------------------------


@pytest.mark.parametrize("pooler,scan,inference", [(True, True, False), (False, False, True)])
def test_save_load_bit_identical(tmp_path, getkey, pooler, scan, inference):
    model = eb.BigBirdModel(
        eb.BigBirdConfig(**TINY), key=getkey(), add_pooling_layer=pooler, scan_layers=scan
    )
    model = eqx.nn.inference_mode(model, inference)
    file = eb.save(tmp_path / "m.safetensors", model)
    leaves_equal(model, eb.load(file))
    # The file is plain safetensors, its header carries class, version and config.
    with safe_open(file, "np") as f:
        meta = f.metadata()
        assert len(list(f.keys())) == len(
            jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))
        )
    assert meta["model_class"] == "BigBirdModel" and meta["format_version"] == "1"
    assert eb.BigBirdConfig.from_hf(json.loads(meta["config"])) == model.config


def test_save_load_keeps_bfloat16(tmp_path, getkey):
    model = eb.BigBirdModel(eb.BigBirdConfig(**TINY), key=getkey())
    bf16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16) if eqx.is_array(x) else x, model)
    eb.save(tmp_path, bf16)  # a directory: eqx_bigbird.safetensors inside
    leaves_equal(bf16, eb.load(tmp_path))
    cast = eb.load(tmp_path, dtype=jnp.float32)
    assert {x.dtype for x in jax.tree_util.tree_leaves(eqx.filter(cast, eqx.is_array))} == {
        jnp.dtype("float32")
    }


# -- HF sources ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_pt():
    return pytorch_model("BigBirdModel", **OVERRIDES)


def test_sharded_and_pytorch_bin_sources(tmp_path, hf_pt):
    pt, hf_dir = hf_pt
    ref = eb.BigBirdModel.from_pretrained(hf_dir)
    pt.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
    leaves_equal(ref, eb.BigBirdModel.from_pretrained(tmp_path / "sharded"))
    pt.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert "pytorch_model.bin" in os.listdir(tmp_path / "bin")
    leaves_equal(ref, eb.BigBirdModel.from_pretrained(tmp_path / "bin"))


def test_pytorch_bin_without_torch_says_how_to_convert(tmp_path, hf_pt, monkeypatch):
    pt, _ = hf_pt
    pt.save_pretrained(tmp_path, safe_serialization=False)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(eb.CheckpointError, match="pytorch_model.bin.*needs torch.*safetensors"):
        eb.BigBirdModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("torch_dtype", ["bfloat16", "float16"])
def test_half_precision_keep_or_cast(tmp_path, hf_pt, torch_dtype):
    pt, _ = hf_pt
    # A copy: `.to(dtype)` works in place, and rounding the shared (cached) reference model's
    # weights to half precision would silently break every later test that uses it.
    half = copy.deepcopy(pt).to(getattr(torch, torch_dtype))
    half.save_pretrained(tmp_path)
    want = {k: v.float().numpy() for k, v in half.state_dict().items()}
    kept, report = eb.BigBirdModel.from_pretrained(tmp_path, dtype="keep", return_report=True)
    assert report.dtypes == (torch_dtype,)
    cast = eb.BigBirdModel.from_pretrained(tmp_path)  # default: the model's float32
    w = want["encoder.layer.1.attention.self.query.weight"]
    np.testing.assert_array_equal(
        np.asarray(kept.encoder.layers.attention.query.weight[1], np.float32), w
    )
    np.testing.assert_array_equal(np.asarray(cast.encoder.layers.attention.query.weight[1]), w)
    assert cast.encoder.layers.attention.query.weight.dtype == jnp.float32


# -- tied keys -----------------------------------------------------------------------------------

DECODER, WORDS = "cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"


def test_tied_names_follow_hf():
    transformers = pytest.importorskip("transformers")
    from eqx_bigbird._hf_names import hf_names, tied_names

    tied = {DECODER: WORDS, "cls.predictions.decoder.bias": "cls.predictions.bias"}
    config = eb.BigBirdConfig(**TINY)
    for cls in (eb.BigBirdForPreTraining, eb.BigBirdForMaskedLM, eb.BigBirdForCausalLM):
        # HF's own `_tied_weights_keys` on the same classes.
        assert set(getattr(transformers, cls.__name__)._tied_weights_keys) == set(tied)
        assert tied_names(cls, config) == tied
        assert tied_names(cls, config.replace(tie_word_embeddings=False)) == {
            "cls.predictions.decoder.bias": "cls.predictions.bias"
        }
    assert tied_names(eb.BigBirdModel, config) == {}
    assert tied_names(eb.BigBirdForSequenceClassification, config) == {}
    cross = hf_names(eb.BigBirdForCausalLM, config.replace(add_cross_attention=True))
    assert cross["bert.encoder.layers.crossattention.query"] == (
        "bert.encoder.layer.{i}.crossattention.self.query"
    )
    with pytest.raises(TypeError, match="BigBirdEncoder has no Hugging Face names"):
        hf_names(eb.BigBirdEncoder, config)


@pytest.fixture(scope="module")
def hf_mlm_bin(tmp_path_factory):
    """An HF MaskedLM saved as `pytorch_model.bin`, which keeps the tied decoder keys."""
    pt, _ = pytorch_model("BigBirdForMaskedLM", **OVERRIDES)
    path = tmp_path_factory.mktemp("mlm-bin")
    pt.save_pretrained(path, safe_serialization=False)
    state = torch.load(path / "pytorch_model.bin", weights_only=True)
    assert DECODER in state and "cls.predictions.decoder.bias" in state
    return path


def test_tied_keys_in_checkpoint_are_accepted(hf_mlm_bin):
    model, report = eb.BigBirdForMaskedLM.from_pretrained(hf_mlm_bin, return_report=True)
    assert report.tied == ["cls.predictions.decoder.bias", DECODER]
    # HF's MaskedLM keeps a pooler it never uses; ours has none.
    assert report.unused == ["bert.pooler.bias", "bert.pooler.weight"]
    assert not set(report.tied) & set(report.used)
    _, hf_dir = pytorch_model("BigBirdForMaskedLM", **OVERRIDES)
    leaves_equal(model, eb.BigBirdForMaskedLM.from_pretrained(hf_dir))


def test_tied_key_that_differs_is_an_error(tmp_path):
    from safetensors.numpy import load_file, save_file

    _, hf_dir = pytorch_model("BigBirdForMaskedLM", **OVERRIDES)
    d = copy_hf(hf_dir, tmp_path)
    file = os.path.join(d, "model.safetensors")
    state = load_file(file)
    state[DECODER] = state[WORDS] + 1
    save_file(state, file, {"format": "pt"})
    with pytest.raises(eb.CheckpointError, match=f"{DECODER}: differs from {WORDS}"):
        eb.BigBirdForMaskedLM.from_pretrained(d)


# -- bad input -----------------------------------------------------------------------------------


def copy_hf(src, dst):
    os.makedirs(dst, exist_ok=True)
    for f in os.listdir(src):
        with open(os.path.join(src, f), "rb") as a, open(os.path.join(dst, f), "wb") as b:
            b.write(a.read())
    return str(dst)


def truncate(file, keep):
    data = open(file, "rb").read()
    open(file, "wb").write(data[: keep if keep >= 0 else len(data) + keep])


def test_truncated_and_corrupt_safetensors(tmp_path, hf_pt):
    d = copy_hf(hf_pt[1], tmp_path / "trunc")
    truncate(os.path.join(d, "model.safetensors"), -100)
    with pytest.raises(eb.CheckpointError, match=r"trunc/model\.safetensors: truncated"):
        eb.BigBirdModel.from_pretrained(d)
    d = copy_hf(hf_pt[1], tmp_path / "garbage")
    open(os.path.join(d, "model.safetensors"), "wb").write(
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json!!}xxxx"
    )
    with pytest.raises(eb.CheckpointError, match=r"garbage/model\.safetensors: corrupt"):
        eb.BigBirdModel.from_pretrained(d)


def test_truncated_flax_msgpack(tmp_path, hf_pt):
    model = eb.BigBirdModel.from_pretrained(hf_pt[1])
    model.save_pretrained(tmp_path, flax=True)
    file = str(tmp_path / "flax_model.msgpack")
    truncate(file, -1000)
    with pytest.raises(eb.CheckpointError, match=r"flax_model\.msgpack: corrupt or truncated"):
        eb.BigBirdModel.from_pretrained(file)


@pytest.mark.parametrize(
    "change,expect",
    [
        (
            dict(num_hidden_layers=3),
            "missing keys: ['bert.encoder.layer.2.attention.self.query.weight'",
        ),
        (
            dict(intermediate_size=40),
            "mis-shaped keys: ['bert.encoder.layer.{i}.intermediate.dense.weight: checkpoint (37, 32), model (40, 32)'",
        ),
    ],
)
def test_config_not_matching_weights(tmp_path, hf_pt, change, expect):
    d = copy_hf(hf_pt[1], tmp_path)
    cfg = json.load(open(os.path.join(d, "config.json")))
    json.dump({**cfg, **change}, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(eb.CheckpointError) as e:
        eb.BigBirdModel.from_pretrained(d)
    assert f"{d}/model.safetensors does not fit the model; " in str(e.value)
    assert expect in str(e.value)


def test_unknown_layout_and_wrong_format(tmp_path, getkey):
    (tmp_path / "weights.ckpt").write_bytes(b"x")
    with pytest.raises(eb.CheckpointError, match=f"{tmp_path}: unknown layout"):
        eb.BigBirdModel.from_pretrained(tmp_path)
    with pytest.raises(eb.CheckpointError, match=r"weights\.ckpt: unknown checkpoint format"):
        eb.BigBirdModel.from_pretrained(tmp_path / "weights.ckpt")
    model = eb.BigBirdModel(eb.BigBirdConfig(**TINY), key=getkey())
    model.save_pretrained(tmp_path / "hf")
    with pytest.raises(
        eb.CheckpointError, match=r"hf/model\.safetensors: not an eqx-bigbird checkpoint"
    ):
        eb.load(tmp_path / "hf" / "model.safetensors")


def test_wrong_model_class(tmp_path, getkey):
    model = eb.BigBirdModel(eb.BigBirdConfig(**TINY), key=getkey())
    file = eb.save(tmp_path / "m.safetensors", model)
    with pytest.raises(
        eb.CheckpointError, match=r"m\.safetensors: holds a BigBirdModel, not a BigBirdEncoder"
    ):
        eb.load(file, eb.BigBirdEncoder)
    # A header naming a class we do not have.
    from eqx_bigbird._hf_read import read_safetensors, safetensors_metadata
    from eqx_bigbird._io import write_safetensors

    meta = dict(safetensors_metadata(file), model_class="BigBirdForTeleportation")
    state = read_safetensors(file)
    write_safetensors(tmp_path / "x.safetensors", [(k, state[k]) for k in state], meta)
    with pytest.raises(
        eb.CheckpointError, match=r"x\.safetensors: unknown model class 'BigBirdForTeleportation'"
    ):
        eb.load(tmp_path / "x.safetensors")


# -- atomic writes -------------------------------------------------------------------------------


class Boom(Exception):
    pass


def fail_after(monkeypatch, n):
    """Makes the safetensors writer fail on its n-th tensor, after writing some bytes."""
    real, count = np.ascontiguousarray, [0]

    def flaky(x, *a, **k):
        count[0] += 1
        if count[0] == n:
            raise Boom("disk full")
        return real(x, *a, **k)

    monkeypatch.setattr(io_module.np, "ascontiguousarray", flaky)


@pytest.mark.parametrize("writer", ["save", "save_pretrained"])
def test_interrupted_save_leaves_previous_file(tmp_path, getkey, monkeypatch, writer):
    old = eb.BigBirdModel(eb.BigBirdConfig(**TINY), key=getkey())
    new = eb.BigBirdModel(eb.BigBirdConfig(**TINY), key=getkey())
    if writer == "save":
        target, write = tmp_path / "m.safetensors", lambda m: eb.save(tmp_path / "m.safetensors", m)
    else:
        target, write = tmp_path / "model.safetensors", lambda m: m.save_pretrained(tmp_path)
    write(old)
    before = target.read_bytes()
    fail_after(monkeypatch, 5)
    with pytest.raises(Boom):
        write(new)
    assert target.read_bytes() == before  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")) == []


# -- CLI -----------------------------------------------------------------------------------------


def test_cli_convert_round_trip(tmp_path, hf_pt, capsys):
    _, hf_dir = hf_pt
    assert cli(["convert", hf_dir, str(tmp_path / "m.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "model:       BigBirdModel" in out and "parameters:  " in out and "unused keys: 0" in out
    leaves_equal(eb.BigBirdModel.from_pretrained(hf_dir), eb.load(tmp_path / "m.safetensors"))
    assert (
        cli(["convert", "--to-hf", "--flax", str(tmp_path / "m.safetensors"), str(tmp_path / "hf")])
        == 0
    )
    assert sorted(os.listdir(tmp_path / "hf")) == [
        "config.json",
        "flax_model.msgpack",
        "model.safetensors",
    ]


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli(["convert", str(tmp_path / "nope"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("eqx-bigbird convert: error: ") and "nope: no such file" in err
    assert not os.path.exists(tmp_path / "out")


def test_module_entry_point_help():
    proc = subprocess.run(
        [sys.executable, "-m", "eqx_bigbird.convert", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    assert "examples:" in proc.stdout and "eqx-bigbird convert --to-hf" in proc.stdout
