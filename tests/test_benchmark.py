"""The benchmark's quick mode runs end to end (a smoke test: no timing assertions)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_benchmark_writes_its_reports(tmp_path):
    cmd = [
        sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path), "--reps", "1",
        "--lengths", "256", "--attention", "block_sparse", "--train-lengths", "256",
        "--remat", "none",  # one training row each side; remat policies are tested in test_options
    ]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "results.json").read_text())
    rows = summary["rows"]
    assert {(r["impl"], r["mode"]) for r in rows} >= {("ours", "forward"), ("ours", "train")}
    assert not [r for r in rows if "error" in r], rows
    assert all(r["median_s"] > 0 and r["peak_rss_gb"] > 0 for r in rows)
    assert summary["matmul_flops_per_s"] > 0
    report = (tmp_path / "results.md").read_text()
    assert [line.split(" | ")[1] for line in report.splitlines() if line.startswith("| ours |")] \
        == ["forward", "train"]
    assert (tmp_path / "results.png").stat().st_size > 1000
