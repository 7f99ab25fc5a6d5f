"""xattn.viz: the figures' data must be the trace's numbers, checked against independent recomputation."""
from __future__ import annotations

import base64
import itertools
import json
import math
import sys

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import xattn
from xattn import viz
from xattn.trace import Trace, build_trace
from xattn.viz.cells import pool_shown
from xattn.viz.export import find_chromium
from xattn.viz.payload import LEVELS, MASKED_CODE, SAFE_CODES, decode
from xattn.viz.style import MASKED_COLOR

N = 10


def make_model(seed: int) -> xattn.TransformerWrapper:
    torch.manual_seed(seed)
    return xattn.TransformerWrapper(num_tokens=40, max_seq_len=64, attn_layers=xattn.Decoder(
        dim=32, depth=3, heads=4, attn_dim_head=8, residual_attn=True, attn_selective=True)).eval()


def run(model: xattn.TransformerWrapper, seed: int) -> Trace:
    """Two rows: row 0 plain (with a repeated token), row 1 with key 0 and the last two keys padded,
    so that query 0 of row 1 has no visible key."""
    tokens = torch.randint(0, 40, (2, N), generator=torch.Generator().manual_seed(seed))
    tokens[0, 7] = tokens[0, 3]
    mask = torch.ones(2, N, dtype=torch.bool)
    mask[1, 0] = mask[1, -2:] = False
    labels = [[f"w{t}" for t in row] for row in tokens.tolist()]
    return model.run_with_trace(tokens, mask=mask, labels=labels)[1]


@pytest.fixture(scope="module")
def trace() -> Trace:
    return run(make_model(0), 0)


def head_values(trace: Trace, stage: str, layer: int, head: int, batch: int = 0) -> np.ndarray:
    return trace.drawable(stage)[trace.layer_index(layer), batch, head].numpy()


def heatmaps(fig: go.Figure) -> list[go.Heatmap]:
    return [t for t in fig.data if t.type == "heatmap"]


def assert_decodes_to(heatmap: go.Heatmap, expected: np.ndarray) -> None:
    """z decodes to `expected` within half a quantization step, with gaps exactly where it is NaN."""
    step = (heatmap.meta["hi"] - heatmap.meta["lo"]) / (LEVELS - 1)
    shown = decode(heatmap)
    np.testing.assert_array_equal(np.isnan(shown), np.isnan(expected))
    np.testing.assert_allclose(shown, expected, atol=step / 2 + 1e-6, equal_nan=True)
    assert heatmap.z.dtype == np.uint8


# payload

def test_codes_never_produce_escaped_base64_characters():
    safe = SAFE_CODES
    triples = np.stack(np.meshgrid(safe, safe, safe, indexing="ij"), -1).reshape(-1)
    encoded = base64.b64encode(triples.astype(np.uint8).tobytes())
    assert b"+" not in encoded and b"/" not in encoded
    assert MASKED_CODE in safe and len(set(safe.tolist())) == len(safe) > LEVELS


def test_grid_payload_is_four_thirds_of_a_byte_per_cell(trace):
    fig = viz.grid(trace, "attn")
    data = json.loads(fig.to_json())["data"]
    z = [t["z"] for t in data if t["type"] == "heatmap"]
    assert all(d["dtype"] == "u1" and len(d["bdata"]) == 4 * math.ceil(N * N / 3) for d in z)
    assert not any("+" in d["bdata"] or "/" in d["bdata"] for d in z)   # plotly would escape them to 6 bytes
    assert not any("customdata" in t for t in data)


# heatmap

@pytest.mark.parametrize("stage", ["attn", "scores", "pre_softmax", "residual"])
def test_heatmap_values_labels_and_exact_hover(trace, stage):
    fig = viz.heatmap(trace, 1, 2, stage)
    (hm,) = heatmaps(fig)
    expected = head_values(trace, stage, 1, 2)
    assert_decodes_to(hm, expected)
    np.testing.assert_array_equal(hm.customdata, expected)          # exact values for hover
    assert "customdata" in hm.hovertemplate and "query %{y}" in hm.hovertemplate
    tokens = [f"w{t}" for t in trace.tokens[0].tolist()]
    assert list(hm.x) == list(hm.y) == [f"{t}·{i}" for i, t in enumerate(tokens)]
    assert len(set(hm.x)) == N                                       # the repeated token stays two labels
    if stage == "attn":
        assert (hm.meta["lo"], hm.meta["hi"]) == (0.0, 1.0)
    else:                                                            # diverging, centred on 0
        assert hm.meta["lo"] == -hm.meta["hi"] == -np.nanmax(np.abs(expected))


