"""`Tokenizer`: a Hugging Face `tokenizers` pipeline returning numpy arrays, plus QA span helpers.

A directory with a `tokenizer.json` (any HF fast tokenizer) is loaded as it is. A directory with
only a SentencePiece `spiece.model` (BigBird's original releases) is converted into the same kind of
pipeline the way HF's `BigBirdTokenizerFast` converts it, or, when its `tokenizer_config.json`
names a Pegasus tokenizer (BigBird-Pegasus), the way `PegasusTokenizerFast` does (HF's default
layout: the special tokens and `<unk_2..offset-1>` first, pieces shifted by `offset`, `X </s>`).
Both kinds of directory behave alike: same truncation, offsets and padding code. The conversion
needs the `sentencepiece` package (not transformers); other layouts need a tokenizer.json.
"""

import dataclasses
import os
from collections.abc import Sequence
from typing import Literal

import numpy as np
import tokenizers
from tokenizers import AddedToken, decoders, normalizers, pre_tokenizers, processors

from ._config import read_json_object

TOKENIZER_JSON = "tokenizer.json"
SENTENCEPIECE_MODELS = ("spiece.model", "sentencepiece.model")
_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")  # later files win, as in HF
_ROLES = ("pad", "cls", "sep", "mask", "unk")
# Fallbacks when no config names a role: BERT's spelling first, then SentencePiece/RoBERTa's.
# BigBird's vocabulary has both <s> and [CLS]; it uses [CLS]/[SEP], hence this order.
_CANDIDATES = {
    "pad": ("[PAD]", "<pad>"),
    "cls": ("[CLS]", "<s>"),
    "sep": ("[SEP]", "</s>"),
    "mask": ("[MASK]", "<mask>"),
    "unk": ("[UNK]", "<unk>"),
}
# HF writes int(1e30) for "no limit".
_NO_LIMIT = 10**12

Truncation = bool | Literal["longest_first", "only_first", "only_second"]


@dataclasses.dataclass(frozen=True, eq=False)
class Encoding:
    """One encoded text or text pair (arrays are read-only).

    - `input_ids`, `attention_mask`, `token_type_ids`: int32 `(n,)`.
    - `offsets`: int32 `(n, 2)`, each token's `[start, end)` characters in ITS OWN input text;
      `(0, 0)` for special and padding tokens.
    - `sequence_ids`: int32 `(n,)`, 0 for the first text, 1 for the pair, -1 for special/padding.
    - `truncated`: whether tokens were dropped to fit `max_length`.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    offsets: np.ndarray
    sequence_ids: np.ndarray
    truncated: bool

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclasses.dataclass(frozen=True, eq=False)
class BatchEncoding:
    """Several encodings padded to one length: the arrays of `Encoding` with a leading batch axis
    (`truncated` is a bool `(batch,)` array). `batch[i]` is row `i` as an `Encoding`, padding
    included (padding has `sequence_ids == -1`, so the span helpers ignore it)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    offsets: np.ndarray
    sequence_ids: np.ndarray
    truncated: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> Encoding:
        return Encoding(
            self.input_ids[i],
            self.attention_mask[i],
            self.token_type_ids[i],
            self.offsets[i],
            self.sequence_ids[i],
            bool(self.truncated[i]),
        )


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _token_name(value) -> str | None:
    # Config values are a string, an AddedToken dict ({"content": ...}) or null.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _read_configs(folder: str) -> tuple[dict[str, str], int | None]:
    names: dict[str, str] = {}
    model_max_length = None
    for filename in _CONFIG_FILES:
        path = os.path.join(folder, filename)
        if not os.path.exists(path):
            continue
        config = read_json_object(path)  # not UTF-8, JSON or an object: ValueError naming it
        for role in _ROLES:
            name = _token_name(config.get(f"{role}_token"))
            if name is not None:
                names[role] = name
        limit = config.get("model_max_length")
        number = isinstance(limit, (int, float)) and not isinstance(limit, bool)
        if number and 0 < limit < _NO_LIMIT:
            model_max_length = int(limit)
    return names, model_max_length


