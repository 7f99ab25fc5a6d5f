"""One self-attention layer, computed stage by stage so every stage can be observed or replaced.

The numerics follow x-transformers' `Attention` + `Attend` (math path): scores (q·k, or −‖q − k‖²;
qk-norm first, grouped key/value heads shared), + residual (RealFormer), + position bias (ALiBi, T5,
dynamic or data-dependent), soft-capping,
|·| for Cog, masks filled with -finfo.max, - selective penalty, sparse top-k, softmax in float32 (or sigmoid),
× the signs for Cog. Options add pre-softmax talking heads (after the residual), CoPE (after the masks), a
learned sink column (before softmax) and post-softmax talking heads and scale (after it). Memory and zero
key/values stand in front of the keys (x-transformers' order: zero, memory, then the keys).
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, einsum, nn

from .cache import LayerCache
from .config import AttentionConfig
from .hooks import HookPoint
from .positions import DataDependentAlibi, relative_distance
from .stages import STAGES, TERMS


def mask_fill_value(dtype: torch.dtype) -> float:
    """The value masked logits are filled with (as x-transformers): the most negative finite number."""
    return -torch.finfo(dtype).max


def causal_visible(n: int, device: torch.device | None = None, offset: int = 0) -> Tensor:
    """[i, j] True where key j is visible to query i under causal attention (j ≤ i); with `offset`, the n
    queries are the last of offset + n keys."""
    return relative_distance(n, offset + n, device) >= 0


def window_visible(n: int, max_attend_past: int, device: torch.device | None = None, offset: int = 0) -> Tensor:
    """[i, j] True unless key j lies more than `max_attend_past` positions before query i (later keys stay
    visible: causality is a mask of its own); `offset` as in `causal_visible`."""
    return relative_distance(n, offset + n, device) <= max_attend_past


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


def selection(logits: Tensor, extra: int, carried: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Selective attention's F for queries that are the last i of the tokens, and its running sum.

    logits [b, h, i, j]: `extra` memory / zero key columns in front of the tokens (never pruned), the queries
    the last i tokens. carried [b, t] (t ≤ j − extra): the gate summed over the queries before these (a cache's),
    zeros if None. Returns (F [b, 1, i, j], the gate summed over every query so far [b, j − extra]: the F row of
    the next query).
    """
    i, j = logits.shape[-2:]
    gate = F.relu(logits[:, 0])
    keep = torch.ones(i, j, dtype=logits.dtype, device=logits.device)
    keep[:, : extra + 1] = 0.0           # never prune the extra keys or the first token
    keep.diagonal(j - i).fill_(0.0)      # a token does not prune itself
    gate = gate * keep
    before = F.pad(gate, (0, 0, 1, -1)).cumsum(dim=-2)   # shift one query down: only later queries are affected
    if carried is not None:
        before = before + F.pad(carried, (extra, j - extra - carried.shape[-1]))[:, None]
    total = before[:, -1] + gate[:, -1]
    return rearrange(before, "b i j -> b 1 i j"), total[:, extra:]


PRUNED_BELOW = 0.01                    # a key is "pruned" when F scales its weight by less than this …
PRUNE_AT = math.log(1 / PRUNED_BELOW)  # … that is, when F ≥ ln 100 (what the views, statistics and README call pruned)


def selective_penalty(logits: Tensor) -> Tensor:
    """Selective attention's F (Leviathan et al. 2024, as x-transformers' `selective_attn`).

    Head 0's positive logits decide, for each query, which earlier keys later queries may ignore.
    The first key column (BOS) and the diagonal never count; the gate is shifted one query down and
    summed over queries, so query i is penalised by what queries < i decided. Key columns in front of the
    i queries' own tokens (memory / zero keys) never count either. Returns [b, 1, i, j].
    """
    i, j = logits.shape[-2:]
    return selection(logits, j - i)[0]


def alibi_slopes(heads: int) -> list[float]:
    """ALiBi's geometric slopes (Press et al.), with x-transformers' rule for non-powers of two."""
    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** k for k in range(n)]

    if math.log2(heads).is_integer():
        return power_of_two(heads)
    closest = 2 ** math.floor(math.log2(heads))
    return power_of_two(closest) + power_of_two(2 * closest)[0::2][: heads - closest]


