"""xattn: x-transformers-style attention models whose every attention-score stage can be traced and drawn."""
from . import limits, masks, memory
from .attention import Attention, selective_penalty
from .cache import KVCache
from .config import OPTIONS, AttentionConfig, EncDecConfig, FeedForwardConfig, LayersConfig, ModelConfig, Option
from .convert import from_x_transformers, from_x_transformers_state_dict
from .encdec import XTransformer, build_any
from .generate import Generation, Prune, generate
from .hooks import HookPoint
from .io import load, load_checkpoint, read_tokenizer, save
from .layers import AttentionLayers, Decoder, Encoder
from .registry import available, pretrained
from .stages import DESCRIPTIONS, STAGES, TERMS
from .stats import STATS as HEAD_STATS
from .stats import HeadStats, TaskData, TextData, TokenBatches, head_stats
from .trace import Trace
from .wrapper import TransformerWrapper, build

__all__ = [
    "Attention", "AttentionLayers", "Decoder", "Encoder", "TransformerWrapper", "Trace", "HookPoint", "STAGES",
    "DESCRIPTIONS", "TERMS", "OPTIONS", "Option", "ModelConfig", "LayersConfig", "AttentionConfig", "FeedForwardConfig",
    "build", "load", "save", "read_tokenizer", "load_checkpoint", "from_x_transformers",
    "from_x_transformers_state_dict", "selective_penalty", "pretrained", "available", "masks", "limits", "memory",
    "XTransformer", "EncDecConfig", "build_any", "generate", "Generation", "Prune", "KVCache",
    "head_stats", "HeadStats", "TaskData", "TextData", "TokenBatches", "HEAD_STATS",
]
