"""Extra key columns (memory / zero key-values, a learned sink), talking heads and CoPE: each stage against a
hand-written formula on a small model, the key axis of traces and figures, and the refused combinations."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
import torch.nn.functional as F

import xattn
from xattn import limits, viz
from xattn.attention import selective_penalty

from conftest import tiny_config

N = 6


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 23, (2, N), generator=torch.Generator().manual_seed(2))


def built(kind: str = "Decoder", **options) -> xattn.TransformerWrapper:
    """A tiny model with every parameter nudged, so identity / zero inits cannot hide a wrong formula."""
    torch.manual_seed(0)
    model = xattn.build(tiny_config(kind, **options)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    return model


def layer0_qkv(model: xattn.TransformerWrapper, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, k, v [b, h, n, d] of the first attention layer, by hand from the weights (absolute positions)."""
    dim, heads = model.attn_layers.dim, model.attn_layers.heads
    x = model.token_emb.weight[tokens] + model.pos_emb.weight[: tokens.shape[1]] * dim ** -0.5
    normed = F.layer_norm(x, (dim,)) * model.attn_layers.layers[0].norm.weight
    attn = model.attn_layers.attention[0]
    return tuple((normed @ w.T).unflatten(-1, (heads, -1)).transpose(1, 2)
                 for w in (attn.to_q.weight, attn.to_k.weight, attn.to_v.weight))


# --- the key axis ---------------------------------------------------------------------------------------

def test_memory_and_zero_keys_are_scored_in_front(tokens):
    model = built(attn_num_mem_kv=2, attn_add_zero_kv=True)
    _, trace = model.run_with_trace(tokens)
    assert trace.key_extras == ["zero", "mem kv 0", "mem kv 1"] == model.attn_layers.key_extras
    assert trace["scores"].shape == (3, 2, 4, N, 3 + N)
    q, k, _ = layer0_qkv(model, tokens)
    attn = model.attn_layers.attention[0]
    keys = torch.cat([torch.zeros_like(k[:, :, :1]), attn.mem_k.expand(2, -1, -1, -1), k], dim=2)
    torch.testing.assert_close(trace["scores"][0], q @ keys.transpose(-1, -2) / 8 ** 0.5, atol=1e-5, rtol=1e-5)
    assert (trace["scores"][:, ..., 0] == 0).all()                       # the zero key scores 0
    causal = torch.ones(N, N, dtype=torch.bool).tril()
    assert torch.equal(trace.visible, F.pad(causal, (3, 0), value=True).expand(2, N, 3 + N))
    assert not trace.fully_masked.any()


def test_extra_keys_are_visible_to_fully_masked_queries(tokens):
    """A query every token is hidden from still attends the memory keys (as x-transformers)."""
    model = built("Encoder", attn_num_mem_kv=2)
    custom = torch.ones(N, N, dtype=torch.bool)
    custom[3] = False
    _, trace = model.run_with_trace(tokens, attn_mask=custom)
    assert trace.visible[:, 3].tolist() == [[True, True] + [False] * N] * 2
    torch.testing.assert_close(trace["attn"][..., 3, :2].sum(-1), torch.ones(3, 2, 4))


def test_sink_column_in_every_stage(tokens):
    model = built(attn_head_learned_sink=True, attn_add_zero_kv=True, attn_selective=True)
    _, trace = model.run_with_trace(tokens)
    assert trace.key_extras == ["sink", "zero"]
    assert {tuple(trace[s].shape) for s in xattn.STAGES} == {(3, 2, 4, N, 2 + N)}
    sinks = torch.stack([a.sink for a in model.attn_layers.attention])[:, None, :, None]   # [layer, 1, h, 1]
    for stage in xattn.STAGES[:xattn.STAGES.index("post_softmax")]:
        expected = 0 if stage in xattn.TERMS else sinks
        assert torch.equal(trace[stage][..., 0], torch.as_tensor(expected).expand(3, 2, 4, N)), stage
    pattern = F.softmax(trace["pre_softmax"], dim=-1)
    torch.testing.assert_close(trace["post_softmax"], pattern)
    assert torch.equal(trace["attn"], trace["post_softmax"])
    # the rest of pre_softmax is the masked logits minus the selective penalty, which never prunes the zero key
    masked = trace["masked"][..., 1:]
    penalty = torch.stack([selective_penalty(layer) for layer in masked])
    assert (penalty[..., 0] == 0).all()
    torch.testing.assert_close(trace["pre_softmax"][..., 1:], masked - penalty)


