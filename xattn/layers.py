"""The attention stack: pre-norm blocks of self-attention and feed-forward, x-transformers style.

Keyword arguments prefixed `attn_` reach every `Attention`, `ff_` every `FeedForward`, with the prefix
removed; an argument nothing accepts raises a TypeError that names it.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .attention import Attention, alibi_bias, causal_visible, rotary_frequencies


class LayerNorm(nn.Module):
    """Bias-less layer norm with a learned gain (x-transformers' default norm)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], weight=self.weight)


class FeedForward(nn.Module):
    """Linear → GELU (or SiLU, or a GLU of either) → Linear, inner width `mult` × dim."""

    def __init__(self, dim: int, *, mult: float = 4, glu: bool = False, swish: bool = False,
                 no_bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        inner = int(dim * mult)
        self.glu = glu
        self.act = nn.SiLU() if swish else nn.GELU()
        self.proj_in = nn.Linear(dim, inner * 2 if glu else inner, bias=not no_bias)
        self.dropout = nn.Dropout(dropout)
        self.proj_out = nn.Linear(inner, dim, bias=not no_bias)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.proj_in(x)
        if self.glu:
            up, gate = hidden.chunk(2, dim=-1)
            hidden = up * self.act(gate)
        else:
            hidden = self.act(hidden)
        return self.proj_out(self.dropout(hidden))


class Block(nn.Module):
    """One layer: x + attn(norm(x)), then x + ff(norm(x))."""

    def __init__(self, dim: int, attn: Attention, ff: FeedForward) -> None:
        super().__init__()
        self.attn_norm, self.attn = LayerNorm(dim), attn
        self.ff_norm, self.ff = LayerNorm(dim), ff


def split_prefixed(kwargs: dict[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """({key without prefix: value} for prefixed keys, the rest)."""
    inner = {k[len(prefix):]: v for k, v in kwargs.items() if k.startswith(prefix)}
    rest = {k: v for k, v in kwargs.items() if not k.startswith(prefix)}
    return inner, rest


def check_accepted(cls: type, kwargs: dict[str, Any], prefix: str, fixed: set[str]) -> None:
    """Raise a TypeError naming every prefixed argument `cls` does not take."""
    params = set(inspect.signature(cls.__init__).parameters) - {"self", "dim"} - fixed
    unknown = sorted(k for k in kwargs if k not in params)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(prefix + k for k in unknown)}: "
                        f"{cls.__name__} accepts {', '.join(prefix + p for p in sorted(params))}")


class AttentionLayers(nn.Module):
    """A stack of `depth` pre-norm attention + feed-forward layers with a final norm.

    residual_attn: RealFormer — each layer adds the previous layer's pre-softmax logits to its scores.
    rotary_pos_emb / alibi_pos_bias: relative positions, as x-transformers (rotary on dim_head // 2
    features unless `rotary_emb_dim` says otherwise).
    """

    def __init__(self, dim: int, depth: int, heads: int = 8, causal: bool = False, residual_attn: bool = False,
                 rotary_pos_emb: bool = False, rotary_emb_dim: int | None = None, alibi_pos_bias: bool = False,
                 alibi_num_heads: int | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.config = dict(kind=type(self).__name__, dim=dim, depth=depth, heads=heads, residual_attn=residual_attn,
                           rotary_pos_emb=rotary_pos_emb, rotary_emb_dim=rotary_emb_dim,
                           alibi_pos_bias=alibi_pos_bias, alibi_num_heads=alibi_num_heads, **kwargs)
        if type(self) is AttentionLayers:
            self.config["causal"] = causal
        for name, value in (("dim", dim), ("depth", depth), ("heads", heads)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive whole number, got {value!r}")
        if rotary_pos_emb and alibi_pos_bias:
            raise ValueError("choose one relative position scheme: rotary_pos_emb or alibi_pos_bias, not both")
        for option, needs, on in (("rotary_emb_dim", "rotary_pos_emb", rotary_pos_emb),
                                  ("alibi_num_heads", "alibi_pos_bias", alibi_pos_bias)):
            if self.config[option] is not None and not on:
                raise ValueError(f"{option} has no effect without {needs}=True")

        attn_kwargs, rest = split_prefixed(kwargs, "attn_")
        ff_kwargs, rest = split_prefixed(rest, "ff_")
        if rest:
            raise TypeError(f"unexpected keyword argument(s) {', '.join(sorted(rest))} for {type(self).__name__}")
        check_accepted(Attention, attn_kwargs, "attn_", {"heads", "causal"})
        check_accepted(FeedForward, ff_kwargs, "ff_", set())

        self.dim, self.depth, self.heads, self.causal = dim, depth, heads, causal
        self.residual_attn = residual_attn
        self.dim_head = attn_kwargs.get("dim_head", 64)
        self.rotary_dim = (rotary_emb_dim or self.dim_head // 2) if rotary_pos_emb else None
        if self.rotary_dim is not None and not (2 <= self.rotary_dim <= self.dim_head and self.rotary_dim % 2 == 0):
            raise ValueError(f"rotary_emb_dim must be even and at most attn_dim_head ({self.dim_head}), got {self.rotary_dim}")
        self.alibi_heads = (alibi_num_heads or heads) if alibi_pos_bias else None
        if self.alibi_heads is not None and not 1 <= self.alibi_heads <= heads:
            raise ValueError(f"alibi_num_heads must be between 1 and heads ({heads}), got {self.alibi_heads}")

        self.layers = nn.ModuleList(
            Block(dim, Attention(dim, heads=heads, causal=causal, **attn_kwargs), FeedForward(dim, **ff_kwargs))
            for _ in range(depth))
        self.final_norm = LayerNorm(dim)

    @property
    def selective(self) -> bool:
        return self.layers[0].attn.selective

    def visible_mask(self, batch: int, n: int, mask: Tensor | None = None, attn_mask: Tensor | None = None,
                     device: torch.device | None = None) -> Tensor | None:
        """[b|1, 1, i, j] True where key j is visible to query i: padding, custom and causal masks combined.

        mask [b, n]: key padding, True = a real token. attn_mask [i, j] or [b, i, j]: True = may attend.
        Returns None when nothing is masked.
        """
        parts = []
        if mask is not None:
            if mask.dtype != torch.bool or mask.shape != (batch, n):
                raise ValueError(f"mask must be a boolean tensor of shape [batch, seq] = [{batch}, {n}], "
                                 f"got {mask.dtype} {tuple(mask.shape)}")
            parts.append(rearrange(mask, "b j -> b 1 1 j"))
        if attn_mask is not None:
            if attn_mask.dtype != torch.bool or attn_mask.shape[-2:] != (n, n) or attn_mask.ndim not in (2, 3) \
                    or (attn_mask.ndim == 3 and attn_mask.shape[0] not in (1, batch)):
                raise ValueError(f"attn_mask must be a boolean tensor of shape [seq, seq] or [batch, seq, seq] "
                                 f"with seq = {n}, batch = {batch}; got {attn_mask.dtype} {tuple(attn_mask.shape)}")
            parts.append(attn_mask.view(-1, 1, n, n))
        if self.causal:
            parts.append(causal_visible(n, device)[None, None])
        if not parts:
            return None
        visible = parts[0]
        for part in parts[1:]:
            visible = visible & part
        return visible

    def forward(self, x: Tensor, mask: Tensor | None = None, attn_mask: Tensor | None = None) -> Tensor:
        """x [b, n, dim] → [b, n, dim]. mask [b, n] pads keys and queries; attn_mask [i, j] or [b, i, j]."""
        b, n, _ = x.shape
        visible = self.visible_mask(b, n, mask, attn_mask, x.device)
        fully_masked = None if visible is None else ~visible.any(dim=-1)
        if fully_masked is not None and not fully_masked.any():
            fully_masked = None
        rotary = rotary_frequencies(n, self.rotary_dim, device=x.device) if self.rotary_dim else None
        bias = alibi_bias(n, self.alibi_heads, self.heads, x.device).to(x.dtype) if self.alibi_heads else None

        prev_logits = None
        for block in self.layers:
            out, logits = block.attn(block.attn_norm(x), visible=visible, fully_masked=fully_masked,
                                     query_mask=mask, rotary=rotary, bias=bias, prev_logits=prev_logits)
            x = x + out
            if self.residual_attn:
                prev_logits = logits
            x = x + block.ff(block.ff_norm(x))
        return self.final_norm(x)


class Encoder(AttentionLayers):
    """Bidirectional attention layers."""

    def __init__(self, **kwargs: Any) -> None:
        if "causal" in kwargs:
            raise TypeError("an Encoder is never causal; use Decoder for causal attention")
        super().__init__(causal=False, **kwargs)


class Decoder(AttentionLayers):
    """Causal attention layers."""

    def __init__(self, **kwargs: Any) -> None:
        if "causal" in kwargs:
            raise TypeError("a Decoder is always causal; use Encoder for bidirectional attention")
        super().__init__(causal=True, **kwargs)
