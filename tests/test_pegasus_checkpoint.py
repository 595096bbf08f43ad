"""BigBird-Pegasus checkpoints: HF PyTorch files in (safetensors, sharded, pytorch_model.bin),
ties as HF ties them, problems reported by name, export that HF loads with no missing or
unexpected keys, HF -> ours -> HF -> ours bit-identical, our own format, `eqx-bigbird convert`."""

import json

import jax
import numpy as np
import pytest
import safetensors.numpy

import eqx_bigbird as eb
from eqx_bigbird.cli import main as cli

from .pegasus_reference import build_model, make_inputs, numpy, pytorch_model, run_hf, transformers

CLASSES = [
    "BigBirdPegasusModel", "BigBirdPegasusForConditionalGeneration",
    "BigBirdPegasusForSequenceClassification", "BigBirdPegasusForQuestionAnswering",
    "BigBirdPegasusForCausalLM",
]
FULL = dict(attention_type="original_full", use_bias=True)


def _leaves(model):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(model)]


def _assert_same_leaves(a, b):
    assert type(a) is type(b) and a.config == b.config
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def _first_output(out):
    return out[0] if isinstance(out, tuple) else next(iter(out.values()))


@pytest.mark.parametrize("cls_name", CLASSES)
def test_hf_ours_hf_ours_round_trip(tmp_path, cls_name):
    """Ours -> HF PyTorch loads with no missing, unexpected or mis-sized keys, holds the very
    same tensors and computes the same outputs; and back to ours bit-identically."""
    pt, path = pytorch_model(cls_name, **FULL)
    cls = getattr(eb, cls_name)
    ours = cls.from_pretrained(path)
    ours.save_pretrained(tmp_path / "hf")
    back, info = getattr(transformers, cls_name).from_pretrained(
        tmp_path / "hf", output_loading_info=True
    )
    assert not any(info.values()), info
    ref_state, back_state = pt.state_dict(), back.state_dict()
    assert set(ref_state) == set(back_state)
    for name, value in ref_state.items():
        np.testing.assert_array_equal(numpy(back_state[name]), numpy(value), err_msg=name)
    ids, mask, _ = make_inputs(20, seed=0)
    np.testing.assert_array_equal(
        numpy(_first_output(run_hf(back.eval(), ids, mask))),
        numpy(_first_output(run_hf(pt, ids, mask))),
    )
    _assert_same_leaves(cls.from_pretrained(tmp_path / "hf"), ours)


def test_hf_writes_only_untied_keys(tmp_path):
    """As HF's own save: `shared` once, no `embed_tokens` or tied `lm_head` copies, and the
    `final_logits_bias` buffer; `include_tied=True` adds the copies, which load as well."""
    _, path = pytorch_model("BigBirdPegasusForConditionalGeneration", **FULL)
    ours = eb.BigBirdPegasusForConditionalGeneration.from_pretrained(path)
    ours.save_pretrained(tmp_path / "a")
    ours.save_pretrained(tmp_path / "b", include_tied=True)
    a = safetensors.numpy.load_file(tmp_path / "a" / "model.safetensors")
    b = safetensors.numpy.load_file(tmp_path / "b" / "model.safetensors")
    assert set(a) == set(safetensors.numpy.load_file(f"{path}/model.safetensors"))
    tied = {"lm_head.weight", "model.encoder.embed_tokens.weight",
            "model.decoder.embed_tokens.weight"}
    assert set(b) - set(a) == tied
    _assert_same_leaves(eb.BigBirdPegasusForConditionalGeneration.from_pretrained(tmp_path / "b"),
                        ours)
    # A tied copy that differs from what it is tied to is refused, by name.
    b["lm_head.weight"] = b["lm_head.weight"] + 1
    safetensors.numpy.save_file(b, tmp_path / "b" / "model.safetensors", {"format": "pt"})
    with pytest.raises(eb.CheckpointError, match="lm_head.weight"):
        eb.BigBirdPegasusForConditionalGeneration.from_pretrained(tmp_path / "b")


