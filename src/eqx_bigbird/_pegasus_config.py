"""`BigBirdPegasusConfig`: every field of HF's `BigBirdPegasusConfig`, immutable, validated, HF
round-trippable. Reading and writing `config.json` reuse `_config`'s key sorting and labels."""

import dataclasses
import json
import os
import typing
from typing import Any, Literal

from ._activations import ACTIVATIONS, UNSUPPORTED_ACTIVATIONS
from ._config import (
    _PASSTHROUGH_KEYS,
    _REQUIRED_VALUES,
    ATTENTION_TYPES,
    PROBLEM_TYPES,
    BigBirdConfig,
    _default_labels,
    _labels,
    _sort_keys,
    read_json_object,
)

MODEL_TYPE = "bigbird_pegasus"
# Generic keys that Pegasus does not use (or uses as a field here), kept verbatim.
_PEGASUS_PASSTHROUGH = (_PASSTHROUGH_KEYS - {"decoder_start_token_id"}) | {
    "chunk_size_feed_forward", "add_cross_attention", "sep_token_id",
}
_PEGASUS_REQUIRED = {
    k: v
    for k, v in _REQUIRED_VALUES.items()
    if k not in ("is_encoder_decoder", "position_embedding_type")
}
# The legacy generation keys HF's `GenerationConfig.from_model_config` reads from `config.json`.
GENERATION_KEYS = (
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
    "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens",
)


