"""Size estimates made before any memory is spent, so a request too large is refused with a number."""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

from .config import EncDecConfig, ModelConfig, config_from_dict
from .encdec import build_any
from .stages import check_stages

BYTES_PER_VALUE = 4  # float32


class TooLarge(ValueError):
    """A model or trace that would not fit the budget it was given."""


def parameter_count(config: ModelConfig | EncDecConfig | dict[str, Any]) -> int:
    """Parameters a `TransformerWrapper` (or an encoder–decoder, both sides, a tied embedding once) of `config`
    (or the JSON form of one) holds, counted on modules built on the `meta` device (no memory is allocated, and
    the count cannot drift from what the modules really create)."""
    return _parameters(config if isinstance(config, (ModelConfig, EncDecConfig)) else config_from_dict(config))


@functools.lru_cache(maxsize=64)
def _parameters(config: ModelConfig | EncDecConfig) -> int:
    """parameter_count, kept per (frozen) config: the app checks a model's before every trace."""
    with torch.device("meta"):
        model = build_any(config)
    return sum(p.numel() for p in model.parameters())


def trace_bytes(config: ModelConfig, batch: int, n: int, stages: Sequence[str] | None = None,
                layers: Sequence[int] | None = None) -> int:
    """Upper bound on the bytes a trace of `n` tokens holds: stages × layers × batch × heads × queries × keys
    (n counting memory tokens; the keys also count the extra key columns in front)."""
    depth = config.attn_layers.num_attn_layers if layers is None else len(layers)
    n += config.num_memory_tokens
    keys = n + len(config.attn_layers.attn.key_extras)
    return len(check_stages(stages)) * depth * batch * config.attn_layers.heads * n * keys * BYTES_PER_VALUE


def cross_trace_bytes(config: ModelConfig, batch: int, n: int, n_context: int,
                      stages: Sequence[str] | None = None) -> int:
    """Upper bound on the bytes of a cross-attending model's `trace.cross` for `n` tokens reading a context of
    `n_context` positions: stages × cross layers × batch × heads × queries (n and memory tokens) × keys (the
    context's positions and the extra key columns in front). 0 for a model without cross-attention."""
    queries = n + config.num_memory_tokens
    keys = n_context + len(config.attn_layers.attn.key_extras)
    return (len(check_stages(stages)) * config.attn_layers.num_cross_layers * batch * config.attn_layers.heads
            * queries * keys * BYTES_PER_VALUE)


def encdec_trace_bytes(config: EncDecConfig, batch: int, n_src: int, n_tgt: int,
                       stages: Sequence[str] | None = None) -> dict[str, int]:
    """{part: bytes} of an encoder–decoder's trace of `n_src` source and `n_tgt` target tokens: the encoder's
    self-attention, the decoder's self-attention and its cross-attention."""
    return {"encoder": trace_bytes(config.encoder, batch, n_src, stages),
            "decoder": trace_bytes(config.decoder, batch, n_tgt, stages),
            "cross-attention": cross_trace_bytes(config.decoder, batch, n_tgt, n_src, stages)}


def check(config: ModelConfig | EncDecConfig | dict[str, Any], *, max_parameters: int, max_trace_bytes: int,
          batch: int = 1, n: int | None = None, n_src: int | None = None,
          stages: Sequence[str] | None = None) -> None:
    """Raise TooLarge, saying the numbers, if the model or its trace would exceed the budget
    (ValueError first, naming the field, if the config is not a valid one). `n` tokens (default: the model's
    max_seq_len); an encoder–decoder's `n` is the decoder's (target) and `n_src` the encoder's (source), each
    by default its side's max_seq_len, and its trace is the encoder's, the decoder's and the cross-attention's."""
    config = config if isinstance(config, (ModelConfig, EncDecConfig)) else config_from_dict(config)
    params = parameter_count(config)
    if params > max_parameters:
        raise TooLarge(f"this model would have {params:,} parameters; the limit here is {max_parameters:,}")
    if isinstance(config, EncDecConfig):
        n = config.decoder.max_seq_len if n is None else n
        n_src = config.encoder.max_seq_len if n_src is None else n_src
        parts = encdec_trace_bytes(config, batch, n_src, n, stages)
        size = sum(parts.values())
        if size > max_trace_bytes:
            split = ", ".join(f"{part} {part_size / 2**20:,.0f}" for part, part_size in parts.items())
            raise TooLarge(f"a trace of {n_src} source and {n} target tokens would take {size / 2**20:,.0f} MiB "
                           f"({split}); the limit here is {max_trace_bytes / 2**20:,.0f} MiB — use fewer layers, "
                           "heads or tokens")
        return
    n = config.max_seq_len if n is None else n
    size = trace_bytes(config, batch, n, stages)
    if config.attn_layers.cross_attend:          # a context as long as n_src, else as the tokens
        size += cross_trace_bytes(config, batch, n, n if n_src is None else n_src, stages)
    if size > max_trace_bytes:
        raise TooLarge(f"a trace of {n} tokens would take {size / 2**20:,.0f} MiB; the limit here is "
                       f"{max_trace_bytes / 2**20:,.0f} MiB — use fewer layers, heads or tokens")
