"""`GenerationConfig`: the decoding defaults of a checkpoint (HF's `generation_config.json`, or the
legacy generation keys of `config.json`), and the one place their precedence is decided."""

import dataclasses
import json
import os
import typing
from typing import Any, Literal

GENERATION_CONFIG = "generation_config.json"

# HF keys that never change the returned tokens (outputs, caching, bookkeeping).
_IGNORED = frozenset(
    {
        "transformers_version", "_from_model_config", "_commit_hash", "_original_object_hash",
        "use_cache", "cache_implementation", "cache_config", "return_legacy_cache",
        "prefill_chunk_size", "output_attentions", "output_hidden_states", "output_scores",
        "output_logits", "return_dict_in_generate", "disable_compile", "low_memory", "max_time",
        "is_assistant", "num_assistant_tokens", "num_assistant_tokens_schedule",
        "assistant_confidence_threshold", "prompt_lookup_num_tokens", "max_matching_ngram_size",
        "assistant_early_exit", "assistant_lookbehind", "target_lookbehind",
    }
)
# HF generation options we do not implement, at the value that switches them off. A checkpoint
# setting one of them raises instead of decoding differently from HF.
_UNSUPPORTED = {
    "min_new_tokens": None, "stop_strings": None, "min_p": None, "typical_p": 1.0,
    "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "encoder_repetition_penalty": 1.0,
    "bad_words_ids": None, "renormalize_logits": False, "forced_bos_token_id": None,
    "remove_invalid_values": False, "exponential_decay_length_penalty": None,
    "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None,
    "token_healing": False, "guidance_scale": None, "watermarking_config": None,
    "num_return_sequences": 1, "encoder_no_repeat_ngram_size": 0, "penalty_alpha": None,
    "dola_layers": None, "diversity_penalty": 0.0, "num_beam_groups": 1, "constraints": None,
    "force_words_ids": None,
}


def _token_id(name: str, value) -> int | None:
    # HF allows a list of eos ids; one id is what the search here implements.
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError(f"GenerationConfig.{name}={value!r}: only one token id is supported")
        value = value[0]
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"GenerationConfig.{name}={value!r}: expected a token id (int >= 0)")
    return value


# Validation is ours (ValueError naming the field), as for BigBirdConfig.
@typing.no_type_check
@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Decoding defaults with the names and global defaults of HF's `GenerationConfig`.

    Immutable and hashable. `from_pretrained(folder)` reads `generation_config.json`, else the
    generation keys of `config.json` (as HF's `GenerationConfig.from_model_config`: how the public
    BigBird-Pegasus checkpoints store `num_beams=5, length_penalty=0.8, max_length=256`).
    Options HF has and we do not implement raise `ValueError` when set to a non-default value.
    """

    max_length: int = 20
    max_new_tokens: int | None = None
    min_length: int = 0
    do_sample: bool = False
    early_stopping: bool | Literal["never"] = False
    num_beams: int = 1
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float | None = 1.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    forced_eos_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    decoder_start_token_id: int | None = None

    def __post_init__(self):
        def fail(name, why):
            raise ValueError(f"GenerationConfig.{name}={getattr(self, name)!r}: {why}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_real(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        for name in ("max_length", "num_beams"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, "expected an int >= 1")
        if self.max_new_tokens is not None and (
            not is_int(self.max_new_tokens) or self.max_new_tokens < 1
        ):
            fail("max_new_tokens", "expected None or an int >= 1")
        for name in ("min_length", "no_repeat_ngram_size"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "expected an int >= 0")
        if self.top_k is not None and (not is_int(self.top_k) or self.top_k < 0):
            fail("top_k", "expected None or an int >= 0 (0 switches top-k off)")
        if self.top_p is not None and (not is_real(self.top_p) or not 0 <= self.top_p <= 1):
            fail("top_p", "expected None or a number in [0, 1]")
        if not is_real(self.temperature) or not self.temperature > 0:
            fail("temperature", "expected a number > 0")
        if not is_real(self.repetition_penalty) or not self.repetition_penalty > 0:
            fail("repetition_penalty", "expected a number > 0")
        if not is_real(self.length_penalty) or self.length_penalty != self.length_penalty:
            fail("length_penalty", "expected a number")
        if self.early_stopping not in (True, False, "never") or not isinstance(
            self.early_stopping, (bool, str)
        ):
            fail("early_stopping", "expected True, False or 'never'")
        if not isinstance(self.do_sample, bool):
            fail("do_sample", "expected a bool")
        for name in (
            "forced_eos_token_id", "bos_token_id", "eos_token_id", "pad_token_id",
            "decoder_start_token_id",
        ):
            object.__setattr__(self, name, _token_id(name, getattr(self, name)))

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any], *, what: str = "GenerationConfig"
    ) -> "GenerationConfig":
        """From a `generation_config.json`-style dict. Unknown keys raise (as do known options
        we do not implement, unless at their off value); bookkeeping keys are ignored."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs, problems = {}, []
        for key, value in raw.items():
            if key in fields:
                kwargs[key] = value
            elif key in _UNSUPPORTED:
                if value != _UNSUPPORTED[key]:
                    problems.append(f"{key}={value!r} (not implemented)")
            elif key not in _IGNORED:
                problems.append(f"{key} (unknown)")
        if problems:
            raise ValueError(f"{what}: unsupported generation options: {', '.join(problems)}")
        return cls(**kwargs)

    @classmethod
    def from_model_config(cls, config) -> "GenerationConfig":
        """The generation keys of a model config (anything with `to_hf()`, e.g. `BigBirdConfig`):
        its special tokens and any legacy generation keys its `config.json` carried. Other
        config keys are not generation options and are left out; `None` values fall back to the
        global defaults, as in HF."""
        raw = config.to_hf()
        fields = {f.name for f in dataclasses.fields(cls)} | set(_UNSUPPORTED)
        return cls.from_dict(
            {k: v for k, v in raw.items() if k in fields and v is not None},
            what=f"{type(config).__name__} (config.json)",
        )

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "GenerationConfig | None":
        """`folder/generation_config.json`, or `None` when the folder has none (then `generate`
        falls back to `from_model_config(model.config)`, as HF does)."""
        path = os.path.join(os.fspath(folder), GENERATION_CONFIG)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            try:
                raw = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise TypeError(f"{path}: expected a JSON object")
        return cls.from_dict(raw, what=path)

    def to_dict(self) -> dict[str, Any]:
        """The fields that differ from HF's global defaults (what HF writes)."""
        default = GenerationConfig()
        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        }
        return out

    def save(self, folder: str | os.PathLike) -> None:
        """Writes `folder/generation_config.json` (atomically)."""
        from ._io import atomic_write_text

        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        atomic_write_text(os.path.join(os.fspath(folder), GENERATION_CONFIG), text)

    def replace(self, **changes) -> "GenerationConfig":
        return dataclasses.replace(self, **changes)


def resolve(
    model_config: GenerationConfig, given: GenerationConfig | None, overrides: dict[str, Any]
) -> GenerationConfig:
    """HF's precedence, in one place: explicit `generate` arguments (`overrides`: only those
    given) > the fields of `given` that differ from the global defaults > the model's
    generation config (`model_config`) > HF's global defaults."""
    config = model_config
    if given is not None:
        default = GenerationConfig()
        config = given.replace(
            **{
                f.name: getattr(model_config, f.name)
                for f in dataclasses.fields(GenerationConfig)
                if getattr(given, f.name) == getattr(default, f.name)
            }
        )
    return config.replace(**overrides)
