"""ListOps: the evaluator on worked examples, the generator's guarantees, encoding and files."""

import collections
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eqx_bigbird.data import listops


def _recursive_value(tree) -> int:
    # Independent of `evaluate`: straight from the definition, numpy's median included.
    if isinstance(tree, int):
        return tree
    op, children = tree
    values = [_recursive_value(c) for c in children]
    return {
        "[MAX": max,
        "[MIN": min,
        "[MED": lambda v: int(np.median(v)),
        "[SM": lambda v: sum(v) % 10,
    }[op](values)


def _depth(tree, depth=1) -> int:
    if isinstance(tree, int):
        return depth
    return max(_depth(c, depth + 1) for c in tree[1])


@pytest.mark.parametrize(
    "text, value",
    [
        ("[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]", 5),
        ("7", 7),
        ("[MIN 4 6 ]", 4),
        ("[MED 1 2 ]", 1),  # even count: mean 1.5, truncated
        ("[MED 1 4 ]", 2),  # 2.5 -> 2
        ("[MED 3 9 4 8 ]", 6),  # middle values 4 and 8
        ("[MED 7 0 9 ]", 7),
        ("[SM 9 8 7 ]", 4),  # 24 mod 10
        ("[SM [MAX 9 1 ] [MIN 5 7 ] 3 ]", 7),  # 9 + 5 + 3 = 17
        ("[MIN [SM 5 5 ] [MED 2 9 ] 8 ]", 0),  # SM = 0, MED = 5
    ],
)
def test_evaluate_worked_examples(text, value):
    assert listops.evaluate(text) == value
    assert listops.evaluate(text.split()) == value


def test_evaluate_deep_and_malformed():
    depth = 5000  # far beyond Python's recursion limit
    assert listops.evaluate("[SM " * depth + "3 4" + " ]" * depth) == 7
    for bad in ["[MAX 1 2", "]", "[MAX ]", "1 2", "[FOO 1 ]", "", "[MAX 1 ] 2", "[MIN 12 3 ]"]:
        with pytest.raises(ValueError):
            listops.evaluate(bad)


@given(st.lists(st.integers(0, 9), min_size=1, max_size=12))
def test_median_is_lra_median(values):
    text = "[MED " + " ".join(map(str, values)) + " ]"
    assert listops.evaluate(text) == int(np.median(values))


def test_generate_is_deterministic_and_in_bounds():
    a = listops.generate(40, seed=3)
    assert a == listops.generate(40, seed=3)
    assert a != listops.generate(40, seed=4)
    assert len({e.text for e in a}) == 40
    for e in a:
        assert 500 < len(e.tokens) < 2000
        assert e.label == listops.evaluate(e.tokens)
        assert e.tokens[0] in listops.OPERATORS
    small = listops.generate(200, seed=0, min_length=20, max_length=60, max_depth=4, max_args=5)
    lengths = [len(e.tokens) for e in small]
    assert 20 < min(lengths) and max(lengths) < 60
    assert all(e.label == listops.evaluate(e.text) for e in small)


def test_generate_gives_up_when_hopeless():
    with pytest.raises(RuntimeError, match="hopeless"):
        # only digits below the root: at most 12 tokens, never above 500
        listops.generate(5, seed=0, leaf_prob=1.0)
    with pytest.raises(ValueError):
        listops.generate(5, seed=0, min_length=10, max_length=11)
    with pytest.raises(ValueError):
        listops.generate(5, seed=0, leaf_prob=1.5)


def test_splits_have_no_duplicates_and_stable_eval_sets():
    kwargs = dict(min_length=30, max_length=200, max_depth=5)
    splits = listops.make_splits(7, num_train=300, num_val=60, num_test=60, **kwargs)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [300, 60, 60]
    texts = [e.text for split in splits.values() for e in split]
    assert len(set(texts)) == len(texts)
    bigger = listops.make_splits(7, num_train=400, num_val=60, num_test=60, **kwargs)
    assert bigger["val"] == splits["val"] and bigger["test"] == splits["test"]
    assert bigger["train"][:300] == splits["train"]


