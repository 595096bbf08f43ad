"""The names Hugging Face gives our leaves: one declarative map per model class between our module
paths and HF's PyTorch module paths, the keys HF ties to others, and the renames that bring
BERT/RoBERTa and base-model checkpoints to those names.

HF names are canonical here: the encoder always carries the `bert.` prefix that HF's head classes
give it, so one encoder map serves the base model and every head (HF's base class saves the same
keys without the prefix; `canonical_name` and `saved_name` convert). `{i}` in an HF name marks the
stacked layer axis: our leaf `encoder.layers.X` of shape (layers, ...) is HF's
`bert.encoder.layer.{i}.Y` for every i. Leaf names (weight, bias) are the same on both sides.

Classes are named, not imported, so that the model modules can use this one without a cycle.
"""

from collections.abc import Mapping

import numpy as np

from . import _pegasus_names as pegasus

ENCODER_NAMES: dict[str, str] = {
    "embeddings.word_embeddings": "bert.embeddings.word_embeddings",
    "embeddings.position_embeddings": "bert.embeddings.position_embeddings",
    "embeddings.token_type_embeddings": "bert.embeddings.token_type_embeddings",
    "embeddings.layer_norm": "bert.embeddings.LayerNorm",
    "encoder.layers.attention.query": "bert.encoder.layer.{i}.attention.self.query",
    "encoder.layers.attention.key": "bert.encoder.layer.{i}.attention.self.key",
    "encoder.layers.attention.value": "bert.encoder.layer.{i}.attention.self.value",
    "encoder.layers.attention_output": "bert.encoder.layer.{i}.attention.output.dense",
    "encoder.layers.attention_norm": "bert.encoder.layer.{i}.attention.output.LayerNorm",
    "encoder.layers.intermediate": "bert.encoder.layer.{i}.intermediate.dense",
    "encoder.layers.output": "bert.encoder.layer.{i}.output.dense",
    "encoder.layers.output_norm": "bert.encoder.layer.{i}.output.LayerNorm",
    "pooler": "bert.pooler",
}
# Decoder layers with cross-attention (`config.add_cross_attention`).
CROSS_ATTENTION_NAMES: dict[str, str] = {
    "encoder.layers.crossattention.query": "bert.encoder.layer.{i}.crossattention.self.query",
    "encoder.layers.crossattention.key": "bert.encoder.layer.{i}.crossattention.self.key",
    "encoder.layers.crossattention.value": "bert.encoder.layer.{i}.crossattention.self.value",
    "encoder.layers.crossattention_output": "bert.encoder.layer.{i}.crossattention.output.dense",
    "encoder.layers.crossattention_norm": "bert.encoder.layer.{i}.crossattention.output.LayerNorm",
}
# HF's `cls.predictions`. Our `cls.decoder` exists only with untied word embeddings.
LM_HEAD_NAMES: dict[str, str] = {
    "cls.transform": "cls.predictions.transform.dense",
    "cls.transform_norm": "cls.predictions.transform.LayerNorm",
    "cls.bias": "cls.predictions.bias",
    "cls.decoder": "cls.predictions.decoder",
}
QA_HEAD_NAMES: dict[str, str] = {
    "qa_classifier.intermediate": "qa_classifier.intermediate.dense",
    "qa_classifier.output": "qa_classifier.output.dense",
    "qa_classifier.output_norm": "qa_classifier.output.LayerNorm",
    "qa_classifier.qa_outputs": "qa_classifier.qa_outputs",
}
_CLASSIFIER_NAMES = {"classifier": "classifier"}

BASE_MODEL = "BigBirdModel"
# Each head class (holding the encoder as `bert`) -> the names of its own modules.
HEAD_NAMES: dict[str, dict[str, str]] = {
    "BigBirdForPreTraining": {**LM_HEAD_NAMES, "seq_relationship": "cls.seq_relationship"},
    "BigBirdForMaskedLM": LM_HEAD_NAMES,
    "BigBirdForCausalLM": LM_HEAD_NAMES,
    "BigBirdForSequenceClassification": _CLASSIFIER_NAMES,
    "BigBirdForMultipleChoice": _CLASSIFIER_NAMES,
    "BigBirdForTokenClassification": _CLASSIFIER_NAMES,
    "BigBirdForQuestionAnswering": QA_HEAD_NAMES,
}


def _class_name(model_class: type) -> str:
    name = model_class.__name__
    if name != BASE_MODEL and name not in HEAD_NAMES and name not in pegasus.CLASS_NAMES:
        known = [BASE_MODEL, *HEAD_NAMES, *pegasus.CLASS_NAMES]
        raise TypeError(f"{name} has no Hugging Face names; known classes: {known}")
    return name


def _is_pegasus(model_class: type | None) -> bool:
    return model_class is not None and _class_name(model_class) in pegasus.CLASS_NAMES