def test_diverging_zero_sits_on_the_colour_scale_centre(trace):
    fig = viz.heatmap(trace, 0, 0, "scores")
    scale = viz.Scale(**heatmaps(fig)[0].meta)
    assert decode(go.Heatmap(z=[[scale.code(0.0)]], meta=heatmaps(fig)[0].meta))[0, 0] == 0.0
    centre = [pos for pos, color in fig.layout.coloraxis.colorscale if color == "rgb(247,247,247)"]
    assert centre == [scale.code(0.0) / fig.layout.coloraxis.cmax]


def test_masked_cells_are_grey_gaps_and_fully_masked_row_outlined(trace):
    fig = viz.heatmap(trace, 2, 1, "attn", batch=1)
    (hm,) = heatmaps(fig)
    visible = trace.visible[1].numpy()
    np.testing.assert_array_equal(hm.z == MASKED_CODE, ~visible)
    assert np.isnan(hm.customdata[~visible]).all()
    assert fig.layout.coloraxis.colorscale[-1] == (1.0, MASKED_COLOR)
    assert fig.layout.coloraxis.cmax == MASKED_CODE
    assert any(t.name == "masked" and t.marker.color == MASKED_COLOR for t in fig.data if t.type == "scatter")
    flagged = [(s.y0, s.y1) for s in fig.layout.shapes]
    rows = np.flatnonzero(trace.fully_masked[1].numpy())
    assert rows.tolist() == [0] and flagged == [(-0.5, 0.5)]
    assert fig.layout.shapes[0].showlegend and "fully masked" in fig.layout.shapes[0].name


def test_mask_figure_states(trace):
    fig = viz.mask_figure(trace, batch=1)
    (hm,) = heatmaps(fig)
    visible, fully = trace.visible[1].numpy(), trace.fully_masked[1].numpy()
    expected = np.full((N, N), 1)
    expected[visible] = 0
    expected[fully] = 2
    np.testing.assert_array_equal(hm.z, expected)
    assert list(fig.layout.coloraxis.colorbar.ticktext) == ["visible", "masked", "fully masked query"]
    assert "1 fully masked queries" in fig.layout.title.text and len(fig.layout.shapes) == 1


# grid and pooling

@pytest.mark.parametrize("build, panels", [
    (lambda trace: viz.grid(trace, "attn", max_cells=4 * 64), lambda trace: trace.shape[0] * trace.shape[2]),
    (lambda trace: viz.stages(trace, 1, 2, max_cells=64), lambda trace: len(viz.figures.DEFAULT_STAGES)),
    (lambda trace: viz.heatmap_region(trace, 1, 2), lambda trace: 1),
    (lambda trace: viz.heatmap_region(trace, 1, 2, region=(1, 6, 0, 5)), lambda trace: 1),
    (lambda trace: viz.query_row(trace, 1, 5, shown=viz.Shown(0.1, True)), lambda trace: 0)])
def test_figures_built_unchecked_are_what_plotly_checks(trace, build, panels):
    """The Explore views' figures are built unchecked (for speed): plotly, checking every property, makes the same
    figures; and they check what is changed later, as any plotly figure does."""
    fig = build(trace)
    sent = json.loads(fig.to_json())
    assert json.loads(go.Figure(sent).to_json()) == sent
    assert len(heatmaps(fig)) == panels(trace)
    with pytest.raises(ValueError):
        fig.update_layout(titel="a misspelt property")
    for part in fig.data:
        part.name = None                                              # unset, not sent as null
    assert all("name" not in part for part in json.loads(fig.to_json())["data"])


def test_grid_full_resolution_panels(trace):
    fig = viz.grid(trace, "pre_softmax", layers=[2, 0], heads=[3, 1], batch=1)
    panels = heatmaps(fig)
    assert len(panels) == 4 and "pooled" not in fig.layout.title.text
    meta = {(p.meta["lo"], p.meta["hi"]) for p in panels}
    assert len(meta) == 1                                            # one shared colour axis
    for panel, (layer, head) in zip(panels, [(2, 3), (2, 1), (0, 3), (0, 1)], strict=True):
        assert panel.coloraxis == "coloraxis"
        assert_decodes_to(panel, head_values(trace, "pre_softmax", layer, head, batch=1))


