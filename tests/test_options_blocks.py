"""Block, value-side and embedding options computed by hand: token shift, value residual, head scale, value gate,
attention on attention, memory tokens (labelled axes), l2-normalised / projected / normed embeddings; and the
refusals of combinations that cannot work. These options add no score stage: they change what a layer's scores
are computed from (shift, embeddings, memory positions) or what the heads output (the rest)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import xattn
from xattn import viz
from xattn.attention import Attention
from xattn.config import AttentionConfig, LayersConfig, ModelConfig
from xattn.describe import describe
from xattn.layers import shift_tokens
from xattn.limits import parameter_count, trace_bytes
from xattn.masks import breakdown


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter moved by N(0, 0.3²): zero / one inits (gates, head scales) cannot hide a mistake."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def model(layers: str = "Decoder", wrapper: dict | None = None, **layer_kwargs) -> xattn.TransformerWrapper:
    torch.manual_seed(0)
    attn_layers = getattr(xattn, layers)(dim=16, depth=2, heads=2, attn_dim_head=8, **layer_kwargs)
    return randomized(xattn.TransformerWrapper(num_tokens=12, max_seq_len=16, attn_layers=attn_layers,
                                               **(wrapper or {})))


TOKENS = torch.tensor([[1, 5, 3, 3, 7, 2], [4, 0, 9, 11, 6, 8]])


# --- token shift -----------------------------------------------------------------------------------------------

def test_shift_tokens_by_hand_causal():
    x = torch.arange(1.0, 1 + 3 * 4).reshape(1, 3, 4)           # tokens t = 0, 1, 2; features 0..3
    shifted = shift_tokens(x, (0, 1))                           # chunks of 2 features: stay, move one down
    expected = torch.tensor([[[1., 2., 0., 0.],
                              [5., 6., 3., 4.],
                              [9., 10., 7., 8.]]])
    torch.testing.assert_close(shifted, expected)


def test_shift_tokens_by_hand_both_ways_with_remainder_and_mask():
    x = torch.arange(1.0, 1 + 3 * 7).reshape(1, 3, 7)          # 7 features, 3 shifts: chunks 2, 2, 2 and 1 left
    shifted = shift_tokens(x, (-1, 0, 1))
    expected = torch.tensor([[[8., 9., 3., 4., 0., 0., 7.],     # chunk 0 from the next token, chunk 2 from the last
                              [15., 16., 10., 11., 5., 6., 14.],
                              [0., 0., 17., 18., 12., 13., 21.]]])
    torch.testing.assert_close(shifted, expected)
    mask = torch.tensor([[True, True, False]])                    # token 2 is padding: it sends nothing
    masked = shift_tokens(x, (-1, 0, 1), mask)
    assert masked[0, 1, :2].eq(0).all() and torch.equal(masked[0, 2], expected[0, 2])
    torch.testing.assert_close(masked[0, 0], expected[0, 0])


def test_shift_tokens_scores_by_hand():
    """Layer 0's scores: q·kᵀ × scale of the normed embedding with its second feature half moved one token on."""
    m = model(shift_tokens=1)
    _, trace = m.run_with_trace(TOKENS, stages=["scores"])
    attn = m.attn_layers.layers[0].branch
    h = m.attn_layers.layers[0].norm(m.embed(TOKENS))
    half = h.shape[-1] // 2
    moved = torch.cat([h[..., :half], torch.cat([torch.zeros_like(h[:, :1, half:]), h[:, :-1, half:]], 1)], -1)
    q = (moved @ attn.to_q.weight.T).view(2, 6, 2, 8).transpose(1, 2)
    k = (moved @ attn.to_k.weight.T).view(2, 6, 2, 8).transpose(1, 2)
    torch.testing.assert_close(trace["scores"][0], q @ k.transpose(-1, -2) * 8 ** -0.5)


