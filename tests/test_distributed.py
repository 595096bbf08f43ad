"""Multi-process training with `jax.distributed` on this machine: processes on 127.0.0.1 (free
ports), 2 simulated CPU devices each, collectives over gloo; Orbax training-state checkpoints
written by 2 processes and restored in 1 on other meshes; faults (a process killed mid-run and
while a checkpoint is being written).

Every subprocess run is shared by the tests below through module-scoped fixtures."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import equinox as eqx
import jax
import numpy as np
import pytest

import eqx_bigbird as eb
from eqx_bigbird.cli import main

HERE = os.path.dirname(os.path.abspath(__file__))
CHECK = os.path.join(HERE, "distributed_check.py")
RUN_TIMEOUT = 600  # a hang fails the test instead of blocking the suite
# Tiny, and divisible: a global batch of 4 over 4 devices.
TINY = [
    "--seq-len", "192", "--block-size", "16", "--num-random-blocks", "1", "--hidden", "16",
    "--layers", "1", "--heads", "2", "--batch-size", "4", "--val-size", "6", "--test-size", "4",
    "--steps", "5", "--eval-every", "2", "--lr", "1e-3", "--no-progress",
]
HEARTBEAT = 10  # seconds: how soon a dead process is noticed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    src = os.path.dirname(os.path.dirname(eb.__file__))
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    return env


def _launch(commands, env=None) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env or _env())
        for c in commands
    ]


def _finish(procs) -> list[dict]:
    """Waits for every process; each one's exit code, output and the time it ended."""
    deadline = time.monotonic() + RUN_TIMEOUT
    ended = {}
    while len(ended) < len(procs) and time.monotonic() < deadline:
        for i, p in enumerate(procs):
            if i not in ended and p.poll() is not None:
                ended[i] = time.monotonic()
        time.sleep(0.05)
    results = []
    for i, p in enumerate(procs):
        if i not in ended:
            p.kill()
        out, err = p.communicate()
        results.append({"rc": p.returncode, "out": out, "err": err, "ended": ended.get(i)})
    return results


def _cli(port, n, i, *args) -> list[str]:
    return [sys.executable, "-m", "eqx_bigbird.cli", "train", "--distributed", "--coordinator",
            f"127.0.0.1:{port}", "--num-processes", str(n), "--process-id", str(i), *args]


def _cli_env() -> dict:
    return {**_env(), "XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
            "--xla_cpu_multi_thread_eigen=false"}


def _leaves(model):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))]


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(x - y), initial=0.0))
               for x, y in zip(_leaves(a), _leaves(b), strict=True))


# -- the library: eqx_bigbird.sharding + eqx_bigbird.checkpointing -------------------------------


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """2 processes x 2 devices train (DP, then FSDP) and checkpoint; then 1 process with 4
    devices trains the same and compares (a JSON report)."""
    out = tmp_path_factory.mktemp("library")
    port = _free_port()
    runs = _finish(_launch([
        [sys.executable, CHECK, "train", str(out), f"127.0.0.1:{port}", "2", str(i)]
        for i in range(2)
    ]))
    for r in runs:
        assert r["rc"] == 0, r["err"][-4000:]
    ref = _finish(_launch([[sys.executable, CHECK, "reference", str(out)]]))[0]
    assert ref["rc"] == 0, ref["err"][-4000:]
    return json.loads(ref["out"].strip().splitlines()[-1])


def test_two_processes_train_as_one_process_with_four_devices(library):
    """5 steps (dropout on) of data parallelism and of FSDP over 2 processes: parameters and
    Adam's moments within 1e-5 of one process with 4 devices, same seed and global batch."""
    for name in ("dp", "fsdp"):
        run = library[name]
        assert run["step"] == 5 and run["steps"] == [3, 5], run
        assert run["param_diff"] < 1e-5 and run["opt_state_diff"] < 1e-5, run
        assert run["moments_compared"] == 53, run  # count + mu and nu of 26 parameters
    # Restored onto the writer's shardings: FSDP moments split over both axes, DP replicated.
    assert library["fsdp"]["mu_sharding"] == "P(None, ('data', 'fsdp'), None)"
    assert library["dp"]["mu_sharding"] == "P()"


def test_checkpoint_of_two_processes_restores_on_other_meshes(library):
    """The step-3 checkpoint of 2 processes, restored in 1 process on a 2x2 mesh sharded over
    `fsdp` only, and on one device by `load_training_state` (one call): the reference's state
    at step 3; without an optimizer, the model alone."""
    for name in ("dp", "fsdp"):
        run = library[name]
        assert run["mid_sharding"] == "P(None, 'fsdp', None)", run
        assert run["mid_step"] == 3 and run["mid_diff"] < 1e-5, run
        assert run["single_device_step"] == 3 and run["single_device_diff"] < 1e-5, run
        assert run["single_device_devices"] == [1], run
        assert run["model_only_diff"] < 1e-5 and run["model_only_opt_state"], run
        assert run["model_only_devices"] == [1] and run["extra"] == {"examples_seen": 40}, run