# -- SentencePiece ---------------------------------------------------------------------------------


def _proto_fields(buf: bytes):
    """Yields `(field number, value)` of a serialized protobuf message (wire format only)."""
    i, n = 0, len(buf)

    def varint():
        nonlocal i
        shift = result = 0
        while True:
            byte = buf[i]
            i += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7

    while i < n:
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            yield field, varint()
        elif wire == 1:
            yield field, buf[i : i + 8]
            i += 8
        elif wire == 2:
            size = varint()
            yield field, buf[i : i + size]
            i += size
        elif wire == 5:
            yield field, buf[i : i + 4]
            i += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


@dataclasses.dataclass
class _SpmSpec:
    # What the sentencepiece Python API does not expose, read from its serialized `ModelProto`
    # (field numbers from sentencepiece_model.proto).
    piece_types: list[int]  # 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte
    # The stored float32 scores (the Python API's `get_score` rounds them differently from the
    # protobuf HF's converters read).
    scores: list[float] = dataclasses.field(default_factory=list)
    model_type: int = 1  # 1 unigram, 2 BPE, 3 word, 4 char
    byte_fallback: bool = False
    charsmap: bytes = b""
    add_dummy_prefix: bool = True


def _read_spm_spec(proto: bytes) -> _SpmSpec:
    spec = _SpmSpec(piece_types=[])
    for field, value in _proto_fields(proto):
        if field == 1:  # pieces
            kind, score = 1, 0.0
            for f, v in _proto_fields(value):
                if f == 2:
                    score = float(np.frombuffer(v, "<f4")[0])
                elif f == 3:
                    kind = v
            spec.piece_types.append(kind)
            spec.scores.append(score)
        elif field == 2:  # trainer_spec
            for f, v in _proto_fields(value):
                if f == 3:
                    spec.model_type = v
                elif f == 35:
                    spec.byte_fallback = bool(v)
        elif field == 3:  # normalizer_spec
            for f, v in _proto_fields(value):
                if f == 2:
                    spec.charsmap = bytes(v)
                elif f == 3:
                    spec.add_dummy_prefix = bool(v)
    return spec


@dataclasses.dataclass(frozen=True)
class _PegasusLayout:
    """HF's `PegasusTokenizer` vocabulary around a SentencePiece model: `pad`, `eos`, the two
    mask tokens, `<unk_2>` ... `<unk_{offset-1}>`, then the SentencePiece pieces from id 2 on
    (shifted by `offset`); encodings end with `eos`."""

    pad: str = "<pad>"
    eos: str = "</s>"
    mask_sent: str | None = "<mask_1>"
    mask: str | None = "<mask_2>"
    offset: int = 103

    def head(self) -> list[str]:
        return [self.pad, self.eos, *(t for t in (self.mask_sent, self.mask) if t is not None)]

    def unks(self) -> list[str]:
        return [f"<unk_{i}>" for i in range(2, self.offset)]


def _pegasus_layout(folder: str) -> _PegasusLayout | None:
    """The layout a `tokenizer_config.json` naming a Pegasus tokenizer asks for, else `None`."""
    path = os.path.join(folder, "tokenizer_config.json")
    if not os.path.isfile(path):
        return None
    config = read_json_object(path)  # not UTF-8, JSON or an object: ValueError naming it
    if not str(config.get("tokenizer_class", "")).startswith("Pegasus"):
        return None
    default = _PegasusLayout()
    names = {
        field: _token_name(config[key]) if key in config else getattr(default, field)
        for field, key in (
            ("pad", "pad_token"), ("eos", "eos_token"), ("mask_sent", "mask_token_sent"),
            ("mask", "mask_token"),
        )
    }
    offset = config.get("offset", default.offset)
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 2:
        raise ValueError(f"{path}: offset={offset!r} must be an int >= 2")
    layout = _PegasusLayout(**names, offset=offset)
    if names["pad"] is None or names["eos"] is None:
        raise ValueError(f"{path}: a Pegasus tokenizer needs pad_token and eos_token")
    extra = config.get("additional_special_tokens")
    standard = [t for t in layout.head()[2:] + layout.unks() if t != layout.mask]
    if extra is not None and [_token_name(t) for t in extra] != standard:
        raise ValueError(
            f"{path}: non-standard Pegasus additional_special_tokens; only HF's default layout "
            f"is converted from spiece.model. Write tokenizer.json with HF: "
            "PegasusTokenizerFast.from_pretrained(folder).save_pretrained(folder)"
        )
    return layout