def hf_names(model_class: type, config) -> dict[str, str]:
    """`{our module path: canonical HF module path}` for every module of `model_class(config)`.

    Cross-attention modules are included when `config.add_cross_attention`. Raises `TypeError`
    for a class that is not one of our model classes.
    """
    name = _class_name(model_class)
    if _is_pegasus(model_class):
        return pegasus.hf_names(name, config)
    encoder = dict(ENCODER_NAMES)
    if config.add_cross_attention:
        encoder.update(CROSS_ATTENTION_NAMES)
    if name == BASE_MODEL:
        return encoder
    return {**{f"bert.{ours}": theirs for ours, theirs in encoder.items()}, **HEAD_NAMES[name]}


def tied_names(model_class: type, config) -> dict[str, str]:
    """`{HF key: HF key it duplicates}` for `model_class(config)` (canonical names), as HF's
    `_tied_weights_keys` declare them: in a head with an LM decoder, the decoder's bias is the
    prediction bias, and its weight is the word-embedding matrix when `config.tie_word_embeddings`.
    Our models hold each such pair once; a checkpoint may carry the duplicate as a copy."""
    if _is_pegasus(model_class):
        return pegasus.tied_names(model_class.__name__, config)
    if "cls.decoder" not in HEAD_NAMES.get(_class_name(model_class), {}):
        return {}
    decoder = LM_HEAD_NAMES["cls.decoder"]
    tied = {f"{decoder}.bias": LM_HEAD_NAMES["cls.bias"]}
    if config.tie_word_embeddings:
        tied[f"{decoder}.weight"] = ENCODER_NAMES["embeddings.word_embeddings"] + ".weight"
    return tied


def hf_name_of(our_path: str, names: Mapping[str, str]) -> str:
    """The HF name pattern of one of our leaves (longest matching module prefix wins)."""
    for prefix in sorted(names, key=len, reverse=True):
        if our_path == prefix or our_path.startswith(prefix + "."):
            return names[prefix] + our_path[len(prefix) :]
    raise KeyError(f"no HF name for {our_path}")


# Where the encoder's embeddings and layers live in canonical names: any key under these belongs to
# every model class (a key there that a load does not use is an error, not another head's weight).
ENCODER_ROOTS = ("bert.embeddings.", "bert.encoder.")
# Top-level HF module names that belong to the encoder: HF's base class saves them unprefixed.
_ENCODER_ROOTS = ("embeddings.", "encoder.", "pooler.")


def canonical_name(name: str, model_class: type | None = None) -> str:
    """An HF key with the base model's prefix (`bert.`; `model.` for BigBird-Pegasus), which a
    base-model checkpoint leaves out."""
    if _is_pegasus(model_class):
        return pegasus.canonical_name(name)
    return "bert." + name if name.startswith(_ENCODER_ROOTS) else name


def saved_name(model_class: type, name: str) -> str:
    """The key HF's `save_pretrained` of `model_class` writes for canonical `name`."""
    if _is_pegasus(model_class):
        return pegasus.saved_name(model_class.__name__, name)
    return name.removeprefix("bert.") if _class_name(model_class) == BASE_MODEL else name


def has_flax(model_class: type) -> bool:
    """Whether HF has a Flax version of the class (BigBird-Pegasus is PyTorch only)."""
    return not _is_pegasus(model_class)


def written_copies(model_class: type, config) -> dict[str, str]:
    """The part of `tied_names` that export writes even without `include_tied`."""
    if _is_pegasus(model_class):
        return pegasus.written_copies(model_class.__name__, config)
    return {}


def layer_count(model_class: type, config, pattern: str) -> int:
    """How many layers the stacked HF name `pattern` spans."""
    if _is_pegasus(model_class):
        return pegasus.layer_count(config, pattern)
    return config.num_hidden_layers


def zero_defaults(model_class: type, config) -> dict[str, np.ndarray]:
    """HF keys a checkpoint may lack that HF then fills with zeros (canonical names)."""
    if _is_pegasus(model_class):
        return pegasus.zero_defaults(model_class.__name__, config)
    return {}


# RoBERTa's module names -> BigBird's, for the ones that differ.
_ROBERTA_RENAMES = (
    ("roberta.", "bert."),
    ("lm_head.dense.", "cls.predictions.transform.dense."),
    ("lm_head.layer_norm.", "cls.predictions.transform.LayerNorm."),
    ("lm_head.decoder.", "cls.predictions.decoder."),
    ("lm_head.bias", "cls.predictions.bias"),
)


def bert_to_bigbird_name(name: str) -> str:
    """The canonical BigBird key of a BERT or RoBERTa checkpoint key."""
    for old, new in _ROBERTA_RENAMES:
        if name.startswith(old):
            name = new + name[len(old) :]
            break
    name = canonical_name(name)
    # BERT's pooler is a module holding `dense`; BigBird's is the Linear itself.
    return name.replace("bert.pooler.dense.", "bert.pooler.", 1)