def test_untied_lm_head_and_bin_and_sharded_checkpoints(tmp_path):
    """`tie_word_embeddings=False` unties only the LM head (as a fresh HF model does);
    `pytorch_model.bin` and a sharded safetensors checkpoint load to the same leaves as the
    single file."""
    pt = build_model("BigBirdPegasusForConditionalGeneration", tie_word_embeddings=False, **FULL)
    pt.save_pretrained(tmp_path / "st")
    pt.save_pretrained(tmp_path / "bin", safe_serialization=False)
    pt.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    cls = eb.BigBirdPegasusForConditionalGeneration
    ours = cls.from_pretrained(tmp_path / "st")
    np.testing.assert_array_equal(ours.lm_head.weight, numpy(pt.lm_head.weight))
    assert not np.array_equal(ours.lm_head.weight, ours.model.shared.weight)
    _assert_same_leaves(cls.from_pretrained(tmp_path / "bin"), ours)
    _assert_same_leaves(cls.from_pretrained(tmp_path / "sharded"), ours)
    # HF's own save of this model leaves the stacks' embed_tokens out and its reload then
    # initialises them at random; ours writes them, so HF loads what we computed with.
    ours.save_pretrained(tmp_path / "out")
    back, info = transformers.BigBirdPegasusForConditionalGeneration.from_pretrained(
        tmp_path / "out", output_loading_info=True
    )
    assert not any(info.values()), info
    ids, mask, dec = make_inputs(20, seed=0)
    np.testing.assert_allclose(
        numpy(run_hf(back.eval(), ids, mask, dec).logits), numpy(run_hf(pt, ids, mask, dec).logits),
        atol=1e-6,
    )


def test_problems_are_reported_by_name(tmp_path):
    _, path = pytorch_model("BigBirdPegasusForConditionalGeneration", **FULL)
    cls = eb.BigBirdPegasusForConditionalGeneration
    state = safetensors.numpy.load_file(f"{path}/model.safetensors")
    config = json.loads(open(f"{path}/config.json").read())

    def write(folder, tensors):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        safetensors.numpy.save_file(tensors, folder / "model.safetensors", {"format": "pt"})
        return folder

    missing = {k: v for k, v in state.items() if k != "model.decoder.layers.1.fc1.weight"}
    with pytest.raises(eb.CheckpointError, match=r"missing keys.*model\.decoder\.layers\.1\.fc1"):
        cls.from_pretrained(write(tmp_path / "missing", missing))
    bad = {**state, "model.encoder.layers.0.fc2.bias": np.zeros((5,), np.float32)}
    with pytest.raises(eb.CheckpointError, match=r"mis-shaped.*model\.encoder\.layers\.\{i\}\.fc2"):
        cls.from_pretrained(write(tmp_path / "bad", bad))
    # HF fills a missing final_logits_bias with zeros; an unexpected key is reported unused.
    extra = {k: v for k, v in state.items() if k != "final_logits_bias"}
    extra["model.encoder.something_else"] = np.zeros((2,), np.float32)
    model, report = cls.from_pretrained(write(tmp_path / "extra", extra), return_report=True)
    np.testing.assert_array_equal(model.final_logits_bias, 0)
    assert report.unused == ["model.encoder.something_else"]
    # Head checkpoints into the base model: the head's weights are unused, by name.
    _, report = eb.BigBirdPegasusModel.from_pretrained(path, return_report=True)
    assert report.unused == ["final_logits_bias"]
    with pytest.raises(eb.CheckpointError, match="bigbird_pegasus"):
        eb.BigBirdModel.from_pretrained(path)


def test_our_format_and_cli_convert(tmp_path, capsys):
    pt, path = pytorch_model("BigBirdPegasusForConditionalGeneration", **FULL)
    assert cli(["convert", path, str(tmp_path / "m.safetensors")]) == 0
    assert "BigBirdPegasusForConditionalGeneration" in capsys.readouterr().out
    ours = eb.load(tmp_path / "m.safetensors")
    _assert_same_leaves(ours, eb.BigBirdPegasusForConditionalGeneration.from_pretrained(path))
    assert cli(["convert", "--to-hf", str(tmp_path / "m.safetensors"), str(tmp_path / "hf")]) == 0
    _, info = transformers.BigBirdPegasusForConditionalGeneration.from_pretrained(
        tmp_path / "hf", output_loading_info=True
    )
    assert not any(info.values()), info
    causal = eb.BigBirdPegasusForCausalLM.from_pretrained(
        pytorch_model("BigBirdPegasusForCausalLM", **FULL)[1], scan_layers=False
    )
    eb.save(tmp_path / "c.safetensors", causal)
    loaded = eb.load(tmp_path / "c.safetensors", eb.BigBirdPegasusForCausalLM)
    _assert_same_leaves(loaded, causal)
    assert loaded.options == causal.options and loaded.config.is_decoder


def test_flax_export_is_refused(tmp_path):
    _, path = pytorch_model("BigBirdPegasusForCausalLM", **FULL)
    with pytest.raises(ValueError, match="no Flax version"):
        eb.BigBirdPegasusForCausalLM.from_pretrained(path).save_pretrained(tmp_path, flax=True)
