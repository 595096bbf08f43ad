"""Side-by-side benchmark: eqx-bigbird vs HF Flax BigBird, same weights, same inputs, one run.

    python -m benchmarks.run                 # full run: bigbird-roberta-base dims, CPU, f32
    python -m benchmarks.run --quick         # small dims, two lengths (the CI smoke test)
    python -m benchmarks.run --batch 1 4     # batches: ours through jax.vmap, HF batched natively

Every measurement runs in a fresh subprocess (so peak memory does not mix) and reports compile
time, the median of `--reps` steady-state runs after a warm-up, peak resident memory and, right
after its steps, the f32 matmul rate at the model's FFN shape (tokens x hidden @ hidden x
intermediate) in the same process: that row's yardstick for its achieved FLOP/s (FLOP model of
`shared/reference/performance.md` section 4), so a machine whose speed drifts during a long run
does not bias one row against another. results.json, results.md and results.png go into `--out`.
"""

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from eqx_bigbird._allocator import ENVIRONMENT as ALLOCATOR_ENVIRONMENT
from eqx_bigbird._allocator import HUGE_PAGES
from eqx_bigbird._io import atomic_savefig, atomic_write_text

BASE = dict(
    vocab_size=50358, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, block_size=64, num_random_blocks=3, max_position_embeddings=16384,
)
QUICK = dict(
    vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=128, block_size=16, num_random_blocks=2, max_position_embeddings=1024,
)
OURS = ("ours", "baseline")  # both run eqx-bigbird; "baseline" from another source tree
FULL_ATTENTION_MAX = 8192  # dense n^2 scores beyond this do not fit the 24 GB machine


@dataclasses.dataclass
class Job:
    impl: str  # "ours" | "hf" | "baseline" (ours, imported from --baseline-src)
    mode: str  # "forward" | "train"
    attention: str  # "block_sparse" | "original_full"
    length: int
    remat: str | None = None  # ours only: a gradient-checkpointing policy for "train"
    batch: int = 1  # examples per call: ours maps one example over them with jax.vmap


# -- FLOP model ------------------------------------------------------------------------------------


def forward_flops(cfg: dict, n: int, attention: str) -> float:
    """Encoder forward FLOPs (FMA = 2), per performance.md section 4."""
    d, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    dense = 8 * n * d * d + 4 * n * d * cfg["intermediate_size"]  # q, k, v, out; FFN
    b, r = cfg["block_size"], cfg["num_random_blocks"]
    uses_sparse = attention == "block_sparse" and n > (5 + 2 * r) * b
    if uses_sparse:
        nb = n // b
        pairs = 2 * b * n + 2 * b * (4 + r) * b + (nb - 4) * b * (5 + r) * b
        attn = 4 * pairs * d
    else:
        attn = 4 * n * n * d
    return layers * (dense + attn)


def train_flops(cfg: dict, n: int, attention: str, masked: int) -> float:
    """Forward + backward ~ 3x forward, plus the MLM head at the masked positions only."""
    d, v = cfg["hidden_size"], cfg["vocab_size"]
    head = 2 * masked * d * d + 2 * masked * d * v
    return 3 * (forward_flops(cfg, n, attention) + head)


# -- child process: one measurement ----------------------------------------------------------------


def _timed(fn, reps):
    import jax

    jax.block_until_ready(fn())  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def _peak_rss_gb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def _inputs(cfg, n, batch, seed=0):
    """`(batch, n)` token ids; example 0 is the same for every batch size."""
    import numpy as np

    rngs = [np.random.default_rng(seed + i) for i in range(batch)]
    return np.stack([rng.integers(5, cfg["vocab_size"], (n,)) for rng in rngs]).astype(np.int32)


