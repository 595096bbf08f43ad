"""`eqx-bigbird train`: train a BigBird classifier on embedded ListOps (Long Range Arena) or on
the user's JSONL documents, with progress, validation, a checkpoint, metrics and a plot.

Everything that decides the run (data, batch order, PRNG keys) is a function of the arguments and
the step number, so an interrupted run resumes exactly: OUT/checkpoints/<step>/ (an Orbax
training-state checkpoint, `eqx_bigbird.checkpointing`) holds the train state (model + optimizer +
step) and the arguments; the batch of step `s` and its key are recomputed.

`--distributed`: one process of several (`jax.distributed`); every process runs the same command
on the same data files, feeds its own rows of each batch, and process 0 alone prints and writes.
"""

import argparse
import dataclasses
import datetime
import functools
import json
import os
import resource
import shutil
import signal
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from .. import (
    BigBirdConfig,
    BigBirdForSequenceClassification,
    BigBirdModel,
    CheckpointError,
    Tokenizer,
    load,
    sequence_classification_loss,
    sharding,
)
from .._io import atomic_savefig, atomic_write_text
from .._serialization import checkpoint_file
from .._tree import array_leaves, path_str
from ..checkpointing import Checkpointer
from ..data import listops
from ..training import TrainState, make_train_step
from .args import (
    add_command,
    add_hub_flags,
    add_tokenizer,
    encoder_of,
    hub_ids_to_paths,
    require_finite,
    require_positive,
)
from .health import Diverged, Health

# Model presets: (hidden, layers, heads). "tiny" is the default: it learns ListOps' easy part
# (the root operator) in the ~10 minute budget of a 2-core CPU.
SIZES = {
    "tiny": (64, 2, 2),
    "small": (128, 4, 4),
    "base": (768, 12, 12),
}
# The default run fits ~10 minutes of a 2-core CPU. At LRA's 2000 tokens the tiny model needs
# 750-1000 steps of 16 to leave the majority-class plateau (seed 0: 29.0% test accuracy after
# 2000 steps, 70 min on one core; README); at 512 tokens it leaves after 200-400.
# lr 2e-3 (the earlier default) stayed on the one-class plateau for seed 0 (test 14.4% = majority);
# 1e-3 reached 34.6% (benchmarks/readme_figures.py; README "Set up" has the seeds measured).
DEFAULTS = dict(
    size="tiny", seq_len=512, block_size=32, num_random_blocks=2, attention="block_sparse",
    steps=1000, batch_size=16, lr=1e-3, dropout=0.0, seed=0, eval_every=200, val_size=256,
    test_size=1000,
)
CHECKPOINT_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
PLOT_FILE = "training.png"

EXAMPLES = """\
examples:
  eqx-bigbird train                                   # ListOps, tiny model, ~10 min on 2 CPU cores
  eqx-bigbird train --seq-len 2000 --steps 2000 --eval-every 250   # LRA's lengths: ~1 hour
  eqx-bigbird train --size small --steps 2000 --out runs/small
  eqx-bigbird train --steps 100 --eval-every 25      # a quick look
  eqx-bigbird train --attention original_full --seq-len 1024      # dense attention baseline
  eqx-bigbird train --init hf/bigbird-roberta-base --data docs.jsonl    # your documents
  eqx-bigbird train --resume runs/20250101-120000     # continue after Ctrl-C, same data order

Ctrl-C stops after the current step and saves OUT/checkpoints/<step>/ (model, optimizer state,
step, data position, PRNG key); `--resume OUT` continues and ends as the uninterrupted run would
have, on any mesh or number of processes.

several processes (same command and data files on each; here two on one machine):
  eqx-bigbird train --distributed --coordinator 127.0.0.1:4321 --num-processes 2 --process-id 0
  eqx-bigbird train --distributed --coordinator 127.0.0.1:4321 --num-processes 2 --process-id 1
  srun --ntasks-per-node=1 eqx-bigbird train --distributed    # SLURM: JAX reads the rest
"""


# -- the parser -----------------------------------------------------------------------------------


def add_parser(sub) -> None:
    p = add_command(
        sub, "train", train,
        help="train a BigBird classifier (default: embedded ListOps, no download)",
        description="Trains BigBirdForSequenceClassification with a progress bar (loss, tokens/s) "
        "and periodic validation; prints test accuracy and writes OUT/model.safetensors (our "
        "format), OUT/metrics.json and OUT/training.png.",
        examples=EXAMPLES,
    )
    p.add_argument("--out", help="output folder (default: runs/<timestamp>)")
    _add_model_flags(p)
    _add_optimisation_flags(p)
    _add_data_flags(p)
    _add_run_flags(p)


