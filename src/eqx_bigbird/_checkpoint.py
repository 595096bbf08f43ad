"""Re-exports for the importers not yet pointed at `_hf_read`, `_hf_load` and `_hf_names`
(`__init__`, `_modules`, `_heads`): delete this module once none is left."""

from ._hf_load import LoadReport as LoadReport
from ._hf_load import from_pretrained as from_pretrained
from ._hf_names import ENCODER_NAMES as ENCODER_NAMES
from ._hf_read import CheckpointError as CheckpointError
from ._hf_read import read_hf_weights as read_hf_weights
