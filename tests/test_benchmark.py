"""The benchmarks' quick modes run end to end (smoke tests: no timing assertions)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_benchmark_writes_its_reports(tmp_path):
    cmd = [
        sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path), "--reps", "1",
        "--lengths", "256", "--attention", "block_sparse", "--train-lengths", "256",
        "--remat", "none",  # one training row each side; remat policies are tested in test_options
        "--batch", "2",  # ours through jax.vmap, HF on its batch axis
    ]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "results.json").read_text())
    rows = summary["rows"]
    assert {(r["impl"], r["mode"]) for r in rows} >= {("ours", "forward"), ("ours", "train")}
    assert not [r for r in rows if "error" in r], rows
    assert all(r["median_s"] > 0 and r["peak_rss_gb"] > 0 and r["batch"] == 2 for r in rows)
    # Each row's share is against the matmul rate timed in its own process.
    for r in rows:
        assert r["matmul_flops_per_s"] > 0
        assert abs(r["fraction_of_matmul"] - r["gflops"] * 1e9 / r["matmul_flops_per_s"]) < 1e-9
    if any(r["impl"] == "hf" for r in rows):
        assert set(summary["ratios"]) == {"forward/block_sparse/256/2", "train/block_sparse/256/2"}
    report = (tmp_path / "results.md").read_text()
    assert [line.split(" | ")[1] for line in report.splitlines() if line.startswith("| ours |")] \
        == ["forward", "train"]
    assert (tmp_path / "results.png").stat().st_size > 1000


def test_quick_pegasus_benchmark_writes_its_reports_and_agrees_with_hf(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    # One torch thread: on a busy two-core machine torch's spinning threads make HF's small
    # ops a hundred times slower, and this test only checks that everything runs and agrees.
    cmd = [sys.executable, "-m", "benchmarks.pegasus", "--quick", "--out", str(tmp_path),
           "--torch-threads", "1"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "results.json").read_text())
    rows = summary["rows"]
    assert set(rows) == {"ours", "hf"} and not [r for r in rows.values() if "error" in r], rows
    ours, hf = rows["ours"]["tokens"], rows["hf"]["tokens"]
    assert len(ours) == 1 + summary["new_tokens"] and len(set(ours)) > 2  # not one token repeated
    assert ours == hf and summary["same_tokens"] is True
    for row in rows.values():
        assert row["encoder"]["median_s"] > 0 and row["per_token_s"] > 0
        assert row["peak_rss_gb"] > 0 and row["encoder_share"] > 0 and row["matmul_flops_per_s"] > 0
    assert rows["ours"]["summary"]["compile_s"] > 0
    assert set(summary["ratios"]) == {"encoder", "per_token", "summary"}
    assert "Same token ids from both: yes." in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").stat().st_size > 1000


def test_attention_benchmark_compares_two_trees():
    # The same tree as the baseline: both rows run, and the ratio line is printed for each mode.
    cmd = [sys.executable, "-m", "benchmarks.attention", "--lengths", "640", "--rounds", "1",
           "--reps", "1", "--plan", "eval", "--baseline-src", os.path.join(ROOT, "src")]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [x for x in result.stdout.splitlines() if x.startswith("640 tokens, batch 1, eval")]
    modes = [x.split(", ")[3].split(":")[0] for x in lines]
    assert modes == ["forward", "forward+backward"], result.stdout
    assert all("baseline / ours" in x for x in lines), result.stdout