def _load_sentencepiece(path: str, pegasus: _PegasusLayout | None = None) -> tokenizers.Tokenizer:
    """A `tokenizers` Unigram pipeline equivalent to the SentencePiece model at `path`, as HF's
    `BigBirdTokenizerFast` (or, given a `pegasus` layout, `PegasusTokenizerFast`) converts it."""
    try:
        import sentencepiece
    except ImportError:
        raise ImportError(
            f"{path} is a SentencePiece model and there is no tokenizer.json beside it; reading "
            "it needs the sentencepiece package: pip install sentencepiece"
        ) from None
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.Load(path)
    except (OSError, RuntimeError) as e:
        raise ValueError(f"{path} is not a readable SentencePiece model: {e}") from None
    spec = _read_spm_spec(sp.serialized_model_proto())
    if spec.model_type != 1:
        kind = {2: "BPE", 3: "word", 4: "char"}.get(spec.model_type, str(spec.model_type))
        raise ValueError(
            f"{path} is a SentencePiece {kind} model; only unigram models (BigBird's) are "
            "supported without a tokenizer.json"
        )
    size = sp.get_piece_size()
    vocab = [(sp.id_to_piece(i), spec.scores[i]) for i in range(size)]
    kinds, unk_id = spec.piece_types, sp.unk_id()
    if pegasus is not None:
        # As HF's PegasusConverter: its special tokens replace SentencePiece's ids 0 and 1.
        head, unks = pegasus.head(), pegasus.unks()
        if sp.unk_id() < 2:
            raise ValueError(f"{path}: a Pegasus SentencePiece model has its unk piece at id >= 2")
        vocab = [(t, 0.0) for t in head] + [(t, -100.0) for t in unks] + vocab[2:]
        kinds = [3] * (len(head) + len(unks)) + kinds[2:]
        unk_id = sp.unk_id() - 2 + len(head) + len(unks)
    backend = tokenizers.Tokenizer(
        tokenizers.models.Unigram(vocab, unk_id=unk_id, byte_fallback=spec.byte_fallback)
    )
    # As HF's SpmConverter: the precompiled NFKC-like map, then its whitespace handling.
    steps = [
        normalizers.Strip(left=False, right=True),
        normalizers.Replace(tokenizers.Regex(" {2,}"), "▁"),
    ]
    if spec.charsmap:
        steps.insert(0, normalizers.Precompiled(spec.charsmap))
    backend.normalizer = normalizers.Sequence(steps)
    prepend = "always" if spec.add_dummy_prefix else "never"
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend)
    if pegasus is not None:
        # PegasusConverter always prepends (its tokenizer has no add_prefix_space).
        prepend = "always"
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.WhitespaceSplit(),
                pre_tokenizers.Metaspace("▁", prepend_scheme=prepend),
            ]
        )
    metaspace = decoders.Metaspace(replacement="▁", prepend_scheme=prepend)
    backend.decoder = (
        decoders.Sequence([decoders.ByteFallback(), metaspace]) if spec.byte_fallback else metaspace
    )
    # Control pieces (<pad>, <s>, ...) are special; user-defined ones are matched whole but kept
    # on decode. Both must bypass the model, which would split them.
    added = [
        AddedToken(piece, normalized=False, special=kind == 3)
        for (piece, _), kind in zip(vocab, kinds)
        if kind in (3, 4)
    ]
    backend.add_tokens(added)
    if pegasus is not None:
        unk = vocab[unk_id][0]
        backend.add_special_tokens([AddedToken(unk, normalized=False, special=True)])
        backend.post_processor = processors.TemplateProcessing(
            single=f"$A:0 {pegasus.eos}:0", pair=f"$A:0 $B:0 {pegasus.eos}:0",
            special_tokens=[(pegasus.eos, 1)],
        )
    return backend


