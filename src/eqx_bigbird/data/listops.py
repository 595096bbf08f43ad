"""Long Range Arena's ListOps task: random nested list expressions over digits, label = value.

An expression such as `[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]` (value 5) is a prefix tree of
the operators MAX, MIN, MED (median, truncated to int like LRA's `int(np.median(args))`) and SM (sum
mod 10) over the digits 0-9. Tokens are whitespace separated: `[MAX`, `[MIN`, `[MED`, `[SM`, `]`
and the digits. The label is the value, one of 10 classes.

LRA's published data (`lra_benchmarks/data/listops.py`): `max_depth=10`, `max_args=10`, a node
below `max_depth` is a digit with probability 0.75 (their `VALUE_P = 0.25` is the probability of an
operator), expressions are kept when their token count lies strictly between 500 and 2000,
duplicates are dropped, and there are 96,000/2,000/2,000 train/val/test examples. Their TSV files
also hold parentheses from their binary-tree encoding, which their token count leaves out; we write
only the counted tokens.
"""

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence

import numpy as np

from .._io import atomic_write_text, read_lines

__all__ = [
    "OPERATORS",
    "VOCAB",
    "PAD_ID",
    "CLS_ID",
    "NUM_CLASSES",
    "Tree",
    "Example",
    "evaluate",
    "sample_tree",
    "tree_tokens",
    "generate",
    "make_splits",
    "encode",
    "encode_batch",
    "save_jsonl",
    "load_jsonl",
    "save_splits",
    "load_splits",
]

OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
CLOSE = "]"
DIGITS = tuple(str(d) for d in range(10))
VOCAB = ("<pad>", "<cls>", CLOSE, *OPERATORS, *DIGITS)
PAD_ID = 0
CLS_ID = 1
NUM_CLASSES = 10
_TOKEN_ID = {token: i for i, token in enumerate(VOCAB)}
SPLITS = ("train", "val", "test")

# A leaf is its digit; an operator node is `(operator token, tuple of child trees)`. Not spelled
# recursively: beartype (the jaxtyping test hook) cannot resolve recursive aliases.
Tree = int | tuple[str, tuple]

# LRA's leaf probability, which is also the most efficient one for LRA's window. Measured share
# of draws with 500 < tokens < 2000 (max_depth=10, max_args=10, 20,000 draws each): 0.8 -> 8 %
# (trees mostly too short), 0.75 -> 33 %, 0.7 -> 30 %, 0.65 -> 12 %, 0.6 -> 4 %, 0.5 -> 0.3 %,
# 0.25 -> 0 (99 % of draws outgrow 2,000 tokens, the rest die out short). At 0.75 a draw costs
# ~0.2 ms here and 2,000 accepted examples take ~2 s (single CPU core, pure Python).
DEFAULT_LEAF_PROB = 0.75

# Give up when acceptance is hopeless: no accepted example in this many draws...
_PROBE_ATTEMPTS = 2_000
# ...or more than this many draws per requested example overall.
_ATTEMPTS_PER_EXAMPLE = 2_000


@dataclasses.dataclass(frozen=True)
class Example:
    """One ListOps example: whitespace-separated `text` and its value `label` (0-9)."""

    text: str
    label: int

    @property
    def tokens(self) -> list[str]:
        return self.text.split()


