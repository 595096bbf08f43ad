"""The names Hugging Face gives the BigBird-Pegasus classes' leaves (dispatched to from
`_hf_names`, whose conventions hold: canonical HF names carry the `model.` prefix of HF's head
classes, `{i}` marks the stacked layer axis, leaf names are the same on both sides).
"""

import numpy as np

ENCODER_LAYER = "model.encoder.layers.{i}."
DECODER_LAYER = "model.decoder.layers.{i}."

ENCODER_NAMES: dict[str, str] = {
    "encoder.embed_positions": "model.encoder.embed_positions",
    "encoder.layernorm_embedding": "model.encoder.layernorm_embedding",
    "encoder.layers.self_attn.query": ENCODER_LAYER + "self_attn.self.query",
    "encoder.layers.self_attn.key": ENCODER_LAYER + "self_attn.self.key",
    "encoder.layers.self_attn.value": ENCODER_LAYER + "self_attn.self.value",
    "encoder.layers.self_attn_output": ENCODER_LAYER + "self_attn.output",
    **{
        f"encoder.layers.{m}": ENCODER_LAYER + m
        for m in ("self_attn_layer_norm", "fc1", "fc2", "final_layer_norm")
    },
}
DECODER_NAMES: dict[str, str] = {
    "decoder.embed_positions": "model.decoder.embed_positions",
    "decoder.layernorm_embedding": "model.decoder.layernorm_embedding",
    **{
        f"decoder.layers.{attn}.{ours}": DECODER_LAYER + f"{attn}.{theirs}"
        for attn in ("self_attn", "encoder_attn")
        for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"))
    },
    "decoder.layers.self_attn_output": DECODER_LAYER + "self_attn.out_proj",
    "decoder.layers.encoder_attn_output": DECODER_LAYER + "encoder_attn.out_proj",
    **{
        f"decoder.layers.{m}": DECODER_LAYER + m
        for m in (
            "self_attn_layer_norm", "encoder_attn_layer_norm", "fc1", "fc2", "final_layer_norm"
        )
    },
}
BASE_NAMES = {"shared": "model.shared", **ENCODER_NAMES, **DECODER_NAMES}
BASE_MODEL = "BigBirdPegasusModel"
CAUSAL_LM = "BigBirdPegasusForCausalLM"
# Each class holding the base model as `model` -> the names of its own modules.
HEAD_NAMES: dict[str, dict[str, str]] = {
    "BigBirdPegasusForConditionalGeneration": {
        "final_logits_bias": "final_logits_bias", "lm_head": "lm_head",
    },
    "BigBirdPegasusForSequenceClassification": {
        "classification_head.dense": "classification_head.dense",
        "classification_head.out_proj": "classification_head.out_proj",
    },
    "BigBirdPegasusForQuestionAnswering": {"qa_outputs": "qa_outputs"},
}
CLASS_NAMES = (BASE_MODEL, CAUSAL_LM, *HEAD_NAMES)
_SHARED = "model.shared.weight"
_CAUSAL_EMBED = "model.decoder.embed_tokens.weight"


def hf_names(name: str, config) -> dict[str, str]:
    """`{our module path: canonical HF module path}` for the Pegasus class `name`."""
    if name == BASE_MODEL:
        return BASE_NAMES
    if name == CAUSAL_LM:
        return {**DECODER_NAMES, "embed_tokens": "model.decoder.embed_tokens", "lm_head": "lm_head"}
    return {**{f"model.{k}": v for k, v in BASE_NAMES.items()}, **HEAD_NAMES[name]}


def tied_names(name: str, config) -> dict[str, str]:
    """HF's ties: both stacks' `embed_tokens` are `shared` (always: constructor assignment),
    and the LM head is the token embedding when `config.tie_word_embeddings`."""
    if name == CAUSAL_LM:
        return {"lm_head.weight": _CAUSAL_EMBED} if config.tie_word_embeddings else {}
    tied = {f"model.{stack}.embed_tokens.weight": _SHARED for stack in ("encoder", "decoder")}
    if name == "BigBirdPegasusForConditionalGeneration" and config.tie_word_embeddings:
        tied["lm_head.weight"] = _SHARED
    return tied


def written_copies(name: str, config) -> dict[str, str]:
    """Tied keys that export writes anyway. With `tie_word_embeddings=False`, HF 4.57's
    `from_pretrained` no longer re-ties the stacks' `embed_tokens` to `shared` and initialises
    them at random when absent (its own `save_pretrained` leaves them out): written as copies,
    they load as the weights they are."""
    if name == CAUSAL_LM or config.tie_word_embeddings:
        return {}
    return {k: v for k, v in tied_names(name, config).items() if "embed_tokens" in k}


def zero_defaults(name: str, config) -> dict[str, np.ndarray]:
    """Keys HF fills with zeros when a checkpoint lacks them (`_keys_to_ignore_on_load_missing`):
    the `final_logits_bias` buffer."""
    if name != "BigBirdPegasusForConditionalGeneration":
        return {}
    return {"final_logits_bias": np.zeros((1, config.vocab_size), np.float32)}


def canonical_name(name: str) -> str:
    """An HF key with the `model.` prefix that a base-model checkpoint leaves out."""
    return "model." + name if name.startswith(("shared.", "encoder.", "decoder.")) else name


def saved_name(name: str, hf_name: str) -> str:
    """The key HF's `save_pretrained` of class `name` writes for canonical `hf_name`."""
    return hf_name.removeprefix("model.") if name == BASE_MODEL else hf_name


def layer_count(config, pattern: str) -> int:
    """How many layers a stacked HF pattern spans."""
    return config.decoder_layers if pattern.startswith("model.decoder.") else config.encoder_layers
