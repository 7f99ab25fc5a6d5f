"""Learned and data-dependent position biases added to the attention logits, and xPos's rotary scale.

Each bias is a term [b|1, h, i, j] added to the logits in the `biased` stage (shown alone as `position_bias`),
as x-transformers adds its `attn_bias`: after the scale and residual attention, before any mask.
T5's and the dynamic bias depend only on positions, so one module is shared by every layer
(`AttentionLayers.rel_pos`) and the bias is computed once per forward; data-dependent ALiBi reads each
layer's input, so each attention owns one.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .config import LayersConfig
from .norms import LayerNorm


def relative_distance(i: int, j: int, device: torch.device | None = None) -> Tensor:
    """[i, j] query position − key position (positive for past keys); the i queries are the last of the j keys."""
    return torch.arange(j - i, j, device=device)[:, None] - torch.arange(j, device=device)[None, :]


def t5_bucket(distance: Tensor, causal: bool, num_buckets: int, max_distance: int) -> Tensor:
    """T5's bucket of each query − key distance (Raffel et al., as x-transformers).

    Causal: future keys share bucket 0 with the diagonal. Bidirectional: half the buckets for past keys,
    half (offset by num_buckets // 2) for future keys. Within a half, the first half of its buckets hold
    one distance each; the rest cover distances up to `max_distance` logarithmically (beyond it: the last).
    """
    offset = torch.zeros_like(distance)
    if causal:
        distance = distance.clamp(min=0)
    else:
        num_buckets //= 2
        offset = (distance < 0).long() * num_buckets
        distance = distance.abs()
    exact = num_buckets // 2
    log_ratio = torch.log(distance.float() / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return offset + torch.where(distance < exact, distance, far)


class RelativePositionBias(nn.Module):
    """T5's relative position bias: one learned value per (distance bucket, head), × √dim_head as x-transformers
    (the logits are already scaled by 1/√dim_head, so the learned value enters unscaled relative to q·k)."""

    def __init__(self, *, heads: int, dim_head: int, causal: bool, num_buckets: int, max_distance: int) -> None:
        super().__init__()
        self.causal, self.num_buckets, self.max_distance = causal, num_buckets, max_distance
        self.scale = dim_head ** 0.5
        self.buckets = nn.Embedding(num_buckets, heads)

    def forward(self, i: int, j: int) -> Tensor:
        """[1, h, i, j] bias for the last i of j positions."""
        distance = relative_distance(i, j, self.buckets.weight.device)
        bucket = t5_bucket(distance, self.causal, self.num_buckets, self.max_distance)
        return rearrange(self.buckets(bucket), "i j h -> 1 h i j") * self.scale


class DynamicPositionBias(nn.Module):
    """A small MLP from the query − key distance (optionally sign·log(|d| + 1)) to one bias per head
    (Wang et al., as x-transformers): Linear(1, w) → [norm] → SiLU, (depth − 1) × (Linear(w, w) → [norm] → SiLU),
    Linear(w, heads), w = dim // 4. The first norm is bias-less, later ones have a bias (as x-transformers)."""

    def __init__(self, *, dim: int, heads: int, depth: int, log_distance: bool, norm: bool) -> None:
        super().__init__()
        width = dim // 4
        self.log_distance = log_distance
        self.hidden = nn.ModuleList(nn.Linear(1 if k == 0 else width, width) for k in range(depth))
        self.norms = nn.ModuleList([LayerNorm(width), *(nn.LayerNorm(width) for _ in range(depth - 1))]) \
            if norm else None
        self.out = nn.Linear(width, heads)

    def table(self, j: int) -> Tensor:
        """[2j − 1, heads] bias of every distance −(j − 1) … j − 1, in that order."""
        weight = self.out.weight
        distance = torch.arange(-j + 1, j, device=weight.device, dtype=weight.dtype)
        if self.log_distance:
            distance = distance.sign() * torch.log(distance.abs() + 1)
        hidden = rearrange(distance, "p -> p 1")
        for k, linear in enumerate(self.hidden):
            hidden = linear(hidden)
            if self.norms is not None:
                hidden = self.norms[k](hidden)
            hidden = F.silu(hidden)
        return self.out(hidden)

    def forward(self, i: int, j: int) -> Tensor:
        """[1, h, i, j] bias for the last i of j positions: the MLP runs once per distance, not per cell."""
        index = relative_distance(i, j, self.out.weight.device) + j - 1
        return rearrange(self.table(j)[index], "i j h -> 1 h i j")


class DataDependentAlibi(nn.Module):
    """Data-dependent ALiBi (the Forgetting Transformer, Lin et al. 2025, as x-transformers): each token emits a
    log forget gate g = logsigmoid(Linear(x)) per head, and key j's bias for query i is the sum of the gates of
    the tokens after j up to i, Σ_{j<t≤i} g_t ≤ 0. Bidirectional: a second set of gates, summed the other way,
    for future keys."""

    def __init__(self, dim: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        self.to_gates = nn.Linear(dim, heads * (1 if causal else 2))
        nn.init.constant_(self.to_gates.bias, 5.0)     # gates start near 1: little forgetting

    def forward(self, x: Tensor) -> Tensor:
        """x [b, n, dim] (the attention's input) → [b, h, i, j]."""
        total = F.logsigmoid(rearrange(self.to_gates(x), "b n h -> b h n")).cumsum(dim=-1)
        if self.causal:
            return total[..., :, None] - total[..., None, :]
        past, future = total.chunk(2, dim=1)
        return (past[..., :, None] - past[..., None, :]).tril() + (future[..., None, :] - future[..., :, None]).triu()


def shared_position_bias(config: LayersConfig) -> RelativePositionBias | DynamicPositionBias | None:
    """The learned position bias all layers share (as x-transformers' `rel_pos`): T5's or the dynamic MLP."""
    if config.rel_pos_bias:
        return RelativePositionBias(heads=config.heads, dim_head=config.attn.dim_head, causal=config.causal,
                                    num_buckets=config.rel_pos_num_buckets, max_distance=config.rel_pos_max_distance)
    if config.dynamic_pos_bias:
        return DynamicPositionBias(dim=config.dim, heads=config.heads, depth=config.dynamic_pos_bias_mlp_depth,
                                   log_distance=config.dynamic_pos_bias_log_distance, norm=config.dynamic_pos_bias_norm)
    return None


def xpos_scale(n: int, rotary_dim: int, scale_base: float, device: torch.device | None = None) -> Tensor:
    """[n, rotary_dim] xPos's per-feature factors (Sun et al., as x-transformers): queries' rotated features are
    multiplied by them, keys' divided, so q·k gains s^(i − j) per feature pair, s < 1 decaying with distance.
    Positions are centred on n // 2 (which cancels in q·k) to keep the factors near 1."""
    base = (torch.arange(0, rotary_dim, 2, device=device) + 0.4 * rotary_dim) / (1.4 * rotary_dim)
    power = (torch.arange(n, device=device) - n // 2) / scale_base
    scale = base ** rearrange(power, "n -> n 1")
    return torch.repeat_interleave(scale, 2, dim=-1)
