"""Side-by-side benchmark: eqx-bigbird vs HF PyTorch BigBird-Pegasus, same weights, same inputs,
one run, CPU, float32, batch 1.

    python -m benchmarks.pegasus              # bigbird-pegasus-large dims, a 4096-token document
    python -m benchmarks.pegasus --layers 8   # 8 + 8 layers, if both do not fit the machine
    python -m benchmarks.pegasus --quick      # tiny dims, short lengths (the CI smoke test)

Each implementation runs in a fresh subprocess (so peak memory does not mix), HF's first: it
builds HF PyTorch's seeded random init, saves it with `save_pretrained` into a temporary folder
and is measured on that model; ours then loads the folder with `from_pretrained`. Each measures,
on the same random document:
- the encoder forward (block-sparse): ours jit-compiled with `eqx_bigbird.jit_options()` (as
  `generate` compiles), HF's `model.get_encoder()` under `torch.no_grad` with `--torch-threads`
  threads (default: every core);
- the whole summary: beam search with `--num-beams` beams, exactly `--new-tokens` new tokens
  (`min_length` bans eos before the last one), repeated trigrams banned
  (`--no-repeat-ngram-size`: a random model otherwise repeats one token, and the two token
  sequences would be a weak check), ours `eqx_bigbird.generate`, HF `model.generate` with the
  same arguments. Time per generated token = (summary - encoder) / new tokens.
Times are the median of `--reps` runs after a warm-up; our compile times are measured apart.
Both token ids are compared.

FLOP model of the encoder (FMA = 2; `benchmarks.run.forward_flops`): per layer
8 n d^2 + 4 n d ffn (q, k, v, output projections; the feed-forward) plus block-sparse attention,
4 d per attended (query, key) pair: 2 b n global rows and columns, 2 b (4 + r) b for the second
and second-to-last blocks, (n/b - 4) b (5 + r) b for the middle ones. Embeddings and LayerNorms
are not counted. Each child, right after timing its encoder, measures the machine's f32 matmul
rate at the encoder's FFN shape (`benchmarks.run.matmul_rate`, JAX, the same GEMM in both), and
the encoder's achieved FLOP/s is reported as a share of the rate measured in its own process:
this machine's speed moves between minutes, so a yardstick timed once beforehand can put a share
above 100%.
Results: results.json, results.md, results.png in `--out`. First it prints the parameter count
and an estimate of one process's peak memory (`memory_estimate_gb`; 8.8 GB at the default dims,
so both fit the 24 GB machine one after the other).
"""

import argparse
import gc
import json
import os
import sys
import tempfile

from eqx_bigbird._io import atomic_savefig, atomic_write_text

from .run import (
    _inputs,
    _malloc_trim,
    _peak_rss_gb,
    _RssSampler,
    _timed,
    forward_flops,
    matmul_rate,
    run_json,
)

LARGE = dict(  # google/bigbird-pegasus-large-*
    vocab_size=96103, d_model=1024, encoder_layers=16, decoder_layers=16,
    encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
    decoder_ffn_dim=4096, block_size=64, num_random_blocks=3, max_position_embeddings=4096,
)
QUICK = dict(
    vocab_size=1000, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
    decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, block_size=16,
    num_random_blocks=2, max_position_embeddings=512,
)
MACHINE_GB = 24  # the machine the targets are set for
IMPLS = {"ours": "eqx-bigbird", "hf": "HF PyTorch"}


def _encoder_view(cfg: dict) -> dict:
    """`cfg` in the names of `benchmarks.run.forward_flops` (a BigBird encoder)."""
    return dict(
        hidden_size=cfg["d_model"], num_hidden_layers=cfg["encoder_layers"],
        intermediate_size=cfg["encoder_ffn_dim"], block_size=cfg["block_size"],
        num_random_blocks=cfg["num_random_blocks"],
    )


