"""How much XLA:CPU's YNNPACK fusions cost a pre-LayerNorm encoder (BigBird-Pegasus).

XLA:CPU (jaxlib 0.10) fuses a LayerNorm into the dot that consumes it; when the dot's weight is
a runtime argument (a model's parameters, not a compile-time constant) that fused dot runs 2-4x
slower than the LayerNorm and the dot apart. `--xla_cpu_experimental_ynn_fusion_type=
individual_dot` keeps dots unfused. This runs the BigBird-Pegasus encoder (large dims, random
weights) under both settings in alternating subprocesses (XLA reads its flags at start-up) and
prints the medians and their ratio.

    python -m benchmarks.ynn_fusion [--layers 2] [--tokens 4096] [--rounds 3]
"""

import argparse
import json
import os
import sys

from benchmarks.pegasus import LARGE
from benchmarks.run import _timed, run_json

FLAG = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"


def _child(layers: int, tokens: int, reps: int) -> dict:
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
    encode = jax.jit(lambda p, x: eqx.combine(p, static).model.encode(x, inference=True)[0])
    median, _ = _timed(lambda: encode(params, ids), reps)
    return dict(median_s=median)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3, help="subprocesses per setting")
    parser.add_argument("--reps", type=int, default=3, help="timed calls per subprocess")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.layers, args.tokens, args.reps)))
        return
    settings = {"default": "", "individual_dot": FLAG}
    medians = {name: [] for name in settings}
    cmd = [sys.executable, "-m", "benchmarks.ynn_fusion", "--child", "--layers",
           str(args.layers), "--tokens", str(args.tokens), "--reps", str(args.reps)]
    for r in range(args.rounds):
        for name, flag in settings.items():
            env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip())
            out = run_json(cmd, timeout=1800, env=env)
            if "error" in out:
                raise SystemExit(f"{name}: {out['error']}")
            medians[name].append(out["median_s"])
            print(f"round {r + 1}/{args.rounds} {name}: {medians[name][-1]:.3f} s", flush=True)
    mid = {name: sorted(v)[len(v) // 2] for name, v in medians.items()}
    print(f"BigBird-Pegasus encoder, {args.layers} layers, {args.tokens} tokens, median of "
          f"{args.rounds} processes: default {mid['default']:.3f} s, individual_dot "
          f"{mid['individual_dot']:.3f} s, ratio {mid['default'] / mid['individual_dot']:.2f}x")


if __name__ == "__main__":
    main()
