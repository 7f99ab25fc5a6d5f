"""One self-attention layer, computed stage by stage so every stage can be observed or replaced.

The numerics follow x-transformers' `Attention` + `Attend` (math path): scores, + residual
(RealFormer), + pre-softmax talking heads, + position bias, masks filled with -finfo.max, + CoPE,
- selective penalty, [sink column], softmax in float32, post-softmax talking heads and scale.
Memory and zero key/values stand in front of the keys (x-transformers' order: zero, memory, tokens).
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
from .stages import STAGES, TERMS


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
    extra = j - i                        # memory / zero keys in front: never pruned
    gate = F.relu(logits[:, 0])
    keep = torch.ones(i, j, dtype=logits.dtype, device=logits.device)
    keep[:, : extra + 1] = 0.0           # never prune the extra keys or the first token
    keep[:, extra:].fill_diagonal_(0.0)  # a token does not prune itself
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


def mix_heads(weight: Tensor, t: Tensor) -> Tensor:
    """Talking heads: head h of the result is Σ_g weight[h, g] · t[:, g] (x-transformers' 1×1 Conv2d over heads)."""
    return einsum("h g, b g i j -> b h i j", weight, t)


def identity_mix(heads: int) -> nn.Parameter:
    """A head-mixing matrix initialised to the identity (x-transformers' Dirac init)."""
    return nn.Parameter(torch.eye(heads))


class CoPE(nn.Module):
    """Contextual position encoding (Golovneva et al. 2024), as x-transformers' `CoPE`.

    A key's position, seen from a query, is the sum of the sigmoid gates of the masked logits from that key
    up to the query (clamped below `max_pos`); the term is q · the position embedding, interpolated between
    the integer positions on either side.
    """

    def __init__(self, heads: int, dim_head: int, max_pos: int, talking_heads: bool) -> None:
        super().__init__()
        self.max_pos = max_pos
        self.pos_emb = nn.Parameter(torch.zeros(max_pos, dim_head))
        self.talking_heads = None
        if talking_heads:                  # x-transformers leaves this Conv2d at its default init
            self.talking_heads = nn.Parameter(torch.empty(heads, heads))
            nn.init.kaiming_uniform_(self.talking_heads, a=math.sqrt(5))

    def forward(self, q: Tensor, logits: Tensor) -> Tensor:
        """q [b, h, i, d] (unscaled) and the masked logits [b, h, i, j] → the term [b, h, i, j]."""
        if self.talking_heads is not None:   # the mix is re-masked causally only, as in x-transformers
            i, j = logits.shape[-2:]
            future = torch.ones(i, j, dtype=torch.bool, device=logits.device).triu(j - i + 1)
            logits = mix_heads(self.talking_heads, logits).masked_fill(future, mask_fill_value(logits.dtype))
        position = logits.sigmoid().flip(-1).cumsum(dim=-1).flip(-1).clamp(max=self.max_pos - 1)
        at = einsum("b h i d, p d -> b h i p", q, self.pos_emb)     # the term at each integer position
        floor = position.floor()
        w = position - floor
        return at.gather(-1, position.ceil().long()) * w + at.gather(-1, floor.long()) * (1 - w)


class Attention(nn.Module):
    """Multi-head self-attention with a hook point at every score stage.

    Each hook point is declared below with the shape it sees and is named once, at build, after the
    attention layer it belongs to (`layers.{layer}.attn.hook_{stage}`); they fire in `STAGES` order.
    """

    def __init__(self, dim: int, *, heads: int, causal: bool, config: AttentionConfig, layer: int) -> None:
        super().__init__()
        self.heads, self.dim_head, self.causal, self.selective = heads, config.dim_head, causal, config.selective
        self.layer = layer
        self.scale = config.dim_head ** -0.5
        inner = heads * config.dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.dropout = nn.Dropout(config.dropout)
        # extra key columns in front of the tokens (`key_extras` names them)
        self.key_extras = config.key_extras
        self.extra_kv = config.num_mem_kv + config.add_zero_kv
        self.add_zero_kv = config.add_zero_kv
        mem = (heads, config.num_mem_kv, config.dim_head)
        self.mem_k = nn.Parameter(torch.randn(mem)) if config.num_mem_kv else None
        self.mem_v = nn.Parameter(torch.randn(mem)) if config.num_mem_kv else None
        self.sink = nn.Parameter(torch.zeros(heads)) if config.head_learned_sink else None
        # talking heads: learned head mixes before and after softmax
        self.pre_talking_heads = identity_mix(heads) if config.pre_talking_heads else None
        self.post_talking_heads = identity_mix(heads) if config.post_talking_heads else None
        self.pre_scale_post_talking_heads = identity_mix(heads) if config.pre_scale_post_talking_heads else None
        self.cope = CoPE(heads, config.dim_head, config.cope_max_pos, config.cope_talking_heads) \
            if config.use_cope else None
        point = partial(HookPoint, layer)
        self.hook_scores = point("scores")                    # [b, h, i, j] q·kᵀ × scale
        self.hook_residual = point("residual")                # [b, h, i, j] previous layer's pre-softmax logits
        self.hook_scores_residual = point("scores_residual")  # [b, h, i, j] scores + residual
        self.hook_talking_heads_pre = point("talking_heads_pre")  # [b, h, i, j] + pre-softmax head mix
        self.hook_biased = point("biased")                    # [b, h, i, j] + position bias
        self.hook_masked = point("masked")                    # [b, h, i, j] invisible keys filled with −finfo.max
        self.hook_cope = point("cope")                        # [b, h, i, j] CoPE position logits
        self.hook_selection = point("selection")              # [b, h, i, j] selective penalty F (same for every head)
        self.hook_pre_softmax = point("pre_softmax")          # [b, h, i, j] the logits softmax sees
        self.hook_softmax = point("softmax")                  # [b, h, i, j] softmax of those logits
        self.hook_attn = point("attn")                        # [b, h, i, j] the pattern that weights the values
        if self.sink is not None:    # j counts the sink at every stage: earlier hooks see it in front
            for stage in STAGES[:STAGES.index("pre_softmax")]:
                getattr(self, f"hook_{stage}").front = self.no_sink_column if stage in TERMS else self.sink_column

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

    def prepend_extra_kv(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """k, v [b, h, n, d] with the memory key/values, then the zero key/value, put in front."""
        if self.mem_k is not None:
            b = k.shape[0]
            k = torch.cat((repeat(self.mem_k, "h m d -> b h m d", b=b), k), dim=-2)
            v = torch.cat((repeat(self.mem_v, "h m d -> b h m d", b=b), v), dim=-2)
        if self.add_zero_kv:
            k, v = F.pad(k, (0, 0, 1, 0)), F.pad(v, (0, 0, 1, 0))
        return k, v

    def sink_column(self, logits: Tensor) -> Tensor:
        """The learned sink logit of each head as a key column [b, h, i, 1] for logits [b, h, i, j]."""
        b, _, i, _ = logits.shape
        return repeat(self.sink, "h -> b h i 1", b=b, i=i).to(logits.dtype)

    @staticmethod
    def no_sink_column(term: Tensor) -> Tensor:
        """The sink's column in a term it takes no part in: zeros [b, h, i, 1]."""
        return term.new_zeros(term.shape[:-1] + (1,))

    def mix_after_softmax(self, attn: Tensor, post_scale: Tensor | None) -> Tensor:
        """Post-softmax talking heads, then the pre-scale-post scale (the sink column, which weights no
        value, is mixed like the others and left unscaled)."""
        if self.post_talking_heads is not None:
            attn = mix_heads(self.post_talking_heads, attn)
        if post_scale is not None:
            attn = attn * (post_scale if self.sink is None else F.pad(post_scale, (1, 0), value=1.0))
        return attn

    def forward(self, x: Tensor, *, visible: Tensor | None = None, fully_masked: Tensor | None = None,
                query_mask: Tensor | None = None, rotary: Tensor | None = None, bias: Tensor | None = None,
                prev_logits: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x [b, n, dim] → (output [b, n, dim], pre-softmax logits [b, h, i, j] for residual attention).

        visible [b|1, 1, i, j]: True where a key may be seen (padding, custom and causal combined);
        fully_masked [b|1, 1, i]: rows with no visible key, whose output is zeroed;
        query_mask [b, n]: padding of the queries, whose output is zeroed (as x-transformers).
        """
        q, k, v = map(self.split_heads, (self.to_q(x), self.to_k(x), self.to_v(x)))
        if rotary is not None:
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        if self.extra_kv:           # visible to every query, no position bias
            k, v = self.prepend_extra_kv(k, v)
            visible = None if visible is None else F.pad(visible, (self.extra_kv, 0), value=True)
            bias = None if bias is None else F.pad(bias, (self.extra_kv, 0))
            fully_masked = None

        logits = self.hook_scores(einsum("b h i d, b h j d -> b h i j", q, k) * self.scale)

        logits = self.hook_scores_residual(self.add_stage(logits, prev_logits, self.hook_residual))

        post_scale = None
        if self.pre_scale_post_talking_heads is not None:
            post_scale = mix_heads(self.pre_scale_post_talking_heads, logits)
        if self.pre_talking_heads is not None:
            logits = logits + mix_heads(self.pre_talking_heads, logits)
        logits = self.hook_talking_heads_pre(logits)

        if bias is not None:
            logits = logits + bias
        logits = self.hook_biased(logits)

        if visible is not None:
            logits = logits.masked_fill(~visible, mask_fill_value(logits.dtype))
        logits = self.hook_masked(logits)

        logits = self.add_stage(logits, None if self.cope is None else self.cope(q, logits), self.hook_cope)

        penalty = selective_penalty(logits) if self.selective else None
        logits = self.add_stage(logits, penalty, self.hook_selection, subtract=True)
        if self.sink is not None:
            logits = torch.cat((self.sink_column(logits), logits), dim=-1)
        logits = self.hook_pre_softmax(logits)

        attn = self.hook_softmax(logits.softmax(dim=-1, dtype=torch.float32).type(logits.dtype))
        attn = self.hook_attn(self.mix_after_softmax(attn, post_scale))
        if self.sink is not None:   # the sink weights no value
            attn = attn[..., 1:]
        out = einsum("b h i j, b h j d -> b h i d", self.dropout(attn), v)
        if fully_masked is not None:
            out = out.masked_fill(rearrange(fully_masked, "... i -> ... i 1"), 0.0)
        out = self.to_out(rearrange(out, "b h n d -> b n (h d)"))
        if query_mask is not None:
            out = out.masked_fill(~rearrange(query_mask, "b n -> b n 1"), 0.0)
        return out, logits