def _forward_fn(job, cfg, checkpoint):
    """(function, args) of one inference forward pass on `job.batch` examples of `job.length`
    tokens: ours through `jax.vmap` of the one-example model, HF on its batch dimension."""
    import jax
    import jax.numpy as jnp

    ids = jnp.asarray(_inputs(cfg, job.length, job.batch))
    overrides = {"attention_type": job.attention}
    if job.impl in OURS:
        import equinox as eqx
        import jax.random as jr

        import eqx_bigbird as eb

        if checkpoint:
            model = eb.BigBirdModel.from_pretrained(checkpoint, config_overrides=overrides)
        else:
            config = eb.BigBirdConfig(**cfg, **overrides)
            model = eqx.nn.inference_mode(eb.BigBirdModel(config, key=jr.PRNGKey(0)))
        params, static = eqx.partition(model, eqx.is_array)

        def forward(p, x):
            model = eqx.combine(p, static)
            return jax.vmap(lambda ids: model(ids).last_hidden_state)(x)

        return forward, (params, ids)
    import transformers

    from .hf import lenient

    with lenient():
        config = transformers.BigBirdConfig(**cfg, **overrides)
        model = transformers.FlaxBigBirdModel.from_pretrained(checkpoint, config=config)

    def forward(p, x):
        with lenient():
            return model(x, params=p).last_hidden_state

    return forward, (model.params, ids)


def _train_fn(job, cfg, checkpoint, optimizer=True, prng="threefry2x32"):
    """(step, args) of one masked-LM training step (`_with_adamw`; `value_and_grad` alone
    without `optimizer`) over `job.batch` examples (the mean loss): 15% of the tokens masked,
    dropout on, random attention on. Ours maps the one-example loss with `jax.vmap` and computes
    logits only at the masked positions; HF runs its batch dimension and has no such option
    (logits everywhere). Dropout masks and random plans come from a key of JAX's `prng`
    implementation, on both sides."""
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    n, batch = job.length, job.batch
    ids = _inputs(cfg, n, batch)
    rng = np.random.default_rng(1)
    positions = np.stack([
        np.sort(rng.choice(n, size=max(1, round(0.15 * n)), replace=False)) for _ in range(batch)
    ]).astype(np.int32)
    overrides = {"attention_type": job.attention}
    key = jr.key(1, impl=prng)
    if job.impl in OURS:
        import equinox as eqx

        import eqx_bigbird as eb

        if checkpoint:
            model = eb.BigBirdForMaskedLM.from_pretrained(checkpoint, config_overrides=overrides)
        else:
            model = eb.BigBirdForMaskedLM(eb.BigBirdConfig(**cfg, **overrides), key=jr.PRNGKey(0))
        model = eb.with_options(
            eqx.nn.inference_mode(model, False), gradient_checkpointing=job.remat
        )
        params, static = eqx.partition(model, eqx.is_inexact_array)
        labels = jnp.asarray(np.take_along_axis(ids, positions, axis=1))

        def loss(p, x, pos, labels, key):
            model = eqx.combine(p, static)

            def one(ids, pos, labels, key):
                return eb.masked_lm_loss(model(ids, positions=pos, key=key).logits, labels)

            return jax.vmap(one)(x, pos, labels, jr.split(key, batch)).mean()

        # Every array is an argument, as in a training loop: a label array closed over would be a
        # compile-time constant (XLA then spends seconds folding the loss's masks).
        inputs = (jnp.asarray(ids), jnp.asarray(positions), labels, key)
    else:
        params, inputs, loss = _hf_mlm_loss(cfg, checkpoint, overrides, ids, positions, key)
    if not optimizer:
        return jax.value_and_grad(loss), (params, *inputs)
    return _with_adamw(jax.value_and_grad(loss), params, *inputs)


