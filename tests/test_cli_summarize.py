"""`eqx-bigbird summarize` on a tiny BigBird-Pegasus checkpoint with a tiny SentencePiece
tokenizer (trained here, offline): the summaries are `generate`'s, whatever the batch size;
documents longer than max_position_embeddings are an error unless --truncate."""

import io
import json

import jax.numpy as jnp
import numpy as np
import pytest

import eqx_bigbird as eb
from eqx_bigbird.cli import main

from .pegasus_reference import build_model, transformers
from .test_pegasus_decoding import _varied

WORDS = (
    "the long document model reads papers about sparse attention and writes a short summary of "
    "each section while global tokens see every block and random blocks connect distant parts"
).split()
OPTIONS = dict(num_beams=2, no_repeat_ngram_size=3, length_penalty=0.8, max_new_tokens=10)
FLAGS = ["--num-beams", "2", "--no-repeat-ngram-size", "3", "--length-penalty", "0.8",
         "--max-new-tokens", "10", "--no-progress"]
MAX_POS = 128


def _text(rng, n):
    return " ".join(rng.choice(WORDS, n))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An HF directory: a random BigBirdPegasusForConditionalGeneration (max 128 positions) and a
    Pegasus tokenizer trained offline (SentencePiece, Pegasus' layout)."""
    spm = pytest.importorskip("sentencepiece")
    root = tmp_path_factory.mktemp("summarizer")
    rng = np.random.default_rng(0)
    corpus = [_text(rng, 30) for _ in range(200)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=120, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2,
    )
    (root / "spiece.model").write_bytes(model.getvalue())
    fast = transformers.PegasusTokenizerFast(vocab_file=str(root / "spiece.model"), from_slow=True)
    folder = root / "hf"
    pt = build_model(
        "BigBirdPegasusForConditionalGeneration", seed=2, vocab_size=len(fast),
        max_position_embeddings=MAX_POS, tie_word_embeddings=False, attention_type="block_sparse",
    )
    _varied(pt)
    pt.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return folder


def _expected(folder, texts, max_length=None):
    """(ids, text) of each summary from `generate` on each document alone, unpadded."""
    tokenizer = eb.Tokenizer.from_pretrained(folder)
    model = eb.BigBirdPegasusForConditionalGeneration.from_pretrained(folder)
    out = []
    for text in texts:
        enc = tokenizer.encode(text, max_length=max_length, truncation=max_length is not None)
        row = np.asarray(eb.generate(model, jnp.asarray(enc.input_ids), **OPTIONS))[1:]
        ids = [int(t) for t in row[: int(np.argmax(np.append(row, 1) == 1))]]
        out.append((ids, tokenizer.decode(ids)))
    return out


def _files(tmp_path, texts):
    paths = []
    for n, text in enumerate(texts):
        paths.append(tmp_path / f"doc{n}.txt")
        paths[-1].write_text(text, encoding="utf-8")
    return [str(p) for p in paths]


def _read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _same_length(folder, n, words, rng):
    """`n` different texts of one token length (not a multiple of block_size): one compiled
    program for all of them."""
    tokenizer = eb.Tokenizer.from_pretrained(folder)
    by_length: dict[int, list[str]] = {}
    while True:
        text = _text(rng, words)
        group = by_length.setdefault(len(tokenizer.encode(text).input_ids), [])
        group.append(text)
        if len(group) == n and len(tokenizer.encode(text).input_ids) % 8:
            return group


def test_summaries_are_generates_at_any_batch_size(checkpoint, tmp_path, capsys):
    texts = _same_length(checkpoint, 3, 20, np.random.default_rng(1))
    files = _files(tmp_path, texts)
    expected = _expected(checkpoint, texts)
    assert len({tuple(ids) for ids, _ in expected}) > 1  # the summaries depend on the document
    # Batch size 1 from our format (which needs --tokenizer), 2 from the HF directory.
    ours = tmp_path / "model.safetensors"
    eb.save(ours, eb.BigBirdPegasusForConditionalGeneration.from_pretrained(checkpoint))
    assert main(["summarize", str(ours), *files, "--out", str(tmp_path / "x.jsonl")]) == 1
    assert "pass --tokenizer" in capsys.readouterr().err
    results = []
    for batch, source in (("1", [str(ours), "--tokenizer", str(checkpoint)]),
                          ("2", [str(checkpoint)])):
        out = tmp_path / f"b{batch}" / "summaries.jsonl"
        assert main(["summarize", *source, *files, *FLAGS, "--batch-size", batch,
                     "--out", str(out)]) == 0
        assert f"wrote {out}: 3 summaries" in capsys.readouterr().out
        rows = _read(out)
        assert [r["file"] for r in rows] == files
        assert [(r["summary_ids"], r["summary"]) for r in rows] == expected
        assert not any(r["truncated"] for r in rows)
        results.append(rows)
    assert results[0] == results[1]


def test_too_long_documents_need_truncate(checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(2)
    texts = [_text(rng, 400), _text(rng, 15)]  # output rows keep this order
    files = _files(tmp_path, texts)
    out = tmp_path / "s.jsonl"
    assert main(["summarize", str(checkpoint), *files, *FLAGS, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{files[0]}:" in err and "max_position_embeddings=128" in err and "--truncate" in err
    assert not out.exists()
    assert main(["summarize", str(checkpoint), *files, *FLAGS, "--out", str(out),
                 "--truncate"]) == 0
    assert "(1 truncated to 128 tokens)" in capsys.readouterr().out
    rows = _read(out)
    assert [r["file"] for r in rows] == files
    assert [r["truncated"] for r in rows] == [True, False]
    assert rows[0]["input_tokens"] == MAX_POS
    expected = _expected(checkpoint, texts[:1], max_length=MAX_POS)
    assert (rows[0]["summary_ids"], rows[0]["summary"]) == expected[0]


def test_bad_options_are_one_line_errors(checkpoint, tmp_path, capsys):
    files = _files(tmp_path, ["a short document"])
    for flags, message in (
        (["--num-beams", "0"], "--num-beams must be >= 1"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--max-new-tokens", "500"], "max_position_embeddings"),
    ):
        assert main(["summarize", str(checkpoint), *files, *flags]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit):
        main(["summarize", str(checkpoint)])  # no FILE