def test_sink_weighs_no_value(tokens):
    """Layer 0's output is the softmax without its sink column times v (the sink's value is zero)."""
    model = built(attn_head_learned_sink=True)
    seen = {}
    attn0 = model.attn_layers.attention[0]
    handle = attn0.to_out.register_forward_hook(lambda m, i, o: seen.setdefault("merged", i[0]))
    _, trace = model.run_with_trace(tokens)
    handle.remove()
    _, _, v = layer0_qkv(model, tokens)
    expected = trace["post_softmax"][0][..., 1:] @ v
    torch.testing.assert_close(seen["merged"], expected.transpose(1, 2).flatten(2), atol=1e-5, rtol=1e-5)
    assert (trace["post_softmax"][0][..., 0] > 0).all()


def test_hooks_see_the_sink_in_front_and_edits_to_it_before_softmax_are_dropped(tokens):
    model = built(attn_head_learned_sink=True)
    plain = model(tokens)
    widths = {}

    def record_and_scribble(t, hook):
        widths[hook.stage] = t.shape[-1]
        t = t.clone()
        t[..., 0] = 123.0
        return t

    with model.hooks([(lambda name: "layers.0." in name and "masked" in name, record_and_scribble)]):
        assert torch.equal(model(tokens), plain)              # the sink column of `masked` is shown, not used
    with model.hooks([("layers.0.attn.hook_pre_softmax", record_and_scribble)]):
        assert not torch.equal(model(tokens), plain)          # from pre_softmax on it is the real sink
    assert widths == {"masked": N + 1, "pre_softmax": N + 1}


# --- talking heads and CoPE --------------------------------------------------------------------------------

def test_pre_talking_heads_add_a_head_mix(tokens):
    model = built(attn_pre_talking_heads=True, residual_attn=True)
    _, trace = model.run_with_trace(tokens)
    weights = torch.stack([a.pre_talking_heads for a in model.attn_layers.attention])      # [layer, h, g]
    before = trace["scores_residual"]
    mixed = torch.zeros_like(before)
    for h in range(4):
        for g in range(4):
            mixed[:, :, h] += weights[:, h, g, None, None, None] * before[:, :, g]
    visible = trace.visible[None, :, None].expand_as(before)      # carried fill values are ≈ −max either way
    torch.testing.assert_close(trace["talking_heads_pre"][visible], (before + mixed)[visible])
    assert torch.equal(trace["biased"], trace["talking_heads_pre"])


def test_identity_pre_talking_heads_double_the_scores(tokens):
    torch.manual_seed(0)
    model = xattn.build(tiny_config("Decoder", attn_pre_talking_heads=True)).eval()
    _, trace = model.run_with_trace(tokens)
    torch.testing.assert_close(trace["talking_heads_pre"], 2 * trace["scores"])