def _hf_mlm_loss(cfg, checkpoint, overrides, ids, positions, key):
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    import optax
    import transformers

    from .hf import lenient

    batch, n = ids.shape
    with lenient():
        config = transformers.BigBirdConfig(**cfg, **overrides)
        model = transformers.FlaxBigBirdForMaskedLM.from_pretrained(checkpoint, config=config)
    labels = np.full((batch, n), -100, np.int32)
    np.put_along_axis(labels, positions, np.take_along_axis(ids, positions, axis=1), axis=1)
    labels = jnp.asarray(labels)

    def loss(p, x, labels, key):
        k1, k2 = jr.split(key)
        with lenient():
            logits = model(x, params=p, train=True, dropout_rng=k1, indices_rng=k2).logits
            valid = labels != -100
            targets = jnp.where(valid, labels, 0)
            nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
            # Each example's mean over its masked tokens (all have as many), then over the batch.
            return jnp.sum(jnp.where(valid, nll, 0.0)) / valid.sum()

    return model.params, (jnp.asarray(ids), labels, key), loss


def _with_adamw(value_and_grad, params, *inputs):
    """(step, args) of a whole training step, as users train: the loss and gradients, then
    AdamW's update. `step(params, opt_state, *inputs) -> (loss, params, opt_state)`; the child
    donates the first two and carries them from step to step."""
    import optax

    optimizer = optax.adamw(1e-5, weight_decay=0.01)

    def step(params, opt_state, *inputs):
        loss, grads = value_and_grad(params, *inputs)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return loss, optax.apply_updates(params, updates), opt_state

    return step, (params, optimizer.init(params), *inputs)


def _malloc_trim():
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _rss_gb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


class _RssSampler:
    """Peak resident memory while the measured step runs (sampled every 10 ms), so that loading
    the checkpoint (the same for every job) does not hide the step's own footprint."""

    def __init__(self):
        import threading

        self.peak, self._stop = _rss_gb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss_gb())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def child(job: Job, cfg: dict, checkpoint: str | None, reps: int, prng: str) -> dict:
    import gc

    import jax

    train = job.mode == "train"
    if train:
        fn, args = _train_fn(job, cfg, checkpoint, prng=prng)
    else:
        fn, args = _forward_fn(job, cfg, checkpoint)
    options = {}
    if train and job.impl in OURS:
        import eqx_bigbird as eb
        from eqx_bigbird import training

        # The compiler options this version's `make_train_step` (and so `eqx-bigbird train`)
        # compiles with: `jit_options()` since it applies them through `outermost_jit`.
        if hasattr(training, "outermost_jit"):
            options = eb.jit_options()
    t0 = time.perf_counter()
    # A training step donates its parameters and optimizer state and returns the new ones.
    compiled = jax.jit(fn, donate_argnums=(0, 1) if train else (), **options)
    compiled = compiled.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    state = list(args)

    def call():
        if not train:
            return compiled(*state)
        loss, state[0], state[1] = compiled(*state)
        return loss
    # Hand the compiler's freed heap back to the OS before stepping: HF's training step needs
    # ~22 GB of the machine's 24 GB and was killed for memory without this.
    gc.collect()
    _malloc_trim()
    before = _rss_gb()
    with _RssSampler() as rss:
        median, times = _timed(call, reps)
    memory = compiled.memory_analysis()
    return dict(
        compile_s=compile_s, median_s=median, times_s=times,
        # XLA's own buffer plan: temporaries (activations, workspace) of one step.
        xla_temp_gb=getattr(memory, "temp_size_in_bytes", 0) / 1e9,
        # Process memory while stepping: the model and inputs plus the step's buffers.
        step_rss_gb=rss.peak, step_rss_above_start_gb=rss.peak - before,
        peak_rss_gb=_peak_rss_gb(),
        device=jax.devices()[0].device_kind,
        matmul_flops_per_s=matmul_rate(
            shape=(job.length, cfg["hidden_size"], cfg["intermediate_size"])
        ),
    )


