"""Warm start from BERT / RoBERTa (the BigBird paper's recipe; Longformer does the same): the
weights carry over unchanged, and the position embeddings are extended to
`max_position_embeddings` by copying the pretrained ones (row j gets row j mod P).

RoBERTa numbers positions from `padding_idx + 1` (= 2): its first two rows are dropped so that our
position 0 is RoBERTa's first real position.
"""

import os

import numpy as np

from ._config import BigBirdConfig, read_json_object
from ._hf_load import build_from_state, finish_load
from ._hf_names import ENCODER_NAMES, bert_to_bigbird_name
from ._hf_read import CheckpointError, LazyTensors, read_hf_weights
from ._hub import local_path

# BERT/RoBERTa config keys -> BigBird's (same meaning, same name).
_SHARED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "classifier_dropout",
    "tie_word_embeddings",
)
# Non-persistent buffers that old checkpoints still carry.
_BUFFERS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")
_POSITIONS = ENCODER_NAMES["embeddings.position_embeddings"] + ".weight"


def bigbird_config_from_bert(raw: dict, **changes) -> BigBirdConfig:
    """A BigBird config with a BERT/RoBERTa config's dimensions; `changes` set the rest."""
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"position_embedding_type={raw['position_embedding_type']!r} is not supported"
        )
    if raw.get("is_decoder") or raw.get("add_cross_attention"):
        raise ValueError("decoder BERT configs are not supported")
    kwargs = {k: raw[k] for k in _SHARED_FIELDS if k in raw}
    if raw.get("model_type") == "bert":  # BERT has no bos/eos; BigBird's defaults would mislead
        kwargs.setdefault("bos_token_id", None)
        kwargs.setdefault("eos_token_id", None)
    return BigBirdConfig(**{**kwargs, **changes})


def extend_positions(table: np.ndarray, n: int) -> np.ndarray:
    """`n` position embeddings from `table` by copying: row j is `table[j % len(table)]`."""
    return table[np.arange(n) % table.shape[0]]


def from_bert(
    path: str | os.PathLike,
    cls=None,
    *,
    max_position_embeddings: int = 4096,
    attention_type: str = "block_sparse",
    block_size: int = 64,
    num_random_blocks: int = 3,
    key=None,
    dtype=None,
    verbose: bool = False,
    return_report: bool = False,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    **model_kwargs,
):
    """Converts an HF BERT or RoBERTa checkpoint (a directory or Hub repo id) into a BigBird model (warm start).

    **Arguments:**
    - `path`: an HF directory (`config.json` with `model_type` bert/roberta, and weights in any
      format `read_hf_weights` reads) of a BertModel, BertForMaskedLM, RobertaModel or
      RobertaForMaskedLM.
    - `cls`: our model class to build (default `BigBirdModel`; an MLM head class picks up the
      MLM head).
    - `max_position_embeddings`, `attention_type`, `block_size`, `num_random_blocks`: BigBird's.
    - `key`: initialises what the checkpoint lacks (e.g. RoBERTa-MLM's pooler), with a warning.
    - `revision`, `cache_dir`, `local_files_only`, `token`: for a Hub repo id (`org/name`),
      resolved through the HF cache; see `_hub.local_path`.

    **Returns:** the model in inference mode (`eqx.nn.inference_mode(model, False)` to train),
    and its `LoadReport` if `return_report`.
    """
    from ._model import BigBirdModel

    path = local_path(
        path, "model", revision=revision, cache_dir=cache_dir,
        local_files_only=local_files_only, token=token,
    )
    raw, config = _read_bert_config(
        path,
        max_position_embeddings=max_position_embeddings,
        attention_type=attention_type,
        block_size=block_size,
        num_random_blocks=num_random_blocks,
    )
    state, source = read_hf_weights(path)
    model, report = build_from_state(
        BigBirdModel if cls is None else cls, config, _bigbird_state(state, raw, config),
        source, key=key, allow_init=True, dtype=dtype, model_kwargs=model_kwargs,
    )
    return finish_load(
        model, report, who="from_bert", shown=report.summary() if verbose else None,
        return_report=return_report,
    )


def _read_bert_config(path: str | os.PathLike, **bigbird) -> tuple[dict, BigBirdConfig]:
    """The raw BERT/RoBERTa `config.json` of `path` and the BigBird config made from it with
    the `bigbird` fields."""
    path = os.fspath(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    config_file = os.path.join(folder, "config.json")
    try:
        raw = read_json_object(config_file)
    except OSError as e:
        raise CheckpointError(f"{config_file}: cannot read ({e})") from None
    except ValueError as e:  # names the file
        raise CheckpointError(str(e)) from None
    model_type = raw.get("model_type")
    if model_type not in ("bert", "roberta"):
        raise CheckpointError(
            f"{config_file}: model_type={model_type!r}, expected 'bert' or 'roberta'"
        )
    try:
        return raw, bigbird_config_from_bert(raw, **bigbird)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{config_file}: {e}") from None


def _bigbird_state(state: LazyTensors, raw: dict, config: BigBirdConfig) -> LazyTensors:
    """A BERT/RoBERTa checkpoint's tensors under BigBird's canonical names, without the buffers,
    and with the position embeddings extended to `config.max_position_embeddings` (still lazy)."""
    n = config.max_position_embeddings
    offset = raw.get("pad_token_id", 1) + 1 if raw["model_type"] == "roberta" else 0
    loaders, shapes = {}, {}
    for name in state:
        new = bert_to_bigbird_name(name)
        if new not in _BUFFERS:
            loaders[new], shapes[new] = (lambda name=name: state[name]), state.shape(name)
    if _POSITIONS in loaders:
        old = loaders[_POSITIONS]
        loaders[_POSITIONS] = lambda: extend_positions(old()[offset:], n)
        shapes[_POSITIONS] = (n, shapes[_POSITIONS][1])
    return LazyTensors(loaders, shapes, state.source)