def test_post_talking_heads_and_pre_scale_post_make_the_final_pattern(tokens):
    model = built(attn_post_talking_heads=True, attn_pre_scale_post_talking_heads=True, attn_num_mem_kv=1)
    _, trace = model.run_with_trace(tokens)
    softmax = trace["post_softmax"]
    torch.testing.assert_close(softmax.sum(-1), torch.ones(softmax.shape[:-1]))
    for layer, attn in enumerate(model.attn_layers.attention):
        post, scale = attn.post_talking_heads, attn.pre_scale_post_talking_heads
        for h in range(4):
            mixed = sum(post[h, g] * softmax[layer, :, g] for g in range(4))
            factor = sum(scale[h, g] * trace["scores_residual"][layer, :, g] for g in range(4))
            torch.testing.assert_close(trace["attn"][layer, :, h], mixed * factor, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(trace["attn"].sum(-1), torch.ones(softmax.shape[:-1]))
    assert (trace["attn"] < 0).any()
    across, within = viz.layer_similarity(trace).data          # JS divergence of the softmax distributions
    assert np.isfinite(across.z).all() and np.isfinite(within.z).all()


def test_post_mix_leaves_the_sink_column_unscaled(tokens):
    model = built(attn_pre_scale_post_talking_heads=True, attn_head_learned_sink=True)
    _, trace = model.run_with_trace(tokens)
    assert torch.equal(trace["attn"][..., 0], trace["post_softmax"][..., 0])


def test_cope_term_by_loops(tokens):
    model = built(attn_use_cope=True, attn_cope_max_pos=4, attn_num_mem_kv=1)
    _, trace = model.run_with_trace(tokens)
    q, _, _ = (t.detach() for t in layer0_qkv(model, tokens))
    pos_emb = model.attn_layers.attention[0].cope.pos_emb.detach()
    masked, term = trace["masked"][0], trace["cope"][0]
    expected = torch.zeros_like(term)
    for b in range(2):
        for h in range(4):
            for i in range(N):
                at = [float(q[b, h, i] @ pos_emb[p]) for p in range(4)]
                for j in range(1 + N):
                    position = min(float(masked[b, h, i, j:].sigmoid().sum()), 3.0)
                    low, frac = int(position), position - int(position)
                    expected[b, h, i, j] = at[low] * (1 - frac) + (at[low + 1] * frac if frac else 0.0)
    torch.testing.assert_close(term, expected, atol=1e-5, rtol=1e-4)
    visible = trace.visible[None, :, None].expand_as(trace["cope"])
    torch.testing.assert_close(trace["pre_softmax"][visible], (trace["masked"] + trace["cope"])[visible])
    assert trace.drawable("cope")[~visible].isnan().all()


def test_switched_off_stages_cost_nothing(tokens):
    model = built()
    _, trace = model.run_with_trace(tokens)
    assert trace.key_extras == [] and trace["attn"].shape[-1] == N
    assert not trace["cope"].any()
    assert torch.equal(trace["talking_heads_pre"], trace["scores_residual"])
    records = trace.stages.records          # no post-softmax mix: attn is the softmax tensor itself
    assert records["attn"][0].data_ptr() == records["post_softmax"][0].data_ptr()
    assert all(p.front is None for p in model.hook_points().values())


def test_all_options_build_on_meta_and_count_parameters():
    config = xattn.ModelConfig.from_dict(tiny_config(
        "Decoder", attn_num_mem_kv=2, attn_add_zero_kv=True, attn_head_learned_sink=True, attn_pre_talking_heads=True,
        attn_post_talking_heads=True, attn_pre_scale_post_talking_heads=True, attn_use_cope=True,
        attn_cope_max_pos=8, attn_cope_talking_heads=True))
    torch.manual_seed(0)
    assert limits.parameter_count(config) == sum(p.numel() for p in xattn.build(config).parameters())
    # per layer: mem_k + mem_v 2·(4·2·8), sink 4, three head mixes 3·16, CoPE 8·8 + 16
    plain = limits.parameter_count(xattn.ModelConfig.from_dict(tiny_config("Decoder")))
    assert limits.parameter_count(config) - plain == 3 * (128 + 4 + 48 + 64 + 16)


# --- figures label the extra key columns ------------------------------------------------------------------

@pytest.fixture
def keyed_trace(tokens):
    model = built(attn_num_mem_kv=2, attn_add_zero_kv=True, attn_selective=True)
    mask = torch.ones(2, N, dtype=torch.bool)
    mask[1, -2:] = False
    _, trace = model.run_with_trace(tokens, mask=mask, labels=[list("abcdef"), list("ghijkl")])
    return trace


def test_heatmap_labels_extra_keys_on_the_key_axis_only(keyed_trace):
    tokens = [f"{t}·{i}" for i, t in enumerate("abcdef")]
    assert viz.key_labels(keyed_trace) == ["zero", "mem kv 0", "mem kv 1", *tokens]
    hm = viz.heatmap(keyed_trace, 0, 1, "pre_softmax").data[0]
    assert list(hm.x) == ["zero", "mem kv 0", "mem kv 1", *tokens] and list(hm.y) == tokens
    assert hm.z.shape == (N, N + 3)
    panels = [p for p in viz.stages(keyed_trace, 1, 0).data if isinstance(p, go.Heatmap)]
    assert panels and all(list(p.x)[:3] == ["zero", "mem kv 0", "mem kv 1"] and len(p.y) == N for p in panels)


def test_every_figure_handles_extra_key_columns(keyed_trace):
    keys = viz.key_labels(keyed_trace, 1)
    bars = viz.query_row(keyed_trace, 1, 4, batch=1).data
    assert all(list(bar.x) == keys for bar in bars)
    mask = viz.mask_figure(keyed_trace, batch=1)
    assert list(mask.data[0].x) == keys and mask.data[0].z.shape == (N, N + 3)
    assert f"of {N * (N + 3)} (query, key) pairs" in mask.layout.title.text
    panels = viz.selection(keyed_trace, 0).data
    assert all(list(p.x) == viz.key_labels(keyed_trace) for p in panels if isinstance(p, go.Heatmap))
    delta = viz.diff(keyed_trace, keyed_trace, layer=0, head=0, stage="pre_softmax", stage_b="masked")
    assert list(delta.data[0].x) == viz.key_labels(keyed_trace)
    assert viz.grid(keyed_trace, "attn").data[0].z.shape == (N, N + 3)
    viz.layer_similarity(keyed_trace)


# --- refusals ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, options, named", [
    ("Decoder", dict(attn_head_learned_sink=True, residual_attn=True), "attn_head_learned_sink"),
    ("Encoder", dict(attn_use_cope=True), "attn_use_cope"),
    ("Decoder", dict(attn_cope_max_pos=8), "attn_cope_max_pos"),
    ("Decoder", dict(attn_cope_talking_heads=True), "attn_cope_talking_heads"),
    ("Decoder", dict(attn_use_cope=True, attn_cope_max_pos=0), "attn_cope_max_pos"),
    ("Decoder", dict(attn_num_mem_kv=-1), "attn_num_mem_kv"),
    ("Decoder", dict(attn_num_mem_kv=True), "attn_num_mem_kv"),
])
def test_bad_combinations_are_refused(kind, options, named):
    with pytest.raises(ValueError, match=named):
        xattn.ModelConfig.from_dict(tiny_config(kind, **options))


