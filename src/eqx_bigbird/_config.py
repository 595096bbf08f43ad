"""`BigBirdConfig`: every field of HF's `BigBirdConfig`, immutable, validated, HF
round-trippable; `HFConfig`, what it shares with `BigBirdPegasusConfig`."""

import dataclasses
import json
import math
import os
import types
import typing
import warnings
from typing import Any, ClassVar, Literal, NoReturn

from ._activations import ACTIVATIONS, UNSUPPORTED_ACTIVATIONS

ATTENTION_TYPES = ("block_sparse", "original_full")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")

# Generic `PretrainedConfig` keys that do not change what the network computes. They are kept
# verbatim (in `extra`) so that `to_hf` gives back the `config.json` that `from_hf` read.
_PASSTHROUGH_KEYS = frozenset(
    {
        "transformers_version", "_name_or_path", "torch_dtype", "dtype", "use_bfloat16",
        "gradient_checkpointing", "output_attentions", "output_hidden_states", "return_dict",
        "torchscript", "tokenizer_class", "prefix", "finetuning_task", "task_specific_params",
        "tf_legacy_loss", "tie_encoder_decoder", "decoder_start_token_id", "max_length",
        "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
        "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
        "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
        "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
        "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
        "suppress_tokens", "begin_suppress_tokens",
    }
)
# Generic keys that would change the network: accepted only at the value we implement.
_REQUIRED_VALUES = {
    "is_encoder_decoder": False,
    "pruned_heads": {},
    "position_embedding_type": "absolute",
    "cross_attention_hidden_size": None,
}


def _default_labels(n: int) -> tuple[str, ...]:
    return tuple(f"LABEL_{i}" for i in range(n))


