"""Score options (qk-norm, L2 distance, grouped key/value heads, soft-capping, Cog, window, sparse top-k,
sigmoid): each stage they feed against a formula written out by hand, and the combinations refused."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xattn
from xattn import viz
from xattn.stages import MASKED_STAGES, STAGES

from conftest import tiny_config

FILL = -torch.finfo(torch.float32).max
DIM_HEAD = 8


def traced(tokens: torch.Tensor, kind: str = "Decoder", **options) -> tuple[xattn.TransformerWrapper, xattn.Trace]:
    torch.manual_seed(0)
    model = xattn.build(tiny_config(kind, **options)).eval()
    return model, model.run_with_trace(tokens)[1]


def first_layer_qkv(model: xattn.TransformerWrapper, tokens: torch.Tensor):
    """q [b, h, n, d], k and v [b, kv_heads, n, d] of layer 0, projected by hand from the weights."""
    dim = model.attn_layers.dim
    x = model.token_emb.weight[tokens] + model.pos_emb.weight[: tokens.shape[1]] * dim ** -0.5
    normed = F.layer_norm(x, (dim,)) * model.attn_layers.layers[0].norm.weight
    attn = model.attn_layers.attention[0]
    return [(normed @ w.T).unflatten(-1, (-1, DIM_HEAD)).transpose(1, 2)
            for w in (attn.to_q.weight, attn.to_k.weight, attn.to_v.weight)]


def cosine(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[b, h, i, j] cosine similarity of every query with every key."""
    return F.cosine_similarity(q[:, :, :, None], k[:, :, None], dim=-1)


# --- similarity: what `scores` holds -------------------------------------------------------------------

def test_qk_norm_scores_are_cosine_similarities_times_the_scale(tokens):
    model, trace = traced(tokens, attn_qk_norm=True)
    q, k, _ = first_layer_qkv(model, tokens)
    torch.testing.assert_close(trace["scores"][0], cosine(q, k) * 10, atol=1e-5, rtol=1e-5)
    assert trace["scores"].abs().max() <= 10 + 1e-4


def test_qk_norm_groups_add_the_cosines_of_each_slice(tokens):
    model, trace = traced(tokens, attn_qk_norm=True, attn_qk_norm_groups=2, attn_qk_norm_scale=3.0)
    q, k, _ = first_layer_qkv(model, tokens)
    halves = cosine(q[..., :4], k[..., :4]) + cosine(q[..., 4:], k[..., 4:])
    torch.testing.assert_close(trace["scores"][0], halves * 3.0, atol=1e-5, rtol=1e-5)


def test_qk_norm_dim_scale_multiplies_unit_vectors_by_learned_scales(tokens):
    torch.manual_seed(0)
    model = xattn.build(tiny_config(attn_qk_norm=True, attn_qk_norm_dim_scale=True)).eval()
    attn = model.attn_layers.attention[0]
    assert tuple(attn.q_scale.shape) == (4, 1, DIM_HEAD) and torch.allclose(attn.q_scale, torch.tensor(8 ** 0.25))
    with torch.no_grad():
        attn.q_scale.uniform_(0.5, 2.0)
        attn.k_scale.uniform_(0.5, 2.0)
    _, trace = model.run_with_trace(tokens)
    q, k, _ = first_layer_qkv(model, tokens)
    q, k = F.normalize(q, dim=-1) * attn.q_scale, F.normalize(k, dim=-1) * attn.k_scale
    expected = torch.einsum("bhid,bhjd->bhij", q, k) * DIM_HEAD ** -0.5
    torch.testing.assert_close(trace["scores"][0], expected, atol=1e-5, rtol=1e-5)