def _add_model_flags(p) -> None:
    d = DEFAULTS
    p.add_argument("--size", choices=sorted(SIZES), help=f"model preset (default {d['size']}: "
                   f"hidden/layers/heads {SIZES[d['size']]})")
    p.add_argument("--hidden", type=int, help="hidden size (overrides --size)")
    p.add_argument("--layers", type=int, help="number of layers (overrides --size)")
    p.add_argument("--heads", type=int, help="attention heads (overrides --size)")
    p.add_argument("--seq-len", type=int, help=f"most tokens per example (default {d['seq_len']}; "
                   "LRA's ListOps uses 2000; padded to a multiple of --block-size)")
    p.add_argument("--attention", choices=["block_sparse", "original_full"],
                   help=f"attention type (default {d['attention']})")
    p.add_argument("--block-size", type=int,
                   help=f"block-sparse block size (default {d['block_size']})")
    p.add_argument("--num-random-blocks", type=int, help=f"default {d['num_random_blocks']}")


def _add_optimisation_flags(p) -> None:
    d = DEFAULTS
    p.add_argument("--steps", type=int, help=f"optimizer steps (default {d['steps']})")
    p.add_argument("--batch-size", type=int, help=f"default {d['batch_size']}")
    p.add_argument("--lr", type=float, help=f"peak AdamW learning rate (default {d['lr']})")
    p.add_argument("--dropout", type=float, help="hidden and attention dropout (default "
                   f"{d['dropout']})")
    p.add_argument("--seed", type=int, help=f"seeds data, init and dropout (default {d['seed']})")
    p.add_argument("--eval-every", type=int,
                   help=f"validate every N steps (default {d['eval_every']})")


def _add_data_flags(p) -> None:
    d = DEFAULTS
    p.add_argument("--train-size", type=int, help="ListOps training examples (default: "
                   "steps x batch size, so each is seen once)")
    p.add_argument("--val-size", type=int,
                   help=f"ListOps validation examples (default {d['val_size']})")
    p.add_argument("--test-size", type=int,
                   help=f"ListOps test examples (default {d['test_size']})")
    p.add_argument("--init", metavar="CHECKPOINT", help="start the encoder from our checkpoint, "
                   "an HF directory or a Hub repo id (a new classification head is initialised)")
    add_hub_flags(p)
    p.add_argument("--data", metavar="FILE.jsonl", help="train on your documents instead: one "
                   '{"text": ..., "label": ...} per line, split 80/10/10 by --seed')
    add_tokenizer(p, help="tokenizer folder or Hub repo id for --data (default: --init's when "
                  "it has one)")


def _add_run_flags(p) -> None:
    p.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # For tests: behave as if Ctrl-C came right after this step.
    p.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mesh", metavar="DxF", help="train on a device mesh of D data-parallel x F "
                   "fsdp devices, e.g. 8x1 or 4x2 (default: one device)")
    p.add_argument("--fsdp", choices=["none", "all", "fsdp"], default="none",
                   help="parameter/optimizer sharding on the mesh: replicated (none), over all "
                   "devices (all), or over the fsdp axis only (fsdp)")
    p.add_argument("--save-every", type=int, metavar="N", help="also checkpoint every N steps "
                   "(default: only when interrupted)")
    p.add_argument("--keep", type=int, default=3, metavar="K", help="checkpoints kept (default 3)")
    _add_distributed_flags(p)


def _add_distributed_flags(p) -> None:
    p.add_argument("--distributed", action="store_true", help="one process of several "
                   "(jax.distributed; one per host); flags not given come from "
                   "$JAX_COORDINATOR_ADDRESS or the cluster (SLURM, Open MPI, Cloud TPU)")
    p.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    p.add_argument("--num-processes", type=int, metavar="N")
    p.add_argument("--process-id", type=int, metavar="I", help="0 .. N-1")
    p.add_argument("--init-timeout", type=int, default=300, metavar="S",
                   help="seconds to wait for every process to connect (default 300)")
    p.add_argument("--heartbeat-timeout", type=int, default=100, metavar="S",
                   help="a process silent this long counts as dead: every process stops with "
                   "an error (default 100)")


# -- the run's settings ---------------------------------------------------------------------------

