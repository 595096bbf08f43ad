"""eqx-bigbird: BigBird (block-sparse attention for long sequences) in JAX + Equinox."""

from . import checkpointing, data, plotting, sharding, sparse_attention, training
from ._allocator import reuse_freed_memory
from ._attention import AbstractAttention, AttentionOutput, BlockSparseAttention, FullAttention
from ._bert import from_bert
from ._compile import jit_options
from ._config import BigBirdConfig
from ._export import save_pretrained
from ._generate import generate, init_cache
from ._generation_config import GenerationConfig
from ._heads import (
    BigBirdForCausalLM,
    BigBirdForMaskedLM,
    BigBirdForMultipleChoice,
    BigBirdForPreTraining,
    BigBirdForPreTrainingOutput,
    BigBirdForQuestionAnswering,
    BigBirdForQuestionAnsweringModelOutput,
    BigBirdForSequenceClassification,
    BigBirdForTokenClassification,
    CausalLMOutputWithCrossAttentions,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from ._hf_load import LoadReport
from ._hf_read import CheckpointError, read_hf_weights
from ._layers import (
    CHECKPOINT_POLICIES,
    RANDOM_ATTENTION_MODES,
    BigBirdEmbeddings,
    BigBirdEncoder,
    BigBirdLayer,
    ExecutionOptions,
)
from ._losses import (
    IGNORE_INDEX,
    causal_lm_loss,
    masked_lm_loss,
    multiple_choice_loss,
    pretraining_loss,
    question_answering_loss,
    seq2seq_lm_loss,
    sequence_classification_loss,
    token_classification_loss,
)
from ._model import BigBirdModel, BigBirdModelOutput, KVCache, with_options
from ._pegasus import (
    BigBirdPegasusForCausalLM,
    BigBirdPegasusForConditionalGeneration,
    BigBirdPegasusForQuestionAnswering,
    BigBirdPegasusForSequenceClassification,
    BigBirdPegasusModel,
    EncoderDecoderShared,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
    Seq2SeqQuestionAnsweringModelOutput,
    Seq2SeqSequenceClassifierOutput,
    shift_tokens_right,
)
from ._pegasus_config import BigBirdPegasusConfig
from ._serialization import load, save
from ._tokenizer import (
    BatchEncoding,
    Encoding,
    Tokenizer,
    char_span_to_token_span,
    token_span_to_text,
)
from .checkpointing import Checkpointer, load_training_state
from .sharding import (
    load_sharded,
    make_mesh,
    make_sharded_train_step,
    save_sharded,
    shard_batch,
    shard_state,
    state_shardings,
)

__version__ = "0.1.0"

__all__ = [
    # configuration and models
    "BigBirdConfig",
    "ExecutionOptions",
    "with_options",
    "CHECKPOINT_POLICIES",
    "RANDOM_ATTENTION_MODES",
    "BigBirdModel",
    "BigBirdModelOutput",
    "BigBirdEmbeddings",
    "BigBirdLayer",
    "BigBirdEncoder",
    "AbstractAttention",
    "FullAttention",
    "BlockSparseAttention",
    "AttentionOutput",
    # task heads and their outputs
    "BigBirdForPreTraining",
    "BigBirdForPreTrainingOutput",
    "BigBirdForMaskedLM",
    "MaskedLMOutput",
    "BigBirdForCausalLM",
    "CausalLMOutputWithCrossAttentions",
    "BigBirdForSequenceClassification",
    "SequenceClassifierOutput",
    "BigBirdForMultipleChoice",
    "MultipleChoiceModelOutput",
    "BigBirdForTokenClassification",
    "TokenClassifierOutput",
    "BigBirdForQuestionAnswering",
    "BigBirdForQuestionAnsweringModelOutput",
    # BigBird-Pegasus (encoder-decoder)
    "BigBirdPegasusConfig",
    "BigBirdPegasusModel",
    "Seq2SeqModelOutput",
    "BigBirdPegasusForConditionalGeneration",
    "Seq2SeqLMOutput",
    "BigBirdPegasusForSequenceClassification",
    "Seq2SeqSequenceClassifierOutput",
    "BigBirdPegasusForQuestionAnswering",
    "Seq2SeqQuestionAnsweringModelOutput",
    "BigBirdPegasusForCausalLM",
    "EncoderDecoderShared",
    "shift_tokens_right",
    # decoding
    "KVCache",
    "init_cache",
    "generate",
    "GenerationConfig",
    # losses
    "IGNORE_INDEX",
    "masked_lm_loss",
    "causal_lm_loss",
    "pretraining_loss",
    "sequence_classification_loss",
    "multiple_choice_loss",
    "token_classification_loss",
    "question_answering_loss",
    "seq2seq_lm_loss",
    # checkpoints
    "load",
    "save",
    "save_pretrained",
    "from_bert",
    "read_hf_weights",
    "CheckpointError",
    "LoadReport",
    # tokenizers
    "Tokenizer",
    "Encoding",
    "BatchEncoding",
    "char_span_to_token_span",
    "token_span_to_text",
    # many devices
    "make_mesh",
    "state_shardings",
    "shard_state",
    "shard_batch",
    "make_sharded_train_step",
    "save_sharded",
    "load_sharded",
    # training-state checkpoints (Orbax)
    "Checkpointer",
    "load_training_state",
    # process and compiler settings
    "reuse_freed_memory",
    "jit_options",
    # submodules
    "checkpointing",
    "sparse_attention",
    "training",
    "sharding",
    "plotting",
    "data",
]