def pool_by_hand(values: np.ndarray, f: int, signed: bool) -> np.ndarray:
    """Each f × f block of the last two axes (edge blocks cut short): its first largest (|largest|) non-NaN
    value in row-major order, NaN when it has none."""
    *lead, rows, cols = values.shape
    out = np.full((*lead, math.ceil(rows / f), math.ceil(cols / f)), np.nan)
    for index in np.ndindex(*out.shape):
        *at, i, j = index
        block = values[(*at, slice(i * f, (i + 1) * f), slice(j * f, (j + 1) * f))].ravel()
        block = block[~np.isnan(block)]
        if block.size:
            out[index] = block[np.argmax(np.abs(block) if signed else block)]
    return out


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize(("shape", "f"), [((7, 10), 3), ((2, 3, 13, 9), 4), ((5, 5), 5), ((1, 17, 4), 2),
                                          ((6, 6), 7)])
def test_max_pool_is_a_nan_aware_block_maximum(shape, f, signed):
    rng = np.random.default_rng(f)
    values = rng.integers(-3, 4, size=shape).astype(np.float32)     # few distinct values: ties, ±x of equal size
    values[rng.random(shape) < 0.4] = np.nan
    values.reshape(-1)[:3] = [np.nan, np.inf, -np.inf]
    values[..., :f, -f:] = np.nan                                       # a block with no value: stays NaN
    pooled = viz.max_pool(values, f, signed=signed)
    assert pooled.dtype == np.float32
    np.testing.assert_array_equal(pooled, pool_by_hand(values, f, signed))


def test_pool_shown_tells_hidden_blocks_from_masked_ones():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((2, 11, 8)).astype(np.float32)
    values[rng.random(values.shape) < 0.5] = np.nan
    values[0, :3, :3] = np.nan                                          # a masked block
    hidden = rng.random(values.shape) < 0.5
    shown, only_hidden = pool_shown(values, hidden, 3, signed=True)
    np.testing.assert_array_equal(shown, pool_by_hand(np.where(hidden, np.nan, values), 3, signed=True))
    some_value = ~np.isnan(pool_by_hand(values, 3, signed=True))
    assert only_hidden.any() and (np.isnan(shown) & ~only_hidden).any()
    np.testing.assert_array_equal(only_hidden, np.isnan(shown) & some_value)


@pytest.mark.parametrize("stage", ["attn", "scores"])
def test_grid_pooling_keeps_peaks(trace, stage):
    panels_n = 3 * 4
    fig = viz.grid(trace, stage, max_cells=panels_n * 16, batch=1)  # 4×4 cells per panel → pool 3×3 (N = 10)
    assert "max-pooled 3×3" in fig.layout.title.text
    for panel, (layer, head) in zip(heatmaps(fig), itertools.product(range(3), range(4)), strict=True):
        values = head_values(trace, stage, layer, head, batch=1)
        assert panel.z.shape == (4, 4)
        assert_decodes_to(panel, pool_by_hand(values, 3, signed=stage != "attn"))
        peak = np.nanmax(np.abs(values))
        step = (panel.meta["hi"] - panel.meta["lo"]) / LEVELS
        assert np.nanmax(np.abs(decode(panel))) == pytest.approx(peak, abs=step)


def test_heatmap_pools_only_beyond_full_resolution(monkeypatch, trace):
    monkeypatch.setattr(viz.figures, "FULL_RESOLUTION", 4)
    fig = viz.heatmap(trace, 1, 0, "attn")
    (hm,) = heatmaps(fig)
    assert hm.z.shape == (4, 4) and "max-pooled 3×3" in fig.layout.title.text
    np.testing.assert_array_equal(hm.customdata, pool_by_hand(head_values(trace, "attn", 1, 0), 3, signed=False))


# stages, diff, selection