# What a resumed run takes from the saved run rather than from its own command line.
RUN_FIELDS = (
    "size", "hidden", "layers", "heads", "seq_len", "attention", "block_size", "num_random_blocks",
    "steps", "batch_size", "lr", "dropout", "seed", "eval_every", "train_size", "val_size",
    "test_size", "init", "data", "tokenizer",
)


def _resolve(args) -> dict:
    """The run's settings: explicit flags, else the defaults."""
    hub_ids_to_paths(args, "init", with_tokenizer=bool(args.data))  # the run records the snapshot
    run = {name: getattr(args, name) for name in RUN_FIELDS}
    for name, value in DEFAULTS.items():
        if run[name] is None:
            run[name] = value
    hidden, layers, heads = SIZES[run["size"]]
    run["hidden"] = run["hidden"] or hidden
    run["layers"] = run["layers"] or layers
    run["heads"] = run["heads"] or heads
    for name in ("seq_len", "steps", "batch_size", "eval_every", "block_size", "hidden", "layers",
                 "heads"):
        require_positive("--" + name.replace("_", "-"), run[name])
    require_finite("--lr", run["lr"], low=0.0, low_open=True)
    require_finite("--dropout", run["dropout"], low=0.0, high=1.0)
    if run["data"] and not (run["tokenizer"] or run["init"]):
        raise ValueError("--data needs --tokenizer DIR (or an --init directory with a tokenizer)")
    return run