# Validation is ours, as in the subclasses below: the runtime type checker leaves it alone.
@typing.no_type_check
class HFConfig:
    """What `BigBirdConfig` and `BigBirdPegasusConfig` (frozen dataclasses) share: every field
    checked against its annotation, HF `config.json` read and written, `replace`, `save`.

    A subclass names its `model_type`, the name its errors give it (`_model_name`), the generic
    HF keys it keeps verbatim (`_passthrough`) or accepts at one value only (`_required`), and
    those HF writes only when they differ from `PretrainedConfig`'s defaults
    (`_generic_defaults`).
    """

    _model_type: ClassVar[str]
    _model_name: ClassVar[str]
    _model_type_hints: ClassVar[dict[str, str]] = {}
    _passthrough: ClassVar[frozenset] = _PASSTHROUGH_KEYS
    _required: ClassVar[dict] = _REQUIRED_VALUES
    _generic_defaults: ClassVar[tuple[tuple[str, Any], ...]]

    def _fail(self, name: str, why: str) -> NoReturn:
        raise ValueError(f"{type(self).__name__}.{name}={getattr(self, name)!r}: {why}")

    def _check_fields(
        self, *, positive: tuple[str, ...], non_negative: tuple[str, ...],
        probabilities: tuple[str, ...], activation: str, width: str, heads: tuple[str, ...],
    ) -> None:
        """Every field against its annotation (the annotations are the type table), then the
        value rules both configs have: `positive` / `non_negative` integers (None passes),
        `probabilities` in [0, 1) (None passes), a known `activation`, `width` divisible by
        each of `heads`, at least one label, a known `problem_type`."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                self._fail(f.name, "must be finite")
            if not _conforms(value, f.type):
                # A wrong Literal is mostly a wrong string: naming its type would not help.
                literal = typing.get_origin(f.type) is Literal
                got = "" if literal else f", not {type(value).__name__}"
                self._fail(f.name, f"must be {_type_name(f.type)}{got}")
        # From here on every value has its annotated type.
        for name in positive:
            if getattr(self, name) < 1:
                self._fail(name, "must be a positive integer")
        for name in non_negative:
            if (getattr(self, name) or 0) < 0:
                self._fail(name, "must be non-negative")
        for name in probabilities:
            if not 0.0 <= (getattr(self, name) or 0.0) < 1.0:
                self._fail(name, "must lie in [0, 1)")
        if getattr(self, activation) in UNSUPPORTED_ACTIVATIONS:
            self._fail(activation, "activations with learnable parameters are not supported")
        if getattr(self, activation) not in ACTIVATIONS:
            self._fail(activation, f"unknown activation; known: {sorted(ACTIVATIONS)}")
        for name in heads:
            if getattr(self, width) % getattr(self, name):
                self._fail(width, f"must be divisible by {name}={getattr(self, name)}")
        if len(self.id2label) < 1:
            self._fail("id2label", "needs at least one label")
        if self.problem_type not in PROBLEM_TYPES:
            self._fail("problem_type", f"must be one of {PROBLEM_TYPES}")

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    def replace(self, **changes):
        """A copy with some fields changed (and validated again)."""
        if "num_labels" in changes:
            changes["id2label"] = _default_labels(changes.pop("num_labels"))
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, path_or_dict: str | os.PathLike | dict[str, Any], *, strict: bool = True):
        """Reads an HF `config.json` (a file, a directory holding one, or its dict).

        Every key is either a field, a generic HF key that does not change the computation (kept in
        `extra`), or one of a few generic keys accepted only at their default value. Unknown keys
        raise `ValueError` (with `strict=False` they are kept in `extra` with a warning); so do
        invalid values, naming the field, and the file when read from one.
        """
        raw = read_json_object(path_or_dict, f"{cls.__name__}.from_hf")
        try:
            return cls._from_raw(raw, strict)
        except (ValueError, TypeError) as e:
            if isinstance(path_or_dict, dict):
                raise
            raise ValueError(f"{_json_path(path_or_dict)}: {e}") from None

    @classmethod
    def _from_raw(cls, raw: dict[str, Any], strict: bool):
        return cls(**cls._hf_kwargs(raw, strict))

    @classmethod
    def _hf_kwargs(cls, raw: dict[str, Any], strict: bool) -> dict[str, Any]:
        """The constructor keywords of a `config.json` dict (consumed): its fields, the labels,
        the architectures, and the generic keys kept in `extra`."""
        model_type = raw.pop("model_type", cls._model_type)
        if model_type != cls._model_type:
            raise ValueError(
                f"config model_type={model_type!r} is not {cls._model_type!r}"
                + cls._model_type_hints.get(model_type, "")
            )
        labels = _labels(*(raw.pop(k, None) for k in ("id2label", "label2id", "num_labels")))
        fields = {f.name for f in dataclasses.fields(cls)} - {"id2label", "architectures", "extra"}
        kwargs, extra = _sort_keys(
            raw, fields, strict, required=cls._required, passthrough=cls._passthrough,
            model=cls._model_name,
        )
        if labels is not None:
            kwargs["id2label"] = labels
        kwargs["extra"] = tuple(sorted((k, json.dumps(v)) for k, v in extra.items()))
        return kwargs

    def to_hf(self) -> dict[str, Any]:
        """The HF `config.json` dict (HF's config class takes it as keywords)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name not in ("id2label", "architectures", "extra"):
                out[f.name] = getattr(self, f.name)
        # HF writes generic keys only when they differ from PretrainedConfig's defaults.
        for name, default in self._generic_defaults:
            if out[name] == default:
                del out[name]
        if self.id2label != _default_labels(2):
            out["id2label"] = {str(i): name for i, name in enumerate(self.id2label)}
            out["label2id"] = {name: i for i, name in enumerate(self.id2label)}
        if self.architectures is not None:
            out["architectures"] = list(self.architectures)
        out.update({k: json.loads(v) for k, v in self.extra})
        out["model_type"] = self._model_type
        return dict(sorted(out.items()))

    def save(self, path: str | os.PathLike) -> None:
        """Writes `to_hf()` as JSON, atomically (temp file + rename)."""
        from ._io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_hf(), indent=2, sort_keys=True) + "\n")


