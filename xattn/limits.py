"""Size estimates made before any memory is spent, so a request too large is refused with a number."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .config import ModelConfig
from .stages import check_stages
from .wrapper import build

BYTES_PER_VALUE = 4  # float32


class TooLarge(ValueError):
    """A model or trace that would not fit the budget it was given."""


def parameter_count(config: ModelConfig) -> int:
    """Parameters a `TransformerWrapper` of `config` holds, counted on modules built on the `meta` device
    (no memory is allocated, and the count cannot drift from what the modules really create)."""
    with torch.device("meta"):
        model = build(config)
    return sum(p.numel() for p in model.parameters())


def trace_bytes(config: ModelConfig, batch: int, n: int, stages: Sequence[str] | None = None,
                layers: Sequence[int] | None = None) -> int:
    """Upper bound on the bytes a trace of `n` tokens holds: stages × layers × batch × heads × queries × keys
    (n counting memory tokens; the keys also count the extra key columns in front)."""
    depth = config.attn_layers.num_attn_layers if layers is None else len(layers)
    n += config.num_memory_tokens
    keys = n + len(config.attn_layers.attn.key_extras)
    return len(check_stages(stages)) * depth * batch * config.attn_layers.heads * n * keys * BYTES_PER_VALUE


def check(config: ModelConfig | dict[str, Any], *, max_parameters: int, max_trace_bytes: int, batch: int = 1,
          n: int | None = None, stages: Sequence[str] | None = None) -> None:
    """Raise TooLarge, saying the numbers, if the model or its trace would exceed the budget
    (ValueError first, naming the field, if the config is not a valid one)."""
    config = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
    params = parameter_count(config)
    if params > max_parameters:
        raise TooLarge(f"this model would have {params:,} parameters; the limit here is {max_parameters:,}")
    n = config.max_seq_len if n is None else n
    size = trace_bytes(config, batch, n, stages)
    if size > max_trace_bytes:
        raise TooLarge(f"a trace of {n} tokens would take {size / 2**20:,.0f} MiB; the limit here is "
                       f"{max_trace_bytes / 2**20:,.0f} MiB — use fewer layers, heads or tokens")