# -- the tokenizer ---------------------------------------------------------------------------------


class Tokenizer:
    """Encodes text (and text pairs) to numpy arrays ready for `BigBirdModel`.

    Build it with `Tokenizer.from_pretrained(folder)`, or wrap a `tokenizers.Tokenizer` directly.
    Special tokens: `pad_token`, `cls_token`, `sep_token`, `mask_token`, `unk_token` and their
    `*_id` (`None` when the vocabulary has no such token). `model_max_length` (or `None`) is the
    truncation length used when `encode` is given no `max_length`.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        pad_token: str | None = None,
        cls_token: str | None = None,
        sep_token: str | None = None,
        mask_token: str | None = None,
        unk_token: str | None = None,
        model_max_length: int | None = None,
    ):
        # Own copy: truncation is set per call, and a tokenizer.json may carry its own padding and
        # truncation (all-MiniLM-L6-v2's pads everything to 128) that would corrupt our outputs.
        self._backend = tokenizers.Tokenizer.from_str(backend.to_str())
        self._backend.no_padding()
        self._backend.no_truncation()
        self.model_max_length = model_max_length
        self.pad_token = pad_token
        self.cls_token = cls_token
        self.sep_token = sep_token
        self.mask_token = mask_token
        self.unk_token = unk_token
        self._ids: dict[str, int | None] = {}
        for role in _ROLES:
            token = getattr(self, f"{role}_token")
            token_id = None if token is None else self._backend.token_to_id(token)
            if token is not None and token_id is None:
                raise ValueError(f"{role}_token {token!r} is not in the vocabulary")
            self._ids[role] = token_id

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
    ) -> "Tokenizer":
        """Loads `folder/tokenizer.json`, else `folder/spiece.model` (needs `sentencepiece`;
        converted as BigBird's, or as Pegasus' when `tokenizer_config.json` says so).

        `folder` may be a Hub repo id (`org/name`), resolved through the HF cache with `revision`,
        `cache_dir`, `local_files_only` and `token` (see `_hub.local_path`); only the tokenizer
        files are fetched.

        Special tokens come from `tokenizer_config.json` / `special_tokens_map.json` when present,
        else from the vocabulary (`[PAD]`/`<pad>`, `[CLS]`/`<s>`, `[SEP]`/`</s>`, `[MASK]`/`<mask>`,
        `[UNK]`/`<unk>`).
        """
        from ._hub import local_path  # imports this module

        folder = local_path(
            folder, "tokenizer", revision=revision, cache_dir=cache_dir,
            local_files_only=local_files_only, token=token,
        )
        if not os.path.exists(folder):
            raise FileNotFoundError(f"tokenizer directory {folder!r} does not exist")
        if not os.path.isdir(folder):
            raise NotADirectoryError(f"{folder!r} is not a directory (expected a tokenizer folder)")
        names, model_max_length = _read_configs(folder)
        json_path = os.path.join(folder, TOKENIZER_JSON)
        spm_paths = [os.path.join(folder, f) for f in SENTENCEPIECE_MODELS]
        spm_path = next((p for p in spm_paths if os.path.isfile(p)), None)
        from_json = os.path.isfile(json_path)
        pegasus = None
        if from_json:
            try:
                backend = tokenizers.Tokenizer.from_file(json_path)
            except Exception as e:  # the Rust side raises a bare Exception for any parse error
                raise ValueError(f"{json_path} is not a readable tokenizer.json: {e}") from None
        elif spm_path is not None:
            pegasus = _pegasus_layout(folder)
            backend = _load_sentencepiece(spm_path, pegasus)
        else:
            raise FileNotFoundError(
                f"no tokenizer in {folder!r}: looked for {TOKENIZER_JSON} or "
                f"{' / '.join(SENTENCEPIECE_MODELS)}; found {sorted(os.listdir(folder))}"
            )
        for role in _ROLES:
            if role not in names:
                found = [t for t in _CANDIDATES[role] if backend.token_to_id(t) is not None]
                if found:
                    names[role] = found[0]
        if not from_json and pegasus is None:
            _finish_sentencepiece(backend, names)
        return cls(
            backend,
            pad_token=names.get("pad"),
            cls_token=names.get("cls"),
            sep_token=names.get("sep"),
            mask_token=names.get("mask"),
            unk_token=names.get("unk"),
            model_max_length=model_max_length,
        )

    # -- vocabulary ------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the embedding table needs at least this many)."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def pad_token_id(self) -> int | None:
        return self._ids["pad"]

    @property
    def cls_token_id(self) -> int | None:
        return self._ids["cls"]

    @property
    def sep_token_id(self) -> int | None:
        return self._ids["sep"]

    @property
    def mask_token_id(self) -> int | None:
        return self._ids["mask"]

    @property
    def unk_token_id(self) -> int | None:
        return self._ids["unk"]

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The underlying `tokenizers.Tokenizer` (do not change its padding or truncation)."""
        return self._backend

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(token_id)

    # -- encoding --------------------------------------------------------------------------------

    def _set_truncation(self, truncation: Truncation, max_length: int | None, pair: bool):
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer))
            or max_length < 1
        ):
            raise ValueError(f"max_length={max_length!r}: expected a positive integer or None")
        if truncation is True:
            truncation = "longest_first"
        length = self.model_max_length if max_length is None else int(max_length)
        if truncation is False or length is None:
            self._backend.no_truncation()
            return
        if truncation not in ("longest_first", "only_first", "only_second"):
            raise ValueError(
                f"truncation={truncation!r}: expected a bool or 'longest_first', 'only_first', "
                "'only_second'"
            )
        specials = self._backend.num_special_tokens_to_add(pair)
        if length < specials:
            # tokenizers would silently return the whole text untruncated.
            raise ValueError(
                f"max_length={length} is less than the {specials} special tokens this tokenizer "
                "adds to every encoding"
            )
        self._backend.enable_truncation(length, strategy=truncation, direction="right")

    def encode(
        self,
        text: str,
        pair: str | None = None,
        *,
        max_length: int | None = None,
        truncation: Truncation = True,
    ) -> Encoding:
        """Encodes one text, or a (question, context) pair, with the special tokens.

        **Arguments:**
        - `text`, `pair`: the first and (optionally) second sequence.
        - `max_length`: most tokens, specials included (default: `model_max_length`).
        - `truncation`: `True` (= `"longest_first"`, trims the longer sequence first),
          `"only_first"`, `"only_second"` (keeps a question whole) or `False` (never truncate).

        **Returns:** an unpadded `Encoding`.
        """
        _check_text(text, "text")
        if pair is not None:
            _check_text(pair, "pair")
        self._set_truncation(truncation, max_length, pair is not None)
        return _to_encoding(self._backend.encode(text, pair, add_special_tokens=True))

    def encode_batch(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        *,
        max_length: int | None = None,
        truncation: Truncation = True,
        padding: Literal["longest", "max_length"] = "longest",
        pad_to_multiple_of: int | None = None,
    ) -> BatchEncoding:
        """Encodes several texts (or pairs) and right-pads them to one length.

        **Arguments:**
        - `texts`, `pairs`: first sequences and, optionally, as many second sequences.
        - `max_length`, `truncation`: as in `encode`.
        - `padding`: `"longest"` (the longest row) or `"max_length"` (`max_length`, else
          `model_max_length`).
        - `pad_to_multiple_of`: round the padded length up to a multiple of this (BigBird's
          block-sparse attention needs a multiple of `block_size`); rows are still truncated to
          `max_length` (HF refuses a `max_length` that is not such a multiple).

        **Returns:** a `BatchEncoding`; padding has id `pad_token_id`, mask 0, type 0, offsets
        `(0, 0)` and sequence id -1.
        """
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of texts; use encode for one text")
        for t in texts:
            _check_text(t, "text")
        if pairs is not None:
            if isinstance(pairs, str) or len(pairs) != len(texts):
                raise ValueError(f"pairs must be a list of {len(texts)} texts, like texts")
            for t in pairs:
                _check_text(t, "pair")
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding={padding!r}: expected 'longest' or 'max_length'")
        if pad_to_multiple_of is not None and (
            isinstance(pad_to_multiple_of, bool) or not isinstance(pad_to_multiple_of, int)
            or pad_to_multiple_of < 1
        ):
            raise ValueError(
                f"pad_to_multiple_of={pad_to_multiple_of!r}: expected a positive integer or None"
            )
        if self.pad_token_id is None:
            raise ValueError("this tokenizer has no pad token; encode_batch cannot pad")
        self._set_truncation(truncation, max_length, pairs is not None)
        inputs = list(texts) if pairs is None else list(zip(texts, pairs))
        rows = [_to_encoding(e) for e in self._backend.encode_batch(inputs)]
        longest = max((len(r) for r in rows), default=0)
        if padding == "max_length":
            length = self.model_max_length if max_length is None else max_length
            if length is None:
                raise ValueError("padding='max_length' needs max_length (no model_max_length)")
            if longest > length:
                raise ValueError(
                    f"a row has {longest} tokens, more than max_length={length} (truncation off?)"
                )
        else:
            length = longest
        if pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        return _pad(rows, length, self.pad_token_id)

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        """The text of a 1-D sequence of ids (special tokens, padding included, dropped)."""
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"decode takes a 1-D sequence of ids, got shape {ids.shape}")
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"decode takes integer ids, got dtype {ids.dtype}")
        unknown = ids[(ids < 0) | (ids >= self.vocab_size)]
        if unknown.size:
            # tokenizers drops them without a word.
            raise ValueError(
                f"ids {unknown[:8].tolist()} are not in the vocabulary [0, {self.vocab_size})"
            )
        return self._backend.decode(ids.tolist(), skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, pad={self.pad_token!r}, "
            f"cls={self.cls_token!r}, sep={self.sep_token!r}, mask={self.mask_token!r}, "
            f"unk={self.unk_token!r}, model_max_length={self.model_max_length})"
        )


