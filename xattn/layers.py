"""The attention stack: blocks of self-attention, cross-attention and feed-forward in x-transformers' layer order.

Keyword arguments are x-transformers': `attn_` prefixed ones reach every `Attention`, `ff_` every
`FeedForward` (see `xattn.config`); a keyword no option accepts raises a TypeError that names it.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .attention import Attention, alibi_bias, rotary_frequencies
from .cache import KVCache
from .config import FeedForwardConfig, LayersConfig
from .cross import check_context, cross_inputs
from .masks import mask_parts
from .norms import LayerNorm, make_norm
from .positions import shared_position_bias, xpos_scale


class FeedForward(nn.Module):
    """Linear → GELU (or SiLU, or a GLU of either) → [LayerNorm] → Linear, inner width `mult` × dim."""

    def __init__(self, dim: int, config: FeedForwardConfig) -> None:
        super().__init__()
        inner = int(dim * config.mult)
        self.glu = config.glu
        self.act = nn.SiLU() if config.swish else nn.GELU()
        self.proj_in = nn.Linear(dim, inner * 2 if config.glu else inner, bias=not config.no_bias)
        self.norm = LayerNorm(inner) if config.post_act_ln else None
        self.dropout = nn.Dropout(config.dropout)
        self.proj_out = nn.Linear(inner, dim, bias=not config.no_bias)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.proj_in(x)
        if self.glu:
            up, gate = hidden.chunk(2, dim=-1)
            hidden = up * self.act(gate)
        else:
            hidden = self.act(hidden)
        if self.norm is not None:
            hidden = self.norm(hidden)
        return self.proj_out(self.dropout(hidden))


class Residual(nn.Module):
    """branch output + residual stream (the stream scaled per feature with `scale_residual`), or a GRU cell
    that gates the two together (`gate_residual`)."""

    def __init__(self, dim: int, scale: bool, gated: bool) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim)) if scale else None
        self.gru = nn.GRUCell(dim, dim) if gated else None

    def forward(self, out: Tensor, residual: Tensor) -> Tensor:
        if self.scale is not None:
            residual = residual * self.scale
        if self.gru is None:
            return out + residual
        return self.gru(rearrange(out, "b n d -> (b n) d"), rearrange(residual, "b n d -> (b n) d")).reshape_as(out)


def shift_tokens(x: Tensor, shifts: tuple[int, ...], mask: Tensor | None = None) -> Tensor:
    """Token shift (x-transformers' `ShiftTokens`): x [b, n, dim] is cut into feature chunks of dim // len(shifts);
    chunk c moves shifts[c] positions along the sequence (+1: token t gets token t − 1's features, zeros come in
    at the edge); chunks past len(shifts) (a remainder) stay. Before a move, padded tokens (mask [b, n] False)
    are zeroed, so no token receives a padded token's features."""
    n = x.shape[1]
    chunks = list(x.split(x.shape[-1] // len(shifts), dim=-1))
    for c, amount in enumerate(shifts):
        if amount == 0:
            continue
        chunk = chunks[c] if mask is None else chunks[c].masked_fill(~rearrange(mask, "b n -> b n 1"), 0.0)
        amount = max(min(amount, n), -n)
        chunks[c] = F.pad(chunk, (0, 0, amount, -amount))      # pad one end, crop the other
    return torch.cat(chunks, dim=-1)


class Block(nn.Module):
    """One entry of the layer list: [norm] → branch (attention or feed-forward) → [branch norm] → residual
    → [post norm]. Which norms exist is the config's choice: pre-norm, sandwich norm or post-norm. With
    `shifts` (shift_tokens) the branch input is token-shifted first."""

    def __init__(self, branch: nn.Module, config: LayersConfig, branch_scale: float = 1.0,
                 shifts: tuple[int, ...] = ()) -> None:
        super().__init__()
        norm = partial(make_norm, config.norm, config.dim)
        self.norm = norm() if config.pre_norm else None
        self.branch = branch
        self.branch_scale = branch_scale          # ½ for Macaron feed-forwards
        self.shifts = shifts
        self.branch_norm = norm() if config.sandwich_norm else None
        self.residual = Residual(config.dim, config.scale_residual, config.gate_residual)
        self.post_norm = None if config.pre_norm else norm()

    @property
    def is_attention(self) -> bool:
        return isinstance(self.branch, Attention)

    @property
    def is_cross(self) -> bool:
        return self.is_attention and self.branch.cross

    def forward(self, x: Tensor, **attn_kwargs: Any) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """x [b, n, dim] → (x after this block, the attention's pre-softmax logits and values, or None, None)."""
        h = x if self.norm is None else self.norm(x)
        if self.shifts:   # as x-transformers, only attention zeroes padded tokens before shifting
            h = shift_tokens(h, self.shifts, attn_kwargs.get("query_mask"))
        logits = values = None
        if self.is_attention:
            out, logits, values = self.branch(h, **attn_kwargs)
        else:
            out = self.branch(h)
        if self.branch_scale != 1.0:
            out = out * self.branch_scale
        if self.branch_norm is not None:
            out = self.branch_norm(out)
        x = self.residual(out, x)
        return (x if self.post_norm is None else self.post_norm(x)), logits, values


class AttentionLayers(nn.Module):
    """A stack of attention and feed-forward blocks with a final norm, built from a `LayersConfig`.

    Constructed with x-transformers' keywords (`AttentionLayers(dim=…, depth=…, attn_dim_head=…)`), or
    from a config with `AttentionLayers.from_config`. `config` holds the typed config.
    """

    def __init__(self, dim: int | None = None, depth: int | None = None, *, config: LayersConfig | None = None,
                 **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            sizes = {name: value for name, value in (("dim", dim), ("depth", depth)) if value is not None}
            config = LayersConfig.from_kwargs(type(self).__name__, **sizes, **kwargs)
        self.config = config
        self.dim, self.heads, self.causal = config.dim, config.heads, config.causal
        self.residual_attn, self.add_value_residual = config.residual_attn, config.add_value_residual
        self.rotary_dim, self.alibi_heads = config.rotary_dim, config.alibi_heads
        self.rel_pos = shared_position_bias(config)
        self.num_attn_layers = config.num_attn_layers
        blocks, attention_index = [], {"a": 0, "c": 0}     # self- and cross-attention layers count apart
        for kind, shifts in zip(config.layer_types, config.layer_shifts, strict=True):
            if kind in attention_index:
                value_mix = (kind == "a" and config.add_value_residual and config.learned_value_residual_mix
                             and attention_index["a"] > 0)
                branch = Attention(config.dim, heads=config.heads, causal=config.causal and kind == "a",
                                   config=config.attn, layer=attention_index[kind], value_mix=value_mix,
                                   cross=kind == "c")
                attention_index[kind] += 1
                blocks.append(Block(branch, config, shifts=shifts))
            else:
                blocks.append(Block(FeedForward(config.dim, config.ff), config, 0.5 if config.macaron else 1.0,
                                    shifts=shifts))
        self.layers = nn.ModuleList(blocks)
        self.final_norm = make_norm(config.norm, config.dim) if config.pre_norm else None

    @classmethod
    def from_config(cls, config: LayersConfig) -> AttentionLayers:
        kinds = {"Encoder": Encoder, "Decoder": Decoder, "AttentionLayers": AttentionLayers}
        return kinds[config.kind](config=config)

    @property
    def attention(self) -> list[Attention]:
        """The self-attention modules, in order: `attention[i]` owns the hook points `layers.{i}.attn.*`."""
        return [block.branch for block in self.layers if block.is_attention and not block.is_cross]

    @property
    def cross_attention(self) -> list[Attention]:
        """The cross-attention modules: `cross_attention[i]` owns the hook points `cross_layers.{i}.attn.*`."""
        return [block.branch for block in self.layers if block.is_cross]

    @property
    def selective(self) -> bool:
        return self.config.selective

    @property
    def key_extras(self) -> list[str]:
        """Names of the key columns every attention layer puts in front of the tokens (sink, zero, memory)."""
        return self.config.attn.key_extras

    def visible_mask(self, batch: int, n: int, mask: Tensor | None = None, attn_mask: Tensor | None = None,
                     device: torch.device | None = None, offset: int = 0) -> Tensor | None:
        """[b|1, 1, i, j] True where key j is visible to query i: padding, custom, window (attn_max_attend_past)
        and causal masks combined.

        mask [b, n]: key padding, True = a real token. attn_mask [i, j] or [b, i, j]: True = may attend.
        offset: the n queries are the last of offset + n keys (a cached step; no mask or attn_mask then).
        Returns None when nothing is masked.
        """
        if mask is not None and (mask.dtype != torch.bool or mask.shape != (batch, n)):
            raise ValueError(f"mask must be a boolean tensor of shape [batch, seq] = [{batch}, {n}], "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        if attn_mask is not None and (attn_mask.dtype != torch.bool or attn_mask.shape[-2:] != (n, n)
                                      or attn_mask.ndim not in (2, 3)
                                      or (attn_mask.ndim == 3 and attn_mask.shape[0] not in (1, batch))):
            raise ValueError(f"attn_mask must be a boolean tensor of shape [seq, seq] or [batch, seq, seq] "
                             f"with seq = {n}, batch = {batch}; got {attn_mask.dtype} {tuple(attn_mask.shape)}")
        parts = [part for part in mask_parts(self.config, n, mask, attn_mask, device, offset).values()
                 if part is not None]
        if not parts:
            return None
        visible = parts[0]
        for part in parts[1:]:
            visible = visible & part
        return visible

    def forward(self, x: Tensor, mask: Tensor | None = None, attn_mask: Tensor | None = None,
                context: Tensor | None = None, context_mask: Tensor | None = None,
                cache: KVCache | None = None) -> Tensor:
        """x [b, n, dim] → [b, n, dim]. mask [b, n] pads keys and queries; attn_mask [i, j] or [b, i, j].
        context [b, m, dim]: what the cross-attention layers read (given iff cross_attend); context_mask [b, m]
        pads its positions. cache: x holds only the tokens after the `cache.length` cached ones, whose keys and
        values each layer reads from (and appends to) the cache (causal layers, no masks, no context)."""
        b, n, _ = x.shape
        check_context(self.config, b, context, context_mask)
        offset = 0 if cache is None else cache.length
        if cache is not None and not (self.causal and mask is None and attn_mask is None and context is None):
            raise ValueError("a cache needs causal layers and takes no mask, attn_mask or context")
        cross = None if context is None else cross_inputs(context, context_mask, mask)
        visible = self.visible_mask(b, n, mask, attn_mask, x.device, offset)
        fully_masked = None if visible is None else ~visible.any(dim=-1)
        if fully_masked is not None and not fully_masked.any():
            fully_masked = None
        config, total = self.config, offset + n
        rotary = xpos = None
        if self.rotary_dim:
            rotary = rotary_frequencies(total, self.rotary_dim, config.rotary_base,
                                        config.rotary_interpolation_factor, device=x.device)[offset:]
        if config.rotary_xpos:
            xpos = xpos_scale(n, self.rotary_dim, config.rotary_xpos_scale_base, x.device)
        bias = alibi_bias(n, total, self.alibi_heads, self.heads, x.device).to(x.dtype) if self.alibi_heads else None
        if self.rel_pos is not None:
            bias = self.rel_pos(n, total)

        prev_logits = prev_cross = value_residual = None   # residual attention chains self and cross apart
        attention_index = 0
        for block in self.layers:
            if block.is_cross:
                x, logits, _ = block(x, **cross, prev_logits=prev_cross)
                prev_cross = logits if self.config.cross_residual_attn else None
                continue
            if block.is_attention:
                layer_cache = None if cache is None else cache.layers[attention_index]
                attention_index += 1
                x, logits, values = block(
                    x, visible=visible if layer_cache is None else layer_cache.hide(visible, n),
                    fully_masked=fully_masked, query_mask=mask, rotary=rotary, xpos=xpos, bias=bias,
                    prev_logits=prev_logits, value_residual=value_residual, cache=layer_cache,
                    track_selection=cache is not None and cache.track_selection)
            else:
                x, logits, values = block(x)
            if logits is not None and self.residual_attn:
                prev_logits = logits
            if values is not None and self.add_value_residual and value_residual is None:
                value_residual = values        # the first attention layer's values (ResFormer)
        if cache is not None:
            cache.length = total
        return x if self.final_norm is None else self.final_norm(x)


class Encoder(AttentionLayers):
    """Bidirectional attention layers."""


class Decoder(AttentionLayers):
    """Causal attention layers."""