def matmul_rate(reps=5, shape=(4096, 768, 3072)) -> float:
    """Measured f32 GEMM rate (FLOP/s) of this machine: `(m, k) @ (k, n)` for `shape = (m, k,
    n)`; by default 4096x768 @ 768x3072, as bigbird-roberta-base's FFN at 4096 tokens does."""
    import jax
    import jax.numpy as jnp

    m, k, n = shape
    a = jnp.ones((m, k), jnp.float32)
    b = jnp.ones((k, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    median, _ = _timed(lambda: f(a, b), reps)
    return 2 * m * k * n / median


# -- parent ---------------------------------------------------------------------------------------


def _make_checkpoint(cfg: dict, folder: str) -> str | None:
    """HF Flax random weights (a PreTraining model: encoder, pooler and MLM head) saved with
    `save_pretrained`; both sides load what they need from it."""
    try:
        import transformers
    except ImportError:
        return None
    from .hf import lenient

    with lenient():
        config = transformers.BigBirdConfig(**cfg)
        model = transformers.FlaxBigBirdForPreTraining(
            config, seed=0, input_shape=(1, 16 * cfg["block_size"])
        )
        model.save_pretrained(folder)
    return folder


def _run_child(job, cfg, checkpoint, reps, timeout, baseline_src, allocator, prng):
    cmd = [sys.executable, "-m", "benchmarks.run", "--child", json.dumps(
        dict(job=dataclasses.asdict(job), cfg=cfg, checkpoint=checkpoint, reps=reps, prng=prng)
    )]
    env = dict(os.environ)
    if allocator in ("reuse", "huge-pages"):
        # What `eqx-bigbird` commands set with `reuse_freed_memory()`, given to every
        # implementation alike through glibc's environment variables.
        env.update(ALLOCATOR_ENVIRONMENT)
    if allocator == "huge-pages":
        env.update(HUGE_PAGES)
    if job.impl == "baseline":
        # Imported ahead of the installed package: the same harness times another version.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [baseline_src, env.get("PYTHONPATH")]))
    return run_json(cmd, timeout, env)


def run_json(cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    """The JSON object a measuring subprocess prints last, or `{"error": why}` when it timed
    out, was killed or failed."""
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout} s")
    if out.returncode < 0:  # killed by a signal: SIGKILL here is almost always the OOM killer
        return dict(error=f"killed by signal {-out.returncode} (out of memory?)")
    if out.returncode != 0:
        lines = [x for x in out.stderr.strip().splitlines() if "Error" in x or "error" in x]
        return dict(error=(lines or out.stderr.strip().splitlines() or ["?"])[-1][:300])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _device(rows):
    return next((r["device"] for r in rows if "device" in r), "CPU")


def _markdown(rows, allocator, prng):
    lines = [
        f"device: {_device(rows)}; glibc allocator: {allocator} (`--allocator`); training keys: "
        f"{prng} (`--prng`)",
        "",
        "| impl | mode | attention | tokens | batch | compile s | median s | s/example | ms/token "
        "| GFLOP/s | matmul GFLOP/s | % matmul | XLA temp GB | RSS while stepping GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        impl = r["impl"] + (f" (remat {r['remat']})" if r.get("remat") else "")
        if "error" in r:
            lines.append(
                f"| {impl} | {r['mode']} | {r['attention']} | {r['length']} | {r['batch']} | "
                f"{r['error']} | | | | | | | | |"
            )
            continue
        per_example = r["median_s"] / r["batch"]
        lines.append(
            f"| {impl} | {r['mode']} | {r['attention']} | {r['length']} | {r['batch']} | "
            f"{r['compile_s']:.1f} | {r['median_s']:.3f} | {per_example:.3f} | "
            f"{1e3 * per_example / r['length']:.3f} | {r['gflops']:.1f} | "
            f"{r['matmul_flops_per_s'] / 1e9:.1f} | {100 * r['fraction_of_matmul']:.0f}% | "
            f"{r['xla_temp_gb']:.2f} | "
            f"{r['step_rss_gb']:.2f} |"
        )
    for other, label in (("hf", "HF"), ("baseline", "baseline")):
        ratios = _ratios(rows, other)
        if ratios:
            lines += ["", f"| mode | attention | tokens | batch | ours / {label} throughput |"]
            lines += ["|---|---|---|---|---|"]
            lines += [f"| {' | '.join(map(str, key))} | {x:.2f}x |"
                      for key, x in sorted(ratios.items())]
    lines += [
        "",
        "GFLOP/s use the FLOP model (performance.md section 4) for both implementations; training "
        "counts the MLM head at the 15% masked positions only (HF computes it at every position). "
        "% matmul is against the f32 GEMM rate at the FFN shape measured in the row's own process "
        "right after its steps (matmul GFLOP/s).",
    ]
    return "\n".join(lines) + "\n"


def _ratios(rows, other="hf"):
    """`{(mode, attention, tokens, batch): other's time / ours}`: our throughput relative to
    `other` at the same batch size."""
    by = {
        (r["impl"], r["mode"], r["attention"], r["length"], r["batch"]): r
        for r in rows
        if "error" not in r and not r.get("remat")
    }
    return {
        key[1:]: by[(other, *key[1:])]["median_s"] / r["median_s"]
        for key, r in by.items()
        if key[0] == "ours" and (other, *key[1:]) in by
    }


def _plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    batch = min((r["batch"] for r in rows), default=1)
    for impl in ("ours", "hf"):
        for attention, style in (("block_sparse", "-"), ("original_full", "--")):
            pts = sorted(
                (r["length"], 1e3 * r["median_s"] / r["length"])
                for r in rows
                if r["impl"] == impl and r["attention"] == attention and r["mode"] == "forward"
                and r["batch"] == batch and "error" not in r
            )
            if pts:
                label = f"{'eqx-bigbird' if impl == 'ours' else 'HF Flax'} {attention}"
                ax.plot(*zip(*pts), style, marker="o", label=label,
                        color="tab:blue" if impl == "ours" else "tab:orange")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("forward time per token (ms)")
    ax.set_title(f"BigBird forward, batch {batch}, float32, {_device(rows)}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small dims, two lengths, two reps")
    p.add_argument("--out", default="benchmark-results")
    p.add_argument("--lengths", type=int, nargs="*")
    p.add_argument("--attention", nargs="*", default=["block_sparse", "original_full"])
    p.add_argument("--impls", nargs="*", default=["ours", "hf"],
                   help="ours, hf, baseline (needs --baseline-src)")
    p.add_argument("--baseline-src", help="a source tree (its src/ folder) of another eqx-bigbird "
                   "version, measured as impl 'baseline' in the same run")
    p.add_argument("--modes", nargs="*", default=["forward", "train"])
    p.add_argument("--train-lengths", type=int, nargs="*")
    p.add_argument(
        "--remat", nargs="*", default=[None, "dots_with_no_batch_dims_saveable"],
        help="gradient-checkpointing policies to measure for our training step",
    )
    p.add_argument("--batch", type=int, nargs="*", default=[1],
                   help="batch sizes (ours: jax.vmap over examples; HF: its batch dimension)")
    p.add_argument("--reps", type=int)
    p.add_argument("--allocator", choices=["reuse", "huge-pages", "default"], default="reuse",
                   help="glibc's allocator in every measured process: 'reuse' keeps freed "
                   "buffers for the next ones, as `eqx_bigbird.reuse_freed_memory()` and every "
                   "eqx-bigbird command set it (default); 'huge-pages' also backs the buffers "
                   "above 2 GiB, which glibc still maps afresh, with transparent huge pages "
                   "(GLIBC_TUNABLES=glibc.malloc.hugetlb=1); 'default' maps every large buffer "
                   "afresh")
    p.add_argument("--prng", choices=["threefry2x32", "rbg", "unsafe_rbg"], default="threefry2x32",
                   help="JAX PRNG implementation of the training step's key (dropout masks, "
                   "random plans), both implementations (default threefry2x32, JAX's default)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per measurement")
    p.add_argument("--max-position-embeddings", type=int,
                   help="position table size (default 16384; raise it for longer lengths)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--setup", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        spec = json.loads(args.child)
        result = child(Job(**spec["job"]), spec["cfg"], spec["checkpoint"], spec["reps"],
                       spec["prng"])
        print(json.dumps(result))
        return 0
    if args.setup:
        spec = json.loads(args.setup)
        print(json.dumps(dict(checkpoint=_make_checkpoint(spec["cfg"], spec["folder"]))))
        return 0

    cfg = dict(QUICK if args.quick else BASE)
    if args.max_position_embeddings:
        cfg["max_position_embeddings"] = args.max_position_embeddings
    lengths = args.lengths or ([256, 512] if args.quick else [1024, 4096, 8192, 16384])
    reps = args.reps or (2 if args.quick else 3)
    train_lengths = args.train_lengths or ([256] if args.quick else [4096])
    os.makedirs(args.out, exist_ok=True)
    impls = list(args.impls)
    if "baseline" in impls and not args.baseline_src:
        p.error("--impls baseline needs --baseline-src DIR")
    with tempfile.TemporaryDirectory() as tmp:
        # The parent stays light (no jax): the checkpoint comes from a subprocess, so nothing
        # it holds competes with the measured children for memory.
        setup = subprocess.run(
            [sys.executable, "-m", "benchmarks.run", "--setup",
             json.dumps(dict(cfg=cfg, folder=tmp))],
            capture_output=True, text=True, check=True,
        )
        setup = json.loads(setup.stdout.strip().splitlines()[-1])
        checkpoint = setup["checkpoint"]
        if checkpoint is None and "hf" in impls:
            print("transformers/flax not installed: measuring eqx-bigbird only", flush=True)
            impls.remove("hf")
        jobs = []
        if "forward" in args.modes:
            jobs += [
                Job(impl, "forward", attention, n, batch=b)
                for n in lengths
                for b in args.batch
                for attention in args.attention
                for impl in impls
                if attention == "block_sparse" or n <= FULL_ATTENTION_MAX
            ]
        if "train" in args.modes:
            remats = [None if r in (None, "none") else r for r in args.remat]
            for n in train_lengths:
                for b in args.batch:
                    for impl in impls:
                        for remat in remats if impl in OURS else [None]:
                            jobs.append(Job(impl, "train", "block_sparse", n, remat, b))
        rows = []
        for i, job in enumerate(jobs, 1):
            print(f"[{i}/{len(jobs)}] {job}", flush=True)
            result = _run_child(job, cfg, checkpoint, reps, args.timeout, args.baseline_src,
                                args.allocator, args.prng)
            row = {**dataclasses.asdict(job), **result}
            if "error" not in row:
                flops = (
                    forward_flops(cfg, job.length, job.attention)
                    if job.mode == "forward"
                    else train_flops(cfg, job.length, job.attention, round(0.15 * job.length))
                )
                flops *= job.batch
                row["gflops"] = flops / row["median_s"] / 1e9
                row["fraction_of_matmul"] = flops / row["median_s"] / row["matmul_flops_per_s"]
            print("   ", {k: v for k, v in row.items() if k != "times_s"}, flush=True)
            rows.append(row)
    summary = dict(config=cfg, device=_device(rows), allocator=args.allocator, prng=args.prng,
                   rows=rows,
                   ratios={"/".join(map(str, k)): v for k, v in _ratios(rows).items()},
                   ratios_to_baseline={
                       "/".join(map(str, k)): v for k, v in _ratios(rows, "baseline").items()
                   })
    atomic_write_text(os.path.join(args.out, "results.json"), json.dumps(summary, indent=2))
    report = _markdown(rows, args.allocator, args.prng)
    atomic_write_text(os.path.join(args.out, "results.md"), report)
    _plot(rows, os.path.join(args.out, "results.png"))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
