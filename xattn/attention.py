"""One self-attention layer, computed stage by stage so every stage can be observed or replaced.

The numerics follow x-transformers' `Attention` + `Attend` (math path): scores, + residual
(RealFormer), + position bias, masks filled with -finfo.max, - selective penalty, softmax in float32.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, einsum, nn

from .config import AttentionConfig
from .hooks import HookPoint
from .stages import STAGES


def mask_fill_value(dtype: torch.dtype) -> float:
    """The value masked logits are filled with (as x-transformers): the most negative finite number."""
    return -torch.finfo(dtype).max


def causal_visible(n: int, device: torch.device | None = None) -> Tensor:
    """[i, j] True where key j is visible to query i under causal attention (j ≤ i)."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def selective_penalty(logits: Tensor) -> Tensor:
    """Selective attention's F (Leviathan et al. 2024, as x-transformers' `selective_attn`).

    Head 0's positive logits decide, for each query, which earlier keys later queries may ignore.
    The first key column (BOS) and the diagonal never count; the gate is shifted one query down and
    summed over queries, so query i is penalised by what queries < i decided. Returns [b, 1, i, j].
    """
    i, j = logits.shape[-2:]
    gate = F.relu(logits[:, 0])
    keep = torch.ones(i, j, dtype=logits.dtype, device=logits.device)
    keep[:, 0] = 0.0                     # never prune the first token
    keep.fill_diagonal_(0.0)             # a token does not prune itself
    gate = gate * keep
    gate = F.pad(gate, (0, 0, 1, -1))    # shift one query down: only future queries are affected
    return rearrange(gate.cumsum(dim=-2), "b i j -> b 1 i j")


def alibi_slopes(heads: int) -> list[float]:
    """ALiBi's geometric slopes (Press et al.), with x-transformers' rule for non-powers of two."""
    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** k for k in range(n)]

    if math.log2(heads).is_integer():
        return power_of_two(heads)
    closest = 2 ** math.floor(math.log2(heads))
    return power_of_two(closest) + power_of_two(2 * closest)[0::2][: heads - closest]


def alibi_bias(n: int, alibi_heads: int, total_heads: int, device: torch.device | None = None) -> Tensor:
    """[1, h, i, j] bias −slope·|i − j|; heads past `alibi_heads` get no bias."""
    slopes = torch.tensor(alibi_slopes(alibi_heads), device=device)
    pos = torch.arange(n, device=device)
    distance = -(pos[None, :] - pos[:, None]).abs()
    bias = rearrange(slopes, "h -> h 1 1") * distance
    bias = F.pad(bias, (0, 0, 0, 0, 0, total_heads - alibi_heads))
    return rearrange(bias, "h i j -> 1 h i j")


