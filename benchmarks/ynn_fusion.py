"""How much XLA:CPU's YNNPACK fusions cost a pre-LayerNorm encoder (BigBird-Pegasus).

XLA:CPU (jaxlib 0.10) fuses a LayerNorm into the dot that consumes it; when the dot's weight is
a runtime argument (a model's parameters, not a compile-time constant) that fused dot runs 2-4x
slower than the LayerNorm and the dot apart. `eqx_bigbird.jit_options()` (what `generate` and
`eqx-bigbird summarize` compile with) keeps every dot its own YNNPACK call. This runs the
BigBird-Pegasus encoder (large dims, random weights) jitted with and without those options in
alternating subprocesses and prints the medians and their ratio.

    python -m benchmarks.ynn_fusion [--layers 2] [--tokens 4096] [--rounds 3]
"""

import argparse
import json
import sys

from benchmarks.pegasus import LARGE
from benchmarks.run import _timed, run_json

SETTINGS = ("default", "jit_options")


def _child(layers: int, tokens: int, reps: int, setting: str) -> dict:
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
    options = eb.jit_options() if setting == "jit_options" else {}
    if setting == "jit_options" and not options:
        raise SystemExit("jit_options() is empty: not XLA:CPU, or this jaxlib lacks the option")
    encode = jax.jit(
        lambda p, x: eqx.combine(p, static).model.encode(x, inference=True)[0], **options
    )
    median, _ = _timed(lambda: encode(params, ids), reps)
    return dict(median_s=median)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3, help="subprocesses per setting")
    parser.add_argument("--reps", type=int, default=3, help="timed calls per subprocess")
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.layers, args.tokens, args.reps, args.child)))
        return
    medians = {name: [] for name in SETTINGS}
    cmd = [sys.executable, "-m", "benchmarks.ynn_fusion", "--layers", str(args.layers),
           "--tokens", str(args.tokens), "--reps", str(args.reps), "--child"]
    for r in range(args.rounds):
        for name in SETTINGS:
            out = run_json([*cmd, name], timeout=1800)
            if "error" in out:
                raise SystemExit(f"{name}: {out['error']}")
            medians[name].append(out["median_s"])
            print(f"round {r + 1}/{args.rounds} {name}: {medians[name][-1]:.3f} s", flush=True)
    mid = {name: sorted(v)[len(v) // 2] for name, v in medians.items()}
    print(f"BigBird-Pegasus encoder, {args.layers} layers, {args.tokens} tokens, median of "
          f"{args.rounds} processes: default {mid['default']:.3f} s, jit_options() "
          f"{mid['jit_options']:.3f} s, ratio {mid['default'] / mid['jit_options']:.2f}x")


if __name__ == "__main__":
    main()