def test_sink_with_residual_attention_names_both():
    with pytest.raises(ValueError, match="residual_attn"):
        xattn.ModelConfig.from_dict(tiny_config("Decoder", attn_head_learned_sink=True, residual_attn=True))


def test_cope_soft_onehot_is_refused_by_name():
    x_transformers = pytest.importorskip("x_transformers")
    layers = x_transformers.Decoder(dim=32, depth=1, heads=4, attn_dim_head=8, attn_use_cope=True,
                                    attn_cope_soft_onehot_pos=True)
    reference = x_transformers.TransformerWrapper(num_tokens=23, max_seq_len=16, attn_layers=layers)
    with pytest.raises(ValueError, match="attn_cope_soft_onehot_pos"):
        xattn.from_x_transformers(reference)


def test_trace_size_estimate_counts_the_extra_keys(tokens):
    model = built(attn_num_mem_kv=2, attn_head_learned_sink=True)
    _, trace = model.run_with_trace(tokens)
    real = sum(t.numel() * t.element_size() for t in trace.stages.values())
    assert limits.trace_bytes(model.config, *tokens.shape) == real


def test_cross_attention_traces_carry_the_extra_keys_too(tokens):
    model = built(cross_attend=True, attn_num_mem_kv=1, attn_head_learned_sink=True)
    context = torch.randn(2, 4, 32, generator=torch.Generator().manual_seed(3))
    context_mask = torch.tensor([[True] * 4, [True, True, False, False]])
    _, trace = model.run_with_trace(tokens, context=context, context_mask=context_mask)
    cross = trace.cross
    assert cross.key_extras == ["sink", "mem kv 0"] and cross["attn"].shape[-1] == 2 + 4
    assert cross.visible[1].tolist() == [[True, True, True, True, False, False]] * N
    assert viz.key_labels(cross, 1) == ["sink", "mem kv 0", *(f"ctx·{j}" for j in range(4))]
    assert list(viz.heatmap(cross, 0, 0).data[0].x) == viz.key_labels(cross)
    torch.testing.assert_close(cross["post_softmax"].sum(-1), torch.ones(cross.shape[:-1]))