def _finish_sentencepiece(backend: tokenizers.Tokenizer, names: dict[str, str]):
    # BigBird's template and special tokens, as HF's BigBirdTokenizerFast sets them up: the roles
    # are special (dropped on decode), and [MASK] swallows the space before it.
    backend.add_special_tokens(
        [
            AddedToken(names[role], normalized=False, special=True, lstrip=role == "mask")
            for role in _ROLES
            if role in names
        ]
    )
    if "cls" in names and "sep" in names:
        cls, sep = names["cls"], names["sep"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0",
            pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, backend.token_to_id(cls)), (sep, backend.token_to_id(sep))],
        )


def _check_text(text, what: str):
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{what} holds a lone surrogate {text[e.start]!r} at character {e.start}: not valid "
            "Unicode text (decode bytes with errors='replace' first)"
        ) from None


def _to_encoding(e: tokenizers.Encoding) -> Encoding:
    n = len(e.ids)
    offsets = np.asarray(e.offsets, dtype=np.int32).reshape(n, 2)
    sequence_ids = np.array([-1 if s is None else s for s in e.sequence_ids], dtype=np.int32)
    # Specials get (0, 0) whatever the post-processor says, so spans never land on them.
    offsets[sequence_ids < 0] = 0
    return Encoding(
        _frozen(np.asarray(e.ids, dtype=np.int32)),
        _frozen(np.asarray(e.attention_mask, dtype=np.int32)),
        _frozen(np.asarray(e.type_ids, dtype=np.int32)),
        _frozen(offsets),
        _frozen(sequence_ids),
        bool(e.overflowing),
    )