# Validation is ours (`__post_init__` raises ValueError naming the field), so the runtime type
# checker that tests and users may switch on is told to leave this class alone.
@typing.no_type_check
@dataclasses.dataclass(frozen=True)
class BigBirdConfig(HFConfig):
    """BigBird hyperparameters, with the names and defaults of HF's `BigBirdConfig`.

    Immutable and hashable, so it can sit in a model as a static field. Invalid values raise
    `ValueError` naming the field. `from_hf` / `to_hf` read and write HF `config.json`.

    Beyond HF's own fields: `id2label` is a tuple of label names (its length is `num_labels`),
    `architectures` a tuple of class names, and `extra` holds generic HF keys that do not affect the
    computation, as `(key, json_value)` pairs, so that a config round-trips unchanged.
    """

    vocab_size: int = 50358
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu_new"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 4096
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    sep_token_id: int | None = 66
    attention_type: Literal["block_sparse", "original_full"] = "block_sparse"
    use_bias: bool = True
    rescale_embeddings: bool = False
    block_size: int = 64
    num_random_blocks: int = 3
    classifier_dropout: float | None = None
    # Generic `PretrainedConfig` fields that BigBird uses.
    is_decoder: bool = False
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True
    chunk_size_feed_forward: int = 0
    id2label: tuple[str, ...] = _default_labels(2)
    problem_type: str | None = None
    architectures: tuple[str, ...] | None = None
    extra: tuple[tuple[str, str], ...] = ()

    _model_type = "big_bird"
    _model_name = "BigBird"
    _model_type_hints = {
        t: " (use eqx_bigbird.from_bert for BERT/RoBERTa)" for t in ("bert", "roberta")
    }
    _generic_defaults = (
        ("is_decoder", False), ("add_cross_attention", False), ("tie_word_embeddings", True),
        ("chunk_size_feed_forward", 0), ("problem_type", None),
    )

    def __post_init__(self):
        self._check_fields(
            positive=(
                "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings", "type_vocab_size", "block_size",
            ),
            # Token ids are not checked against vocab_size: HF does not, and tiny test configs
            # keep the defaults.
            non_negative=(
                "num_random_blocks", "pad_token_id", "bos_token_id", "eos_token_id",
                "sep_token_id", "chunk_size_feed_forward",
            ),
            probabilities=(
                "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout",
            ),
            activation="hidden_act", width="hidden_size", heads=("num_attention_heads",),
        )
        if not self.layer_norm_eps > 0:
            self._fail("layer_norm_eps", "must be positive")

    # -- derived --------------------------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_tokens_for_full_attention(self) -> int:
        """Lengths up to this fall back to full attention in block-sparse mode (HF PT's rule)."""
        return (5 + 2 * self.num_random_blocks) * self.block_size

    @property
    def decoder_attention(self) -> bool:
        """Whether the layers attend as a decoder (causally, and/or to encoder states)."""
        return self.is_decoder or self.add_cross_attention

    @property
    def self_attention_type(self) -> str:
        """The self-attention the layers are built with. Decoders always run full attention:
        block-sparse attention has global and random blocks that see later tokens (it cannot be
        causal), and its blocked layout cannot read a key/value cache or attend to encoder states.
        """
        return "original_full" if self.decoder_attention else self.attention_type

    def uses_block_sparse(self, seq_len: int) -> bool:
        """Whether a call on `seq_len` tokens runs block-sparse attention. Shorter sequences than
        `max_tokens_for_full_attention` + 1 run full attention on the same weights (per call)."""
        return (
            self.self_attention_type == "block_sparse"
            and seq_len > self.max_tokens_for_full_attention
        )

    def padded_length(self, seq_len: int) -> int:
        """The length a call runs at: a multiple of `block_size` when block-sparse."""
        if not self.uses_block_sparse(seq_len):
            return seq_len
        return -(-seq_len // self.block_size) * self.block_size


def _conforms(value, tp) -> bool:
    """Whether `value` is of the annotated type `tp` (a config field's annotation).
    Strict as JSON reads: a bool is not a number, a string is never a number or a bool; a float
    field takes an int (JSON writes 1e-12 and 1 alike) but must be finite."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return (
            isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)
        )
    if tp is str:
        return isinstance(value, str)
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_conforms(v, args[0]) for v in value)
        return len(value) == len(args) and all(map(_conforms, value, args))
    raise TypeError(f"no type check for annotation {tp!r}")  # a new kind of field


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return f"one of {typing.get_args(tp)}"
    if isinstance(tp, type):
        return "None" if tp is type(None) else tp.__name__
    return str(tp).replace("typing.", "").replace("NoneType", "None")


def _json_path(path_or_dir) -> str:
    path = os.fspath(path_or_dir)
    return os.path.join(path, "config.json") if os.path.isdir(path) else path


def read_json_object(path_or_dict, caller: str = "read_json_object") -> dict[str, Any]:
    """The JSON object of a config file (a directory: its `config.json`), or a copy of the dict
    given; a file that is not UTF-8, not JSON or not an object raises `ValueError` naming it."""
    if isinstance(path_or_dict, dict):
        return dict(path_or_dict)
    if not isinstance(path_or_dict, (str, os.PathLike)):
        raise TypeError(
            f"{caller} takes a path or a dict, got {type(path_or_dict).__name__}"
        )
    path = _json_path(path_or_dict)
    with open(path, "rb") as f:
        data = f.read()
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object, not a {type(raw).__name__}")
    return raw


def _sort_keys(
    raw: dict, fields: set[str], strict: bool, *, required: dict = _REQUIRED_VALUES,
    passthrough: frozenset = _PASSTHROUGH_KEYS, model: str = "BigBird",
) -> tuple[dict, dict]:
    """`(constructor kwargs, extra keys kept unused)`; unknown keys raise unless not `strict`.
    `required`: generic keys accepted only at the given value; `passthrough`: generic keys kept
    verbatim; `model`: the name errors give the config."""
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    unknown = []
    for key, value in raw.items():
        if key in fields:
            kwargs[key] = value
        elif key == "architectures":
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        elif key in required:
            if value != required[key]:
                raise ValueError(
                    f"config {key}={value!r} is not supported (only {required[key]!r})"
                )
            extra[key] = value
        elif key in passthrough:
            extra[key] = value
        else:
            unknown.append(key)
    if unknown:
        if strict:
            raise ValueError(
                f"unknown {model} config key(s) {sorted(unknown)}; pass strict=False to keep "
                "them unused"
            )
        warnings.warn(f"unknown {model} config key(s) {sorted(unknown)} kept but unused")
        extra.update({k: raw[k] for k in unknown})
    return kwargs, extra


def _labels(id2label, label2id, num_labels) -> tuple[str, ...] | None:
    """The label names HF's `id2label` / `label2id` / `num_labels` describe (checked to agree)."""
    labels = None
    for name, value in (("id2label", id2label), ("label2id", label2id)):
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"config {name} must be a JSON object, not {type(value).__name__}")
    if num_labels is not None and (
        isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1
    ):
        raise ValueError(f"config num_labels={num_labels!r} must be a positive integer")
    if id2label is not None:
        try:
            by_id = {int(i): name for i, name in id2label.items()}
        except ValueError:
            raise ValueError(
                f"config id2label keys must be integers 0..n-1, got {sorted(id2label)}"
            ) from None
        if not all(isinstance(name, str) for name in by_id.values()):
            raise ValueError(f"config id2label values must be label names (strings): {id2label}")
        if sorted(by_id) != list(range(len(by_id))):
            raise ValueError(f"config id2label keys must be 0..n-1, got {sorted(by_id)}")
        labels = tuple(by_id[i] for i in range(len(by_id)))
    elif num_labels is not None:
        labels = _default_labels(num_labels)
    names = _default_labels(2) if labels is None else labels
    if num_labels is not None and num_labels != len(names):
        raise ValueError(f"config num_labels={num_labels} disagrees with id2label")
    if label2id is not None:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in label2id.values()):
            raise ValueError(f"config label2id values must be integers, got {label2id}")
        if {k: int(v) for k, v in label2id.items()} != {name: i for i, name in enumerate(names)}:
            raise ValueError("config label2id is not the inverse of id2label")
    return labels