@typing.no_type_check
@dataclasses.dataclass(frozen=True)
class BigBirdPegasusConfig:
    """BigBird-Pegasus hyperparameters, with the names and defaults of HF's `BigBirdPegasusConfig`.

    Immutable and hashable (a static field of the models). Invalid values raise `ValueError`
    naming the field. `from_hf` / `to_hf` read and write HF `config.json`; HF's aliases are
    properties (`hidden_size`, `num_attention_heads`, `attention_probs_dropout_prob`,
    `num_hidden_layers`). As in `BigBirdConfig`, `id2label` is a tuple of names, and `extra` keeps
    generic HF keys that do not change the computation (among them the legacy generation keys of
    the public checkpoints: see `generation_defaults`).
    """

    vocab_size: int = 96103
    max_position_embeddings: int = 4096
    encoder_layers: int = 16
    encoder_ffn_dim: int = 4096
    encoder_attention_heads: int = 16
    decoder_layers: int = 16
    decoder_ffn_dim: int = 4096
    decoder_attention_heads: int = 16
    encoder_layerdrop: float = 0.0
    decoder_layerdrop: float = 0.0
    use_cache: bool = True
    is_encoder_decoder: bool = True
    activation_function: str = "gelu_new"
    d_model: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    init_std: float = 0.02
    decoder_start_token_id: int = 2
    classifier_dropout: float = 0.0
    scale_embedding: bool = True
    pad_token_id: int = 0
    bos_token_id: int | None = 2
    eos_token_id: int | None = 1
    attention_type: Literal["block_sparse", "original_full"] = "block_sparse"
    block_size: int = 64
    num_random_blocks: int = 3
    use_bias: bool = False
    # Generic `PretrainedConfig` fields that the models use.
    is_decoder: bool = False
    tie_word_embeddings: bool = True
    id2label: tuple[str, ...] = _default_labels(2)
    problem_type: str | None = None
    architectures: tuple[str, ...] | None = None
    extra: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        def fail(name, why):
            raise ValueError(f"BigBirdPegasusConfig.{name}={getattr(self, name)!r}: {why}")

        def is_int(value):
            return isinstance(value, int) and not isinstance(value, bool)

        for name in (
            "vocab_size", "max_position_embeddings", "encoder_layers", "encoder_ffn_dim",
            "encoder_attention_heads", "decoder_layers", "decoder_ffn_dim",
            "decoder_attention_heads", "d_model", "block_size",
        ):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, "must be a positive integer")
        for heads in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % getattr(self, heads):
                fail("d_model", f"must be divisible by {heads}={getattr(self, heads)}")
        if not is_int(self.num_random_blocks) or self.num_random_blocks < 0:
            fail("num_random_blocks", "must be a non-negative integer")
        if self.activation_function in UNSUPPORTED_ACTIVATIONS:
            fail("activation_function", "activations with learnable parameters are not supported")
        if self.activation_function not in ACTIVATIONS:
            fail("activation_function", f"unknown activation; known: {sorted(ACTIVATIONS)}")
        if self.attention_type not in ATTENTION_TYPES:
            fail("attention_type", f"must be one of {ATTENTION_TYPES}")
        for name in ("dropout", "attention_dropout", "activation_dropout", "classifier_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
                fail(name, "must be a number in [0, 1)")
        for name in ("encoder_layerdrop", "decoder_layerdrop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                fail(name, "must be a number in [0, 1]")
        if not isinstance(self.init_std, int | float) or isinstance(self.init_std, bool):
            fail("init_std", "must be a number")
        for name in ("pad_token_id", "decoder_start_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            optional = name in ("bos_token_id", "eos_token_id")
            if (value is None and not optional) or (
                value is not None and (not is_int(value) or not 0 <= value < self.vocab_size)
            ):
                fail(name, f"must be a token id in [0, vocab_size={self.vocab_size})")
        for name in ("use_cache", "is_encoder_decoder", "scale_embedding", "use_bias", "is_decoder",
                     "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "must be a bool")
        if len(self.id2label) < 1:
            fail("id2label", "needs at least one label")
        if self.problem_type not in PROBLEM_TYPES:
            fail("problem_type", f"must be one of {PROBLEM_TYPES}")

    # -- HF's aliases and derived values --------------------------------------------------------

    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_attention_heads(self) -> int:
        return self.encoder_attention_heads

    @property
    def attention_probs_dropout_prob(self) -> float:
        return self.attention_dropout

    @property
    def num_hidden_layers(self) -> int:
        return self.encoder_layers

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def embed_scale(self) -> float:
        return self.d_model**0.5 if self.scale_embedding else 1.0

    def _attention_view(self, heads: int, layers: int, attention_type: str) -> BigBirdConfig:
        return BigBirdConfig(
            vocab_size=self.vocab_size, hidden_size=self.d_model, num_hidden_layers=layers,
            num_attention_heads=heads, attention_probs_dropout_prob=self.attention_dropout,
            max_position_embeddings=self.max_position_embeddings, initializer_range=self.init_std,
            attention_type=attention_type, use_bias=self.use_bias, block_size=self.block_size,
            num_random_blocks=self.num_random_blocks, pad_token_id=self.pad_token_id,
        )

    def encoder_view(self) -> BigBirdConfig:
        """The `BigBirdConfig` whose attention the encoder runs: its attention modules, random
        plans and the one rule for block-sparse vs full per call (`uses_block_sparse`)."""
        return self._attention_view(
            self.encoder_attention_heads, self.encoder_layers, self.attention_type
        )

    def decoder_view(self) -> BigBirdConfig:
        """The `BigBirdConfig` of the decoder's (always full) self- and cross-attention."""
        return self._attention_view(
            self.decoder_attention_heads, self.decoder_layers, "original_full"
        )

    def generation_defaults(self) -> dict[str, Any]:
        """The legacy generation keys this `config.json` carried (e.g. the public checkpoints'
        `num_beams`, `length_penalty`, `max_length`), as HF's `from_model_config` reads them."""
        return {k: json.loads(v) for k, v in self.extra if k in GENERATION_KEYS}

    def replace(self, **changes) -> "BigBirdPegasusConfig":
        """A copy with some fields changed (and validated again)."""
        if "num_labels" in changes:
            changes["id2label"] = _default_labels(changes.pop("num_labels"))
        return dataclasses.replace(self, **changes)

    # -- HF config.json -------------------------------------------------------------------------

    @classmethod
    def from_hf(cls, path_or_dict: str | os.PathLike | dict[str, Any], *, strict: bool = True):
        """Reads an HF `config.json` (a file, a directory holding one, or its dict); unknown keys
        raise `ValueError` (with `strict=False` they are kept in `extra` with a warning).
        `num_hidden_layers`, which HF writes as a copy of `encoder_layers`, must agree with it."""
        raw = read_json_object(path_or_dict)
        model_type = raw.pop("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"config model_type={model_type!r} is not {MODEL_TYPE!r}")
        labels = _labels(*(raw.pop(k, None) for k in ("id2label", "label2id", "num_labels")))
        layers = raw.pop("num_hidden_layers", None)
        fields = {f.name for f in dataclasses.fields(cls)} - {"id2label", "architectures", "extra"}
        kwargs, extra = _sort_keys(
            raw, fields, strict, required=_PEGASUS_REQUIRED, passthrough=_PEGASUS_PASSTHROUGH,
            model="BigBird-Pegasus",
        )
        if labels is not None:
            kwargs["id2label"] = labels
        kwargs["extra"] = tuple(sorted((k, json.dumps(v)) for k, v in extra.items()))
        config = cls(**kwargs)
        if layers is not None and layers != config.encoder_layers:
            raise ValueError(
                f"config num_hidden_layers={layers!r} disagrees with encoder_layers="
                f"{config.encoder_layers}"
            )
        return config

    def to_hf(self) -> dict[str, Any]:
        """The HF `config.json` dict (`transformers.BigBirdPegasusConfig(**d)` accepts it)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name not in ("id2label", "architectures", "extra"):
                out[f.name] = getattr(self, f.name)
        # HF writes generic keys only when they differ from PretrainedConfig's defaults.
        for name, default in (
            ("is_decoder", False), ("tie_word_embeddings", True), ("problem_type", None),
        ):
            if out[name] == default:
                del out[name]
        out["num_hidden_layers"] = self.encoder_layers
        if self.id2label != _default_labels(2):
            out["id2label"] = {str(i): name for i, name in enumerate(self.id2label)}
            out["label2id"] = {name: i for i, name in enumerate(self.id2label)}
        if self.architectures is not None:
            out["architectures"] = list(self.architectures)
        out.update({k: json.loads(v) for k, v in self.extra})
        out["model_type"] = MODEL_TYPE
        return dict(sorted(out.items()))

    def save(self, path: str | os.PathLike) -> None:
        """Writes `to_hf()` as JSON, atomically (temp file + rename)."""
        from ._io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_hf(), indent=2, sort_keys=True) + "\n")