def test_l2_distance_scores_are_negative_squared_distances(tokens):
    model, trace = traced(tokens, attn_l2_distance=True)
    q, k, _ = first_layer_qkv(model, tokens)
    expected = torch.zeros(trace["scores"].shape[1:])
    for i in range(q.shape[2]):
        for j in range(k.shape[2]):
            expected[:, :, i, j] = -((q[:, :, i] - k[:, :, j]) ** 2).sum(-1) * DIM_HEAD ** -0.5
    torch.testing.assert_close(trace["scores"][0], expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("options,groups", [({"attn_kv_heads": 2}, 2), ({"attn_one_kv_head": True}, 1)])
def test_query_head_h_uses_key_value_head_h_mod_groups(tokens, options, groups):
    model, trace = traced(tokens, **options)
    attn = model.attn_layers.attention[0]
    assert tuple(attn.to_k.weight.shape) == tuple(attn.to_v.weight.shape) == (groups * DIM_HEAD, 32)
    q, k, v = first_layer_qkv(model, tokens)
    for h in range(4):
        expected = q[:, h] @ k[:, h % groups].transpose(-1, -2) * DIM_HEAD ** -0.5
        torch.testing.assert_close(trace["scores"][0][:, h], expected, atol=1e-5, rtol=1e-5)
    # The values are shared the same way: head h's output is its pattern applied to value head h mod groups.
    seen = {}
    handle = attn.register_forward_hook(lambda module, args, out: seen.update(out=out[0]))
    model(tokens)
    handle.remove()
    per_head = torch.stack([trace["attn"][0][:, h] @ v[:, h % groups] for h in range(4)], dim=1)
    merged = per_head.transpose(1, 2).flatten(2) @ attn.to_out.weight.T
    torch.testing.assert_close(seen["out"], merged, atol=1e-5, rtol=1e-5)


# --- stages after the bias -------------------------------------------------------------------------------

def test_softclamped_is_v_tanh_of_the_biased_logits(tokens):
    _, trace = traced(tokens, alibi_pos_bias=True, attn_softclamp_logits=True, attn_logit_softclamp_value=0.5)
    biased = trace["biased"]
    torch.testing.assert_close(trace["softclamped"], 0.5 * torch.tanh(biased / 0.5))
    assert trace["softclamped"].abs().max() <= 0.5
    visible = trace.visible[None, :, None].expand_as(biased)
    assert torch.equal(trace["masked"][visible], trace["softclamped"][visible])


def test_cog_takes_magnitudes_then_gives_the_softmax_the_signs_back(tokens):
    _, trace = traced(tokens, attn_cog_signed=True)
    before = trace["softclamped"]               # = biased: no soft-capping, no bias
    torch.testing.assert_close(trace["magnitude"], before.abs())
    visible = trace.visible[None, :, None].expand_as(before)
    assert (trace["masked"][visible] >= 0).all() and (trace["masked"][~visible] == FILL).all()
    expected = torch.softmax(trace["pre_softmax"], dim=-1) * before.sign()
    torch.testing.assert_close(trace["attn"], expected)
    assert (trace["attn"] < 0).any(), "some weights should be negative"
    torch.testing.assert_close(trace["attn"].abs().sum(-1), torch.ones(trace["attn"].shape[:-1]))


# --- the window mask -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["Decoder", "Encoder"])
def test_window_masks_keys_more_than_w_positions_back(tokens, kind):
    window = 2
    _, trace = traced(tokens, kind, attn_max_attend_past=window)
    n = tokens.shape[1]
    for i in range(n):
        for j in range(n):
            expected = i - j <= window and (j <= i or kind == "Encoder")
            assert bool(trace.visible[0, i, j]) is expected, (i, j)
    masked = trace["masked"]
    hidden = ~trace.visible[None, :, None].expand_as(masked)
    assert (masked[hidden] == FILL).all() and (masked[~hidden] > FILL / 2).all()
    assert trace["attn"][hidden].abs().max() == 0


def test_window_is_its_own_part_of_the_mask_breakdown():
    torch.manual_seed(0)
    model = xattn.build(tiny_config("Decoder", attn_max_attend_past=1))
    pad = torch.tensor([[False, True, True, True, True]])
    parts = xattn.masks.breakdown(model, 5, mask=pad)
    assert torch.equal(parts["window"][0], torch.tensor([[i - j <= 1 for j in range(5)] for i in range(5)]))
    assert torch.equal(parts["effective"], parts["padding"] & parts["causal"] & parts["window"])
    codes = np.asarray(viz.mask_breakdown(parts).data[0].z)
    expected = np.array([[1 if j == 0 else 3 if j > i else 4 if i - j > 1 else 0 for j in range(5)] for i in range(5)])
    assert np.array_equal(codes, expected)          # padding 1, custom 2, causal 3, window 4
    plain = xattn.masks.breakdown(xattn.build(tiny_config("Decoder")), 5)
    assert plain["window"].all()


# --- after the pre-softmax logits ------------------------------------------------------------------------

def test_sparse_topk_keeps_exactly_k_logits_per_row(tokens):
    k = 3
    _, trace = traced(tokens, attn_sparse_topk=k)
    logits, kept = trace["pre_softmax"], trace["topk"]
    kept_cells = kept > FILL / 2
    visible = trace.visible[None, :, None].expand_as(logits)
    assert not (kept_cells & ~visible).any()
    assert torch.equal(kept_cells.sum(-1), visible.sum(-1).clamp(max=k))   # query i of a Decoder sees i + 1 keys
    kth = logits.topk(k, dim=-1).values[..., -1:]
    enough = visible.sum(-1, keepdim=True) >= k
    assert torch.equal(kept_cells, torch.where(enough, logits >= kth, visible))
    assert torch.equal(kept[kept_cells], logits[kept_cells]) and (kept[~kept_cells] == FILL).all()
    torch.testing.assert_close(trace["attn"], torch.softmax(kept, dim=-1))
    assert ((trace["attn"] > 0).sum(-1) <= k).all()


def test_sparse_topk_larger_than_the_sequence_keeps_everything(tokens):
    _, trace = traced(tokens, attn_sparse_topk=50)
    assert torch.equal(trace["topk"], trace["pre_softmax"])


def test_sigmoid_attention_is_an_independent_sigmoid_per_cell(tokens):
    _, trace = traced(tokens, attn_sigmoid=True)
    torch.testing.assert_close(trace["attn"], torch.sigmoid(trace["pre_softmax"]))
    hidden = ~trace.visible[None, :, None].expand_as(trace["attn"])
    assert (trace["attn"][hidden] == 0).all()
    assert not torch.allclose(trace["attn"].sum(-1), torch.ones(trace["attn"].shape[:-1]))
    assert 0 <= trace["attn"].min() and trace["attn"].max() <= 1        # the attn colour scale still fits
    assert viz.STAGE_STYLE["attn"].fixed_range == (0.0, 1.0)


# --- stage bookkeeping -----------------------------------------------------------------------------------

def test_new_stages_sit_where_x_transformers_computes_them():
    order = {s: k for k, s in enumerate(STAGES)}
    assert order["biased"] < order["softclamped"] < order["magnitude"] < order["masked"]
    assert order["pre_softmax"] < order["topk"] < order["attn"]
    assert "topk" in MASKED_STAGES and {"softclamped", "magnitude", "topk"} <= set(viz.STAGE_STYLE)


def test_switched_off_stages_pass_the_logits_through(tokens):
    _, trace = traced(tokens)
    assert torch.equal(trace["softclamped"], trace["biased"])
    assert torch.equal(trace["magnitude"], trace["biased"]) and torch.equal(trace["topk"], trace["pre_softmax"])
    used = xattn.ModelConfig.from_dict(tiny_config()).layers.stages_in_use()
    assert not {"softclamped", "magnitude", "topk"} & set(used)


def test_options_feed_their_stages_and_round_trip():
    config = xattn.ModelConfig.from_dict(tiny_config(attn_softclamp_logits=True, attn_cog_signed=True,
                                                     attn_sparse_topk=2, attn_max_attend_past=3, attn_kv_heads=2,
                                                     attn_qk_norm=True, attn_qk_norm_groups=2))
    assert {"softclamped", "magnitude", "topk", "masked"} <= set(config.layers.stages_in_use())
    assert xattn.ModelConfig.from_dict(config.to_dict()) == config


def test_parameter_count_on_meta_matches_the_built_model():
    config = xattn.ModelConfig.from_dict(tiny_config(attn_qk_norm=True, attn_qk_norm_dim_scale=True,
                                                     attn_kv_heads=2))
    model = xattn.build(config)
    assert xattn.limits.parameter_count(config) == sum(p.numel() for p in model.parameters())


# --- refusals --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options,names", [
    ({"attn_kv_heads": 3}, ["attn_kv_heads", "heads"]),
    ({"attn_kv_heads": 2, "attn_one_kv_head": True}, ["attn_kv_heads", "attn_one_kv_head"]),
    ({"attn_sigmoid": True, "attn_sparse_topk": 2}, ["attn_sigmoid", "attn_sparse_topk"]),
    ({"attn_l2_distance": True, "attn_sigmoid": True}, ["attn_l2_distance", "attn_sigmoid"]),
    ({"attn_l2_distance": True, "attn_sparse_topk": 2}, ["attn_l2_distance", "attn_sparse_topk"]),
    ({"attn_qk_norm_groups": 2}, ["attn_qk_norm_groups", "attn_qk_norm"]),
    ({"attn_qk_norm_scale": 5}, ["attn_qk_norm_scale", "attn_qk_norm"]),
    ({"attn_qk_norm_dim_scale": True}, ["attn_qk_norm_dim_scale", "attn_qk_norm"]),
    ({"attn_qk_norm": True, "attn_qk_norm_dim_scale": True, "attn_qk_norm_scale": 5},
     ["attn_qk_norm_scale", "attn_qk_norm_dim_scale"]),
    ({"attn_qk_norm": True, "attn_qk_norm_groups": 4}, ["attn_qk_norm_groups"]),
    ({"attn_logit_softclamp_value": 5.0}, ["attn_logit_softclamp_value", "attn_softclamp_logits"]),
    ({"attn_softclamp_logits": True, "attn_logit_softclamp_value": 0.0}, ["attn_logit_softclamp_value"]),
    ({"attn_max_attend_past": -1}, ["attn_max_attend_past"]),
    ({"attn_sparse_topk": 0}, ["attn_sparse_topk"]),
    ({"attn_kv_heads": True}, ["attn_kv_heads"]),
])
def test_bad_combinations_are_refused_by_name(options, names):
    with pytest.raises(ValueError) as err:
        xattn.ModelConfig.from_dict(tiny_config(**options))
    assert all(name in str(err.value) for name in names), str(err.value)
