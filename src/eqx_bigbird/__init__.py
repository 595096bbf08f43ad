"""eqx-bigbird: BigBird (block-sparse attention for long sequences) in JAX + Equinox."""

from . import data as data
from . import sparse_attention as sparse_attention
from ._checkpoint import CheckpointError as CheckpointError
from ._checkpoint import LoadReport as LoadReport
from ._checkpoint import read_hf_weights as read_hf_weights
from ._config import BigBirdConfig as BigBirdConfig
from ._modules import AbstractSelfAttention as AbstractSelfAttention
from ._modules import BigBirdEmbeddings as BigBirdEmbeddings
from ._modules import BigBirdEncoder as BigBirdEncoder
from ._modules import BigBirdLayer as BigBirdLayer
from ._modules import BigBirdModel as BigBirdModel
from ._modules import BigBirdModelOutput as BigBirdModelOutput
from ._modules import BlockSparseSelfAttention as BlockSparseSelfAttention
from ._modules import FullSelfAttention as FullSelfAttention
from ._tokenizer import BatchEncoding as BatchEncoding
from ._tokenizer import Encoding as Encoding
from ._tokenizer import Tokenizer as Tokenizer
from ._tokenizer import char_span_to_token_span as char_span_to_token_span
from ._tokenizer import token_span_to_text as token_span_to_text

__version__ = "0.1.0"
from ._serialization import load as load
from ._serialization import save as save
from ._export import save_pretrained as save_pretrained
from ._bert import from_bert as from_bert
