"""xattn.viz.lod: a head (or a rectangle of it) at screen resolution — pooled shapes, peaks that survive,
full resolution once the rectangle is small, and values that are the trace's own."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import xattn
from xattn import viz
from xattn.viz.lod import Region, head_region, region_factor
from xattn.viz.payload import decode

N = 600


@pytest.fixture(scope="module")
def long_trace() -> xattn.Trace:
    torch.manual_seed(0)
    model = xattn.TransformerWrapper(num_tokens=50, max_seq_len=N, attn_layers=xattn.Decoder(
        dim=32, depth=2, heads=2, attn_dim_head=16, residual_attn=True)).eval()
    tokens = torch.randint(0, 50, (1, N), generator=torch.Generator().manual_seed(1))
    return model.run_with_trace(tokens, labels=[[f"t{t}" for t in tokens[0].tolist()]])[1]


def heat(fig) -> dict:
    return next(t for t in fig.data if t.type == "heatmap")


def test_region_factor_is_the_smallest_that_fits() -> None:
    assert region_factor(512, 512, 512 * 512) == 1
    assert region_factor(2048, 2048, 512 * 512) == 4
    assert region_factor(600, 600, 512 * 512) == 2
    for rows, cols, budget in [(600, 37, 1000), (2048, 5, 300), (17, 1900, 4096), (1, 1, 1)]:
        f = region_factor(rows, cols, budget)
        assert math.ceil(rows / f) * math.ceil(cols / f) <= budget
        assert f == 1 or math.ceil(rows / (f - 1)) * math.ceil(cols / (f - 1)) > budget


def test_whole_head_is_pooled_to_the_budget_and_peaks_survive(long_trace: xattn.Trace) -> None:
    budget = 128 * 128
    for stage in ("attn", "pre_softmax"):
        full = long_trace.drawable(stage)[1, 0, 1].numpy()
        shown, _, box, factor, scale = head_region(long_trace, 1, 1, stage, max_cells=budget)
        assert box == Region(0, N, 0, N) and factor == 5
        assert shown.shape == (math.ceil(N / 5), math.ceil(N / 5)) and shown.size <= budget
        # every block is the peak of its 5 × 5 cells (largest magnitude, sign kept, for logits)
        for r, c in [(0, 0), (7, 3), (60, 59), (119, 0), (119, 119)]:
            block = full[5 * r:5 * r + 5, 5 * c:5 * c + 5]
            finite = block[~np.isnan(block)]
            if not finite.size:
                assert np.isnan(shown[r, c])
                continue
            best = finite[np.argmax(np.abs(finite))] if stage != "attn" else finite.max()
            assert shown[r, c] == best
        # the sharpest cell of the head survives, and the scale is the whole head's
        assert np.nanmax(np.abs(shown)) == np.nanmax(np.abs(full))
        fig = viz.heatmap_region(long_trace, 1, 1, stage, max_cells=budget)
        trace = heat(fig)
        assert np.asarray(trace.customdata).shape == shown.shape
        np.testing.assert_array_equal(np.asarray(trace.customdata), shown.astype(np.float32))
        assert (trace.x0, trace.dx, trace.y0, trace.dy) == (2, 5, 2, 5)     # block centres in token positions
        assert "max-pooled 5×5" in fig.layout.title.text
        assert fig.layout.meta["xattn"]["factor"] == 5 and fig.layout.meta["xattn"]["n"] == N
        assert scale == viz.Scale.covering(full, diverging=stage != "attn", fixed=(0.0, 1.0) if stage == "attn"
                                           else None)


def test_a_small_region_comes_at_full_resolution_with_the_traces_values(long_trace: xattn.Trace) -> None:
    full = long_trace.drawable("pre_softmax")[0, 0, 0].numpy()
    fig = viz.heatmap_region(long_trace, 0, 0, "pre_softmax", region=(300, 364, 250, 330), max_cells=128 * 128)
    trace = heat(fig)
    np.testing.assert_array_equal(np.asarray(trace.customdata), full[300:364, 250:330].astype(np.float32))
    assert (trace.x0, trace.dx, trace.y0, trace.dy) == (250, 1, 300, 1)
    # colours on the whole head's scale, decoded within half a level
    scale = viz.Scale.covering(full, diverging=True)
    assert (trace.meta["lo"], trace.meta["hi"]) == (scale.lo, scale.hi)
    drawn = decode(trace)
    assert np.nanmax(np.abs(drawn - full[300:364, 250:330])) <= scale.step / 2 + 1e-6
    assert np.isnan(drawn).sum() == np.isnan(full[300:364, 250:330]).sum()       # the causal triangle's edge
    assert list(fig.layout.xaxis.range) == [249.5, 329.5] and list(fig.layout.yaxis.range) == [363.5, 299.5]
    assert fig.layout.meta["xattn"]["region"] == [300, 364, 250, 330]
    assert "queries 300–363 × keys 250–329" in fig.layout.title.text
    # few tokens visible: token labels as ticks
    small = viz.heatmap_region(long_trace, 0, 0, "attn", region=(10, 20, 0, 12))
    assert list(small.layout.xaxis.ticktext) == viz.token_labels(long_trace)[0:12]
    assert list(small.layout.yaxis.tickvals) == list(range(10, 20))


def test_a_mid_sized_region_is_pooled_less(long_trace: xattn.Trace) -> None:
    fig = viz.heatmap_region(long_trace, 0, 1, "attn", region=(0, 300, 0, 300), max_cells=128 * 128)
    assert fig.layout.meta["xattn"]["factor"] == 3
    assert np.asarray(heat(fig).customdata).shape == (100, 100)


def test_regions_are_clipped_and_empty_ones_refused(long_trace: xattn.Trace) -> None:
    assert Region.of((-5, 10, 590, 700), N) == Region(0, 10, 590, N)
    with pytest.raises(ValueError, match="shows no cell"):
        viz.heatmap_region(long_trace, 0, 0, "attn", region=(700, 800, 0, 10))
    with pytest.raises(ValueError, match="four whole numbers"):
        viz.heatmap_region(long_trace, 0, 0, "attn", region=(0, 1.5, 0, 10))


def test_a_2048_token_head_is_as_light_as_a_512_token_one() -> None:
    """The first view of a 2,048-token head carries as many cells, and as many bytes, as a 512-token one."""
    sizes = {}
    for n in (512, 2048):
        torch.manual_seed(0)
        model = xattn.TransformerWrapper(num_tokens=20, max_seq_len=n, attn_layers=xattn.Decoder(
            dim=16, depth=1, heads=1, attn_dim_head=16)).eval()
        _, trace = model.run_with_trace(torch.randint(0, 20, (1, n)), stages=["attn"])
        fig = viz.heatmap_region(trace, 0, 0, "attn")
        assert np.asarray(heat(fig).customdata).shape == (512, 512)
        sizes[n] = len(fig.to_json())
    assert sizes[2048] < 1.1 * sizes[512]


def test_pool_figure_brings_a_stage_strip_to_screen_resolution(long_trace: xattn.Trace) -> None:
    strip = viz.stages(long_trace, 1, 0, stages=["pre_softmax", "attn"])
    full = {t.xaxis: decode(t) for t in strip.data if t.type == "heatmap"}
    viz.pool_figure(strip, 128 * 128)
    panels = {t.xaxis: t for t in strip.data if t.type == "heatmap"}
    for axis, stage in (("x", "pre_softmax"), ("x2", "attn")):
        trace = panels[axis]
        assert np.asarray(trace.z).shape == (120, 120) and (trace.x, trace.x0, trace.dx) == (None, 2, 5)
        expected = viz.max_pool(full[axis], 5, signed=stage == "pre_softmax")
        np.testing.assert_allclose(decode(trace), expected, rtol=1e-6, atol=1e-6)   # the same levels, pooled
        values = long_trace.drawable(stage)[1, 0, 0].numpy()
        assert np.nanmax(np.abs(decode(trace))) >= np.nanmax(np.abs(values)) - Scale_step(trace) / 2
    assert "max-pooled 5×5" in strip.layout.title.text
    small = viz.stages(long_trace, 0, 0, stages=["attn"])
    before = small.to_json()
    assert viz.pool_figure(small, 600 * 600).to_json() == before            # within the budget: untouched


def Scale_step(trace) -> float:  # noqa: N802 -- reads as the Scale's step
    return viz.Scale(trace.meta["lo"], trace.meta["hi"]).step


def test_stage_strip_pooled_before_it_is_built(long_trace: xattn.Trace) -> None:
    """viz.stages(max_cells=…) pools each panel from the trace's own values: every block its peak."""
    pooled = viz.stages(long_trace, 1, 0, stages=["pre_softmax", "attn"], max_cells=128 * 128)
    panels = sorted((t for t in pooled.data if t.type == "heatmap"), key=lambda t: t.xaxis)
    for trace, stage in zip(panels, ["pre_softmax", "attn"], strict=True):
        assert (trace.x, trace.x0, trace.dx, trace.y0, trace.dy) == (None, 2, 5, 2, 5)
        peaks = viz.max_pool(long_trace.drawable(stage)[1, 0, 0].numpy(), 5, signed=stage == "pre_softmax")
        drawn = decode(trace)
        assert drawn.shape == (120, 120) and (np.isnan(drawn) == np.isnan(peaks)).all()
        assert np.nanmax(np.abs(drawn - peaks)) <= Scale_step(trace) / 2 + 1e-6
    assert "max-pooled 5×5" in pooled.layout.title.text
    full = viz.stages(long_trace, 1, 0, stages=["attn"], max_cells=N * N)
    assert np.asarray(full.data[0].z).shape == (N, N) and "max-pooled" not in full.layout.title.text


