"""xattn: x-transformers-style attention models whose every attention-score stage can be traced and drawn."""
from . import limits, masks
from .attention import Attention, selective_penalty
from .convert import from_x_transformers, from_x_transformers_state_dict
from .hooks import HookPoint
from .io import load, load_checkpoint, save
from .layers import AttentionLayers, Decoder, Encoder
from .registry import available, pretrained
from .stages import DESCRIPTIONS, STAGES
from .trace import Trace
from .wrapper import TransformerWrapper, build

__all__ = [
    "Attention", "AttentionLayers", "Decoder", "Encoder", "TransformerWrapper", "Trace", "HookPoint", "STAGES",
    "DESCRIPTIONS", "build", "load", "save", "load_checkpoint", "from_x_transformers",
    "from_x_transformers_state_dict", "selective_penalty", "pretrained", "available", "masks", "limits",
]
