"""Run by tests/test_distributed.py in subprocesses (the device count must be set before JAX
starts). Modes:

    python tests/distributed_check.py train OUT COORDINATOR NUM_PROCESSES PROCESS_ID
        one of several processes (2 CPU devices each): 5 steps of data-parallel and of FSDP
        training on a global mesh, each process feeding its own rows; checkpoints at steps 3
        and 5 in OUT/{dp,fsdp}.
    python tests/distributed_check.py reference OUT
        one process with 4 devices: the same runs; prints one JSON object comparing them with
        the checkpoints `train` wrote, also restored onto other meshes.
    python tests/distributed_check.py cli-kill VICTIM STEP CLI_ARGS...
        `eqx-bigbird train CLI_ARGS`, but process VICTIM kills itself (SIGKILL) as soon as its
        checkpoint of step STEP has started writing (Orbax writes in the background).
"""

import os
import sys

from jax_child import MIN_SIZE, TINY, masked_lm_loss, start

eb = start({"train": 2, "reference": 4, "cli-kill": 2}[sys.argv[1]])

import json  # noqa: E402
import signal  # noqa: E402

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from eqx_bigbird import sharding  # noqa: E402
from eqx_bigbird.training import TrainState  # noqa: E402

CONFIG = eb.BigBirdConfig(**TINY, hidden_dropout_prob=0.1)
STEPS, SAVE_AT, GLOBAL_BATCH = 5, (3, 5), 8
# Adam divides by sqrt(v) + eps, amplifying rounding in near-zero gradients by up to lr / eps;
# a small lr keeps that far below the 1e-5 asked for (as in tests/sharding_check.py).
OPTIMIZER = optax.adamw(1e-3)
CASES = {"dp": False, "fsdp": True}


def global_batch(step):
    """The whole batch of `step` (every process can compute it; each feeds only its rows)."""
    ids = jr.randint(jr.fold_in(jr.PRNGKey(1), step), (GLOBAL_BATCH, 32), 5, 64)
    labels = jnp.where(jr.bernoulli(jr.fold_in(jr.PRNGKey(2), step), 0.3, ids.shape), ids, -100)
    return {"ids": np.asarray(ids, np.int32), "labels": np.asarray(labels, np.int32)}


def train(state, mesh, fsdp, checkpoints=None, snapshots=None):
    """Steps 1 .. STEPS on `mesh`; at SAVE_AT, a checkpoint (given a Checkpointer) or a host
    copy of the state into `snapshots`."""
    step = eb.make_sharded_train_step(masked_lm_loss, OPTIMIZER, state, mesh, fsdp=fsdp,
                                      min_size=MIN_SIZE)
    rows = sharding.process_rows(mesh, GLOBAL_BATCH)
    for s in range(STEPS):
        local = {k: v[rows] for k, v in global_batch(s).items()}
        state, _ = step(state, eb.shard_batch(local, mesh), jr.fold_in(jr.PRNGKey(3), s))
        if checkpoints is not None and s + 1 in SAVE_AT:
            checkpoints.save(state, extra={"examples_seen": (s + 1) * GLOBAL_BATCH})
        if snapshots is not None and s + 1 in SAVE_AT:
            snapshots[s + 1] = jax.tree_util.tree_map(sharding.to_host, state)
    return state


def fresh(mesh, fsdp):
    # Built under jit: one compilation instead of one per initialiser op (seconds saved).
    model = eqx.filter_jit(lambda k: eb.BigBirdForMaskedLM(CONFIG, key=k))(jr.PRNGKey(0))
    return eb.shard_state(TrainState.create(model, OPTIMIZER), mesh, fsdp=fsdp, min_size=MIN_SIZE)


def leaves(tree):
    return [sharding.to_host(x) for x in jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_array))]


def max_diff(a, b):
    pairs = zip(leaves(a), leaves(b), strict=True)
    return max(float(np.max(np.abs(x - y), initial=0.0)) for x, y in pairs)


def main_train(out, coordinator, num_processes, process_id):
    sharding.initialize_distributed(coordinator, int(num_processes), int(process_id),
                                    initialization_timeout=60, heartbeat_timeout=10)
    assert jax.process_count() == 2 and jax.device_count() == 4
    for name, fsdp in CASES.items():
        mesh = eb.make_mesh()
        with eb.Checkpointer(os.path.join(out, name), max_to_keep=3) as checkpoints:
            train(fresh(mesh, fsdp), mesh, fsdp, checkpoints)


def main_reference(out):
    assert jax.process_count() == 1 and jax.device_count() == 4
    results = {}
    for name, fsdp in CASES.items():
        mesh = eb.make_mesh()
        snapshots = {}
        ref = train(fresh(mesh, fsdp), mesh, fsdp, snapshots=snapshots)
        folder = os.path.join(out, name)
        checkpoints = eb.Checkpointer(folder, read_only=True)
        written, extra = checkpoints.restore(OPTIMIZER, mesh=mesh, fsdp=fsdp, min_size=MIN_SIZE)
        # Step 3 onto a mesh the writer never had (2x2, parameters sharded over "fsdp" only),
        # and onto one device in one call. (Continuing from a restored 2-process checkpoint
        # is tested through the CLI.)
        other = eb.make_mesh(data=2, fsdp=2)
        mid, _ = checkpoints.restore(OPTIMIZER, step=3, mesh=other, fsdp="fsdp",
                                     min_size=MIN_SIZE)
        single = eb.load_training_state(os.path.join(folder, "3"), OPTIMIZER)
        model_only = eb.load_training_state(folder)
        results[name] = {
            "steps": checkpoints.steps(),
            "extra": extra,
            "step": int(written.step),
            "param_diff": max_diff(written.model, ref.model),
            "opt_state_diff": max_diff(written.opt_state, ref.opt_state),
            "moments_compared": len(leaves(written.opt_state)),
            "mu_sharding": str(written.opt_state[0].mu.bert.encoder.layers.attention.query.weight
                               .sharding.spec),
            "mid_sharding": str(mid.model.bert.encoder.layers.attention.query.weight
                                .sharding.spec),
            "mid_step": int(mid.step),
            "mid_diff": max_diff(mid, snapshots[3]),
            "single_device_step": int(single.step),
            "single_device_diff": max_diff(single, snapshots[3]),
            "single_device_devices": sorted({len(x.devices()) for x in leaves_of(single)}),
            "model_only_diff": max_diff(model_only.model, ref.model),
            "model_only_opt_state": model_only.opt_state is None,
            "model_only_devices": sorted({len(x.devices()) for x in leaves_of(model_only.model)}),
        }
        checkpoints.close()
    print(json.dumps(results))


def leaves_of(tree):
    return jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_array))


def main_cli_kill(victim, step, cli_args):
    """The train CLI, with process `victim` dying right after its step-`step` checkpoint has
    started (its arrays are on host, the background write and the commit are not done)."""
    from eqx_bigbird import checkpointing
    from eqx_bigbird.cli import main

    save = checkpointing.Checkpointer.save

    def save_then_die(self, state, *, extra=None):
        saved = save(self, state, extra=extra)
        if saved == int(step) and jax.process_index() == int(victim):
            print(f"process {victim}: killed while writing step {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return saved

    checkpointing.Checkpointer.save = save_then_die
    sys.exit(main(["train", *cli_args]))


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "train":
        main_train(*rest)
    elif mode == "reference":
        main_reference(*rest)
    else:
        main_cli_kill(rest[0], rest[1], rest[2:])