def _padded(run) -> int:
    return -(-run["seq_len"] // run["block_size"]) * run["block_size"]


@dataclasses.dataclass
class _Record:
    """The run so far, as the checkpoints' progress record and metrics.json keep it."""

    run: dict
    key: jax.Array  # the training key: step s uses fold_in(key, s)
    history: list  # {"step", "loss"} per step
    evals: list  # {"step", "accuracy", "loss"} per validation
    elapsed_before: float  # seconds spent before this process (in the interrupted runs)
    t_start: float
    health: Health

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.t_start

    def progress(self, state) -> dict:
        step = int(state.step)
        return {
            "run": self.run, "step": step, "examples_seen": step * self.run["batch_size"],
            "rng_key": np.asarray(jax.random.key_data(self.key)).tolist(),
            "history": self.history, "evals": self.evals, "elapsed": self.elapsed(),
            "health": self.health.state(),
        }

    def validate(self, model, split, step: int, names, log) -> tuple[float, float]:
        acc, loss, predicted = _evaluate(model, split, self.run["batch_size"])
        self.evals.append({"step": step, "accuracy": acc, "loss": loss})
        warning = self.health.predictions(step, predicted, split.labels, "validation", names)
        if warning:
            log(warning)
        return acc, loss


# -- data -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Split:
    ids: np.ndarray  # (n, length) int32
    mask: np.ndarray  # (n, length) int32
    labels: np.ndarray  # (n,) int32

    def __len__(self):
        return len(self.labels)


@dataclasses.dataclass
class _Data:
    train: _Split
    val: _Split
    test: _Split
    label_names: tuple[str, ...]
    vocab_size: int
    pad_id: int
    description: str

    def majority(self) -> tuple[str, float]:
        """The most frequent training label, and its share of the test split."""
        counts = np.bincount(self.train.labels, minlength=len(self.label_names))
        label = int(counts.argmax())
        return self.label_names[label], float((self.test.labels == label).mean())


def _listops(run, tokenizer) -> _Data:
    seq_len = run["seq_len"]
    num_train = run["train_size"] or min(run["steps"] * run["batch_size"], 96_000)
    # LRA keeps 500 < tokens < 2000; shorter runs scale the lower bound down with the window.
    min_length = min(500, seq_len // 4)
    splits = listops.make_splits(
        run["seed"], num_train, run["val_size"], run["test_size"],
        min_length=min_length, max_length=seq_len,
    )
    length = _padded(run)

    def encode(examples):
        labels = np.array([e.label for e in examples], np.int32)
        if tokenizer is not None:
            enc = tokenizer.encode_batch(
                [e.text for e in examples], max_length=length, padding="max_length"
            )
            return _Split(enc.input_ids.astype(np.int32), enc.attention_mask.astype(np.int32),
                          labels)
        ids, mask = listops.encode_batch([e.text for e in examples], max_len=length)
        return _Split(ids, mask, labels)

    return _Data(
        encode(splits["train"]), encode(splits["val"]), encode(splits["test"]),
        tuple(str(i) for i in range(listops.NUM_CLASSES)),
        tokenizer.vocab_size if tokenizer else len(listops.VOCAB),
        (tokenizer.pad_token_id if tokenizer else listops.PAD_ID),
        f"ListOps (LRA), {min_length} < tokens < {seq_len}, seed {run['seed']}",
    )


def _read_jsonl(path) -> tuple[list[str], list]:
    rows = listops.read_jsonl(path)
    if len(rows) < 3:
        raise ValueError(f"{path}: needs at least 3 examples, has {len(rows)}")
    return [text for text, _ in rows], [label for _, label in rows]


def _user_data(run, tokenizer) -> _Data:
    texts, labels = _read_jsonl(run["data"])
    names = tuple(sorted({str(x) for x in labels}, key=lambda s: (len(s), s)))
    index = {name: i for i, name in enumerate(names)}
    y = np.array([index[str(x)] for x in labels], np.int32)
    enc = tokenizer.encode_batch(texts, max_length=_padded(run), padding="max_length")
    order = np.random.default_rng([run["seed"], 2]).permutation(len(texts))
    n_eval = max(1, len(texts) // 10)

    def take(idx):
        return _Split(enc.input_ids[idx].astype(np.int32),
                      enc.attention_mask[idx].astype(np.int32), y[idx])

    return _Data(take(order[2 * n_eval :]), take(order[n_eval : 2 * n_eval]), take(order[:n_eval]),
                 names, tokenizer.vocab_size, tokenizer.pad_token_id or 0,
                 f"{run['data']} ({len(texts)} documents, {len(names)} labels)")


def _tokenizer(run):
    folder = run["tokenizer"]
    if folder is None and run["data"] and run["init"] and os.path.isdir(run["init"]):
        folder = run["init"]
    return None if folder is None else Tokenizer.from_pretrained(folder)


def _batch_indices(step: int, batch_size: int, n: int, seed: int) -> np.ndarray:
    """The training examples of `step`: consecutive slices of one permutation per epoch."""
    start = step * batch_size
    out = []
    for j in range(start, start + batch_size):
        epoch, pos = divmod(j, n)
        out.append(_permutation(seed, epoch, n)[pos])
    return np.array(out)


@functools.lru_cache(maxsize=2)  # one epoch, or two at a boundary, is all a run needs at a time
def _permutation(seed, epoch, n):
    return np.random.default_rng([seed, 1, epoch]).permutation(n)


# -- model ----------------------------------------------------------------------------------------


def _config(run, data):
    return BigBirdConfig(
        vocab_size=data.vocab_size, hidden_size=run["hidden"], num_hidden_layers=run["layers"],
        num_attention_heads=run["heads"], intermediate_size=4 * run["hidden"],
        max_position_embeddings=_padded(run), block_size=run["block_size"],
        num_random_blocks=run["num_random_blocks"], attention_type=run["attention"],
        id2label=data.label_names, pad_token_id=data.pad_id,
        problem_type="single_label_classification",
        hidden_dropout_prob=run["dropout"], attention_probs_dropout_prob=run["dropout"],
    )


def _load_encoder(path):
    """The encoder of our checkpoint (any head) or of an HF directory."""
    if not os.path.isfile(checkpoint_file(path)):
        return BigBirdModel.from_pretrained(path, allow_init=True)
    encoder = encoder_of(load(path))
    if encoder is None:
        raise ValueError(f"--init {path}: the checkpoint has no BigBird encoder")
    return encoder


def _build_model(run, data, key):
    if not run["init"]:
        return BigBirdForSequenceClassification(_config(run, data), key=key)
    encoder = _load_encoder(run["init"])
    config = encoder.config.replace(
        id2label=data.label_names, problem_type="single_label_classification",
        attention_type=run["attention"], block_size=run["block_size"],
        num_random_blocks=run["num_random_blocks"],
        hidden_dropout_prob=run["dropout"], attention_probs_dropout_prob=run["dropout"],
    )
    if config.max_position_embeddings < _padded(run):
        raise ValueError(
            f"--init {run['init']}: max_position_embeddings={config.max_position_embeddings} is "
            f"less than --seq-len padded to {_padded(run)}"
        )
    if data.vocab_size > config.vocab_size:
        raise ValueError(
            f"--init {run['init']}: the data's vocabulary ({data.vocab_size}) is larger than the "
            f"model's ({config.vocab_size}); pass --tokenizer with the checkpoint's tokenizer"
        )
    model = BigBirdForSequenceClassification(config, key=key)
    return _graft(model, encoder, run["init"])


def _graft(model, encoder, source):
    """`model` with every array of its encoder taken from `encoder` (by tree path), except those
    `encoder` lacks (a pooler, say), which keep their fresh initialisation."""
    given = dict(array_leaves(encoder))
    flat, treedef = jax.tree_util.tree_flatten_with_path(model.bert)
    leaves = []
    for p, x in flat:
        name = path_str(p)
        if eqx.is_array(x) and name in given:
            if given[name].shape != x.shape:
                raise ValueError(f"--init {source}: {name} has shape {given[name].shape}, the "
                                 f"model needs {x.shape}")
            x = given[name].astype(x.dtype)
        leaves.append(x)
    bert = jax.tree_util.tree_unflatten(treedef, leaves)
    return eqx.tree_at(lambda m: m.bert, model, bert)


def _optimizer(run):
    warmup = max(1, run["steps"] // 10)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, run["lr"], warmup, max(run["steps"], warmup + 1), end_value=run["lr"] / 10
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))


def _loss(model, batch, *, key):
    keys = jr.split(key, batch["ids"].shape[0])
    logits = jax.vmap(lambda i, m, k: model(i, m, key=k).logits)(batch["ids"], batch["mask"], keys)
    return sequence_classification_loss(logits, batch["labels"], "single_label_classification")


@eqx.filter_jit
def _predict(model, ids, mask):
    logits = jax.vmap(lambda i, m: model(i, m, inference=True).logits)(ids, mask)
    return jnp.argmax(logits, -1), logits


def _evaluate(model, split: _Split, batch_size: int) -> tuple[float, float, np.ndarray]:
    """(accuracy, mean cross-entropy, the predicted classes) over a split; the last batch is
    padded to keep one shape. On a mesh each process computes its rows of every batch, and every
    process gets the result."""
    place = _placement(_mesh_of(model))
    predicted, loss, n = [], 0.0, len(split)
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size) % n
        batch = place({"ids": split.ids[idx], "mask": split.mask[idx]})
        pred, logits = _predict(model, jnp.asarray(batch["ids"]), jnp.asarray(batch["mask"]))
        pred, logits = sharding.to_host(pred), sharding.to_host(logits)
        real = min(batch_size, n - start)
        predicted.append(pred[:real])
        ce = optax.softmax_cross_entropy_with_integer_labels(
            jnp.asarray(logits[:real]), jnp.asarray(split.labels[idx][:real])
        )
        loss += float(ce.sum())
    predicted = np.concatenate(predicted)
    return float((predicted == split.labels).mean()), loss / n, predicted


def _mesh_of(model):
    """The mesh the model is placed on, or None (one device)."""
    leaf = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))[0]
    return leaf.sharding.mesh if isinstance(leaf.sharding, jax.sharding.NamedSharding) else None


