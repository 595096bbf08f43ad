"""Step time and per-device memory of the sharded train step on 1, 2, 4, 8 simulated CPU devices,
and what splitting one long sequence's blocks over devices costs the sparse attention.

    python -m benchmarks.sharding [--quick] [--out results/sharding.json]

Simulated devices share the machine's cores, so times show partitioning overhead, not speedup;
memory (XLA's per-device `memory_analysis`) is what a real mesh would see.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    " --xla_cpu_multi_thread_eigen=false"
)

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import eqx_bigbird as eb  # noqa: E402
from eqx_bigbird import sparse_attention as sa  # noqa: E402
from eqx_bigbird._io import atomic_write_text  # noqa: E402
from eqx_bigbird.training import TrainState, make_train_step  # noqa: E402

MiB = 2**20


def loss_fn(model, batch, *, key):
    keys = jr.split(key, batch["ids"].shape[0])
    logits = jax.vmap(lambda ids, k: model(ids, key=k).logits)(batch["ids"], keys)
    return eb.masked_lm_loss(logits, batch["labels"])


def memory(compiled) -> dict:
    """Per-device bytes XLA plans for one call: live arguments + outputs not aliased to them +
    temporaries."""
    m = compiled.memory_analysis()
    peak = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    return {"temp_mib": m.temp_size_in_bytes / MiB, "peak_mib": (peak + m.temp_size_in_bytes) / MiB}


COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
BYTES = {"f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "pred": 1, "s8": 1, "u8": 1}


def collectives(hlo: str) -> dict:
    """Count and result MiB per device of each collective in the compiled HLO (a collective
    inside a loop body is counted once; asynchronous pairs by their start)."""
    out = {}
    for op in COLLECTIVES:
        lines = re.findall(rf"= (.*?) {op}(?:-start)?\(", hlo)
        nbytes = 0
        for result in lines:
            for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", result):
                size = int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64))
                nbytes += size * BYTES.get(dtype, 4)
        if lines:
            out[op] = [len(lines), round(nbytes / MiB, 3)]
    return out


def timed(fn, reps):
    out = fn()
    jax.block_until_ready(out)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def state_mib_on_device0(state) -> float:
    dev = jax.devices()[0]
    return sum(
        s.data.nbytes
        for x in jax.tree_util.tree_leaves(eqx.filter(state, eqx.is_array))
        for s in x.addressable_shards
        if s.device == dev
    ) / MiB


def train_case(config, n, fsdp, batch, reps, *, layer_axis=False):
    mesh = eb.make_mesh(data=n, devices=jax.devices()[:n])
    model = eb.BigBirdForMaskedLM(config, key=jr.PRNGKey(0))
    optimizer = optax.adamw(1e-4)
    state = eb.shard_state(TrainState.create(model, optimizer), mesh, fsdp=fsdp)
    shardings = eb.state_shardings(state, mesh, fsdp=fsdp)
    if layer_axis:  # the alternative leaf_spec rejects: split the stacked layer axis
        def spec(path, s, x):
            stacked = any(getattr(k, "name", None) == "layers" for k in path)
            if s is None or s.spec == P() or not stacked or x.shape[0] % n:
                return s
            return NamedSharding(mesh, P("data"))

        shardings = jax.tree_util.tree_map_with_path(
            spec, shardings, eqx.filter(state, eqx.is_array), is_leaf=lambda s: s is None
        )
        state = eqx.combine(jax.device_put(eqx.filter(state, eqx.is_array), shardings), state)
    step = make_train_step(
        loss_fn, optimizer, state_shardings=shardings, batch_sharding=eb.sharding.batch_sharding(mesh)
    )
    b = eb.shard_batch(batch, mesh)
    key = jr.PRNGKey(1)
    t = time.perf_counter()
    outer = eqx.filter_jit(lambda b, s, k: step(s, b, k), donate="all-except-first")
    compiled = outer.lower(b, state, key).compile()
    compile_s = time.perf_counter() - t
    hlo = compiled.compiled.as_text()
    holder = [state]

    def run():
        holder[0], metrics = step(holder[0], b, key)
        return metrics["loss"]

    step_s = timed(run, reps)
    return {
        "devices": n, "fsdp": fsdp, "layer_axis": layer_axis, "compile_s": compile_s,
        "step_s": step_s, "state_mib_device0": state_mib_on_device0(holder[0]),
        **memory(compiled.compiled), "collectives": collectives(hlo),
    }


def attention_case(n, seq, heads, dim, block, r, reps):
    """One example's block-sparse attention with q, k, v split along the sequence (block) axis
    over n devices, partitioned by GSPMD (no hand-written communication)."""
    mesh = eb.make_mesh(data=n, devices=jax.devices()[:n])
    seq_sharded = NamedSharding(mesh, P(None, "data", None))
    ks = jr.split(jr.PRNGKey(0), 4)
    q, k, v = (jax.device_put(jr.normal(kk, (heads, seq, dim)), seq_sharded) for kk in ks[:3])
    mask = jax.device_put(jnp.ones(seq), NamedSharding(mesh, P("data")))
    plan = jax.device_put(sa.random_plan(ks[3], heads, seq // block, r), NamedSharding(mesh, P()))

    @jax.jit
    def fwd(q, k, v, mask, plan):
        ctx, _ = sa.block_sparse_attention(q, k, v, mask, plan, block_size=block)
        return jax.lax.with_sharding_constraint(ctx, seq_sharded)

    t = time.perf_counter()
    compiled = fwd.lower(q, k, v, mask, plan).compile()
    compile_s = time.perf_counter() - t
    step_s = timed(lambda: compiled(q, k, v, mask, plan), reps)
    return {
        "devices": n, "seq": seq, "compile_s": compile_s, "step_s": step_s,
        **memory(compiled), "collectives": collectives(compiled.as_text()),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default="results/sharding.json")
    args = parser.parse_args()
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")

    if args.quick:
        config = eb.BigBirdConfig(
            vocab_size=256, hidden_size=32, num_hidden_layers=8, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=256, block_size=16, num_random_blocks=1,
        )
        seq, attn_seq = 128, 2048
    else:
        config = eb.BigBirdConfig(
            vocab_size=8192, hidden_size=128, num_hidden_layers=8, num_attention_heads=4,
            intermediate_size=512, max_position_embeddings=1024, block_size=16,
            num_random_blocks=2,
        )
        seq, attn_seq = 256, 8192
    ids = jr.randint(jr.PRNGKey(2), (8, seq), 5, config.vocab_size).astype(jnp.int32)
    labels = jnp.where(jr.bernoulli(jr.PRNGKey(3), 0.15, ids.shape), ids, -100).astype(jnp.int32)
    batch = {"ids": np.asarray(ids), "labels": np.asarray(labels)}

    results = {"config": config.to_hf(), "batch": [8, seq], "train": [], "attention": []}
    cases = [(n, fsdp, False) for n in (1, 2, 4, 8) for fsdp in (False, True)]
    cases.append((8, True, True))
    for n, fsdp, layer_axis in cases:
        row = train_case(config, n, fsdp, batch, args.reps, layer_axis=layer_axis)
        print(json.dumps(row), flush=True)
        results["train"].append(row)
    for n in (1, 2, 4, 8):
        row = attention_case(n, attn_seq, 4, 64, 64, 3, args.reps)
        print(json.dumps(row), flush=True)
        results["attention"].append(row)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