def parameters(cfg: dict) -> int:
    """Parameter count (to within the biases): the shared embedding (tied to the LM head), two
    position tables, encoder layers (4 d^2 attention, 2 d ffn), decoder layers (8 d^2 self- and
    cross-attention, 2 d ffn)."""
    d = cfg["d_model"]
    encoder = cfg["encoder_layers"] * (4 * d * d + 2 * d * cfg["encoder_ffn_dim"])
    decoder = cfg["decoder_layers"] * (8 * d * d + 2 * d * cfg["decoder_ffn_dim"])
    return (cfg["vocab_size"] + 2 * cfg["max_position_embeddings"]) * d + encoder + decoder


def memory_estimate_gb(cfg: dict, n: int, beams: int) -> float:
    """A generous peak for one measuring process: the weights twice (the loaded file and the
    model), HF's cross-attention keys and values of every layer for every beam (ours keeps one
    copy), the block-sparse scores of a layer times four, and 1.5 GB of runtime and compiler."""
    d, heads, b, r = cfg["d_model"], cfg["encoder_attention_heads"], cfg["block_size"], \
        cfg["num_random_blocks"]
    weights = 2 * 4 * parameters(cfg)
    cross_kv = 2 * beams * n * d * 4 * cfg["decoder_layers"]
    scores = 4 * heads * n * (5 + r) * b * 4
    return (weights + cross_kv + scores) / 1e9 + 1.5


# -- child process: one implementation ------------------------------------------------------------


def _measure(fn, reps: int) -> tuple[dict, object]:
    """`(median and times of fn() after a warm-up and the resident memory while it runs, the
    last result)`."""
    last = []

    def run():
        last[:] = [fn()]
        return last[0]

    gc.collect()
    _malloc_trim()
    with _RssSampler() as rss:
        median, times = _timed(run, reps)
    return dict(median_s=median, times_s=times, rss_gb=rss.peak), last[0]


def _ffn_rate(cfg: dict, n: int) -> float:
    """The f32 GEMM rate now, at the encoder's FFN shape (n x d @ d x ffn)."""
    return matmul_rate(shape=(n, cfg["d_model"], cfg["encoder_ffn_dim"]))


def _ours(spec: dict, ids, generate_kwargs: dict) -> tuple[dict, list[int]]:
    import time

    import equinox as eqx
    import jax
    import numpy as np

    import eqx_bigbird as eb

    model = eb.BigBirdPegasusForConditionalGeneration.from_pretrained(spec["checkpoint"])
    params, static = eqx.partition(model, eqx.is_array)
    ids = jax.numpy.asarray(ids)

    def encode(p, x):
        return eqx.combine(p, static).model.encode(x, inference=True)[0]

    def summarize(p, x):
        return eb.generate(eqx.combine(p, static), x, **generate_kwargs)

    out = {}
    for name, fn in (("encoder", encode), ("summary", summarize)):
        t0 = time.perf_counter()
        compiled = jax.jit(fn, **eb.jit_options()).lower(params, ids).compile()
        compile_s = time.perf_counter() - t0
        out[name], last = _measure(lambda: compiled(params, ids), spec["reps"])
        out[name]["compile_s"] = compile_s
        if name == "encoder":
            out["matmul_flops_per_s"] = _ffn_rate(spec["cfg"], spec["length"])
    return out, np.asarray(last).tolist()


def _hf(spec: dict, ids, generate_kwargs: dict) -> tuple[dict, list[int]]:
    import torch
    import transformers

    torch.set_num_threads(spec["torch_threads"])
    torch.manual_seed(0)
    model = transformers.BigBirdPegasusForConditionalGeneration(
        transformers.BigBirdPegasusConfig(**spec["cfg"])
    ).eval()
    model.save_pretrained(spec["checkpoint"])  # the weights ours loads
    ids = torch.tensor(ids[None])
    encoder = model.get_encoder()

    @torch.no_grad()
    def encode():
        return encoder(input_ids=ids).last_hidden_state

    @torch.no_grad()
    def summarize():
        return model.generate(ids, **generate_kwargs)

    out = {}
    out["encoder"], _ = _measure(encode, spec["reps"])
    out["matmul_flops_per_s"] = _ffn_rate(spec["cfg"], spec["length"])
    out["summary"], last = _measure(summarize, spec["reps"])
    return out, last[0].tolist()


