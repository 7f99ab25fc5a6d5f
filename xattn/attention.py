"""One self-attention layer, computed stage by stage so every stage can be observed or replaced.

The numerics follow x-transformers' `Attention` + `Attend` (math path): scores (q·k, or −‖q − k‖²;
qk-norm first, grouped key/value heads shared), + residual (RealFormer), + position bias (ALiBi, T5,
dynamic or data-dependent), soft-capping,
|·| for Cog, masks filled with -finfo.max, - selective penalty, sparse top-k, softmax in float32 (or sigmoid),
× the signs for Cog.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, einsum, nn

from .config import AttentionConfig
from .hooks import HookPoint
from .positions import DataDependentAlibi
from .stages import STAGES


def mask_fill_value(dtype: torch.dtype) -> float:
    """The value masked logits are filled with (as x-transformers): the most negative finite number."""
    return -torch.finfo(dtype).max


def causal_visible(n: int, device: torch.device | None = None) -> Tensor:
    """[i, j] True where key j is visible to query i under causal attention (j ≤ i)."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def window_visible(n: int, max_attend_past: int, device: torch.device | None = None) -> Tensor:
    """[i, j] True unless key j lies more than `max_attend_past` positions before query i (later keys stay
    visible: causality is a mask of its own)."""
    pos = torch.arange(n, device=device)
    return pos[:, None] - pos[None, :] <= max_attend_past


def l2norm(t: Tensor, groups: int = 1) -> Tensor:
    """t [..., d] with each of `groups` equal slices of its last axis scaled to unit length (qk-norm)."""
    t = rearrange(t, "... (g d) -> ... g d", g=groups)
    return rearrange(F.normalize(t, dim=-1), "... g d -> ... (g d)")


def softclamp(logits: Tensor, value: float) -> Tensor:
    """v·tanh(logits / v): logits near 0 unchanged, large ones bent towards ±v."""
    return (logits / value).tanh() * value