def test_label_distribution_is_not_degenerate():
    examples = listops.generate(300, seed=11)
    counts = collections.Counter(e.label for e in examples)
    majority = max(counts.values()) / len(examples)
    print(f"ListOps majority-class fraction over 300 examples: {majority:.3f}")
    assert len(counts) == 10
    assert majority < 0.3  # MIN/MAX favour 0 and 9 (~17 % each); chance would be 10 %


def test_encode_shapes():
    ids, mask = listops.encode("[MAX 1 2 ]", max_len=8)
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    assert ids.tolist() == [1, 3, 8, 9, 2, 0, 0, 0]
    assert mask.tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    ids, mask = listops.encode(["[SM", "9", "]"], max_len=None, add_cls=False)
    assert ids.tolist() == [6, 16, 2] and mask.tolist() == [1, 1, 1]
    ids, _ = listops.encode("[MAX 1 2 ]", max_len=None, pad_to_multiple_of=4)
    assert ids.shape == (8,)
    ids, _ = listops.encode("[MAX 1 2 ]", max_len=10, pad_to_multiple_of=4)
    assert ids.shape == (12,)
    with pytest.raises(ValueError, match="max_len"):
        listops.encode("[MAX 1 2 ]", max_len=4)
    with pytest.raises(ValueError, match="unknown"):
        listops.encode("[MAX 1 x ]", max_len=8)
    examples = listops.generate(4, seed=0)
    ids, mask = listops.encode_batch([e.text for e in examples], max_len=2048,
                                     pad_to_multiple_of=64)
    assert ids.shape == mask.shape == (4, 2048)
    for row, row_mask, e in zip(ids, mask, examples):
        n = len(e.tokens) + 1
        assert row_mask.sum() == n and row[0] == listops.CLS_ID
        assert [listops.VOCAB[i] for i in row[1:n]] == e.tokens
        assert np.all(row[n:] == listops.PAD_ID)
    ids, _ = listops.encode_batch([e.text for e in examples], max_len=None, pad_to_multiple_of=64)
    assert ids.shape[1] % 64 == 0 and ids.shape[1] - 64 < max(len(e.tokens) + 1 for e in examples)
    assert listops.VOCAB[:7] == ("<pad>", "<cls>", "]", "[MAX", "[MIN", "[MED", "[SM")
    assert len(listops.VOCAB) == 17


def test_jsonl_round_trip(tmp_path):
    splits = listops.make_splits(1, num_train=20, num_val=5, num_test=5, min_length=10,
                                 max_length=80, max_depth=4)
    folder = tmp_path / "listops"
    listops.save_splits(folder, splits)
    assert sorted(os.listdir(folder)) == ["test.jsonl", "train.jsonl", "val.jsonl"]  # no temp files
    with open(folder / "val.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert rows == [{"text": e.text, "label": e.label} for e in splits["val"]]
    assert listops.load_splits(folder) == splits
    (tmp_path / "bad.jsonl").write_text('{"text": "[MAX 1 2 ]"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        listops.load_jsonl(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError):
        listops.load_splits(tmp_path / "nothing")


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    leaf_prob=st.floats(0.5, 1.0),
    max_depth=st.integers(2, 10),
    max_args=st.integers(2, 10),
)
def test_tree_token_string_evaluates_like_the_tree(seed, leaf_prob, max_depth, max_args):
    tree = listops.sample_tree(
        np.random.default_rng(seed), leaf_prob=leaf_prob, max_depth=max_depth,
        max_args=max_args, max_tokens=3000,
    )
    if tree is None:  # outgrew max_tokens
        return
    tokens = listops.tree_tokens(tree)
    assert listops.evaluate(" ".join(tokens)) == _recursive_value(tree)
    assert isinstance(tree, tuple) and 2 <= _depth(tree) <= max_depth
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, tuple):
            assert node[0] in listops.OPERATORS and 2 <= len(node[1]) <= max_args
            todo.extend(node[1])
        else:
            assert 0 <= node <= 9