def _placement(mesh):
    """batch -> the arrays a step takes: on a mesh, this process's rows of the global batch,
    assembled into global arrays."""
    if mesh is None:
        return lambda batch: batch

    def place(batch):
        rows = sharding.process_rows(mesh, len(next(iter(batch.values()))))
        return sharding.shard_batch({k: np.asarray(v)[rows] for k, v in batch.items()}, mesh)

    return place


# -- resumable state ------------------------------------------------------------------------------

PROGRESS_KEYS = ("run", "step", "history", "evals", "elapsed")


def _resume_checkpoints(path) -> Checkpointer:
    """The checkpoints of the run in `path` (its output folder, or the checkpoints folder)."""
    for folder in (os.path.join(path, CHECKPOINT_DIR), path):
        if os.path.isdir(folder):
            checkpoints = Checkpointer(folder, read_only=True)
            if checkpoints.steps():
                return checkpoints
            checkpoints.close()
    raise ValueError(f"--resume {path}: no complete checkpoint in {path}/{CHECKPOINT_DIR} "
                     "(nothing to resume)")


def _read_progress(checkpoints: Checkpointer) -> dict:
    """The progress record saved with the latest checkpoint, checked enough to resume from."""
    step = checkpoints.latest_step()
    where = os.path.join(checkpoints.directory, str(step))
    progress = checkpoints.extra(step)
    missing = [k for k in PROGRESS_KEYS if k not in progress]
    run = progress.get("run")
    if missing or not isinstance(run, dict) or set(RUN_FIELDS) - set(run):
        raise CheckpointError(f"{where}/meta: not a progress record of `eqx-bigbird train` "
                              f"(missing {missing or sorted(set(RUN_FIELDS) - set(run or {}))})")
    if progress["step"] != step:
        raise CheckpointError(f"{where}/meta: progress of step {progress['step']}, not {step}")
    return progress


