"""Tokens as text, next-token predictions, the display filter (threshold, sink) and why a cell is hidden, each
checked against a hand computation on a small traced model."""
from __future__ import annotations

import html
import math
import re

import numpy as np
import pytest
import torch

import xattn
from xattn import masks, viz
from xattn.predictions import next_tokens
from xattn.tokenizer import CharTokenizer
from xattn.viz.cells import PRUNE_AT, Shown, decode_why
from xattn.viz.payload import HIDDEN_CODE, LEVELS, MASKED_CODE

TOKENIZER = CharTokenizer(" ab<>&|`")
TEXT = "a <b>& a|`b"


def model(**options) -> xattn.TransformerWrapper:
    torch.manual_seed(0)
    return xattn.TransformerWrapper(num_tokens=TOKENIZER.vocab_size, max_seq_len=32, attn_layers=xattn.Decoder(
        dim=32, depth=2, heads=4, attn_dim_head=8, **options)).eval()


def traced(m: xattn.TransformerWrapper, text: str = TEXT, **kwargs) -> tuple[torch.Tensor, xattn.Trace]:
    ids = TOKENIZER.encode(text)
    return m.run_with_trace(torch.tensor([ids]), labels=[TOKENIZER.labels(ids)], **kwargs)


@pytest.fixture(scope="module")
def selective() -> tuple[xattn.TransformerWrapper, torch.Tensor, xattn.Trace]:
    """Selective attention with its gate pushed up, so that F prunes keys."""
    m = model(residual_attn=True, attn_selective=True)
    with torch.no_grad():
        for attention in m.attn_layers.attention:
            attention.to_q.weight.mul_(6)
    return (m, *traced(m))


# why a cell is hidden

def test_reasons_follow_the_first_mask_that_hides_a_cell() -> None:
    """Padding, then the custom mask, then causality, then the window: by hand, with a zero key in front."""
    m = model(attn_max_attend_past=2, attn_add_zero_kv=True)
    n = len(TOKENIZER.encode(TEXT))
    pad = torch.ones(1, n, dtype=torch.bool)
    pad[0, 3] = False
    custom = masks.block_diagonal(n, 5)
    _, trace = traced(m, mask=pad, attn_mask=custom)
    codes = masks.trace_reasons(trace)[0].numpy()
    assert codes.shape == (n, n + 1) and (codes[:, 0] == 0).all()          # the zero key: always visible
    for i in range(n):
        for j in range(n):
            expected = ("padding" if not pad[0, j] else "custom" if not custom[i, j] else "causal" if j > i
                        else "window" if i - j > 2 else "visible")
            assert masks.REASONS[codes[i, j + 1]] == expected, (i, j)
    assert ((codes != 0) == ~trace.visible[0].numpy()).all()


def test_why_names_masks_and_pruned_keys_with_their_f(selective) -> None:
    m, _, trace = selective
    for layer in trace.layers:
        meta = viz.why(trace, [layer])
        names, f = decode_why(meta, layer)
        penalty = trace["selection"][layer, 0, 0].numpy()
        visible = trace.visible[0].numpy()
        pruned = visible & (penalty >= math.log(100))
        assert pruned.any()
        assert (names[pruned] == "pruned by F").all()
        assert (names[~visible] == "causal").all() and (names[visible & ~pruned] == "visible").all()
        lo, hi = meta["f"]
        assert lo == pytest.approx(PRUNE_AT) and hi == pytest.approx(float(max(
            trace["selection"][k, 0, 0].max() for k in meta["layers"])))
        step = (hi - lo) / (meta["levels"] - 1)
        np.testing.assert_allclose(f[pruned], penalty[pruned], atol=step / 2 + 1e-5)
    pooled = viz.why(trace, [1], factor=3)
    assert pooled["codes"].shape == (2, 4, 4)                              # 12 tokens in 3 × 3 blocks
    names, f = decode_why(pooled, 1)
    full, full_f = decode_why(viz.why(trace, [1]), 1)
    assert names[0, 3] == "causal"                                          # a block with every cell masked
    for r, c in np.ndindex(4, 4):                                           # a block takes its strongest pruning
        block, block_f = full[3 * r:3 * r + 3, 3 * c:3 * c + 3], full_f[3 * r:3 * r + 3, 3 * c:3 * c + 3]
        if (block == "pruned by F").any():
            assert names[r, c] == "pruned by F" and f[r, c] == pytest.approx(np.nanmax(block_f))
        else:
            assert names[r, c] == ("causal" if (block == "causal").any() else "visible")


