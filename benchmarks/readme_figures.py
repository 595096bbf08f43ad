"""Regenerates the README's training figures: the default `eqx-bigbird train` over several seeds.

    python -m benchmarks.readme_figures                      # seeds 0-4, the default recipe
    python -m benchmarks.readme_figures --seeds 0 1 -- --lr 1e-3 --steps 400   # any train flags

Each seed runs `eqx-bigbird train --seed S --out OUT/seed-S` in its own process (one at a time, so
the wall times are comparable), then OUT/summary.json, OUT/summary.md (the table the README
quotes) and OUT/seeds.png (every seed's validation accuracy against its majority baseline) are
written. A run whose flags are in metrics.json's "warnings" (a loss spike, a collapse to one class)
is marked in the table.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from tqdm.auto import tqdm

from eqx_bigbird._io import atomic_savefig, atomic_write_text


def _run_seed(seed: int, out: str, extra: list[str]) -> dict:
    folder = os.path.join(out, f"seed-{seed}")
    cmd = [sys.executable, "-m", "eqx_bigbird.cli", "train", "--seed", str(seed), "--out", folder,
           "--no-progress", *extra]
    t0 = time.time()
    with open(os.path.join(out, f"seed-{seed}.log"), "w") as log:
        code = subprocess.run(cmd, check=False, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.time() - t0
    if code != 0:
        raise SystemExit(f"seed {seed}: `{' '.join(cmd)}` exited with {code}; see {log.name}")
    with open(os.path.join(folder, "metrics.json"), encoding="utf-8") as f:
        m = json.load(f)
    return {
        "seed": seed, "test_accuracy": m["test_accuracy"], "val_accuracy": m["val_accuracy"],
        "majority_baseline": m["majority_baseline"],
        "margin": m["test_accuracy"] - m["majority_baseline"],
        "minutes": wall / 60, "peak_rss_gb": m.get("peak_rss_gb"),
        "warnings": m.get("warnings", []), "evals": m["evals"],
    }


def _table(rows: list[dict], command: str) -> str:
    header = "| seed | test accuracy | majority baseline | margin (points) | minutes | warnings |"
    lines = [f"`{command}`", "", header, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['test_accuracy']:.1%} | {r['majority_baseline']:.1%} | "
            f"{100 * r['margin']:+.1f} | {r['minutes']:.1f} | "
            f"{'; '.join(w['kind'] for w in r['warnings']) or '-'} |"
        )
    acc = [r["test_accuracy"] for r in rows]
    margin = [100 * r["margin"] for r in rows]
    summary = (
        f"test accuracy: mean {statistics.mean(acc):.1%}, min {min(acc):.1%}, max {max(acc):.1%}; "
        f"margin over the majority baseline: min {min(margin):+.1f}, mean "
        f"{statistics.mean(margin):+.1f} points; wall time median "
        f"{statistics.median(r['minutes'] for r in rows):.1f} min"
    )
    lines += ["", summary]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for r in rows:
        line, = ax.plot([e["step"] for e in r["evals"]], [e["accuracy"] for e in r["evals"]],
                        "o-", ms=3, label=f"seed {r['seed']} (test {r['test_accuracy']:.0%})")
        ax.axhline(r["majority_baseline"], color=line.get_color(), ls=":", lw=0.8)
    ax.set(xlabel="step", ylabel="validation accuracy", ylim=(0, 1),
           title="eqx-bigbird train: every seed (dotted: its majority baseline)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", default="benchmark-results/readme-training")
    args = p.parse_args(own)
    os.makedirs(args.out, exist_ok=True)
    command = " ".join(["eqx-bigbird train --seed S", *extra])
    rows = []
    for seed in tqdm(args.seeds, desc="seeds"):
        rows.append(_run_seed(seed, args.out, extra))
        tqdm.write(f"seed {seed}: test {rows[-1]['test_accuracy']:.1%} (majority "
                   f"{rows[-1]['majority_baseline']:.1%}), {rows[-1]['minutes']:.1f} min")
    table = _table(rows, command)
    atomic_write_text(os.path.join(args.out, "summary.md"), table)
    atomic_write_text(os.path.join(args.out, "summary.json"),
                      json.dumps({"command": command, "seeds": rows}, indent=1))
    _plot(rows, os.path.join(args.out, "seeds.png"))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