class _Saver:
    """OUT/checkpoints/, opened on the first save (every process saves at the same steps)."""

    def __init__(self, out, keep):
        self.folder, self.keep, self.checkpoints = os.path.join(out, CHECKPOINT_DIR), keep, None

    def __call__(self, state, progress) -> str:
        if self.checkpoints is None:
            self.checkpoints = Checkpointer(self.folder, max_to_keep=self.keep)
        step = self.checkpoints.save(state, extra=progress)
        return os.path.join(self.folder, str(step))

    def close(self):
        if self.checkpoints is not None:
            self.checkpoints.close()
            self.checkpoints = None


# -- outputs --------------------------------------------------------------------------------------


def _plot(path, history, evals, test_acc, baseline):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = np.array([h["step"] for h in history])
    losses = np.array([h["loss"] for h in history])
    ax1.plot(steps, losses, lw=0.6, alpha=0.4, label="per step")
    if len(losses) >= 10:
        w = max(5, len(losses) // 30)
        smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
        ax1.plot(steps[w - 1 :], smooth, lw=1.5, label=f"mean of {w}")
    ax1.set(xlabel="step", ylabel="train loss", title="training loss")
    ax1.legend()
    if evals:
        ax2.plot([e["step"] for e in evals], [e["accuracy"] for e in evals], "o-",
                 label="validation")
    if test_acc is not None:
        ax2.plot([steps[-1] if len(steps) else 0], [test_acc], "r*", ms=12, label="test")
    ax2.axhline(baseline, color="gray", ls="--", label="majority class")
    ax2.set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    ax2.legend()
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path


# -- the command ----------------------------------------------------------------------------------


class _Stop:
    """Ctrl-C sets a flag that the loop reads between steps (a step interrupted halfway would
    have donated the state's buffers); a second Ctrl-C interrupts at once. With several
    processes, reading it is a collective: all stop at the same step when any was asked to."""

    def __init__(self):
        self.local = False
        self.previous = None

    @property
    def requested(self) -> bool:
        if jax.process_count() == 1:
            return self.local
        return bool(multihost_utils.process_allgather(np.array(self.local)).any())

    @requested.setter
    def requested(self, value: bool) -> None:
        self.local = value

    def __enter__(self):
        def handler(signum, frame):
            if self.local:
                raise KeyboardInterrupt
            self.local = True

        try:
            self.previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: plain KeyboardInterrupt semantics
            self.previous = None
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def _parse_mesh(text: str) -> tuple[int, int]:
    try:
        data_n, fsdp_n = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--mesh {text!r}: expected DxF, e.g. 8x1 or 4x2") from None
    return data_n, fsdp_n


def _keys(seed: int):
    """(the model's initialisation key, the training key)."""
    return jr.split(jr.PRNGKey(seed))


def _setup(args, t_start) -> tuple[_Record, str, Checkpointer | None]:
    """(the record to continue, the output folder, the checkpoints resumed from or None)."""
    if args.resume:
        resumed = _resume_checkpoints(args.resume)
        progress = _read_progress(resumed)
        run, out = progress["run"], args.out or args.resume
        history, evals, elapsed = progress["history"], progress["evals"], progress["elapsed"]
        health = Health.resumed(progress["health"], [h["loss"] for h in history])
    else:
        resumed, run = None, _resolve(args)
        out = args.out or _default_out()
        history, evals, elapsed, health = [], [], 0.0, Health()
    if jax.process_index() == 0:
        os.makedirs(out, exist_ok=True)
    record = _Record(run, _keys(run["seed"])[1], history, evals, elapsed, t_start, health)
    return record, out, resumed


def _default_out() -> str:
    """runs/<timestamp>: process 0's, so that every process writes to the same folder."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    if jax.process_count() > 1:
        stamp = multihost_utils.broadcast_one_to_all(np.frombuffer(stamp.encode(), np.uint8))
        stamp = bytes(np.asarray(stamp)).decode()
    return os.path.join("runs", stamp)


def _start_distributed(args) -> None:
    """`jax.distributed` when asked for (before any other JAX call)."""
    given = (args.coordinator, args.num_processes, args.process_id)
    if not args.distributed and all(x is None for x in given):
        return
    for flag, value in (("--init-timeout", args.init_timeout),
                        ("--heartbeat-timeout", args.heartbeat_timeout)):
        require_positive(flag, value)
    sharding.initialize_distributed(
        *given, initialization_timeout=args.init_timeout, heartbeat_timeout=args.heartbeat_timeout
    )


def _load_data(run, log) -> _Data:
    tokenizer = _tokenizer(run)
    t0 = time.time()
    data = _user_data(run, tokenizer) if run["data"] else _listops(run, tokenizer)
    log(f"data: {data.description}: {len(data.train)} train / {len(data.val)} val / "
        f"{len(data.test)} test, padded to {data.train.ids.shape[1]} tokens "
        f"({time.time() - t0:.1f}s)")
    return data


def _initial_state(run, data, optimizer, resumed, mesh, log) -> tuple[TrainState, int]:
    """The train state to start from (fresh, or the resumed one), placed on `(mesh, fsdp)`,
    and its parameter count."""
    if resumed is not None:
        state, _ = resumed.restore(optimizer, mesh=mesh[0], fsdp=mesh[1])
        log(f"resuming {resumed.directory} at step {int(state.step)} of {run['steps']}")
        resumed.close()
    else:
        state = TrainState.create(_build_model(run, data, _keys(run["seed"])[0]), optimizer)
        if mesh[0] is not None:
            state = sharding.shard_state(state, mesh[0], fsdp=mesh[1])
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(state.model, eqx.is_array)))
    c = state.model.config
    log(f"model: BigBirdForSequenceClassification, hidden {c.hidden_size}, {c.num_hidden_layers} "
        f"layers, {c.num_attention_heads} heads, {c.attention_type} (block {c.block_size}, "
        f"{c.num_random_blocks} random), {n_params / 1e6:.2f}M parameters")
    return state, n_params


def _mesh(args, run, log):
    """(the device mesh or None for one device, the fsdp setting); several processes always
    train on a mesh (default: every device data-parallel)."""
    fsdp = {"none": False, "all": True, "fsdp": "fsdp"}[args.fsdp]
    if not (args.mesh or fsdp or jax.process_count() > 1):
        return None, False
    data_n, fsdp_n = _parse_mesh(args.mesh) if args.mesh else (None, 1)
    mesh = sharding.make_mesh(data=data_n, fsdp=fsdp_n)
    if run["batch_size"] % mesh.size:
        raise ValueError(f"--batch-size {run['batch_size']} is not divisible by the mesh's "
                         f"{mesh.size} devices")
    where = f"{jax.process_count()} processes, " if jax.process_count() > 1 else ""
    log(f"mesh: {dict(mesh.shape)} ({where}{mesh.size} devices), parameters "
        f"{args.fsdp if fsdp else 'replicated'}")
    return mesh, fsdp


def _step_function(mesh, state, optimizer):
    """(the train step, the batch placement)."""
    if mesh[0] is None:
        return make_train_step(_loss, optimizer), _placement(None)
    step_fn = sharding.make_sharded_train_step(_loss, optimizer, state, mesh[0], fsdp=mesh[1])
    return step_fn, _placement(mesh[0])


def _loop(args, state, step_fn, place, data, record, log, save):
    """Trains up to the last step or a stop request; (state, whether it stopped early).
    `save(state, progress)` checkpoints (every process calls it)."""
    total, bs = record.run["steps"], record.run["batch_size"]
    bar = tqdm(total=total, initial=int(state.step), desc="train", dynamic_ncols=True,
               disable=args.no_progress or jax.process_index() != 0)
    ema, stopped = None, False
    with _Stop() as stop:
        for step in range(int(state.step), total):
            idx = _batch_indices(step, bs, len(data.train), record.run["seed"])
            batch = place({
                "ids": jnp.asarray(data.train.ids[idx]),
                "mask": jnp.asarray(data.train.mask[idx]),
                "labels": jnp.asarray(data.train.labels[idx]),
            })
            t = time.time()
            state, metrics = step_fn(state, batch, jr.fold_in(record.key, step))
            loss = float(metrics["loss"])
            dt = time.time() - t
            warning = record.health.loss(step + 1, loss)
            if warning:
                log(warning)
            record.history.append({"step": step + 1, "loss": loss})
            ema = loss if ema is None else 0.95 * ema + 0.05 * loss
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.3f}", tok_s=f"{int(data.train.mask[idx].sum() / dt)}")
            if (step + 1) % record.run["eval_every"] == 0 and step + 1 < total:
                acc, vloss = record.validate(state.model, data.val, step + 1, data.label_names,
                                             log)
                log(f"step {step + 1}: val accuracy {acc:.1%}, val loss {vloss:.3f}")
            if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < total:
                save(state, record.progress(state))
            if args.stop_after is not None and step + 1 >= args.stop_after:
                stop.requested = True
            if stop.requested and step + 1 < total:
                stopped = True
                break
    bar.close()
    return state, stopped


def _final_metrics(state, data, record, n_params, log) -> dict:
    """Validation and test results of the trained model, with the run that made it."""
    run = record.run
    val_acc, _ = record.validate(state.model, data.val, run["steps"], data.label_names, log)
    test_acc, test_loss, predicted = _evaluate(state.model, data.test, run["batch_size"])
    warning = record.health.predictions(run["steps"], predicted, data.test.labels, "test",
                                        data.label_names)
    if warning:
        log(warning)
    majority, baseline = data.majority()
    return {
        "run": run, "data": data.description, "parameters": int(n_params),
        "test_accuracy": test_acc, "test_loss": test_loss, "val_accuracy": val_acc,
        "majority_class": majority, "majority_baseline": baseline,
        "steps": run["steps"], "seconds": record.elapsed(),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "warnings": record.health.warnings, "history": record.history, "evals": record.evals,
    }


def _write_outputs(out, state, metrics) -> None:
    """The model, metrics and plot (process 0; every process calls it, to gather the model);
    the checkpoints they supersede go."""
    model_file = sharding.save_sharded(os.path.join(out, MODEL_FILE),
                                       eqx.nn.inference_mode(state.model))
    if jax.process_index() != 0:
        return
    metrics_file = os.path.join(out, METRICS_FILE)
    atomic_write_text(metrics_file, json.dumps(metrics, indent=1))
    plot = _plot(os.path.join(out, PLOT_FILE), metrics["history"], metrics["evals"],
                 metrics["test_accuracy"], metrics["majority_baseline"])
    shutil.rmtree(os.path.join(out, CHECKPOINT_DIR), ignore_errors=True)
    print(f"test accuracy {metrics['test_accuracy']:.1%} (majority baseline "
          f"{metrics['majority_baseline']:.1%}) after {metrics['steps']} steps, "
          f"{metrics['seconds'] / 60:.1f} min")
    written = [model_file, metrics_file] + ([plot] if plot else [])
    print("wrote " + ", ".join(written))


def train(args) -> int:
    """Runs `eqx-bigbird train`; 0 when done, 130 when stopped early (a checkpoint saved)."""
    _start_distributed(args)
    try:
        return _train(args)
    except jax.errors.JaxRuntimeError as e:
        if jax.process_count() == 1:
            raise
        # Typically gloo's "connection closed by peer": name the likely cause in one line.
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConnectionError(f"process {jax.process_index()}: a collective with the other "
                              f"processes failed; did one of them die? ({first})") from None


def _train(args) -> int:
    if args.save_every is not None:
        require_positive("--save-every", args.save_every)
    require_positive("--keep", args.keep)
    record, out, resumed = _setup(args, time.time())
    log = tqdm.write if jax.process_index() == 0 else lambda *a, **k: None
    data = _load_data(record.run, log)
    optimizer = _optimizer(record.run)
    mesh = _mesh(args, record.run, log)
    state, n_params = _initial_state(record.run, data, optimizer, resumed, mesh, log)
    majority, baseline = data.majority()
    log(f"majority class {majority!r}: {baseline:.1%} of the test split")
    step_fn, place = _step_function(mesh, state, optimizer)
    save = _Saver(out, args.keep)
    try:
        state, stopped = _loop(args, state, step_fn, place, data, record, log, save)
        if stopped:
            folder = save(state, record.progress(state))
            save.close()  # the checkpoint is committed before we say so
            log(f"interrupted at step {int(state.step)}: saved {folder}; continue with "
                f"`eqx-bigbird train --resume {out}`")
            return 130
    except Diverged as e:
        raise Diverged(f"{e}: stopped without writing a model ({os.path.join(out, CHECKPOINT_DIR)} "
                       "and earlier outputs are unchanged); try a lower --lr") from None
    finally:
        save.close()
    _write_outputs(out, state, _final_metrics(state, data, record, n_params, log))
    return 0