def test_grid_carries_one_mask_matrix_and_one_per_pruning_layer(selective) -> None:
    _, _, trace = selective
    fig = viz.grid(trace, "attn")
    meta = fig.layout.meta["xattn"]["why"]
    assert meta["codes"].shape == (1 + len(meta["layers"]), 12, 12) and meta["codes"].dtype == np.uint8


# the display filter

def test_threshold_and_sink_hide_exactly_the_cells_the_rule_names(selective) -> None:
    _, _, trace = selective
    shown = Shown(0.1, hide_sink=True)
    attn = trace["attn"][:, 0].abs().numpy()                               # [layer, head, i, j]
    visible = trace.visible[0].numpy()
    expected = visible & (attn < 0.1)
    expected[..., 0] = True                                                 # BOS, the first token
    hidden = shown.hidden(trace, [0, 1], [0, 1, 2, 3])
    assert (hidden[..., visible] == expected[..., visible]).all()
    fig = viz.grid(trace, "attn", shown=shown)
    for k, heat in enumerate(t for t in fig.data if t.type == "heatmap"):
        layer, head = divmod(k, 4)
        z = np.asarray(heat.z)
        want = np.where(expected[layer, head] & visible, HIDDEN_CODE, np.where(visible, z, MASKED_CODE))
        assert (z == want).all()
        drawn = viz.decode(heat)[~expected[layer, head] & visible]
        np.testing.assert_allclose(drawn, attn[layer, head][~expected[layer, head] & visible],
                                   atol=(heat.meta["hi"] - heat.meta["lo"]) / (LEVELS - 1) / 2 + 1e-6)
    shown_values = np.where(expected | ~visible, np.nan, attn)
    assert fig.layout.coloraxis.colorbar.ticktext[-1] == f"{np.nanmax(shown_values):.3g}"   # scale of what is shown
    assert "not renormalised" in fig.layout.title.text
    head = viz.heatmap_region(trace, 1, 2, "attn", shown=shown)
    exact = np.asarray(head.data[0].customdata, dtype=float)
    assert np.isnan(exact[expected[1, 2]]).all()
    np.testing.assert_allclose(exact[~expected[1, 2] & visible], attn[1, 2][~expected[1, 2] & visible], rtol=1e-6)
    assert head.layout.meta["xattn"]["hidden_keys"] == [0]
    strip = viz.stages(trace, 1, 2, stages=["scores", "attn"], shown=shown)
    assert all("not renormalised" in f.layout.title.text for f in (head, strip))   # every view says so
    assert all((np.asarray(t.z)[expected[1, 2]] == HIDDEN_CODE).all() for t in strip.data if t.type == "heatmap")
    query = 7                                                    # the query row leaves out the same bars
    row = viz.query_row(trace, 1, query, shown=shown)
    bars = np.stack([np.asarray(bar.y, dtype=float) for bar in row.data if bar.type == "bar"])   # [head, key]
    gone = expected[1, :, query] | ~visible[query]
    assert np.isnan(bars[gone]).all()
    np.testing.assert_allclose(bars[~gone], trace["attn"][1, 0, :, query].numpy()[~gone], rtol=1e-6)
    assert "not renormalised" in row.layout.title.text
    assert np.isnan(np.stack([np.asarray(b.y, dtype=float) for b in viz.query_row(
        trace, 1, query, stage="selection", shown=shown).data])[:, 0]).all()    # a shared stage: the sink column


