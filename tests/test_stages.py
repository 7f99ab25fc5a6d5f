"""Each stage against a hand-written formula on inputs small enough to check by eye."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import xattn
from xattn.attention import alibi_slopes, selective_penalty
from xattn.trace import carries_fill

from conftest import tiny_config

FILL = -torch.finfo(torch.float32).max


def first_layer_qk(model: xattn.TransformerWrapper, tokens: torch.Tensor):
    """q and k of layer 0, computed by hand from the weights: [b, h, n, d]."""
    dim = model.attn_layers.dim
    x = model.token_emb.weight[tokens]
    if model.pos_emb is not None:
        x = x + model.pos_emb.weight[: tokens.shape[1]] * dim ** -0.5
    attn = model.attn_layers.attention[0]
    normed = F.layer_norm(x, (dim,)) * model.attn_layers.layers[0].norm.weight
    heads = model.attn_layers.heads

    def split(w):
        return (normed @ w.T).unflatten(-1, (heads, -1)).transpose(1, 2)

    return split(attn.to_q.weight), split(attn.to_k.weight)


def test_scores_are_scaled_dot_products(tiny_decoder, tokens):
    _, trace = tiny_decoder.run_with_trace(tokens)
    q, k = first_layer_qk(tiny_decoder, tokens)
    expected = torch.zeros(q.shape[:2] + (q.shape[2], k.shape[2]))
    for i in range(q.shape[2]):
        for j in range(k.shape[2]):
            expected[:, :, i, j] = (q[:, :, i] * k[:, :, j]).sum(-1) / math.sqrt(8)
    torch.testing.assert_close(trace["scores"][0], expected, atol=1e-5, rtol=1e-5)


def test_realformer_adds_previous_pre_softmax(tiny_decoder, tokens):
    _, trace = tiny_decoder.run_with_trace(tokens)
    assert torch.equal(trace["residual"][0], torch.zeros_like(trace["residual"][0]))
    for layer in (1, 2):
        assert torch.equal(trace["residual"][layer], trace["pre_softmax"][layer - 1])
    visible = trace.visible[None, :, None]
    total = trace["scores"] + trace["residual"]
    # Where masks filled the previous layer, the sum keeps the fill value (as in x-transformers).
    assert torch.equal(torch.where(visible, trace["scores_residual"], 0), torch.where(visible, total, 0))


def test_no_residual_means_zero_residual_stage(tokens):
    torch.manual_seed(0)
    model = xattn.build(tiny_config("Decoder")).eval()
    _, trace = model.run_with_trace(tokens)
    assert not trace["residual"].any()
    assert torch.equal(trace["scores_residual"], trace["scores"])
    assert not trace["selection"].any()
    assert torch.equal(trace["pre_softmax"], trace["masked"])


def test_selective_penalty_by_eye():
    # One batch, head 0 logits for 4 queries × 4 keys; head 1 is irrelevant to F.
    gate = torch.tensor([[9.0, 1.0, 2.0, 3.0],
                         [9.0, 4.0, -5.0, 6.0],
                         [9.0, 7.0, 8.0, -1.0],
                         [9.0, 2.0, 2.0, 2.0]])
    logits = torch.stack([gate, torch.randn(4, 4)])[None]
    # Zero column 0 (BOS) and the diagonal, keep positives, shift one query down, sum down the queries.
    expected = torch.tensor([[0.0, 0.0, 0.0, 0.0],
                             [0.0, 1.0, 2.0, 3.0],          # row 0's gate on keys 1..3 (its diagonal is key 0)
                             [0.0, 1.0, 2.0, 9.0],          # + row 1's: 0 (diagonal), relu(-5) = 0, 6
                             [0.0, 8.0, 2.0, 9.0]])         # + row 2's: 7, 0 (diagonal), relu(-1) = 0
    penalty = selective_penalty(logits)
    assert penalty.shape == (1, 1, 4, 4)
    torch.testing.assert_close(penalty[0, 0], expected)


def test_selective_penalty_matches_loop_formula():
    logits = torch.randn(2, 3, 7, 7, generator=torch.Generator().manual_seed(3))
    b, _, n, _ = logits.shape
    expected = torch.zeros(b, n, n)
    for i in range(n):
        for j in range(1, n):
            expected[:, i, j] = sum((logits[:, 0, r, j].clamp(min=0) for r in range(i) if r != j), torch.zeros(b))
    torch.testing.assert_close(selective_penalty(logits)[:, 0], expected)


def test_selection_stage_is_subtracted_from_every_head(tiny_decoder, tokens):
    _, trace = tiny_decoder.run_with_trace(tokens)
    for layer in range(3):
        expected = selective_penalty(trace["masked"][layer])
        torch.testing.assert_close(trace["selection"][layer], expected.expand_as(trace["selection"][layer]))
        assert trace["selection"][layer].abs().sum() > 0
    visible = trace.visible[None, :, None]
    diff = trace["masked"] - trace["selection"] - trace["pre_softmax"]
    assert diff[visible.expand_as(diff)].abs().max() < 1e-5


def test_causal_padding_and_custom_masks(tokens):
    torch.manual_seed(0)
    model = xattn.build(tiny_config("Decoder")).eval()
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False                                   # right padding in row 1
    custom = torch.ones(10, 10, dtype=torch.bool)
    custom[:, 2] = False                                  # nobody may look at key 2
    custom[3, :4] = False                                 # query 3 sees nothing causal: fully masked
    _, trace = model.run_with_trace(tokens, mask=mask, attn_mask=custom)

    expected = torch.zeros(2, 10, 10, dtype=torch.bool)
    for b in range(2):
        for i in range(10):
            for j in range(10):
                expected[b, i, j] = j <= i and bool(mask[b, j]) and bool(custom[i, j])
    assert torch.equal(trace.visible, expected)
    assert trace.fully_masked[:, 3].all() and trace.fully_masked.sum() == 2

    masked, attn = trace["masked"], trace["attn"]
    hidden = ~expected[None, :, None].expand_as(masked)
    assert (masked[hidden] == FILL).all()
    assert torch.equal(masked[~hidden], trace["biased"][~hidden])
    live_rows = ~trace.fully_masked[None, :, None].expand(attn.shape[:-1])
    assert (attn[hidden & live_rows[..., None]] == 0).all()
    torch.testing.assert_close(attn.sum(-1)[live_rows], torch.ones(int(live_rows.sum())))
    drawable = trace.drawable("attn")
    assert drawable[hidden].isnan().all() and not drawable[~hidden].isnan().any()


def test_fully_masked_rows_output_zero(tokens):
    """A query that sees no key gets a zero attention output, so its residual stream is untouched by attention."""
    torch.manual_seed(0)
    model = xattn.build(tiny_config("Encoder", depth=1)).eval()
    custom = torch.ones(10, 10, dtype=torch.bool)
    custom[4] = False
    seen = {}
    attn = model.attn_layers.attention[0]
    handle = attn.to_out.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    model(tokens, attn_mask=custom)
    handle.remove()
    assert (seen["out"][:, 4] == 0).all() and (seen["out"][:, 3] != 0).any()


def test_alibi_bias_by_hand(tokens):
    torch.manual_seed(0)
    model = xattn.build(tiny_config("Encoder", alibi_pos_bias=True)).eval()
    _, trace = model.run_with_trace(tokens)
    assert alibi_slopes(4) == [1 / 4, 1 / 16, 1 / 64, 1 / 256]
    distance = (torch.arange(10)[:, None] - torch.arange(10)[None, :]).abs().float()
    for h, slope in enumerate([1 / 4, 1 / 16, 1 / 64, 1 / 256]):
        added = trace["biased"][:, :, h] - trace["scores_residual"][:, :, h]
        torch.testing.assert_close(added, (-slope * distance).expand_as(added))


def test_drawable_hides_fill_carried_by_residual(tiny_decoder, tokens):
    _, trace = tiny_decoder.run_with_trace(tokens)
    carried = carries_fill(trace["scores_residual"][1])    # the causal fill of layer 0, carried into layer 1
    assert carried.any()
    assert trace.drawable("scores_residual")[1][carried].isnan().all()
    assert not trace.drawable("scores")[1].isnan().any()


def test_drawable_slices_equal_the_whole_stage(tiny_decoder, tokens):
    """One layer, head or query row made on its own (a view of one query need not NaN-mask a layer's n² cells)
    equals the same slice of the whole drawable stage, made before or after it; padding and carried fill included."""
    padding = torch.ones(tokens.shape, dtype=torch.bool)
    padding[:, -3:] = False
    _, trace = tiny_decoder.run_with_trace(tokens, mask=padding)
    for stage in ("scores_residual", "attn"):
        alone = {(head, query): trace.drawable(stage, 1, head, query) for head in (None, 1) for query in (None, 4, 9)}
        whole = trace.drawable(stage)[1]                                             # [b, h, i, j]
        for (head, query), part in alone.items():
            expected = whole if query is None else whole[:, :, query]
            expected = expected if head is None else expected[:, head]
            torch.testing.assert_close(part, expected, equal_nan=True)
            torch.testing.assert_close(trace.drawable(stage, 1, head, query), expected, equal_nan=True)   # made
        assert alone[(None, 9)].isnan().any() and not alone[(None, 9)].isnan().all()


def test_trace_restricted_to_stages_and_layers(tiny_decoder, tokens):
    logits_all, full = tiny_decoder.run_with_trace(tokens)
    logits, trace = tiny_decoder.run_with_trace(tokens, stages=["attn", "scores"], layers=[2])
    assert set(trace.stages) == {"attn", "scores"} and trace.layers == [2]
    assert trace["attn"].shape == (1, 2, 4, 10, 10)
    assert torch.equal(trace["attn"][0], full["attn"][2])
    assert torch.equal(logits, logits_all)
    assert trace.nbytes() == 2 * 2 * 4 * 10 * 10 * 4
    with pytest.raises(ValueError, match="unknown stage"):
        tiny_decoder.run_with_trace(tokens, stages=["logits"])
    with pytest.raises(ValueError, match="out of range"):
        tiny_decoder.run_with_trace(tokens, layers=[3])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_traces_draw_without_stray_values(dtype, tokens):
    """In half precision the fill value is −finfo(dtype).max; drawable() still hides it, and no visible cell is NaN."""
    torch.manual_seed(0)
    model = xattn.build(tiny_config("Decoder", residual_attn=True, attn_selective=True)).to(dtype).eval()
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, :3] = False
    _, trace = model.run_with_trace(tokens, mask=mask)
    visible = trace.visible[None, :, None].expand(trace.shape)
    for stage in xattn.STAGES:
        drawn = trace.drawable(stage)
        assert not drawn[visible].isnan().any(), stage
        assert drawn.nan_to_num(0).abs().max() < 1e4, stage        # no fill value squashing a colour scale