def test_stages_side_by_side(trace):
    fig = viz.stages(trace, 1, 3, batch=1)
    names = ["Scores", "Scores + residual", "Masked", "Pre-softmax", "Attention"]
    assert [a.text.split("<br>")[0] for a in fig.layout.annotations] == names
    assert all("<sup>" in a.text for a in fig.layout.annotations)  # each panel says what it adds
    panels = heatmaps(fig)
    for panel, stage in zip(panels, ["scores", "scores_residual", "masked", "pre_softmax", "attn"], strict=True):
        assert_decodes_to(panel, head_values(trace, stage, 1, 3, batch=1))
        np.testing.assert_array_equal(panel.customdata, head_values(trace, stage, 1, 3, batch=1))
    # The layer's own scores get their own range; the running logits after them share one.
    scores = np.nanmax(np.abs(head_values(trace, "scores", 1, 3, batch=1)))
    logits = max(np.nanmax(np.abs(head_values(trace, s, 1, 3, batch=1)))
                 for s in ["scores_residual", "masked", "pre_softmax"])
    assert panels[0].meta["hi"] == pytest.approx(scores, rel=1e-6) and panels[0].meta["lo"] == -panels[0].meta["hi"]
    assert all((p.meta["lo"], p.meta["hi"]) == pytest.approx((-logits, logits), rel=1e-6) for p in panels[1:4])
    assert len({panels[0].coloraxis, panels[1].coloraxis, panels[4].coloraxis}) == 3


def test_diff_of_two_stages_is_the_residual(trace):
    fig = viz.diff(trace, trace, layer=2, head=1, stage="scores_residual", stage_b="scores")
    hm = heatmaps(fig)[0]
    a, b = head_values(trace, "scores_residual", 2, 1), head_values(trace, "scores", 2, 1)
    np.testing.assert_array_equal(hm.customdata, a - b)
    np.testing.assert_allclose(hm.customdata, head_values(trace, "residual", 2, 1), atol=1e-5)
    assert_decodes_to(hm, a - b)
    assert hm.meta["lo"] == -hm.meta["hi"]


def test_diff_of_two_traces_circles_the_largest_changes(trace):
    other = run(make_model(1), 0)
    fig = viz.diff(trace, other, layer=0, head=2)
    hm, circles = heatmaps(fig)[0], [t for t in fig.data if t.type == "scatter" and "largest" in t.name][0]
    delta = head_values(trace, "attn", 0, 2) - head_values(other, "attn", 0, 2)
    np.testing.assert_array_equal(hm.customdata, delta)
    labels = list(hm.x)
    order = sorted(((abs(v), i, j) for (i, j), v in np.ndenumerate(delta) if not np.isnan(v)), reverse=True)[:5]
    assert {(labels[i], labels[j]) for _, i, j in order} == set(zip(circles.y, circles.x, strict=True))


def test_diff_rejects_self_and_unequal_lengths(trace):
    with pytest.raises(ValueError, match="with itself"):
        viz.diff(trace, trace, layer=0, head=0)
    short = make_model(0).run_with_trace(torch.zeros(1, 4, dtype=torch.long))[1]
    with pytest.raises(ValueError, match="equal length"):
        viz.diff(trace, short, layer=0, head=0)


def test_selection_penalty_recomputed_from_gate(trace):
    fig = viz.selection(trace, 1)
    gate_panel, penalty_panel, pruned_panel = heatmaps(fig)
    gate = head_values(trace, "masked", 1, 0)
    np.testing.assert_array_equal(gate_panel.customdata, gate)
    relu = np.nan_to_num(np.maximum(gate, 0))
    expected = np.zeros((N, N))
    for i in range(N):                                  # F[i, j] = Σ_{q < i} relu(gate[q, j]), j ∉ {0, q}
        for q in range(i):
            for j in range(1, N):
                if j != q:
                    expected[i, j] += relu[q, j]
    visible = trace.visible[0].numpy()
    np.testing.assert_allclose(penalty_panel.customdata, np.where(visible, expected, np.nan), atol=1e-5)
    np.testing.assert_array_equal(pruned_panel.z, np.where(visible, expected >= math.log(100), 2))