def _pad(rows: list[Encoding], length: int, pad_id: int) -> BatchEncoding:
    b = len(rows)
    ids = np.full((b, length), pad_id, dtype=np.int32)
    mask = np.zeros((b, length), dtype=np.int32)
    types = np.zeros((b, length), dtype=np.int32)
    offsets = np.zeros((b, length, 2), dtype=np.int32)
    sequence_ids = np.full((b, length), -1, dtype=np.int32)
    for i, r in enumerate(rows):
        n = len(r)
        ids[i, :n] = r.input_ids
        mask[i, :n] = r.attention_mask
        types[i, :n] = r.token_type_ids
        offsets[i, :n] = r.offsets
        sequence_ids[i, :n] = r.sequence_ids
    truncated = np.array([r.truncated for r in rows], dtype=bool)
    return BatchEncoding(
        *(_frozen(a) for a in (ids, mask, types, offsets, sequence_ids, truncated))
    )


# -- QA spans --------------------------------------------------------------------------------------


def char_span_to_token_span(
    encoding: Encoding, start_char: int, end_char: int, sequence: int = 1
) -> tuple[int, int] | None:
    """The tokens that cover characters `[start_char, end_char)` of one input text.

    For QA labels: `start_char`/`end_char` index the context (`sequence=1`), end exclusive.

    **Returns:** `(start_token, end_token)`, both INCLUSIVE, the first and last token of that
    sequence overlapping the characters; `None` if no token does, or if truncation cut the span
    short (then the answer is not in the encoded text, and a QA label is usually `(0, 0)`).
    """
    if not 0 <= start_char < end_char:
        raise ValueError(f"empty or negative character span [{start_char}, {end_char})")
    in_sequence = encoding.sequence_ids == sequence
    starts, ends = encoding.offsets[:, 0], encoding.offsets[:, 1]
    overlap = in_sequence & (starts < end_char) & (ends > start_char) & (ends > starts)
    hits = np.flatnonzero(overlap)
    if hits.size == 0:
        return None
    last = np.flatnonzero(in_sequence)[-1]
    if encoding.truncated and hits[-1] == last and ends[last] < end_char:
        return None
    return int(hits[0]), int(hits[-1])


def token_span_to_text(
    encoding: Encoding, context: str, start_tok: int, end_tok: int, sequence: int = 1
) -> str:
    """The text of tokens `start_tok..end_tok` (INCLUSIVE) of `context`, the `sequence`-th input.

    Surrounding whitespace is dropped (SentencePiece tokens carry the space before a word). Raises
    `ValueError` if either token is special, padding or from the other sequence (a QA prediction
    should be restricted to context tokens first).
    """
    n = len(encoding)
    if not 0 <= start_tok <= end_tok < n:
        raise ValueError(f"token span [{start_tok}, {end_tok}] is not ordered within 0..{n - 1}")
    for t in (start_tok, end_tok):
        if encoding.sequence_ids[t] != sequence:
            raise ValueError(
                f"token {t} is not a token of sequence {sequence} "
                f"(sequence id {int(encoding.sequence_ids[t])})"
            )
    start, end = int(encoding.offsets[start_tok, 0]), int(encoding.offsets[end_tok, 1])
    return context[start:end].strip()