def test_sink_columns_are_bos_and_a_learned_sink() -> None:
    m = model(attn_head_learned_sink=True)
    _, trace = traced(m)
    assert Shown(hide_sink=True).sink_columns(trace) == [0, 1] and Shown().sink_columns(trace) == []


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan"), True, "0.2"])
def test_a_threshold_outside_zero_to_one_is_refused(threshold) -> None:
    with pytest.raises(ValueError, match="threshold"):
        Shown(threshold)


# tokens as text

def spans(text: str) -> list[dict]:
    found = re.findall(r'<span class="xattn-token"( data-q="(\d+)")? title="([^"]*)" style="([^"]*)">(.*?)</span>',
                       text)
    return [dict(q=int(q) if q else None, title=html.unescape(t), style=s, text=html.unescape(x))
            for _, q, t, s, x in found]


def test_token_text_shades_by_the_query_row(selective) -> None:
    _, _, trace = selective
    layer, query, head = 1, 7, 2
    drawn = spans(viz.token_html(trace, layer, query, head=head))
    row = trace["attn"][layer, 0, head, query].numpy()
    assert [s["text"] for s in drawn] == ["<bos>", "a", "␣", "<", "b", ">", "&", "␣", "a", "|", "`", "b"]
    assert [s["q"] for s in drawn] == list(range(12))
    top = row[: query + 1].max()
    for j, s in enumerate(drawn):
        if j > query:
            assert "masked (causal)" in s["title"] and "background" not in s["style"]
        else:
            alpha = float(re.search(r"rgba\(37,99,235,([\d.]+)\)", s["style"]).group(1))
            assert alpha == pytest.approx(row[j] / top, abs=1e-3)
    assert "outline:2px solid" in drawn[query]["style"] and "the query" in drawn[query]["title"]
    mean = spans(viz.token_html(trace, layer, query))
    averaged = trace["attn"][layer, 0, :, query].mean(0).numpy()
    assert float(re.search(r"([\d.]+)\)", mean[3]["style"]).group(1)) == pytest.approx(
        averaged[3] / averaged[: query + 1].max(), abs=1e-3)
    hidden = spans(viz.token_html(trace, layer, query, head=head, shown=Shown(0.05, hide_sink=True)))
    assert "hidden (the sink)" in hidden[0]["title"]
    assert all("hidden (below the threshold)" in hidden[j]["title"] for j in range(1, query + 1) if row[j] < 0.05)


def test_token_text_escapes_html() -> None:
    _, trace = traced(model())
    raw = viz.token_html(trace, 0, 3)
    assert "<bos>" not in raw and "&lt;bos&gt;" in raw and "<b>&" not in raw.replace("<b>&lt;", "")


# predictions

def test_next_tokens_are_the_softmax_computed_by_hand() -> None:
    m = model()
    logits, _ = traced(m)
    position = 4
    row = logits[0, position].tolist()
    top = max(row)
    by_hand = [math.exp(v - top) for v in row]
    total = sum(by_hand)
    order = sorted(range(len(row)), key=lambda i: -row[i])[:5]
    pairs = next_tokens(m, logits, TOKENIZER, position)
    assert [label for label, _ in pairs] == TOKENIZER.labels(order)
    np.testing.assert_allclose([p for _, p in pairs], [by_hand[i] / total for i in order], rtol=1e-9)
    table = viz.predictions_table([(" ", 0.5), ("|", 0.25), ("`", 0.125)])
    assert "| `␣` | 50.0% |" in table and "| `\\|` | 25.0% |" in table and "| `` ` `` | 12.5% |" in table


def test_a_model_without_logits_says_so() -> None:
    torch.manual_seed(0)
    m = xattn.TransformerWrapper(num_tokens=TOKENIZER.vocab_size, max_seq_len=32, return_only_embed=True,
                                 attn_layers=xattn.Decoder(dim=16, depth=1, heads=2, attn_dim_head=8))
    out, _ = traced(m)
    assert next_tokens(m, out, TOKENIZER, 2) is None
    assert "return_only_embed" in viz.predictions_table(None)
    with pytest.raises(ValueError, match="position 40"):
        next_tokens(model(), traced(model())[0], TOKENIZER, 40)