# -- the train CLI ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Three runs of `eqx-bigbird train`: 2 processes to the end; 2 processes in which process 1
    is killed while its step-4 checkpoint is being written; 1 process, 1 device (in this one)."""
    root = tmp_path_factory.mktemp("cli")
    env = _cli_env()
    port = _free_port()
    full = _launch([
        _cli(port, 2, i, *TINY, "--mesh", "4x1", "--save-every", "2", "--out",
             str(root / "two"), "--heartbeat-timeout", "60")
        for i in range(2)
    ], env)
    two = _finish(full)
    port = _free_port()
    killed = _launch([
        [sys.executable, CHECK, "cli-kill", "1", "4",
         *_cli(port, 2, i, *TINY, "--fsdp", "all", "--save-every", "2", "--out",
               str(root / "killed"), "--heartbeat-timeout", str(HEARTBEAT))[4:]]
        for i in range(2)
    ], env)
    killed = _finish(killed)
    listing = sorted(os.listdir(root / "killed" / "checkpoints"))
    shutil.copytree(root / "killed", root / "killed_copy")  # resuming removes the original
    assert main(["train", *TINY, "--out", str(root / "one")]) == 0
    return {"root": root, "two": two, "killed": killed, "killed_listing": listing}


# gloo's threads print their connection messages unsynchronised, piece by piece (each `<<` of
# its C++ stream), so one message can land inside another, even between a number's digits.
_GLOO_PIECES = re.compile(
    r"\[Gloo\] Rank|is connected to|peer ranks\.|Expected number of connected peer ranks is :"
    r"|[\d\s]"
)


def _without_gloo_messages(text: str) -> str:
    """What is left of `text` once every piece of gloo's connection messages is removed."""
    return _GLOO_PIECES.sub("", text)


def test_two_processes_write_one_set_of_outputs_equal_to_one_process(cli):
    """Through the CLI: process 0 alone prints and writes; the model equals the one-process,
    one-device run's (1e-5), the losses and validation results too."""
    root = cli["root"]
    for r in cli["two"]:
        assert r["rc"] == 0, r["err"][-4000:]
    p0, p1 = cli["two"]
    assert "test accuracy" in p0["out"] and "wrote" in p0["out"]
    assert "mesh: {'data': 4, 'fsdp': 1} (2 processes, 4 devices)" in p0["out"] + p0["err"]
    # Only gloo's own connection messages (printed by the C++ library), nothing of ours.
    assert _without_gloo_messages(p1["out"]) == "", p1["out"]
    assert sorted(os.listdir(root / "two")) == ["metrics.json", "model.safetensors",
                                                "training.png"]
    two, one = (eb.load(root / x / "model.safetensors") for x in ("two", "one"))
    assert _max_diff(two, one) < 1e-5
    m2, m1 = (json.loads((root / x / "metrics.json").read_text()) for x in ("two", "one"))
    assert [h["step"] for h in m2["history"]] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([h["loss"] for h in m2["history"]],
                               [h["loss"] for h in m1["history"]], atol=1e-5)
    assert [e["step"] for e in m2["evals"]] == [2, 4, 5]
    np.testing.assert_allclose([e["loss"] for e in m2["evals"]],
                               [e["loss"] for e in m1["evals"]], atol=1e-5)
    assert m2["test_accuracy"] == m1["test_accuracy"]


def test_a_killed_process_stops_the_other_with_a_clear_error(cli):
    """Process 1 is killed (SIGKILL) mid-run, while writing a checkpoint: process 0 exits with
    an error naming the cause within a bounded time (the heartbeat timeout, plus slack)."""
    p0, p1 = cli["killed"]
    assert p1["rc"] == -9 and "killed while writing step 4" in p1["out"]
    assert p0["rc"] not in (0, None), p0["err"][-3000:]
    assert p0["ended"] - p1["ended"] < HEARTBEAT + 50, (p0["ended"] - p1["ended"])
    err = p0["err"]
    assert ("did one of them die?" in err or "another task died" in err), err[-3000:]


def test_resume_ignores_the_partial_checkpoint(cli, capsys):
    """The killed run left step 2 committed and step 4 uncommitted (Orbax's temporary
    directory); `--resume` in one process on one device starts from step 2 and ends equal to
    the uninterrupted run."""
    root = cli["root"]
    listing = cli["killed_listing"]
    assert "2" in listing and "4" not in listing, listing
    assert any(x.startswith("4.orbax-checkpoint-tmp") for x in listing), listing
    with eb.Checkpointer(root / "killed" / "checkpoints", read_only=True) as checkpoints:
        assert checkpoints.steps() == [2]
    capsys.readouterr()
    assert main(["train", "--resume", str(root / "killed"), "--no-progress"]) == 0
    assert "at step 2 of 5" in capsys.readouterr().out
    resumed, one = (eb.load(root / x / "model.safetensors") for x in ("killed", "one"))
    assert _max_diff(resumed, one) < 1e-5
    m, m1 = (json.loads((root / x / "metrics.json").read_text()) for x in ("killed", "one"))
    np.testing.assert_allclose([h["loss"] for h in m["history"]],
                               [h["loss"] for h in m1["history"]], atol=1e-5)
    assert not (root / "killed" / "checkpoints").exists()


def test_resume_of_a_damaged_checkpoint_is_a_one_line_error(cli, tmp_path, capsys):
    """A checkpoint whose progress record is not JSON, or whose array data is truncated:
    `--resume` fails with one line naming the step directory, no traceback."""
    source = cli["root"] / "killed_copy"  # step 2 committed, step 4 not
    edited, truncated = tmp_path / "edited", tmp_path / "truncated"
    for folder in (edited, truncated):
        shutil.copytree(source, folder)
    meta = edited / "checkpoints" / "2" / "meta" / "metadata"
    meta.write_text(meta.read_text()[:-20])
    data = [p for p in (truncated / "checkpoints" / "2" / "model").rglob("*")
            if p.is_file() and p.parent.name == "d"]
    assert data
    for p in data:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    capsys.readouterr()
    assert main(["train", "--resume", str(edited), "--no-progress"]) == 1
    assert main(["train", "--resume", str(truncated), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(x.startswith("eqx-bigbird train: error: ") for x in err), err
    assert "checkpoints/2/meta: unreadable" in err[0], err
    assert "checkpoints/2: unreadable checkpoint" in err[1], err