def alibi_bias(i: int, j: int, alibi_heads: int, total_heads: int, device: torch.device | None = None) -> Tensor:
    """[1, h, i, j] bias −slope·|query − key| for the last i of j positions; heads past `alibi_heads` get none."""
    slopes = torch.tensor(alibi_slopes(alibi_heads), device=device)
    bias = rearrange(slopes, "h -> h 1 1") * -relative_distance(i, j, device).abs()
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
        # extra key columns in front of the keys (`key_extras` names them); memory key/values per kv head
        self.key_extras = config.key_extras
        self.extra_kv = config.num_mem_kv + config.add_zero_kv
        self.add_zero_kv = config.add_zero_kv
        mem = (self.kv_heads, config.num_mem_kv, config.dim_head)
        self.mem_k = nn.Parameter(torch.randn(mem)) if config.num_mem_kv else None
        self.mem_v = nn.Parameter(torch.randn(mem)) if config.num_mem_kv else None
        self.sink = nn.Parameter(torch.zeros(heads)) if config.head_learned_sink else None
        # talking heads: learned head mixes before and after softmax
        self.pre_talking_heads = identity_mix(heads) if config.pre_talking_heads else None
        self.post_talking_heads = identity_mix(heads) if config.post_talking_heads else None
        self.pre_scale_post_talking_heads = identity_mix(heads) if config.pre_scale_post_talking_heads else None
        self.cope = CoPE(heads, config.dim_head, config.cope_max_pos, config.cope_talking_heads) \
            if config.use_cope else None
        # qk-norm's learned per-feature scales of queries and keys, initialised so that q·k starts at dim_head ** 0.5
        self.q_scale = self.k_scale = None
        if config.qk_norm_dim_scale:
            self.q_scale = nn.Parameter(torch.full((heads, 1, config.dim_head), config.dim_head ** 0.25))
            self.k_scale = nn.Parameter(torch.full((self.kv_heads, 1, config.dim_head), config.dim_head ** 0.25))
        point = partial(HookPoint, layer, cross=cross)
        self.hook_scores = point("scores")                    # [b, h, i, j] q·kᵀ × scale
        self.hook_residual = point("residual")                # [b, h, i, j] previous layer's pre-softmax logits
        self.hook_scores_residual = point("scores_residual")  # [b, h, i, j] scores + residual
        self.hook_talking_heads_pre = point("talking_heads_pre")  # [b, h, i, j] + pre-softmax head mix
        self.hook_position_bias = point("position_bias")      # [b, h, i, j] position bias term (broadcast over b)
        self.hook_biased = point("biased")                    # [b, h, i, j] + position bias
        self.hook_softclamped = point("softclamped")          # [b, h, i, j] v·tanh(logits / v)
        self.hook_magnitude = point("magnitude")              # [b, h, i, j] |logits| (Cog signed attention)
        self.hook_masked = point("masked")                    # [b, h, i, j] invisible keys filled with −finfo.max
        self.hook_cope = point("cope")                        # [b, h, i, j] CoPE position logits
        self.hook_selection = point("selection")              # [b, h, i, j] selective penalty F (same for every head)
        self.hook_pre_softmax = point("pre_softmax")          # [b, h, i, j] the logits after every score stage
        self.hook_topk = point("topk")                        # [b, h, i, j] all but each query's top k filled
        self.hook_post_softmax = point("post_softmax")        # [b, h, i, j] softmax (or sigmoid) of them
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

    def prepend_extra_kv(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """k, v [b, h, n, d] with the memory key/values, then the zero key/value, put in front. Memory keys
        are qk-normed and scaled like the others (x-transformers), never rotated; one per kv head, shared alike."""
        if self.mem_k is not None:
            mem_k, mem_v = (repeat(t, "g m d -> b g m d", b=k.shape[0]) for t in (self.mem_k, self.mem_v))
            if self.qk_norm_groups is not None:
                mem_k = l2norm(mem_k, self.qk_norm_groups)
                if self.k_scale is not None:
                    mem_k = mem_k * self.k_scale
            if self.kv_heads != self.heads:
                mem_k, mem_v = self.share_kv_heads(mem_k), self.share_kv_heads(mem_v)
            k, v = torch.cat((mem_k, k), dim=-2), torch.cat((mem_v, v), dim=-2)
        if self.add_zero_kv:
            k, v = F.pad(k, (0, 0, 1, 0)), F.pad(v, (0, 0, 1, 0))
        return k, v

    @staticmethod
    def head_column(per_head: Tensor, like: Tensor) -> Tensor:
        """per_head [h] as a key column [b, h, i, 1] for tensors like `like` [b, h, i, j]."""
        b, _, i, _ = like.shape
        return repeat(per_head, "h -> b h i 1", b=b, i=i).to(like.dtype)

    def sink_column(self, logits: Tensor) -> Tensor:
        """The learned sink logits as a key column [b, h, i, 1] (their magnitudes with Cog signed attention,
        whose signs come back after softmax)."""
        return self.head_column(self.sink.abs() if self.cog_signed else self.sink, logits)

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
                context: Tensor | None = None, cache: LayerCache | None = None,
                track_selection: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """x [b, n, dim] → (output [b, n, dim], pre-softmax logits [b, h, i, j] for residual attention,
        this layer's own values [b, h, n, d] for the value residual).

        visible [b|1, 1, i, j]: True where a key may be seen (padding, custom, window and causal combined);
        fully_masked [b|1, 1, i]: rows with no visible key, whose output is zeroed;
        query_mask [b, n]: padding of the queries, whose output is zeroed (as x-transformers);
        rotary [n, r]: rotary angles, xpos [n, r]: xPos factors (queries × xpos, keys ÷ xpos);
        bias [b|1, h, i, j]: the layers' shared position bias (data-dependent ALiBi makes its own instead);
        value_residual [b, h, n, d]: the first attention layer's values, mixed into this layer's (ResFormer);
        context [b, m, dim]: the sequence keys and values come from (cross-attention; j runs over m), else x;
        cache: this layer's key/value cache (x holds only the new tokens, the last i of j; see `xattn.cache`);
        track_selection: carry head 0's accumulated positive logits in the cache without selective attention.
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
        if cache is not None:
            k, v = cache.extend(k, v)
        if self.extra_kv:           # visible to every query
            k, v = self.prepend_extra_kv(k, v)
            visible = None if visible is None else F.pad(visible, (self.extra_kv, 0), value=True)
            fully_masked = None

        logits = self.hook_scores(self.similarity(q, k) * self.scale)

        logits = self.hook_scores_residual(self.add_stage(logits, prev_logits, self.hook_residual))

        post_scale = None
        if self.pre_scale_post_talking_heads is not None:
            post_scale = mix_heads(self.pre_scale_post_talking_heads, logits)
        if self.pre_talking_heads is not None:
            logits = logits + mix_heads(self.pre_talking_heads, logits)
        logits = self.hook_talking_heads_pre(logits)

        if self.data_dependent_alibi is not None:
            bias = self.data_dependent_alibi(x)
        if self.extra_kv and bias is not None:    # no position bias on the extra keys
            bias = F.pad(bias, (self.extra_kv, 0))
        logits = self.hook_biased(self.add_stage(logits, bias, self.hook_position_bias))
        logits = self.hook_softclamped(logits if self.softclamp is None else softclamp(logits, self.softclamp))

        sign = None
        if self.cog_signed:
            sign, logits = logits.sign(), logits.abs()
        logits = self.hook_magnitude(logits)

        if visible is not None:
            logits = logits.masked_fill(~visible, mask_fill_value(logits.dtype))
        logits = self.hook_masked(logits)

        logits = self.add_stage(logits, None if self.cope is None else self.cope(q, logits), self.hook_cope)

        penalty = None
        if cache is not None and (self.selective or track_selection):
            penalty, cache.selected = selection(logits, self.extra_kv, cache.selected)
        elif self.selective:
            penalty = selective_penalty(logits)
        penalty = penalty if self.selective else None
        logits = self.add_stage(logits, penalty, self.hook_selection, subtract=True)
        if self.sink is not None:
            logits = torch.cat((self.sink_column(logits), logits), dim=-1)
            sign = None if sign is None else torch.cat((self.head_column(self.sink.sign(), sign), sign), dim=-1)
        logits = self.hook_pre_softmax(logits)

        kept = self.hook_topk(logits if self.sparse_topk is None else sparse_topk(logits, self.sparse_topk))
        attn = self.pattern(kept)
        attn = self.hook_post_softmax(attn if sign is None else attn * sign)
        attn = self.hook_attn(self.mix_after_softmax(attn, post_scale))
        if self.sink is not None:   # the sink weights no value
            attn = attn[..., 1:]
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