def test_selection_marks_pruned_keys():
    penalty = torch.tensor([[0.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 4.0, 9.0]])
    visible = torch.ones(3, 3, dtype=torch.bool).tril()
    def per_layer(t: torch.Tensor) -> dict[int, torch.Tensor]:
        return {0: t.expand(1, 2, 3, 3).clone()}                      # layer 0: [batch, head, i, j]

    synthetic = build_trace({"masked": per_layer(torch.randn(3, 3)), "selection": per_layer(penalty)},
                            visible[None], torch.zeros(1, 3, dtype=torch.long),
                            xattn.ModelConfig.from_dict({"num_tokens": 3, "max_seq_len": 3, "attn_layers": {
                                "kind": "Decoder", "dim": 8, "depth": 1, "heads": 2, "attn_selective": True}}))
    fig = viz.selection(synthetic, 0)
    np.testing.assert_array_equal(heatmaps(fig)[2].z, [[0, 2, 2], [0, 1, 2], [0, 0, 1]])
    assert "2 (query, key) pairs pruned" in fig.layout.title.text


# query row and layer similarity

def test_query_row_bars_per_head(trace):
    fig = viz.query_row(trace, 2, 6, batch=1)
    expected = trace.drawable("attn")[2, 1, :, 6].numpy()
    assert len(fig.data) == 4
    for head, bar in enumerate(fig.data):
        np.testing.assert_array_equal(bar.y, expected[head])
        assert list(bar.x) == viz.token_labels(trace, 1) and bar.name == f"head {head}"
    hidden = int((~trace.visible[1, 6]).sum())
    assert viz.token_labels(trace, 1)[6] in fig.layout.title.text and f"{hidden} masked keys" in fig.layout.title.text


