"""`BigBirdPegasusConfig`: every field of HF's `BigBirdPegasusConfig`, immutable, validated, HF
round-trippable. Validation and `config.json` come from `_config.HFConfig`, shared with
`BigBirdConfig`."""

import dataclasses
import json
import typing
from typing import Any, Literal

from ._config import (
    _PASSTHROUGH_KEYS,
    _REQUIRED_VALUES,
    BigBirdConfig,
    HFConfig,
    _default_labels,
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
class BigBirdPegasusConfig(HFConfig):
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

    _model_type = MODEL_TYPE
    _model_name = "BigBird-Pegasus"
    _passthrough = _PEGASUS_PASSTHROUGH
    _required = _PEGASUS_REQUIRED
    _generic_defaults = (
        ("is_decoder", False), ("tie_word_embeddings", True), ("problem_type", None),
    )

    def __post_init__(self):
        self._check_fields(
            positive=(
                "vocab_size", "max_position_embeddings", "encoder_layers", "encoder_ffn_dim",
                "encoder_attention_heads", "decoder_layers", "decoder_ffn_dim",
                "decoder_attention_heads", "d_model", "block_size",
            ),
            non_negative=("num_random_blocks",),
            probabilities=(
                "dropout", "attention_dropout", "activation_dropout", "classifier_dropout",
            ),
            activation="activation_function", width="d_model",
            heads=("encoder_attention_heads", "decoder_attention_heads"),
        )
        for name in ("encoder_layerdrop", "decoder_layerdrop"):
            if not 0 <= getattr(self, name) <= 1:
                self._fail(name, "must lie in [0, 1]")
        for name in ("pad_token_id", "decoder_start_token_id", "bos_token_id", "eos_token_id"):
            if not 0 <= (getattr(self, name) or 0) < self.vocab_size:
                self._fail(name, f"must be a token id in [0, vocab_size={self.vocab_size})")

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

    # -- HF config.json -------------------------------------------------------------------------

    @classmethod
    def _from_raw(cls, raw: dict[str, Any], strict: bool) -> "BigBirdPegasusConfig":
        # HF writes `num_hidden_layers` as a copy of `encoder_layers`: it must agree with it.
        layers = raw.pop("num_hidden_layers", None)
        config = super()._from_raw(raw, strict)
        if layers is not None and layers != config.encoder_layers:
            raise ValueError(
                f"config num_hidden_layers={layers!r} disagrees with encoder_layers="
                f"{config.encoder_layers}"
            )
        return config

    def to_hf(self) -> dict[str, Any]:
        """The HF `config.json` dict (`transformers.BigBirdPegasusConfig(**d)` accepts it)."""
        return dict(sorted({**super().to_hf(), "num_hidden_layers": self.encoder_layers}.items()))
