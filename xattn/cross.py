"""Cross-attention's inputs: the context a cross-attending stack reads, and which of its positions are real.

A cross-attention layer (layer type 'c', `cross_attend=True`) takes its queries from the stream and its keys
and values from `context` [b, m, dim] (raw: not normed); `context_mask` [b, m] masks keys. There is no causal
mask and no position (rotary, ALiBi) on either side, as in x-transformers; padded queries still get zero output.
"""
from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from .config import LayersConfig


def check_context(config: LayersConfig, batch: int, context: Tensor | None, context_mask: Tensor | None) -> None:
    """Raise ValueError unless a context is given exactly when the layers cross-attend, with fitting shapes."""
    if config.cross_attend != (context is not None):
        raise ValueError("this model cross-attends (cross_attend=True): give context=[batch, context_len, dim]"
                         if config.cross_attend else
                         "context= is given, but this model does not cross-attend (cross_attend=False)")
    if context is None:
        if context_mask is not None:
            raise ValueError("context_mask= needs context=")
        return
    if not context.is_floating_point() or context.ndim != 3 or context.shape[0] != batch \
            or context.shape[2] != config.dim or context.shape[1] == 0:
        raise ValueError(f"context must be a float tensor [batch, context_len ≥ 1, dim] with batch = {batch}, "
                         f"dim = {config.dim}; got {context.dtype} {tuple(context.shape)}")
    if context_mask is not None and (context_mask.dtype != torch.bool or context_mask.shape != context.shape[:2]):
        raise ValueError(f"context_mask must be a boolean tensor [batch, context_len] = {list(context.shape[:2])}, "
                         f"got {context_mask.dtype} {tuple(context_mask.shape)}")


def cross_inputs(context: Tensor, context_mask: Tensor | None, query_mask: Tensor | None) -> dict[str, Any]:
    """The keyword arguments of every cross-attention layer's `Attention.forward`."""
    visible = None if context_mask is None else rearrange(context_mask, "b j -> b 1 1 j")
    fully_masked = None if visible is None else ~visible.any(dim=-1)
    if fully_masked is not None and not fully_masked.any():
        fully_masked = None
    return dict(context=context, visible=visible, fully_masked=fully_masked, query_mask=query_mask)


def context_visible(n: int, context: Tensor, context_mask: Tensor | None) -> Tensor:
    """[b, i, j] True where decoder token i may see context position j: the trace's cross `visible`."""
    b, m = context.shape[:2]
    keys = torch.ones(b, m, dtype=torch.bool, device=context.device) if context_mask is None else context_mask
    return rearrange(keys, "b j -> b 1 j").expand(b, n, m)
