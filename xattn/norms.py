"""The norms a block may use, as x-transformers defines them, with the learned gain stored as the gain itself
(x-transformers stores gain − 1 when `norm_add_unit_offset`; conversion adds the 1 back)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm(nn.Module):
    """Bias-less layer norm with a learned per-feature gain (x-transformers' default norm)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], weight=self.weight)


class RMSNorm(nn.Module):
    """x / ‖x‖ · √dim · g, with a learned per-feature gain g (one gain for ScaleNorm)."""

    def __init__(self, dim: int, gains: int | None = None) -> None:
        super().__init__()
        self.scale = dim ** 0.5
        self.g = nn.Parameter(torch.ones(dim if gains is None else gains))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.g


class SimpleRMSNorm(nn.Module):
    """x / ‖x‖ · √dim, nothing learned."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim ** 0.5

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) * self.scale


def make_norm(kind: str, dim: int) -> nn.Module:
    """The norm called `kind` (`LayersConfig.norm`) over `dim` features."""
    if kind == "layernorm":
        return LayerNorm(dim)
    if kind == "rmsnorm":
        return RMSNorm(dim)
    if kind == "scalenorm":
        return RMSNorm(dim, gains=1)
    if kind == "simple_rmsnorm":
        return SimpleRMSNorm(dim)
    raise ValueError(f"unknown norm {kind!r}")