def sparse_topk(logits: Tensor, k: int) -> Tensor:
    """Each query's k largest logits (ties included, masked keys never), the rest filled like masked keys
    (x-transformers' `sparse_topk_attn`; a row with fewer than k visible keys keeps them all)."""
    fill = mask_fill_value(logits.dtype)
    kth = logits.topk(min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(~((logits >= kth) & (logits > fill)), fill)


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


def rotary_frequencies(n: int, rotary_dim: int, base: float = 10000.0, interpolation_factor: float = 1.0,
                       device: torch.device | None = None) -> Tensor:
    """[n, rotary_dim] angles, each frequency repeated for its pair of interleaved features.

    `interpolation_factor` divides the positions (stretching the trained range over longer inputs)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, device=device).float() / rotary_dim))
    angles = einsum("i, f -> i f", torch.arange(n, device=device).float(), inv_freq)
    if interpolation_factor != 1.0:
        angles = angles / interpolation_factor
    return torch.repeat_interleave(angles, 2, dim=-1)


def apply_rotary(t: Tensor, angles: Tensor, scale: Tensor | None = None) -> Tensor:
    """Rotate the first `angles.shape[-1]` features of t [b, h, n, d] in interleaved pairs, then multiply
    them by `scale` [n, rotary_dim] if given (xPos)."""
    rot_dim = angles.shape[-1]
    rotated, rest = t[..., :rot_dim], t[..., rot_dim:]
    pairs = rearrange(rotated, "... (d r) -> ... d r", r=2)
    x1, x2 = pairs.unbind(-1)
    half_turn = rearrange(torch.stack((-x2, x1), dim=-1), "... d r -> ... (d r)")
    rotated = rotated * angles.cos() + half_turn * angles.sin()
    if scale is not None:
        rotated = rotated * scale
    return torch.cat((rotated, rest), dim=-1).type(t.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with a hook point at every score stage, or with `cross` cross-attention
    (keys and values from a context sequence, `forward(x, context=...)`).

    Each hook point is declared below with the shape it sees and is named once, at build, after the
    attention layer it belongs to (`layers.{layer}.attn.hook_{stage}`, `cross_layers.{layer}.…` for
    cross-attention, whose key axis j runs over the context); they fire in `STAGES` order.
    """

    def __init__(self, dim: int, *, heads: int, causal: bool, config: AttentionConfig, layer: int,
                 value_mix: bool = False, cross: bool = False) -> None:
        """value_mix: learn the per-token mix of the value residual (add_value_residual, layers after the first);
        cross: keys and values come from a context sequence (cross-attention), hook points `cross_layers.*`."""
        super().__init__()
        self.heads, self.dim_head, self.causal, self.selective = heads, config.dim_head, causal, config.selective
        self.kv_heads = config.key_value_heads(heads)
        self.layer, self.cross = layer, cross
        self.scale = config.scale
        self.qk_norm_groups = config.qk_norm_groups if config.qk_norm else None
        self.l2_distance, self.cog_signed, self.sigmoid = config.l2_distance, config.cog_signed, config.sigmoid
        self.softclamp = config.logit_softclamp_value if config.softclamp_logits else None
        self.sparse_topk = config.sparse_topk
        inner = heads * config.dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, self.kv_heads * config.dim_head, bias=False)
        self.to_v = nn.Linear(dim, self.kv_heads * config.dim_head, bias=False)
        self.to_out = nn.Linear(inner, dim * 2 if config.on_attn else dim, bias=False)   # on_attn: a GLU
        self.on_attn = config.on_attn
        self.head_scale = nn.Parameter(torch.ones(heads)) if config.head_scale else None
        self.to_v_gate = nn.Linear(dim, inner, bias=False) if config.gate_values else None
        if self.to_v_gate is not None:
            nn.init.zeros_(self.to_v_gate.weight)             # gates start at ½, as x-transformers
        self.to_value_residual_mix = nn.Linear(dim, heads) if value_mix else None
        self.dropout = nn.Dropout(config.dropout)
        self.data_dependent_alibi = DataDependentAlibi(dim, heads, causal) if config.data_dependent_alibi else None
        # qk-norm's learned per-feature scales of queries and keys, initialised so that q·k starts at dim_head ** 0.5
        self.q_scale = self.k_scale = None
        if config.qk_norm_dim_scale:
            self.q_scale = nn.Parameter(torch.full((heads, 1, config.dim_head), config.dim_head ** 0.25))
            self.k_scale = nn.Parameter(torch.full((self.kv_heads, 1, config.dim_head), config.dim_head ** 0.25))
        point = partial(HookPoint, layer, cross=cross)
        self.hook_scores = point("scores")                    # [b, h, i, j] q·kᵀ × scale
        self.hook_residual = point("residual")                # [b, h, i, j] previous layer's pre-softmax logits
        self.hook_scores_residual = point("scores_residual")  # [b, h, i, j] scores + residual
        self.hook_position_bias = point("position_bias")      # [b, h, i, j] position bias term (broadcast over b)
        self.hook_biased = point("biased")                    # [b, h, i, j] + position bias
        self.hook_softclamped = point("softclamped")          # [b, h, i, j] v·tanh(logits / v)
        self.hook_magnitude = point("magnitude")              # [b, h, i, j] |logits| (Cog signed attention)
        self.hook_masked = point("masked")                    # [b, h, i, j] invisible keys filled with −finfo.max
        self.hook_selection = point("selection")              # [b, h, i, j] selective penalty F (same for every head)
        self.hook_pre_softmax = point("pre_softmax")          # [b, h, i, j] the logits after every score stage
        self.hook_topk = point("topk")                        # [b, h, i, j] all but each query's top k filled
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
        return rearrange(t, "b n (h d) -> b h n d", d=self.dim_head)

    def queries_and_keys(self, x: Tensor, kv_input: Tensor, rotary: Tensor | None,
                         xpos: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q [b, h, n, d] from x and k [b, kv_heads, m, d] from kv_input: projected, qk-normed, then rotated
        (x-transformers' order), xPos scaling q by its factors and k by their inverse."""
        q, k = self.split_heads(self.to_q(x)), self.split_heads(self.to_k(kv_input))
        if self.qk_norm_groups is not None:
            q, k = l2norm(q, self.qk_norm_groups), l2norm(k, self.qk_norm_groups)
            if self.q_scale is not None:
                q, k = q * self.q_scale, k * self.k_scale
        if rotary is not None:
            q = apply_rotary(q, rotary, xpos)
            k = apply_rotary(k, rotary, None if xpos is None else xpos ** -1.0)
        return q, k

    def share_kv_heads(self, t: Tensor) -> Tensor:
        """Keys or values [b, kv_heads, n, d] → one per query head [b, h, n, d]: head h uses kv head h mod kv_heads."""
        return repeat(t, "b g n d -> b (r g) n d", r=self.heads // self.kv_heads)

    def similarity(self, q: Tensor, k: Tensor) -> Tensor:
        """[b, h, i, j]: q·k, or −‖q − k‖² with L2-distance attention (before the scale)."""
        if self.l2_distance:
            return -torch.cdist(q, k) ** 2
        return einsum("b h i d, b h j d -> b h i j", q, k)

    def pattern(self, logits: Tensor) -> Tensor:
        """The attention pattern: softmax over the keys (float32 as x-transformers, except with qk-norm and
        sparse top-k, which it runs in the model's dtype), or an independent sigmoid per cell."""
        if self.sigmoid:
            return logits.sigmoid()
        if self.qk_norm_groups is not None or self.sparse_topk is not None:
            return logits.softmax(dim=-1)
        return logits.softmax(dim=-1, dtype=torch.float32).type(logits.dtype)

    def forward(self, x: Tensor, *, visible: Tensor | None = None, fully_masked: Tensor | None = None,
                query_mask: Tensor | None = None, rotary: Tensor | None = None, xpos: Tensor | None = None,
                bias: Tensor | None = None, prev_logits: Tensor | None = None, value_residual: Tensor | None = None,
                context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """x [b, n, dim] → (output [b, n, dim], pre-softmax logits [b, h, i, j] for residual attention,
        this layer's own values [b, h, n, d] for the value residual).

        visible [b|1, 1, i, j]: True where a key may be seen (padding, custom, window and causal combined);
        fully_masked [b|1, 1, i]: rows with no visible key, whose output is zeroed;
        query_mask [b, n]: padding of the queries, whose output is zeroed (as x-transformers);
        rotary [n, r]: rotary angles, xpos [n, r]: xPos factors (queries × xpos, keys ÷ xpos);
        bias [b|1, h, i, j]: the layers' shared position bias (data-dependent ALiBi makes its own instead);
        value_residual [b, h, n, d]: the first attention layer's values, mixed into this layer's (ResFormer);
        context [b, m, dim]: the sequence keys and values come from (cross-attention; j runs over m), else x.
        """
        kv_input = x if context is None else context
        q, k = self.queries_and_keys(x, kv_input, rotary, xpos)
        v = self.split_heads(self.to_v(kv_input))
        if self.kv_heads != self.heads:
            k, v = self.share_kv_heads(k), self.share_kv_heads(v)
        values = v
        if value_residual is not None:
            mix = 0.5 if self.to_value_residual_mix is None \
                else rearrange(self.to_value_residual_mix(x).sigmoid(), "b n h -> b h n 1")
            v = value_residual.lerp(v, mix)

        logits = self.hook_scores(self.similarity(q, k) * self.scale)

        logits = self.hook_scores_residual(self.add_stage(logits, prev_logits, self.hook_residual))

        if self.data_dependent_alibi is not None:
            bias = self.data_dependent_alibi(x)
        logits = self.hook_biased(self.add_stage(logits, bias, self.hook_position_bias))
        logits = self.hook_softclamped(logits if self.softclamp is None else softclamp(logits, self.softclamp))

        sign = None
        if self.cog_signed:
            sign, logits = logits.sign(), logits.abs()
        logits = self.hook_magnitude(logits)

        if visible is not None:
            logits = logits.masked_fill(~visible, mask_fill_value(logits.dtype))
        logits = self.hook_masked(logits)

        penalty = selective_penalty(logits) if self.selective else None
        logits = self.hook_pre_softmax(self.add_stage(logits, penalty, self.hook_selection, subtract=True))

        kept = self.hook_topk(logits if self.sparse_topk is None else sparse_topk(logits, self.sparse_topk))
        attn = self.pattern(kept)
        attn = self.hook_attn(attn if sign is None else attn * sign)
        out = einsum("b h i j, b h j d -> b h i d", self.dropout(attn), v)
        if fully_masked is not None:
            out = out.masked_fill(rearrange(fully_masked, "... i -> ... i 1"), 0.0)
        if self.head_scale is not None:
            out = out * rearrange(self.head_scale, "h -> h 1 1")
        out = rearrange(out, "b h n d -> b n (h d)")
        if self.to_v_gate is not None:
            out = out * self.to_v_gate(x).sigmoid()
        out = self.to_out(out)
        if self.on_attn:
            out = F.glu(out, dim=-1)                          # first half × sigmoid(second half)
        if query_mask is not None:
            out = out.masked_fill(~rearrange(query_mask, "b n -> b n 1"), 0.0)
        return out, logits, values