def child(spec: dict) -> dict:
    cfg = spec["cfg"]
    ids = _inputs(cfg, spec["length"], 1)[0]
    new = spec["new_tokens"]
    generate_kwargs = dict(
        num_beams=spec["num_beams"], max_new_tokens=new,
        min_length=1 + new,  # the decoder start token counts: eos is banned until the last step
        length_penalty=1.0, early_stopping=False, do_sample=False,
        no_repeat_ngram_size=spec["no_repeat_ngram_size"],
    )
    run = _ours if spec["impl"] == "ours" else _hf
    out, tokens = run(spec, ids, generate_kwargs)
    out["per_token_s"] = (out["summary"]["median_s"] - out["encoder"]["median_s"]) / new
    return dict(out, tokens=tokens, peak_rss_gb=_peak_rss_gb())


# -- parent ---------------------------------------------------------------------------------------


def _child_process(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.pegasus", "--child", json.dumps(spec)]
    return run_json(cmd, timeout)


def _ratios(rows: dict) -> dict:
    """Ours relative to HF (above 1: ours is faster): throughput of the encoder, of a generated
    token and of the whole summary."""
    if not all(impl in rows and "error" not in rows[impl] for impl in IMPLS):
        return {}
    ours, hf = rows["ours"], rows["hf"]
    return dict(
        encoder=hf["encoder"]["median_s"] / ours["encoder"]["median_s"],
        per_token=hf["per_token_s"] / ours["per_token_s"],
        summary=hf["summary"]["median_s"] / ours["summary"]["median_s"],
    )


def _markdown(summary: dict) -> str:
    cfg, rows, n, new = summary["config"], summary["rows"], summary["length"], \
        summary["new_tokens"]
    beams = summary["num_beams"]
    lines = [
        f"BigBird-Pegasus, d_model {cfg['d_model']}, {cfg['encoder_layers']} + "
        f"{cfg['decoder_layers']} layers{summary['layers_note']}, vocab {cfg['vocab_size']}, "
        f"block_size {cfg['block_size']}, r {cfg['num_random_blocks']}; CPU, float32, batch 1; "
        f"HF PyTorch on {summary['torch_threads']} torch thread(s).",
        "",
        "| | eqx-bigbird | HF PyTorch | ours / HF throughput |",
        "|---|---|---|---|",
    ]
    ratios = summary["ratios"]

    def cell(impl, get, fmt):
        row = rows.get(impl, {})
        return row["error"] if "error" in row else fmt.format(get(row))

    def line(what, get, fmt, ratio=None):
        text = f"{ratios[ratio]:.2f}x" if ratio in ratios else ""
        lines.append(f"| {what} | {cell('ours', get, fmt)} | {cell('hf', get, fmt)} | {text} |")

    line(f"encoder forward, {n} tokens (s)", lambda r: r["encoder"]["median_s"], "{:.3f}",
         "encoder")
    line("f32 matmul rate, FFN shape, after the encoder (GFLOP/s)",
         lambda r: r["matmul_flops_per_s"] / 1e9, "{:.1f}")
    line("encoder: share of that matmul rate", lambda r: 100 * r["encoder_share"], "{:.0f}%")
    ngram = summary["no_repeat_ngram_size"]
    line(f"summary: {beams} beams, {new} new tokens, no_repeat_ngram_size {ngram}, encoder "
         "included (s)",
         lambda r: r["summary"]["median_s"], "{:.2f}", "summary")
    line("time per generated token (ms)", lambda r: 1e3 * r["per_token_s"], "{:.1f}",
         "per_token")
    ours = rows.get("ours", {})
    if "error" not in ours:
        lines.append(f"| compile: encoder, generate (s) | {ours['encoder']['compile_s']:.1f}, "
                     f"{ours['summary']['compile_s']:.1f} | (eager) | |")
    line("peak resident memory (GB)", lambda r: r["peak_rss_gb"], "{:.2f}")
    line("resident while encoding, generating (GB)",
         lambda r: (r["encoder"]["rss_gb"], r["summary"]["rss_gb"]), "{0[0]:.2f}, {0[1]:.2f}")
    same = summary["same_tokens"]
    lines += ["", f"Same token ids from both: {'yes' if same else 'NO' if same is False else '?'}."]
    return "\n".join(lines) + "\n"


def _plot(summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {k: summary["rows"][k] for k in IMPLS if "error" not in summary["rows"].get(k, {})}
    panels = (
        (f"encoder, {summary['length']} tokens (s)", lambda r: r["encoder"]["median_s"]),
        ("per generated token (ms)", lambda r: 1e3 * r["per_token_s"]),
        (f"summary, {summary['new_tokens']} tokens (s)", lambda r: r["summary"]["median_s"]),
    )
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    for ax, (title, get) in zip(axes, panels):
        names = [IMPLS[k] for k in rows]
        colors = ["tab:blue", "tab:orange"][: len(rows)]
        ax.bar(names, [get(r) for r in rows.values()], color=colors)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"BigBird-Pegasus, {summary['num_beams']}-beam search, CPU float32 (lower is "
                 "better)", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny dims, short lengths, one rep")
    p.add_argument("--out", default="benchmark-results/pegasus")
    p.add_argument("--layers", type=int, help="encoder and decoder layers each (default 16)")
    p.add_argument("--length", type=int, help="document tokens (default 4096; quick 256)")
    p.add_argument("--new-tokens", type=int, help="generated tokens (default 128; quick 16)")
    p.add_argument("--num-beams", type=int, default=4)
    p.add_argument("--no-repeat-ngram-size", type=int, default=3)
    p.add_argument("--reps", type=int, help="timed runs after the warm-up (default 3; quick 1)")
    p.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                   help="HF's torch threads (default: every core)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per implementation")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    from tqdm.auto import tqdm

    cfg = dict(QUICK if args.quick else LARGE)
    layers_note = ""
    if args.layers:
        layers_note = f" (reduced from {cfg['encoder_layers']} by --layers)"
        cfg["encoder_layers"] = cfg["decoder_layers"] = args.layers
    n = args.length or (256 if args.quick else 4096)
    new = args.new_tokens or (16 if args.quick else 128)
    reps = args.reps or (1 if args.quick else 3)
    estimate = memory_estimate_gb(cfg, n, args.num_beams)
    print(f"{parameters(cfg):,} parameters; estimated peak per process "
          f"{estimate:.1f} GB (the machine: {MACHINE_GB} GB)", flush=True)
    if estimate > MACHINE_GB:
        print(f"warning: over {MACHINE_GB} GB; try --layers", flush=True)
    os.makedirs(args.out, exist_ok=True)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp, tqdm(total=len(IMPLS), desc="pegasus") as bar:
        flops = forward_flops(_encoder_view(cfg), n, "block_sparse")
        for impl in ("hf", "ours"):  # HF's process writes the weights
            bar.set_postfix_str(impl)
            spec = dict(impl=impl, cfg=cfg, checkpoint=tmp, length=n, new_tokens=new,
                        num_beams=args.num_beams, no_repeat_ngram_size=args.no_repeat_ngram_size,
                        reps=reps, torch_threads=args.torch_threads)
            row = _child_process(spec, args.timeout)
            if "error" not in row:
                row["encoder_share"] = (
                    flops / row["encoder"]["median_s"] / row["matmul_flops_per_s"]
                )
            rows[impl] = row
            bar.update()
            if impl == "hf" and "error" in row:
                rows["ours"] = dict(error="no weights: HF's process failed")
                break
    tokens = [rows[k].get("tokens") for k in IMPLS]
    summary = dict(
        config=cfg, layers_note=layers_note, length=n, new_tokens=new, num_beams=args.num_beams,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        reps=reps, torch_threads=args.torch_threads, encoder_flops=flops,
        memory_estimate_gb=estimate, rows=rows, ratios=_ratios(rows),
        same_tokens=None if None in tokens else tokens[0] == tokens[1],
    )
    atomic_write_text(os.path.join(args.out, "results.json"), json.dumps(summary, indent=2))
    text = _markdown(summary)
    atomic_write_text(os.path.join(args.out, "results.md"), text)
    _plot(summary, os.path.join(args.out, "results.png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