def _apply(op: str, args: list[int]) -> int:
    if not args:
        raise ValueError(f"operator {op} has no arguments")
    if op == "[MAX":
        return max(args)
    if op == "[MIN":
        return min(args)
    if op == "[SM":
        return sum(args) % 10
    # "[MED": LRA's int(np.median(args)); for an even count that is the mean of the two middle
    # values truncated, which for non-negative ints is floor division.
    s = sorted(args)
    n = len(s)
    if n % 2:
        return s[n // 2]
    return (s[n // 2 - 1] + s[n // 2]) // 2


def evaluate(tokens: str | Sequence[str]) -> int:
    """The value of a ListOps expression, computed with an explicit stack (no recursion).

    **Arguments:**
    - `tokens`: the expression as a whitespace-separated string or a sequence of tokens.

    **Returns:** the value, an int in 0-9. Raises `ValueError` for a malformed expression.
    """
    if isinstance(tokens, str):
        tokens = tokens.split()
    stack: list[tuple[str, list[int]]] = []
    result = None
    for position, token in enumerate(tokens):
        if result is not None:
            raise ValueError(f"tokens after the end of the expression at position {position}")
        if token in OPERATORS:
            stack.append((token, []))
        elif token == CLOSE:
            if not stack:
                raise ValueError(f"unmatched ']' at position {position}")
            op, args = stack.pop()
            value = _apply(op, args)
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
        elif len(token) == 1 and "0" <= token <= "9":
            if stack:
                stack[-1][1].append(int(token))
            else:
                result = int(token)
        else:
            raise ValueError(f"unknown token {token!r} at position {position}")
    if stack:
        raise ValueError(f"{len(stack)} unclosed operator(s)")
    if result is None:
        raise ValueError("empty expression")
    return result


def tree_tokens(tree: Tree) -> list[str]:
    """The tokens of a tree, in prefix order (iterative, so any depth works)."""
    out: list[str] = []
    todo: list = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, str):  # a pending "]"
            out.append(node)
        elif isinstance(node, tuple):
            op, children = node
            out.append(op)
            todo.append(CLOSE)
            todo.extend(reversed(children))
        else:
            out.append(DIGITS[node])
    return out


def _check_shape_params(leaf_prob: float, max_depth: int, max_args: int):
    if not 0.0 <= leaf_prob <= 1.0:
        raise ValueError(f"leaf_prob={leaf_prob} must lie in [0, 1]")
    if max_depth < 2:
        raise ValueError(f"max_depth={max_depth} must be >= 2 (the root is an operator)")
    if max_args < 2:
        raise ValueError(f"max_args={max_args} must be >= 2")


class _Draws:
    """Uniform [0, 1) numbers from a numpy Generator, drawn in blocks (a call per node is slow)."""

    def __init__(self, rng: np.random.Generator, block: int = 1 << 15):
        self.rng = rng
        self.block = block
        self.buf: list[float] = []
        self.i = 0

    def refill(self):
        self.buf = self.rng.random(self.block).tolist()
        self.i = 0


def _sample(
    draws: _Draws, leaf_prob: float, max_depth: int, max_args: int, max_tokens: int | None
) -> tuple[Tree, int] | None:
    # Depth-first, iterative. `min_total` is the least token count the finished tree can have (each
    # open slot becomes at least one digit), so oversized trees are abandoned as soon as they are
    # bound to exceed `max_tokens`: rejection then costs at most ~max_tokens steps.
    buf, i = draws.buf, draws.i
    need = 3  # the most draws one step consumes
    span = max_args - 1
    if len(buf) - i < 3:
        draws.refill()
        buf, i = draws.buf, draws.i
    nargs = 2 + min(int(buf[i + 1] * span), span - 1)
    op = OPERATORS[min(int(buf[i] * 4), 3)]
    i += 2
    # Frames: [operator, remaining argument slots, depth, children so far].
    stack = [[op, nargs, 1, []]]
    min_total = nargs + 2
    if max_tokens is not None and min_total > max_tokens:
        draws.i = i
        return None
    while True:
        frame = stack[-1]
        if frame[1] == 0:
            stack.pop()
            node = (frame[0], tuple(frame[3]))
            if not stack:
                draws.i = i
                return node, min_total
            stack[-1][3].append(node)
            continue
        frame[1] -= 1
        if len(buf) - i < need:
            draws.buf, draws.i = buf, i
            draws.refill()
            buf, i = draws.buf, draws.i
        depth = frame[2] + 1
        if depth >= max_depth or buf[i] < leaf_prob:
            frame[3].append(min(int(buf[i + 1] * 10), 9))
            i += 2
        else:
            op = OPERATORS[min(int(buf[i + 1] * 4), 3)]
            nargs = 2 + min(int(buf[i + 2] * span), span - 1)
            i += 3
            min_total += nargs + 1
            if max_tokens is not None and min_total > max_tokens:
                draws.i = i
                return None
            stack.append([op, nargs, depth, []])


def sample_tree(
    rng: np.random.Generator,
    *,
    leaf_prob: float = DEFAULT_LEAF_PROB,
    max_depth: int = 10,
    max_args: int = 10,
    max_tokens: int | None = None,
) -> Tree | None:
    """Draws one random expression tree (LRA's process); the root is always an operator.

    A node at depth < `max_depth` (the root has depth 1, as in LRA) is a digit with probability
    `leaf_prob`, else an operator (uniform of the four) with a uniform number of arguments in
    `[2, max_args]`, each drawn the same way one level deeper; at `max_depth` it is always a digit.

    **Arguments:**
    - `rng`: the numpy `Generator` to draw from.
    - `leaf_prob`, `max_depth`, `max_args`: the shape of the process (above).
    - `max_tokens`: give up (return `None`) once the tree is bound to exceed this many tokens.

    **Returns:** the tree (a digit, or `(operator, children)`), or `None`.
    """
    _check_shape_params(leaf_prob, max_depth, max_args)
    out = _sample(_Draws(rng, block=1024), leaf_prob, max_depth, max_args, max_tokens)
    return None if out is None else out[0]


def generate(
    num_examples: int,
    *,
    seed: int,
    min_length: int = 500,
    max_length: int = 2000,
    leaf_prob: float = DEFAULT_LEAF_PROB,
    max_depth: int = 10,
    max_args: int = 10,
    exclude: Iterable[str] = (),
) -> list[Example]:
    """Draws distinct random expressions whose token count lies strictly between the bounds.

    Rejection sampling from `sample_tree`'s process. The expected length depends strongly on
    `leaf_prob` (at 0.25 nearly every tree outgrows LRA's window); the default, LRA's 0.75,
    accepts about a third of all draws into 500 < n < 2000. Hopeless settings raise `RuntimeError`
    rather than loop: no acceptance in the first 2,000 draws, or too many draws overall.

    **Arguments:**
    - `num_examples`: how many examples to return.
    - `seed`: seeds `numpy.random.default_rng`; the same arguments give the same examples.
    - `min_length`, `max_length`: exclusive bounds on the token count (LRA: 500 and 2000).
    - `leaf_prob`, `max_depth`, `max_args`: see `sample_tree`.
    - `exclude`: texts that must not be returned (e.g. another split).

    **Returns:** a list of `num_examples` `Example`s, without duplicates.
    """
    _check_shape_params(leaf_prob, max_depth, max_args)
    if num_examples < 0:
        raise ValueError(f"num_examples={num_examples} must be >= 0")
    if max_length - min_length < 2:
        raise ValueError(
            f"no token count lies strictly between min_length={min_length} and "
            f"max_length={max_length}"
        )
    draws = _Draws(np.random.default_rng(seed))
    seen = set(exclude)
    out: list[Example] = []
    attempts = 0
    max_attempts = _PROBE_ATTEMPTS + _ATTEMPTS_PER_EXAMPLE * num_examples
    while len(out) < num_examples:
        if attempts >= max_attempts or (attempts >= _PROBE_ATTEMPTS and not out):
            raise RuntimeError(
                f"ListOps rejection sampling is hopeless: {len(out)} of {attempts} draws had "
                f"{min_length} < tokens < {max_length} (leaf_prob={leaf_prob}, "
                f"max_depth={max_depth}, max_args={max_args}); a larger leaf_prob makes trees "
                "smaller, a smaller one larger"
            )
        attempts += 1
        sampled = _sample(draws, leaf_prob, max_depth, max_args, max_length - 1)
        if sampled is None or sampled[1] <= min_length:
            continue
        tokens = tree_tokens(sampled[0])
        text = " ".join(tokens)
        if text in seen:
            continue
        seen.add(text)
        out.append(Example(text, evaluate(tokens)))
    return out


def make_splits(
    seed: int,
    num_train: int = 96_000,
    num_val: int = 2_000,
    num_test: int = 2_000,
    **kwargs,
) -> dict[str, list[Example]]:
    """Train/val/test splits with no duplicates within or across them (LRA: 96k/2k/2k).

    Test is drawn first, then val, then train, each from its own stream of `seed`, so the val and
    test sets do not change when `num_train` does.

    **Arguments:**
    - `seed`: the seed of the whole dataset.
    - `num_train`, `num_val`, `num_test`: split sizes.
    - `**kwargs`: passed to `generate` (`min_length`, `max_length`, `leaf_prob`, ...).

    **Returns:** `{"train": [...], "val": [...], "test": [...]}`.
    """
    streams = np.random.SeedSequence(seed).spawn(3)
    sizes = {"test": num_test, "val": num_val, "train": num_train}
    splits: dict[str, list[Example]] = {}
    taken: set[str] = set()
    for name, stream in zip(("test", "val", "train"), streams):
        split_seed = int(stream.generate_state(1, dtype=np.uint64)[0])
        examples = generate(sizes[name], seed=split_seed, exclude=taken, **kwargs)
        taken.update(e.text for e in examples)
        splits[name] = examples
    return {name: splits[name] for name in SPLITS}


def _padded_length(n: int, max_len: int | None, pad_to_multiple_of: int | None) -> int:
    length = n if max_len is None else max_len
    if n > length:
        raise ValueError(
            f"expression has {n} tokens (with <cls> if added), more than max_len={max_len}; "
            "truncating would change its value"
        )
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    return length


def _ids(expr: str | Sequence[str], add_cls: bool) -> list[int]:
    tokens = expr.split() if isinstance(expr, str) else expr
    try:
        ids = [_TOKEN_ID[t] for t in tokens]
    except KeyError as e:
        raise ValueError(f"unknown ListOps token {e.args[0]!r}") from None
    return [CLS_ID, *ids] if add_cls else ids


def encode(
    expr_tokens: str | Sequence[str],
    *,
    max_len: int | None,
    add_cls: bool = True,
    pad_to_multiple_of: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of one expression, right-padded with `<pad>`.

    **Arguments:**
    - `expr_tokens`: the expression (string or tokens).
    - `max_len`: padded length (`None`: the expression's own length); longer input raises.
    - `add_cls`: prepend `<cls>` (id 1), whose final state a classifier reads.
    - `pad_to_multiple_of`: round the padded length up to a multiple of this (a block size).

    **Returns:** `(ids, mask)`, both int32 of shape `(length,)`; mask is 1 on real tokens.
    """
    ids = _ids(expr_tokens, add_cls)
    length = _padded_length(len(ids), max_len, pad_to_multiple_of)
    out = np.full(length, PAD_ID, dtype=np.int32)
    out[: len(ids)] = ids
    mask = np.zeros(length, dtype=np.int32)
    mask[: len(ids)] = 1
    return out, mask


def encode_batch(
    exprs: Sequence[str | Sequence[str]],
    *,
    max_len: int | None,
    add_cls: bool = True,
    pad_to_multiple_of: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`encode` for several expressions, padded to one length (`max_len`, or the longest).

    **Returns:** `(ids, mask)`, both int32 of shape `(batch, length)`.
    """
    rows = [_ids(e, add_cls) for e in exprs]
    longest = max((len(r) for r in rows), default=0)
    if max_len is not None and longest > max_len:
        _padded_length(longest, max_len, None)  # raises with the message
    length = _padded_length(longest, max_len, pad_to_multiple_of)
    ids = np.full((len(rows), length), PAD_ID, dtype=np.int32)
    mask = np.zeros((len(rows), length), dtype=np.int32)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = row
        mask[b, : len(row)] = 1
    return ids, mask


def save_jsonl(path: str | os.PathLike, examples: Iterable[Example]) -> None:
    """Writes `{"text": ..., "label": ...}` lines, atomically (temp file, then rename)."""
    lines = [json.dumps({"text": e.text, "label": int(e.label)}) + "\n" for e in examples]
    atomic_write_text(path, "".join(lines))


def read_jsonl(path: str | os.PathLike) -> list[tuple[str, int | str]]:
    """`(text, label)` of every `{"text": ..., "label": ...}` line of a UTF-8 JSONL file (blank
    lines skipped): the text a string, the label an integer or a string. Anything else (a null
    text, a float label, bytes that are not UTF-8) raises `ValueError` naming the file and line."""
    rows = []
    for number, line in read_lines(path):
        if not line.strip():
            continue
        where = f"{os.fspath(path)}:{number}"
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{where}: not JSON ({e})") from None
        if not isinstance(row, dict) or "text" not in row or "label" not in row:
            raise ValueError(f'{where}: expected an object {{"text": ..., "label": ...}}')
        text, label = row["text"], row["label"]
        if not isinstance(text, str):
            raise ValueError(f'{where}: "text" must be a string, got {json.dumps(text)}')
        if isinstance(label, bool) or not isinstance(label, (int, str)):
            raise ValueError(
                f'{where}: "label" must be an integer or a string, got {json.dumps(label)}'
            )
        rows.append((text, label))
    return rows


def load_jsonl(path: str | os.PathLike) -> list[Example]:
    """Reads what `save_jsonl` wrote (blank lines are skipped; read as `read_jsonl` reads)."""
    out = []
    for text, label in read_jsonl(path):
        if not isinstance(label, int) or not 0 <= label < NUM_CLASSES:
            raise ValueError(
                f"{os.fspath(path)}: ListOps label {label!r} is not an integer in "
                f"[0, {NUM_CLASSES})"
            )
        out.append(Example(text, label))
    return out


def save_splits(folder: str | os.PathLike, splits: dict[str, list[Example]]) -> None:
    """Writes each split to `folder/{name}.jsonl` (the folder is created if needed)."""
    os.makedirs(folder, exist_ok=True)
    for name, examples in splits.items():
        save_jsonl(os.path.join(folder, f"{name}.jsonl"), examples)


def load_splits(folder: str | os.PathLike) -> dict[str, list[Example]]:
    """Reads `train`/`val`/`test` `.jsonl` from `folder` (those present; none raises)."""
    out = {
        name: load_jsonl(os.path.join(folder, f"{name}.jsonl"))
        for name in SPLITS
        if os.path.exists(os.path.join(folder, f"{name}.jsonl"))
    }
    if not out:
        raise FileNotFoundError(f"no train/val/test .jsonl in {os.fspath(folder)}")
    return out
