"""How much XLA:CPU's YNNPACK fusions cost a pre-LayerNorm encoder (BigBird-Pegasus), and what
`eqx_bigbird.jit_options()` does to BigBird's (post-LayerNorm) MLM training step.

XLA:CPU (jaxlib 0.10) fuses a LayerNorm into the dot that consumes it; when the dot's weight is
a runtime argument (a model's parameters, not a compile-time constant) that fused dot runs 2-4x
slower than the LayerNorm and the dot apart. `eqx_bigbird.jit_options()` (what `generate` and
`eqx-bigbird summarize` compile with) keeps every dot its own YNNPACK call. This runs the
BigBird-Pegasus encoder (large dims, random weights; `--workload encoder`) or the MLM
`value_and_grad` of `benchmarks.run` (bigbird-roberta-base dims, block-sparse; `--workload
mlm-train`) jitted with and without those options in alternating subprocesses, and prints the
medians, their ratio and the compile times.

    python -m benchmarks.ynn_fusion [--layers 2] [--tokens 4096] [--rounds 3]
    python -m benchmarks.ynn_fusion --workload mlm-train --tokens 2048
"""

import argparse
import json
import sys

from benchmarks.pegasus import LARGE
from benchmarks.run import BASE, Job, _timed, _train_fn, run_json

SETTINGS = ("default", "jit_options")


def _encoder(layers: int, tokens: int):
    import equinox as eqx
    import jax
    import numpy as np

    import eqx_bigbird as eb

    config = eb.BigBirdPegasusConfig(**dict(
        LARGE, encoder_layers=layers, decoder_layers=1,
        max_position_embeddings=max(LARGE["max_position_embeddings"], tokens),
    ))
    model = eb.BigBirdPegasusForConditionalGeneration(config, key=jax.random.PRNGKey(0))
    ids = np.random.default_rng(0).integers(5, config.vocab_size, (tokens,)).astype(np.int32)
    params, static = eqx.partition(model, eqx.is_array)
    return lambda p, x: eqx.combine(p, static).model.encode(x, inference=True)[0], (params, ids)


def _child(workload: str, layers: int, tokens: int, reps: int, setting: str) -> dict:
    import time

    import jax

    import eqx_bigbird as eb

    if workload == "encoder":
        fn, args = _encoder(layers, tokens)
    else:
        fn, args = _train_fn(Job("ours", "train", "block_sparse", tokens), BASE, None,
                             optimizer=False)  # the gradient computation alone
    options = eb.jit_options() if setting == "jit_options" else {}
    if setting == "jit_options" and not options:
        raise SystemExit("jit_options() is empty: not XLA:CPU, or this jaxlib lacks the option")
    t0 = time.perf_counter()
    compiled = jax.jit(fn, **options).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    median, _ = _timed(lambda: compiled(*args), reps)
    return dict(median_s=median, compile_s=compile_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=("encoder", "mlm-train"), default="encoder")
    parser.add_argument("--layers", type=int, default=2, help="encoder layers (encoder only)")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3, help="subprocesses per setting")
    parser.add_argument("--reps", type=int, default=3, help="timed calls per subprocess")
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.workload, args.layers, args.tokens, args.reps, args.child)))
        return
    medians = {name: [] for name in SETTINGS}
    compiles = {name: [] for name in SETTINGS}
    cmd = [sys.executable, "-m", "benchmarks.ynn_fusion", "--workload", args.workload,
           "--layers", str(args.layers), "--tokens", str(args.tokens), "--reps", str(args.reps),
           "--child"]
    for r in range(args.rounds):
        for name in SETTINGS:
            out = run_json([*cmd, name], timeout=1800)
            if "error" in out:
                raise SystemExit(f"{name}: {out['error']}")
            medians[name].append(out["median_s"])
            compiles[name].append(out["compile_s"])
            print(f"round {r + 1}/{args.rounds} {name}: {out['median_s']:.3f} s "
                  f"(compile {out['compile_s']:.1f} s)", flush=True)
    mid = {name: sorted(v)[len(v) // 2] for name, v in medians.items()}
    what = (f"BigBird-Pegasus encoder, {args.layers} layers" if args.workload == "encoder"
            else "BigBird MLM value_and_grad, base dims, block_sparse")
    print(f"{what}, {args.tokens} tokens, median of {args.rounds} processes: default "
          f"{mid['default']:.3f} s, jit_options() {mid['jit_options']:.3f} s, ratio "
          f"{mid['default'] / mid['jit_options']:.2f}x; compile "
          f"{max(compiles['default']):.1f} vs {max(compiles['jit_options']):.1f} s at most")


if __name__ == "__main__":
    main()