def test_shift_tokens_per_layer_and_encoder_shifts():
    config = LayersConfig.from_kwargs("Encoder", dim=16, depth=2, shift_tokens=(2, 0, 1, 0))
    assert config.layer_shifts == ((-2, -1, 0, 1, 2), (), (-1, 0, 1), ())
    assert LayersConfig.from_kwargs("Decoder", dim=16, depth=1, shift_tokens=2).layer_shifts == ((0, 1, 2),) * 2
    data = xattn.ModelConfig(num_tokens=5, max_seq_len=8, attn_layers=config).to_dict()
    assert data["attn_layers"]["shift_tokens"] == [2, 0, 1, 0]
    assert xattn.ModelConfig.from_dict(data).attn_layers.shift_tokens == (2, 0, 1, 0)
    assert "token shift 2/0/1/0" in describe(xattn.ModelConfig.from_dict(data))


# --- value-side options: no score stage, the heads' output changes ----------------------------------------------

def attention(value_mix: bool = False, **options) -> Attention:
    torch.manual_seed(1)
    return randomized(Attention(16, heads=2, causal=True, config=AttentionConfig(dim_head=8, **options), layer=0,
                                value_mix=value_mix))


def heads_output(attn: Attention, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(causal q·kᵀ × scale) @ v by hand: [b, h, n, d]."""
    q = (x @ attn.to_q.weight.T).view(*x.shape[:2], 2, 8).transpose(1, 2)
    k = (x @ attn.to_k.weight.T).view(*x.shape[:2], 2, 8).transpose(1, 2)
    logits = (q @ k.transpose(-1, -2) * 8 ** -0.5).masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), -1e30)
    return logits.softmax(-1) @ v


CAUSAL = torch.ones(1, 1, 5, 5, dtype=torch.bool).tril()


def merged(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)


@pytest.mark.parametrize("learned", [True, False], ids=["learned_mix", "fixed_mix"])
def test_value_residual_mix_by_hand(learned: bool):
    attn = attention(value_mix=learned)
    x, first_values = torch.randn(2, 5, 16), torch.randn(2, 2, 5, 8)
    out, _, values = attn(x, visible=CAUSAL, value_residual=first_values)
    own = (x @ attn.to_v.weight.T).view(2, 5, 2, 8).transpose(1, 2)
    torch.testing.assert_close(values, own)                       # the layer hands on its values before mixing
    mix = torch.sigmoid(x @ attn.to_value_residual_mix.weight.T + attn.to_value_residual_mix.bias) \
        .transpose(1, 2)[..., None] if learned else 0.5
    mixed = first_values + mix * (own - first_values)
    torch.testing.assert_close(out, merged(heads_output(attn, x, mixed)) @ attn.to_out.weight.T)


def test_head_scale_gate_values_on_attn_by_hand():
    attn = attention(head_scale=True, gate_values=True, on_attn=True)
    x = torch.randn(2, 5, 16)
    out, _, _ = attn(x, visible=CAUSAL)
    v = (x @ attn.to_v.weight.T).view(2, 5, 2, 8).transpose(1, 2)
    heads = heads_output(attn, x, v) * attn.head_scale.view(1, 2, 1, 1)
    gated = merged(heads) * torch.sigmoid(x @ attn.to_v_gate.weight.T)
    value, gate = (gated @ attn.to_out.weight.T).chunk(2, dim=-1)
    torch.testing.assert_close(out, value * torch.sigmoid(gate))


def test_no_option_here_adds_a_stage():
    """They change what scores are computed from, or what the heads output: no stage of their own."""
    plain = LayersConfig.from_kwargs("Decoder", dim=16, depth=2)
    changed = plain.replace(shift_tokens=1, add_value_residual=True, attn_head_scale=True, attn_gate_values=True,
                            attn_on_attn=True)
    assert changed.stages_in_use() == plain.stages_in_use()
    wrapper = [row for name, _, row in xattn.OPTIONS if name in ("num_memory_tokens", "l2norm_embed", "emb_dim",
                                                                 "post_emb_norm")]
    assert len(wrapper) == 4 and not any(row.stages for row in wrapper)


def test_first_layer_values_reach_later_layers():
    m = model(add_value_residual=True, learned_value_residual_mix=False)
    assert [a.to_value_residual_mix for a in m.attn_layers.attention] == [None, None]
    learned = model(add_value_residual=True)
    assert learned.attn_layers.attention[0].to_value_residual_mix is None     # the first layer has nothing to mix
    assert learned.attn_layers.attention[1].to_value_residual_mix.weight.shape == (2, 16)
    seen = []
    original = Attention.forward

    def spy(self, x, **kwargs):
        seen.append(kwargs.get("value_residual"))
        return original(self, x, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Attention, "forward", spy)
        learned(TOKENS)
    first = learned.attn_layers.layers[0]
    values = (first.norm(learned.embed(TOKENS)) @ first.branch.to_v.weight.T).view(2, 6, 2, 8).transpose(1, 2)
    assert seen[0] is None
    torch.testing.assert_close(seen[1], values)


# --- memory tokens ---------------------------------------------------------------------------------------------

def test_memory_tokens_are_labelled_positions_in_front():
    m = model(wrapper=dict(num_memory_tokens=2))
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, -2:] = False
    logits, trace = m.run_with_trace(TOKENS, mask=mask, labels=[list("abccde"), list("fghijk")])
    assert logits.shape == (2, 6, 12)                             # no logits for memory tokens
    assert trace["attn"].shape == (2, 2, 2, 8, 8) and trace.visible.shape == (2, 8, 8)
    assert trace.memory_tokens == 2
    labels = viz.token_labels(trace)
    assert labels[:3] == ["mem 0", "mem 1", "a·0"] and len(labels) == 8
    figure = viz.heatmap(trace, 0, 1)
    heat = next(t for t in figure.data if t.type == "heatmap")
    assert list(heat.x[:2]) == ["mem 0", "mem 1"] and list(heat.y[:2]) == ["mem 0", "mem 1"]
    causal = torch.ones(8, 8, dtype=torch.bool).tril()
    assert torch.equal(trace.visible[0], causal)                   # memory token m sees memory 0..m; tokens see all
    assert torch.equal(trace.visible[1], causal & F.pad(mask[1], (2, 0), value=True))
    assert trace.drawable("attn")[:, 1, :, :, -2:].isnan().all()
    parts = breakdown(m, 6, mask=mask)
    assert parts["effective"].shape == (2, 8, 8) and torch.equal(parts["effective"], trace.visible)
    assert trace_bytes(m.config, 1, 6, stages=["attn"]) == 2 * 2 * 8 * 8 * 4


def test_memory_tokens_come_after_the_embedding():
    """The layers see [memory tokens, token + position embedding]: no position embedding on memory tokens."""
    m = model(wrapper=dict(num_memory_tokens=3))
    x = m.embed(TOKENS)
    torch.testing.assert_close(x[:, :3], m.memory_tokens.expand(2, 3, 16))
    positions = m.pos_emb.weight[:6] * 16 ** -0.5
    torch.testing.assert_close(x[:, 3:], m.token_emb(TOKENS) + positions)


def test_memory_tokens_with_a_custom_mask():
    m = model("Encoder", wrapper=dict(num_memory_tokens=1))
    custom = torch.ones(6, 6, dtype=torch.bool).triu()
    _, trace = m.run_with_trace(TOKENS, attn_mask=custom, stages=["attn"])
    assert trace.visible[0, 0].all() and trace.visible[0, :, 0].all()   # memory sees and is seen by all
    assert torch.equal(trace.visible[0, 1:, 1:], custom)


# --- embeddings --------------------------------------------------------------------------------------------------

def test_l2norm_projected_normed_embedding_by_hand():
    m = model(wrapper=dict(l2norm_embed=True, emb_dim=6, post_emb_norm=True))
    assert m.token_emb.weight.shape == (12, 6) and m.pos_emb.weight.shape == (16, 6)
    tok, pos = m.token_emb.weight[TOKENS], m.pos_emb.weight[:6]
    summed = tok / tok.norm(dim=-1, keepdim=True) + pos / pos.norm(dim=-1, keepdim=True)
    centred = summed - summed.mean(-1, keepdim=True)
    normed = centred / (centred.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * m.post_emb_norm.weight
    torch.testing.assert_close(m.embed(TOKENS), normed @ m.project_emb.weight.T + m.project_emb.bias)


def test_tied_logits_keep_the_dim_scale_with_l2norm_embed():
    m = model(wrapper=dict(l2norm_embed=True, tie_embedding=True))
    hidden = m.attn_layers(m.embed(TOKENS))
    torch.testing.assert_close(m(TOKENS), hidden @ m.token_emb.weight.T * 16 ** -0.5)


def test_emb_dim_equal_to_dim_is_no_projection():
    config = ModelConfig(num_tokens=5, max_seq_len=8, attn_layers=LayersConfig.from_kwargs("Decoder", dim=16, depth=1),
                         emb_dim=16)
    assert config.emb_dim is None and "emb_dim" not in config.to_dict()


def test_every_option_builds_on_meta():
    config = ModelConfig.from_dict(dict(
        num_tokens=12, max_seq_len=16, emb_dim=8, l2norm_embed=True, post_emb_norm=True, num_memory_tokens=2,
        attn_layers=dict(kind="Decoder", dim=16, depth=2, heads=2, attn_dim_head=8, shift_tokens=1,
                         add_value_residual=True, attn_head_scale=True, attn_gate_values=True, attn_on_attn=True)))
    count = parameter_count(config)
    assert count == sum(p.numel() for p in xattn.build(config).parameters())
    assert "memory tokens 2" in describe(config)


# --- refusals ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,keyword", [
    (dict(shift_tokens=(1, 0, 1)), "shift_tokens"),            # 4 layers, 3 entries
    (dict(shift_tokens=-1), "shift_tokens"),
    (dict(shift_tokens=1.5), "shift_tokens"),
    (dict(shift_tokens=20), "shift_tokens"),                     # 21 chunks of a 16-wide model
    (dict(learned_value_residual_mix=False), "add_value_residual"),
])
def test_layer_refusals(kwargs, keyword):
    with pytest.raises(ValueError, match=keyword):
        LayersConfig.from_kwargs("Decoder", dim=16, depth=2, **kwargs)


@pytest.mark.parametrize("kwargs,keyword", [
    (dict(emb_dim=8, tie_embedding=True), "emb_dim"),
    (dict(emb_dim=0), "emb_dim"),
    (dict(num_memory_tokens=-1), "num_memory_tokens"),
    (dict(num_memory_tokens=1.5), "num_memory_tokens"),
])
def test_wrapper_refusals(kwargs, keyword):
    with pytest.raises(ValueError, match=keyword):
        ModelConfig(num_tokens=5, max_seq_len=8, attn_layers=LayersConfig.from_kwargs("Decoder", dim=16, depth=1),
                    **kwargs)


@pytest.mark.parametrize("layer_kwargs,wrapper,keyword", [
    (dict(attn_gate_values=True, attn_gate_values_headwise=True), {}, "attn_gate_values_headwise"),
    (dict(attn_gate_values=True, attn_swiglu_values=True), {}, "attn_swiglu_values"),
    (dict(attn_gate_values=True, attn_gate_values_rank=4), {}, "attn_gate_values_rank"),
    ({}, dict(num_memory_tokens=2, memory_tokens_interspersed_every=3), "memory_tokens_interspersed_every"),
])
def test_x_transformers_variants_refused_by_name(layer_kwargs, wrapper, keyword):
    x_transformers = pytest.importorskip("x_transformers")
    reference = x_transformers.TransformerWrapper(num_tokens=12, max_seq_len=16, **wrapper, attn_layers=x_transformers
                                                  .Decoder(dim=16, depth=1, heads=2, attn_dim_head=8, **layer_kwargs))
    with pytest.raises(ValueError, match=keyword):
        xattn.from_x_transformers(reference)
