"""Block-sparse attention alone, this tree against another (`--baseline-src`), in alternating
subprocesses: `sparse_attention.block_sparse_attention` at bigbird-roberta-base's attention shape
(12 heads of 64, blocks of 64, 3 random blocks: a random plan as in training, or `--plan eval`,
HF's inference plan as a model's forward uses it), forward and forward + backward (`jax.grad`),
through `jax.vmap` for `--batch` > 1. For profiling the kernel; the model-level claims come from
`benchmarks.run`, side by side with HF.

    python -m benchmarks.attention --baseline-src /path/to/other/checkout/src --lengths 2048 8192
"""

import argparse
import json
import os
import sys

from eqx_bigbird._allocator import ENVIRONMENT as ALLOCATOR_ENVIRONMENT

from .run import run_json

HEADS, HEAD_DIM, BLOCK, RANDOM = 12, 64, 64, 3
MODES = ("forward", "forward+backward")


def _child(length: int, batch: int, reps: int, plan: str) -> dict:
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    from eqx_bigbird import jit_options
    from eqx_bigbird import sparse_attention as sa

    from .run import _timed

    nb = length // BLOCK
    kq, kk, kv, kp = jr.split(jr.PRNGKey(0), 4)
    shape = (batch, HEADS, length, HEAD_DIM)
    q, k, v = (jr.normal(key, shape) for key in (kq, kk, kv))
    plans = jax.vmap(lambda key: sa.random_plan(key, HEADS, nb, RANDOM))(jr.split(kp, batch))
    mask = jnp.ones((batch, length))

    def forward(q, k, v, mask, random_plan):
        chosen = sa.EvalPlan(RANDOM) if plan == "eval" else random_plan
        return sa.block_sparse_attention(q, k, v, mask, chosen, block_size=BLOCK)[0]

    def loss(q, k, v, mask, plan):
        return jnp.sum(jax.vmap(forward)(q, k, v, mask, plan) ** 2)

    fns = {
        "forward": jax.jit(jax.vmap(forward), **jit_options()),
        "forward+backward": jax.jit(jax.grad(loss, argnums=(0, 1, 2)), **jit_options()),
    }
    args = (q, k, v, mask, plans)
    return {mode: _timed(lambda: fn(*args), reps)[0] for mode, fn in fns.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline-src", help="another checkout's src/ folder to compare with")
    p.add_argument("--lengths", type=int, nargs="*", default=[2048, 4096, 8192])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--plan", choices=("random", "eval"), default="random")
    p.add_argument("--rounds", type=int, default=3, help="subprocesses per tree and length")
    p.add_argument("--reps", type=int, default=10, help="timed calls per subprocess")
    p.add_argument("--child", type=int, metavar="LENGTH", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.batch, args.reps, args.plan)))
        return
    trees = {"ours": None} | ({"baseline": args.baseline_src} if args.baseline_src else {})
    cmd = [sys.executable, "-m", "benchmarks.attention", "--batch", str(args.batch),
           "--reps", str(args.reps), "--plan", args.plan, "--child"]
    for length in args.lengths:
        times = {(tree, mode): [] for tree in trees for mode in MODES}
        for r in range(args.rounds):
            for tree, src in trees.items():
                env = os.environ | ALLOCATOR_ENVIRONMENT  # as benchmarks.run measures
                if src:  # imported ahead of the installed package, as in benchmarks.run
                    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
                out = run_json([*cmd, str(length)], timeout=1800, env=env)
                if "error" in out:
                    raise SystemExit(f"{tree} at {length}: {out['error']}")
                for mode in MODES:
                    times[tree, mode].append(out[mode])
        for mode in MODES:
            mid = {tree: sorted(times[tree, mode])[args.rounds // 2] for tree in trees}
            line = f"{length} tokens, batch {args.batch}, {args.plan} plan, {mode}: " + ", ".join(
                f"{tree} {1e3 * t:.1f} ms" for tree, t in mid.items()
            )
            if "baseline" in mid:
                line += f", baseline / ours {mid['baseline'] / mid['ours']:.2f}x"
            print(line, flush=True)


if __name__ == "__main__":
    main()