def js_bits(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """JS divergence as H(m) − (H(p) + H(q)) / 2, in bits (a different formula from the module's)."""
    def entropy(x: torch.Tensor) -> torch.Tensor:
        return -torch.special.xlogy(x, x).sum(-1) / math.log(2)

    return entropy((p + q) / 2) - (entropy(p) + entropy(q)) / 2


def test_layer_similarity_is_jensen_shannon(trace):
    fig = viz.layer_similarity(trace, batch=1)
    across, within = heatmaps(fig)
    p = trace.drawable("attn")[:, 1].double().nan_to_num()          # [layer, head, i, j]
    rows = ~trace.fully_masked[1]
    expected_across = js_bits(p[:-1], p[1:])[..., rows].mean(-1)
    np.testing.assert_allclose(across.z, expected_across.numpy(), atol=1e-5)
    pairs = js_bits(p[:, :, None], p[:, None, :])[..., rows].mean(-1)  # [layer, head, head]
    np.testing.assert_allclose(within.z, (pairs.sum(-1) / 3).numpy(), atol=1e-5)
    assert list(across.y) == ["L0→L1", "L1→L2"]


# errors

@pytest.mark.parametrize("call, message", [
    (lambda t: viz.heatmap(t, 3, 0), "layer 3"),
    (lambda t: viz.heatmap(t, 0, 4), "head 4"),
    (lambda t: viz.heatmap(t, 0, 0, "logits"), "unknown stage"),
    (lambda t: viz.heatmap(t, 0, 0, batch=2), "batch 2"),
    (lambda t: viz.query_row(t, 0, N), f"query {N}"),
    (lambda t: viz.grid(t, heads=[0, -1]), "head -1"),
    (lambda t: viz.stages(t, 0, 0, stages=["attn", "nope"]), "unknown stage"),
    (lambda t: viz.mask_figure(t, batch=-1), "batch -1"),
])
def test_bad_indices_raise_clear_errors(trace, call, message):
    with pytest.raises(ValueError, match=message):
        call(trace)


def test_untraced_stage_is_named(trace):
    partial = make_model(0).run_with_trace(trace.tokens, stages=["attn"])[1]
    with pytest.raises(ValueError, match="'scores' was not traced"):
        viz.heatmap(partial, 0, 0, "scores")


def test_every_stage_has_one_style():
    assert set(viz.STAGE_STYLE) == set(xattn.STAGES)
    assert len({s.name for s in viz.STAGE_STYLE.values()}) == len(xattn.STAGES)


# export

def test_save_trace_npz_and_safetensors(trace, tmp_path):
    from safetensors.numpy import load_file
    viz.save_trace(trace, tmp_path / "t.npz")
    viz.save_trace(trace, tmp_path / "t.safetensors")
    with np.load(tmp_path / "t.npz", allow_pickle=False) as npz:
        saved = {k: npz[k] for k in npz.files}
    tensors = load_file(str(tmp_path / "t.safetensors"))
    for stage in xattn.STAGES:
        np.testing.assert_array_equal(saved[stage], trace[stage].numpy())
        np.testing.assert_array_equal(tensors[stage], trace[stage].numpy())
    np.testing.assert_array_equal(saved["visible"], trace.visible.numpy())
    assert json.loads(saved["labels"].item()) == trace.labels and tensors["layers"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match=".npz or .safetensors"):
        viz.save_trace(trace, tmp_path / "t.pt")


def test_to_html_is_standalone(trace, tmp_path):
    path = viz.to_html(viz.mask_figure(trace), tmp_path / "mask.html")
    html = path.read_text()
    assert '<script src="http' not in html and len(html) > 1_000_000  # plotly.js inlined: works offline


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium on this machine")
def test_to_png_without_playwright_names_what_to_install(trace, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "playwright.sync_api", None)     # an import of it now fails
    with pytest.raises(RuntimeError, match="pip install playwright"):
        viz.to_png(viz.mask_figure(trace), tmp_path / "x.png")


def test_to_png(trace, tmp_path):
    fig = viz.mask_figure(trace)
    path = viz.to_png(fig, tmp_path / "mask.png", scale=1)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (fig.layout.width, fig.layout.height)


def test_stage_strip_drops_exact_hover_past_the_limit():
    torch.manual_seed(0)
    model = xattn.TransformerWrapper(num_tokens=11, max_seq_len=300,
                                     attn_layers=xattn.Decoder(dim=16, depth=1, heads=2, attn_dim_head=8))
    _, short = model.run_with_trace(torch.randint(0, 11, (1, 20)))
    _, long = model.run_with_trace(torch.randint(0, 11, (1, viz.figures.EXACT_HOVER_TOKENS + 1)))
    assert all(t.customdata is not None for t in heatmaps(viz.stages(short, 0, 1)))
    assert all(t.customdata is None and "customdata" not in t.hovertemplate for t in heatmaps(viz.stages(long, 0, 1)))
    assert all(t.customdata is not None for t in heatmaps(viz.stages(long, 0, 1, exact=True)))


def test_mask_breakdown_colours_cells_by_the_first_mask_that_hides_them():
    model = xattn.TransformerWrapper(num_tokens=11, max_seq_len=8,
                                     attn_layers=xattn.Decoder(dim=16, depth=1, heads=2, attn_dim_head=8))
    pad = torch.tensor([[False, True, True, True, True]])
    parts = xattn.masks.breakdown(model, 5, mask=pad, attn_mask=xattn.masks.sliding_window(5, 1))
    fig = viz.mask_breakdown(parts)
    codes = np.asarray(fig.data[0].z)
    expected = np.zeros((5, 5), dtype=int)
    for i in range(5):
        for j in range(5):
            if not pad[0, j]:
                expected[i, j] = 1                       # padding hides it first
            elif abs(i - j) > 1:
                expected[i, j] = 2                       # then the custom sliding window
            elif j > i:
                expected[i, j] = 3                       # then causality
    assert np.array_equal(codes, expected)


# rough edges a new user hit


def test_the_attention_a_mask_removes_is_a_negative_difference():
    model = make_model(0)
    tokens = torch.randint(0, 40, (1, N), generator=torch.Generator().manual_seed(3))
    custom = xattn.masks.block_diagonal(N, 3)
    with_mask = model.run_with_trace(tokens, attn_mask=custom)[1]
    without = model.run_with_trace(tokens)[1]
    fig = viz.diff(with_mask, without, layer=1, head=2, names=("with the custom mask", "without"))
    drawn = heatmaps(fig)[0].customdata
    before = without.drawable("attn")[1, 0, 2].numpy()                 # NaN above the diagonal (causal)
    after = with_mask.drawable("attn")[1, 0, 2].numpy()
    causal = np.tril(np.ones((N, N), dtype=bool))
    removed = causal & ~custom.numpy()
    assert removed.any()
    np.testing.assert_allclose(drawn[removed], -before[removed], rtol=1e-6)   # all of the weight it had is gone
    kept = causal & custom.numpy()
    np.testing.assert_allclose(drawn[kept], after[kept] - before[kept], rtol=1e-5, atol=1e-7)
    assert np.isnan(drawn[~causal]).all()                                  # hidden on both sides: grey
    assert fig.layout.title.text.startswith("Δ Attention · layer 1 · head 2<br><sup>with the custom mask − without")


def test_selective_penalty_row_is_one_bar_per_key(trace):
    fig = viz.query_row(trace, 2, 6, stage="selection")
    (bar,) = fig.data
    expected = trace["selection"][2, 0, :, 6].numpy()                    # [head, key]: the same for every head
    assert (expected == expected[0]).all()
    np.testing.assert_array_equal(np.nan_to_num(bar.y), np.nan_to_num(head_values(trace, "selection", 2, 0)[6]))
    assert bar.name == "every head"


def test_layer_similarity_on_and_off_share_a_range(trace):
    other = run(make_model(1), 0)
    p = [t.drawable("attn")[:, 0].double().nan_to_num() for t in (trace, other)]
    tops = [float(js_bits(q[:-1], q[1:]).mean(-1).max()) for q in p]      # every row of batch 0 sees a key
    tops += [float((js_bits(q[:, :, None], q[:, None, :]).mean(-1).sum(-1) / 3).max()) for q in p]
    a, b = viz.layer_similarity(trace, share=other), viz.layer_similarity(other, share=trace)
    assert a.layout.coloraxis.cmax == b.layout.coloraxis.cmax == pytest.approx(max(tops), rel=1e-5)


def test_one_layer_similarity_says_so_instead_of_an_empty_axis():
    torch.manual_seed(0)
    model = xattn.TransformerWrapper(num_tokens=40, max_seq_len=64, attn_layers=xattn.Decoder(dim=16, depth=1, heads=1))
    trace = model.eval().run_with_trace(torch.arange(5)[None])[1]
    fig = viz.layer_similarity(trace)
    assert len(heatmaps(fig)) == 1 and list(heatmaps(fig)[0].y) == ["layer 0"]
    assert any("no consecutive layers" in a.text for a in fig.layout.annotations)
    assert fig.layout.xaxis.visible is False
    assert "1 layer × 1 head" in viz.grid(trace).layout.title.text


def test_a_space_is_labelled_visibly():
    assert viz.visible_token(" ") == "␣" and viz.visible_token("\n") == "↵" and viz.visible_token("a") == "a"
    model = make_model(0)
    trace = model.run_with_trace(torch.arange(3)[None], labels=[["a", " ", "\t"]])[1]
    assert viz.token_labels(trace) == ["a·0", "␣·1", "⇥·2"]


def test_heatmap_title_carries_the_model_name(trace):
    long = "fresh 3×4 dim 64 seed 0: causal, residual attention, selective attention, pre-norm"
    title = viz.heatmap(trace, 0, 0, name=long).layout.title.text
    assert f"<sup>{long[:39]}…" in title and long not in title


def test_title_notes_break_between_phrases_and_cut_the_last():
    from xattn.viz.figures import TITLE_NOTE_CHARS, TITLE_NOTE_LINES, _title
    first, second, third = "a" * 40, "b" * 30, "c" * 20             # phrases that each fit on a line
    lines = _title("main", [f"{first} · {second}", third, "z " * 80])["text"].split("<br>")[1:]
    shown = [line.removeprefix("<sup>").removesuffix("</sup>") for line in lines]
    assert len(shown) == TITLE_NOTE_LINES and all(len(line) <= TITLE_NOTE_CHARS + 2 for line in shown)
    assert shown[0] == first and shown[1].startswith(f"{second} · {third} · z z") and shown[1].endswith(" …")
    assert _title("main", ["", "x"])["text"] == "main<br><sup>x</sup>"


@pytest.mark.parametrize("kind, preset, nothing", [
    (xattn.Decoder, "prefix-LM", True), (xattn.Encoder, "prefix-LM", False), (xattn.Decoder, "sliding window", False)])
def test_a_custom_mask_that_changes_nothing_is_recognised(kind, preset, nothing):
    model = xattn.TransformerWrapper(num_tokens=40, max_seq_len=64, attn_layers=kind(dim=16, depth=1, heads=2)).eval()
    custom = xattn.masks.PRESETS[preset](N, 2)
    parts = xattn.masks.breakdown(model, N, attn_mask=custom)
    assert xattn.masks.custom_adds_nothing(parts) is nothing
    tokens = torch.arange(N)[None]
    masked, plain = model.run_with_trace(tokens, attn_mask=custom)[1], model.run_with_trace(tokens)[1]
    same = torch.equal(masked.visible, plain.visible)
    assert same is nothing                                       # the model agrees: nothing hidden, nothing changed
