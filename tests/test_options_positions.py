"""Position schemes by hand: T5's buckets and bias, the dynamic bias MLP, data-dependent ALiBi's forget gates,
xPos and the rotary variants, each computed from the model's weights with an independent formula and compared
to the trace; refusals of bad combinations; and x-transformers parity for sub-options tests/xt_cases.py leaves out."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import xattn
from xattn.positions import t5_bucket, xpos_scale

from conftest import tiny_config

DIM_HEAD = 8


def built(kind: str, **options) -> xattn.TransformerWrapper:
    torch.manual_seed(0)
    model = xattn.build(tiny_config(kind, **options)).eval()
    with torch.no_grad():                  # move every weight off its initial value
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def attention_inputs(model: xattn.TransformerWrapper, tokens: torch.Tensor) -> tuple[list[torch.Tensor], object]:
    """(the input x [b, n, dim] each attention saw, in layer order; the trace of the same forward)."""
    seen: list[torch.Tensor] = []
    handles = [attn.register_forward_pre_hook(lambda _, args, kwargs: seen.append(args[0]), with_kwargs=True)
               for attn in model.attn_layers.attention]
    try:
        _, trace = model.run_with_trace(tokens)
    finally:
        for handle in handles:
            handle.remove()
    return seen, trace


# --- T5 relative position bias -------------------------------------------------------------------------------

def test_t5_buckets_against_a_hand_table():
    """Distance = query − key. Causal, 8 buckets up to 16: 0..3 exact, then 4 + ⌊log(d/4)/log 4 · 4⌋, at most 7;
    future keys in bucket 0. Bidirectional: 4 buckets each way (future keys offset by 4), 0..1 exact,
    then 2 + ⌊log(d/2)/log 8 · 2⌋, at most 3."""
    distance = torch.tensor([-3, -1, 0, 1, 2, 3, 4, 5, 6, 7, 9, 11, 12, 15, 16, 40])
    causal = [0, 0, 0, 1, 2, 3, 4, 4, 5, 5, 6, 6, 7, 7, 7, 7]
    assert t5_bucket(distance, True, 8, 16).tolist() == causal
    distance = torch.tensor([-7, -6, -5, -2, -1, 0, 1, 2, 3, 5, 6, 7, 16, 40])
    bidirectional = [7, 7, 6, 6, 5, 0, 1, 2, 2, 2, 3, 3, 3, 3]
    assert t5_bucket(distance, False, 8, 16).tolist() == bidirectional


@pytest.mark.parametrize("kind", ["Decoder", "Encoder"])
def test_t5_bias_by_hand(kind, tokens):
    """position_bias[h, i, j] = table[bucket(i − j), h] · √dim_head, the same in every layer, added to the logits.
    With the default 32 buckets and 10 tokens every distance has its own bucket: causal i − j (future: 0),
    bidirectional |i − j| below 8, 8 for 8 and 9, future keys offset by 16."""
    model = built(kind, rel_pos_bias=True)
    table = model.attn_layers.rel_pos.buckets.weight
    n = tokens.shape[1]

    def bucket(d: int) -> int:
        if kind == "Decoder":
            return max(d, 0)
        return min(abs(d), 8) + 16 * (d < 0)

    expected = torch.stack([torch.stack([table[bucket(i - j)] for j in range(n)]) for i in range(n)])   # i j h
    expected = expected.permute(2, 0, 1) * DIM_HEAD ** 0.5
    _, trace = model.run_with_trace(tokens)
    bias = trace["position_bias"]
    torch.testing.assert_close(bias, expected.expand_as(bias), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(trace["biased"], trace["scores_residual"] + bias, atol=1e-6, rtol=1e-6)


def test_t5_bias_accumulates_with_residual_attention(tokens):
    """As x-transformers: the bias is added in every layer on top of the carried logits."""
    model = built("Encoder", rel_pos_bias=True, residual_attn=True)
    _, trace = model.run_with_trace(tokens)
    torch.testing.assert_close(trace["biased"][1], trace["scores"][1] + trace["pre_softmax"][0]
                               + trace["position_bias"][1], atol=1e-5, rtol=1e-5)


# --- dynamic position bias -------------------------------------------------------------------------------------

@pytest.mark.parametrize("log_distance", [False, True])
def test_dynamic_bias_mlp_by_hand(log_distance, tokens):
    """bias[h, i, j] = W₂ silu(W₁ silu(W₀ d + b₀) + b₁) + b₂ at d = i − j (or sign(d)·log(|d| + 1))."""
    model = built("Decoder", dynamic_pos_bias=True, dynamic_pos_bias_log_distance=log_distance)
    rel_pos = model.attn_layers.rel_pos
    (w0, b0), (w1, b1) = [(layer.weight, layer.bias) for layer in rel_pos.hidden]
    w2, b2 = rel_pos.out.weight, rel_pos.out.bias
    n = tokens.shape[1]

    def mlp(d: int) -> torch.Tensor:
        x = math.copysign(math.log(abs(d) + 1), d) if log_distance else float(d)
        hidden = F.silu(w0[:, 0] * x + b0)
        hidden = F.silu(w1 @ hidden + b1)
        return w2 @ hidden + b2

    expected = torch.stack([torch.stack([mlp(i - j) for j in range(n)]) for i in range(n)]).permute(2, 0, 1)
    _, trace = model.run_with_trace(tokens)
    bias = trace["position_bias"]
    torch.testing.assert_close(bias, expected.expand_as(bias), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(trace["biased"], trace["scores_residual"] + bias, atol=1e-6, rtol=1e-6)


# --- data-dependent ALiBi ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["Decoder", "Encoder"])
def test_data_dependent_alibi_by_hand(kind, tokens):
    """Each token t emits g_t = logsigmoid(W x_t + b) per head (x: the attention's input); key j's bias for
    query i is Σ_{j<t≤i} g_t, and for a future key (j > i) −Σ_{i<t≤j} g_t causally, or Σ_{i<t≤j} r_t with the
    Encoder's second set of gates r. Each layer has its own gates."""
    model = built(kind, attn_data_dependent_alibi=True)
    inputs, trace = attention_inputs(model, tokens)
    n, heads = tokens.shape[1], 4
    for layer, (attn, x) in enumerate(zip(model.attn_layers.attention, inputs, strict=True)):
        gates = F.logsigmoid(x @ attn.data_dependent_alibi.to_gates.weight.T + attn.data_dependent_alibi.to_gates.bias)
        past, future = gates[..., :heads], gates[..., heads:]          # [b, n, h]
        expected = torch.zeros(tokens.shape[0], heads, n, n)
        for i in range(n):
            for j in range(n):
                if j <= i:
                    expected[:, :, i, j] = past[:, j + 1:i + 1].sum(1)
                elif kind == "Decoder":
                    expected[:, :, i, j] = -past[:, i + 1:j + 1].sum(1)
                else:
                    expected[:, :, i, j] = future[:, i + 1:j + 1].sum(1)
        torch.testing.assert_close(trace["position_bias"][layer], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(trace["position_bias"][0], trace["position_bias"][1])


# --- rotary variants and xPos ------------------------------------------------------------------------------------

def test_xpos_scale_by_hand():
    """Feature pair f of position t is multiplied by ((2f + 0.4r) / 1.4r)^((t − n//2) / base)."""
    n, r, base = 5, 6, 4.0
    scale = xpos_scale(n, r, base)
    for t in range(n):
        for f in range(r // 2):
            value = ((2 * f + 0.4 * r) / (1.4 * r)) ** ((t - n // 2) / base)
            assert scale[t, 2 * f] == pytest.approx(value, rel=1e-6)
            assert scale[t, 2 * f + 1] == scale[t, 2 * f]


@pytest.mark.parametrize("options", [
    dict(rotary_pos_emb=True),
    dict(rotary_xpos=True, rotary_xpos_scale_base=8),
    dict(rotary_pos_emb=True, rotary_interpolation_factor=2.0),
    dict(rotary_pos_emb=True, rotary_emb_dim=6, rotary_base_rescale_factor=3.0),
], ids=["rotary", "xpos", "interpolation", "base_rescale"])
def test_rotary_scores_by_hand(options, tokens):
    """Feature pair f of the query (key) at position t, read as a complex number, is turned by the angle
    t / interpolation · base^(−2f/r), base = 10000 · factor^(r/(r−2)); xPos multiplies query pairs by
    s_f^((t − n//2)/B) and divides key pairs by it; features past r are not rotated. scores = q·k / √d."""
    model = built("Decoder", **options)
    layers = model.attn_layers.config
    r = layers.rotary_dim
    base = 10000.0 * layers.rotary_base_rescale_factor ** (r / (r - 2))
    inputs, trace = attention_inputs(model, tokens)
    attn, x = model.attn_layers.attention[0], inputs[0]
    n = tokens.shape[1]
    q = x @ attn.to_q.weight.T
    k = x @ attn.to_k.weight.T
    q, k = (t.view(*t.shape[:2], 4, DIM_HEAD).transpose(1, 2) for t in (q, k))   # b h n d
    position = torch.arange(n, dtype=torch.float64)[:, None]
    freq = base ** (-torch.arange(0, r, 2, dtype=torch.float64) / r)
    angle = position * freq / layers.rotary_interpolation_factor                  # n, r/2
    decay = torch.ones_like(angle)
    if layers.rotary_xpos:
        s = (torch.arange(0, r, 2, dtype=torch.float64) + 0.4 * r) / (1.4 * r)
        decay = s ** ((position - n // 2) / layers.rotary_xpos_scale_base)

    def rotate(t: torch.Tensor, power: int) -> torch.Tensor:
        pairs = torch.view_as_complex(t[..., :r].double().reshape(*t.shape[:-1], r // 2, 2).contiguous())
        turned = torch.view_as_real(pairs * torch.polar(decay ** power, angle)).flatten(-2)
        return torch.cat((turned, t[..., r:].double()), dim=-1)

    scores = rotate(q, 1) @ rotate(k, -1).transpose(-1, -2) * DIM_HEAD ** -0.5
    torch.testing.assert_close(trace["scores"][0], scores.float(), atol=1e-5, rtol=1e-5)


# --- stages, hooks, weights ----------------------------------------------------------------------------------------

def test_position_bias_stage_in_use_only_with_a_bias():
    plain = xattn.LayersConfig.from_kwargs("Decoder", dim=32, depth=2)
    assert "position_bias" not in plain.stages_in_use() and "biased" not in plain.stages_in_use()
    for options in (dict(rel_pos_bias=True), dict(dynamic_pos_bias=True), dict(attn_data_dependent_alibi=True),
                    dict(alibi_pos_bias=True)):
        used = xattn.LayersConfig.from_kwargs("Decoder", dim=32, depth=2, **options).stages_in_use()
        assert used.index("position_bias") + 1 == used.index("biased"), options
    assert xattn.TERMS["position_bias"] == "biased"


def test_switched_off_bias_reads_as_zeros_and_a_hook_can_replace_the_bias(tokens):
    plain = built("Decoder")
    _, trace = plain.run_with_trace(tokens)
    assert not trace["position_bias"].any()
    assert torch.equal(trace["biased"], trace["scores_residual"])

    model = built("Decoder", rel_pos_bias=True)
    with model.hooks([(lambda name: name.endswith("hook_position_bias"), lambda t, hook: torch.zeros_like(t))]):
        _, zeroed = model.run_with_trace(tokens)
    assert torch.equal(zeroed["biased"], zeroed["scores_residual"])


def test_shared_and_per_layer_weights_and_parameter_counts():
    """T5 and dynamic: one module for all layers; data-dependent ALiBi: one gate projection per attention."""
    heads, dim, depth = 4, 32, 3

    def count(**options) -> int:
        return xattn.limits.parameter_count(xattn.ModelConfig.from_dict(tiny_config("Decoder", **options)))

    base = count()
    # T5 disables the absolute position embedding (16 positions × dim), as x-transformers
    assert count(rel_pos_bias=True) == base - 16 * dim + 32 * heads
    width = dim // 4
    assert count(dynamic_pos_bias=True) == base + (width + width) + (width * width + width) + (width * heads + heads)
    assert count(attn_data_dependent_alibi=True) == base + depth * (dim * heads + heads)
    keys = set(built("Encoder", dynamic_pos_bias=True, dynamic_pos_bias_norm=True,
                     dynamic_pos_bias_mlp_depth=3).state_dict())
    assert {"attn_layers.rel_pos.norms.0.weight", "attn_layers.rel_pos.norms.2.bias",
            "attn_layers.rel_pos.hidden.2.weight", "attn_layers.rel_pos.out.bias"} <= keys
    assert "layers.2.branch.data_dependent_alibi.to_gates.weight" in {
        k.removeprefix("attn_layers.") for k in built("Encoder", attn_data_dependent_alibi=True).state_dict()}


def test_config_round_trip():
    config = xattn.ModelConfig.from_dict(tiny_config("Decoder", rotary_xpos=True, rotary_xpos_scale_base=64,
                                                     rotary_interpolation_factor=2.0, attn_data_dependent_alibi=True))
    assert xattn.ModelConfig.from_dict(config.to_dict()) == config
    assert config.attn_layers.rotary_dim == DIM_HEAD // 2 and not config.absolute_positions


# --- refusals ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,options,named", [
    ("Decoder", dict(rel_pos_bias=True, alibi_pos_bias=True), ("alibi_pos_bias", "rel_pos_bias")),
    ("Decoder", dict(dynamic_pos_bias=True, attn_data_dependent_alibi=True),
     ("dynamic_pos_bias", "attn_data_dependent_alibi")),
    ("Encoder", dict(rel_pos_bias=True, dynamic_pos_bias=True), ("rel_pos_bias", "dynamic_pos_bias")),
    ("Decoder", dict(rel_pos_num_buckets=16), ("rel_pos_num_buckets", "rel_pos_bias")),
    ("Decoder", dict(rel_pos_max_distance=64), ("rel_pos_max_distance", "rel_pos_bias")),
    ("Decoder", dict(dynamic_pos_bias_log_distance=True), ("dynamic_pos_bias_log_distance", "dynamic_pos_bias")),
    ("Decoder", dict(dynamic_pos_bias_norm=True), ("dynamic_pos_bias_norm", "dynamic_pos_bias")),
    ("Decoder", dict(dynamic_pos_bias_mlp_depth=3), ("dynamic_pos_bias_mlp_depth", "dynamic_pos_bias")),
    ("Decoder", dict(rotary_xpos_scale_base=64, rotary_pos_emb=True), ("rotary_xpos_scale_base", "rotary_xpos")),
    ("Decoder", dict(rotary_interpolation_factor=2.0), ("rotary_interpolation_factor", "rotary_pos_emb")),
    ("Decoder", dict(rotary_base_rescale_factor=2.0), ("rotary_base_rescale_factor", "rotary_pos_emb")),
    ("Encoder", dict(rotary_xpos=True), ("rotary_xpos",)),
    ("Decoder", dict(rotary_xpos=True, alibi_pos_bias=True), ("rotary_xpos", "alibi_pos_bias")),
    ("Decoder", dict(rotary_pos_emb=True, rotary_interpolation_factor=0.5), ("rotary_interpolation_factor",)),
    ("Decoder", dict(rel_pos_bias=True, rel_pos_max_distance=16), ("rel_pos_max_distance", "rel_pos_num_buckets")),
    ("Encoder", dict(rel_pos_bias=True, rel_pos_num_buckets=2), ("rel_pos_num_buckets",)),
    ("Decoder", dict(dynamic_pos_bias=True, dynamic_pos_bias_mlp_depth=0), ("dynamic_pos_bias_mlp_depth",)),
    ("Decoder", dict(rotary_pos_emb=True, rotary_emb_dim=2, rotary_base_rescale_factor=2.0),
     ("rotary_base_rescale_factor",)),
])
def test_bad_combinations_are_refused_by_name(kind, options, named):
    with pytest.raises(ValueError) as err:
        xattn.ModelConfig.from_dict(tiny_config(kind, **options))
    assert all(name in str(err.value) for name in named), str(err.value)


# --- x-transformers parity for sub-options the case list leaves at their defaults --------------------------------

@pytest.mark.parametrize("kind,options", [
    ("Encoder", dict(rel_pos_bias=True, rel_pos_num_buckets=8, rel_pos_max_distance=16)),
    ("Decoder", dict(rel_pos_bias=True, rel_pos_num_buckets=6, rel_pos_max_distance=8)),
    ("Decoder", dict(dynamic_pos_bias=True, dynamic_pos_bias_norm=True, dynamic_pos_bias_mlp_depth=3)),
    ("Encoder", dict(dynamic_pos_bias=True, dynamic_pos_bias_log_distance=True, dynamic_pos_bias_mlp_depth=1)),
    ("Decoder", dict(rotary_xpos=True, rotary_xpos_scale_base=8, rotary_emb_dim=6)),
    ("Decoder", dict(rotary_xpos=True, rotary_interpolation_factor=3.0, rotary_base_rescale_factor=1.5)),
    ("Encoder", dict(rotary_pos_emb=True, rotary_emb_dim=8, rotary_base_rescale_factor=0.75)),
    ("Decoder", dict(attn_data_dependent_alibi=True, residual_attn=True, attn_selective=True)),
], ids=lambda value: value if isinstance(value, str) else "-".join(f"{k}={v}" for k, v in value.items()))
def test_sub_options_match_x_transformers(kind, options):
    x_transformers = pytest.importorskip("x_transformers")
    torch.manual_seed(0)
    config = tiny_config(kind, **options)
    layers = dict(config.pop("attn_layers"))
    reference = x_transformers.TransformerWrapper(
        attn_layers=getattr(x_transformers, layers.pop("kind"))(**layers, verbose=False), **config).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    model = xattn.from_x_transformers(reference)
    tokens = torch.randint(0, 23, (2, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 9:] = False
    with torch.no_grad():
        expected, inter = reference(tokens, mask=mask, return_intermediates=True)
        logits, trace = model.run_with_trace(tokens, mask=mask)
    torch.testing.assert_close(logits[mask], expected[mask], atol=1e-5, rtol=1e-4)
    ref = torch.stack([i.pre_softmax_attn for i in inter.attn_intermediates])
    keep = ref > -torch.finfo(ref.dtype).max / 2
    torch.testing.assert_close(trace["pre_softmax"][keep], ref[keep], atol=1e-5, rtol=1e-4)