def test_a_head_with_extra_keys_and_memory_tokens_is_a_rectangle() -> None:
    """Memory key/values add key columns, memory tokens add rows: regions, ticks and meta follow each axis."""
    torch.manual_seed(0)
    model = xattn.TransformerWrapper(num_tokens=20, max_seq_len=64, num_memory_tokens=2, attn_layers=xattn.Decoder(
        dim=16, depth=1, heads=2, attn_dim_head=8, attn_num_mem_kv=3)).eval()
    _, trace = model.run_with_trace(torch.randint(0, 20, (1, 10)))
    values = trace.drawable("attn")[0, 0, 1].numpy()                               # 12 queries × 15 keys
    fig = viz.heatmap_region(trace, 0, 1, "attn")
    meta = fig.layout.meta["xattn"]
    assert (meta["n"], meta["n_keys"]) == (12, 15) and meta["keys"] == viz.key_labels(trace)
    np.testing.assert_array_equal(np.asarray(heat(fig).customdata), values.astype(np.float32))
    assert list(fig.layout.xaxis.ticktext)[:3] == ["mem kv 0", "mem kv 1", "mem kv 2"]
    assert list(fig.layout.yaxis.ticktext)[:2] == ["mem 0", "mem 1"]
    corner = viz.heatmap_region(trace, 0, 1, "attn", region=(8, 40, 10, 40))        # clipped to 12 × 15
    assert corner.layout.meta["xattn"]["region"] == [8, 12, 10, 15]
    np.testing.assert_array_equal(np.asarray(heat(corner).customdata), values[8:12, 10:15].astype(np.float32))
    pooled = viz.heatmap_region(trace, 0, 1, "attn", max_cells=30)
    assert np.asarray(heat(pooled).customdata).shape == (4, 5)                    # 3 × 3 blocks