def rotary_frequencies(n: int, rotary_dim: int, base: float = 10000.0, device: torch.device | None = None) -> Tensor:
    """[n, rotary_dim] angles, each frequency repeated for its pair of interleaved features."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, device=device).float() / rotary_dim))
    angles = einsum("i, f -> i f", torch.arange(n, device=device).float(), inv_freq)
    return torch.repeat_interleave(angles, 2, dim=-1)


def apply_rotary(t: Tensor, angles: Tensor) -> Tensor:
    """Rotate the first `angles.shape[-1]` features of t [b, h, n, d] in interleaved pairs."""
    rot_dim = angles.shape[-1]
    rotated, rest = t[..., :rot_dim], t[..., rot_dim:]
    pairs = rearrange(rotated, "... (d r) -> ... d r", r=2)
    x1, x2 = pairs.unbind(-1)
    half_turn = rearrange(torch.stack((-x2, x1), dim=-1), "... d r -> ... (d r)")
    rotated = rotated * angles.cos() + half_turn * angles.sin()
    return torch.cat((rotated, rest), dim=-1).type(t.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with a hook point at every score stage, or with `cross` cross-attention
    (keys and values from a context sequence, `forward(x, context=...)`).

    Each hook point is declared below with the shape it sees and is named once, at build, after the
    attention layer it belongs to (`layers.{layer}.attn.hook_{stage}`, `cross_layers.{layer}.…` for
    cross-attention, whose key axis j runs over the context); they fire in `STAGES` order.
    """

    def __init__(self, dim: int, *, heads: int, causal: bool, config: AttentionConfig, layer: int,
                 cross: bool = False) -> None:
        super().__init__()
        self.heads, self.dim_head, self.causal, self.selective = heads, config.dim_head, causal, config.selective
        self.layer, self.cross = layer, cross
        self.scale = config.dim_head ** -0.5
        inner = heads * config.dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.dropout = nn.Dropout(config.dropout)
        point = partial(HookPoint, layer, cross=cross)
        self.hook_scores = point("scores")                    # [b, h, i, j] q·kᵀ × scale
        self.hook_residual = point("residual")                # [b, h, i, j] previous layer's pre-softmax logits
        self.hook_scores_residual = point("scores_residual")  # [b, h, i, j] scores + residual
        self.hook_biased = point("biased")                    # [b, h, i, j] + position bias
        self.hook_masked = point("masked")                    # [b, h, i, j] invisible keys filled with −finfo.max
        self.hook_selection = point("selection")              # [b, h, i, j] selective penalty F (same for every head)
        self.hook_pre_softmax = point("pre_softmax")          # [b, h, i, j] the logits softmax sees
        self.hook_attn = point("attn")                        # [b, h, i, j] the attention pattern

    def hook_points(self) -> list[HookPoint]:
        """This layer's hook points, in the order they fire."""
        return [getattr(self, f"hook_{stage}") for stage in STAGES]

    @staticmethod
    def add_stage(logits: Tensor, term: Tensor | None, hook: HookPoint, subtract: bool = False) -> Tensor:
        """logits ± term, with `term` passed through its hook point first.

        An absent term is shown to an attached hook as zeros (a broadcast view, no memory) and only
        applied if the hook replaced it, so reading a switched-off stage costs nothing.
        """
        if term is None and not hook.active:
            return logits
        shown = logits.new_zeros(()).expand_as(logits) if term is None else term.expand_as(logits)
        seen = hook(shown)
        if term is None and seen is shown:
            return logits
        return logits - seen if subtract else logits + seen

    def split_heads(self, t: Tensor) -> Tensor:
        return rearrange(t, "b n (h d) -> b h n d", h=self.heads)

    def forward(self, x: Tensor, *, visible: Tensor | None = None, fully_masked: Tensor | None = None,
                query_mask: Tensor | None = None, rotary: Tensor | None = None, bias: Tensor | None = None,
                prev_logits: Tensor | None = None, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x [b, n, dim] → (output [b, n, dim], pre-softmax logits [b, h, i, j] for residual attention).

        visible [b|1, 1, i, j]: True where a key may be seen (padding, custom and causal combined);
        fully_masked [b|1, 1, i]: rows with no visible key, whose output is zeroed;
        query_mask [b, n]: padding of the queries, whose output is zeroed (as x-transformers);
        context [b, m, dim]: the sequence keys and values come from (cross-attention; j runs over m), else x.
        """
        kv_input = x if context is None else context
        q, k, v = map(self.split_heads, (self.to_q(x), self.to_k(kv_input), self.to_v(kv_input)))
        if rotary is not None:
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)

        logits = self.hook_scores(einsum("b h i d, b h j d -> b h i j", q, k) * self.scale)

        logits = self.hook_scores_residual(self.add_stage(logits, prev_logits, self.hook_residual))

        if bias is not None:
            logits = logits + bias
        logits = self.hook_biased(logits)

        if visible is not None:
            logits = logits.masked_fill(~visible, mask_fill_value(logits.dtype))
        logits = self.hook_masked(logits)

        penalty = selective_penalty(logits) if self.selective else None
        logits = self.hook_pre_softmax(self.add_stage(logits, penalty, self.hook_selection, subtract=True))

        attn = self.hook_attn(logits.softmax(dim=-1, dtype=torch.float32).type(logits.dtype))
        out = einsum("b h i j, b h j d -> b h i d", self.dropout(attn), v)
        if fully_masked is not None:
            out = out.masked_fill(rearrange(fully_masked, "... i -> ... i 1"), 0.0)
        out = self.to_out(rearrange(out, "b h n d -> b n (h d)"))
        if query_mask is not None:
            out = out.masked_fill(~rearrange(query_mask, "b n -> b n 1"), 0.0)
        return out, logits
