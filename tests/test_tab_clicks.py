"""Clicks on the tabs other than Explore (views.on_pick, app/heatmap.js role "pick"): what the payload the page
sends for a cell, a grid tile or a layer-similarity cell does to each tab's sliders and figures, on real traces."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("gradio")
import gradio as gr  # noqa: E402
from test_clicks import event, exact, heat  # noqa: E402
from test_cross_app import SOURCE, TARGET, direct, fresh  # noqa: E402

from app import cross, models, texts, views  # noqa: E402


@pytest.fixture(scope="module")
def default() -> models.Loaded:
    loaded = models.bundled(models.default_name())
    assert loaded.model.config.attn_layers.selective and loaded.model.config.attn_layers.residual_attn
    return loaded


def traced(loaded: models.Loaded) -> tuple[list[str], Any]:
    ids = loaded.tokenizer.encode(loaded.example)
    return [f"{t}·{i}" for i, t in enumerate(loaded.tokenizer.labels(ids))], loaded.model.run_with_trace(
        torch.tensor([ids]))[1]


def test_a_cell_of_selectives_views_picks_its_query(default: models.Loaded) -> None:
    labels, trace = traced(default)
    args = [None, default.name, default.example, 1, 2, 4]
    pick = views.on_pick(views.selective, {"query": 5}, 5)
    query, fig, strip, row, grid, _ = pick(event(query=7, key=3), *args)
    assert query == 7
    # the row of F is now query 7's: one bar over the keys, F of layer 1 (shared by the heads), masked keys NaN
    assert f"Where does {labels[7]} look?" in row.layout.title.text and "layer 1" in row.layout.title.text
    np.testing.assert_allclose(np.asarray(row.data[0].y, dtype=float), trace.drawable("selection")[1, 0, 0, 7].numpy(),
                               rtol=1e-5, atol=1e-6)
    assert "layer 1 · head 2" in strip.layout.title.text and "layer 1" in fig.layout.title.text
    # a click on the query shown moves no slider: nothing is redrawn
    assert pick(event(query=4, key=0), *args) == [gr.skip()] * 6


def test_a_tile_of_selectives_f_grid_focuses_its_layer_keeping_the_head(default: models.Loaded) -> None:
    """The grid draws the gate head's F, which every head shares: a tile sets the layer (and the clicked query),
    not the head."""
    labels, trace = traced(default)
    pick = views.on_pick(views.selective, {"layer": 3, "query": 5}, 5)
    layer, query, fig, strip, row, *_ = pick(event(layer=0, head=0, query=5, key=2),
                                             None, default.name, default.example, 2, 1, 9)
    assert (layer, query) == (0, 5)
    assert "layer 0 · head 1" in strip.layout.title.text and "Selective attention · layer 0" in fig.layout.title.text
    np.testing.assert_allclose(exact(heat(fig)), trace.drawable("masked")[0, 0, 0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(row.data[0].y, dtype=float), trace.drawable("selection")[0, 0, 0, 5].numpy(),
                               rtol=1e-5, atol=1e-6)


def test_a_layer_similarity_cell_focuses_its_layer_and_head(default: models.Loaded) -> None:
    """Each matrix row knows its layer (what the page sends for a click): a row of the consecutive-layers panel
    compares layers a → b and stands for b; a row of the within-layer panel for its own layer."""
    labels, trace = traced(default)
    args = [None, default.name, default.example, 0, 0, texts.SAME_WEIGHTS]
    *_, similarity, _, _ = views.realformer(*args)
    across, within = [t for t in similarity.data if t.type == "heatmap"]
    assert [int(y.split("→L")[1]) for y in across.y] == across.meta["layers"] == list(range(1, default.depth))
    assert [int(y.split()[1]) for y in within.y] == within.meta["layers"] == list(range(default.depth))
    row, head = len(across.y) - 1, default.heads - 1                  # the bottom-right cell of the first panel
    pick = views.on_pick(views.realformer, {"layer": 3, "head": 4}, 5)
    layer, head, strip, diff, *_ = pick(event(layer=across.meta["layers"][row], head=head), *args)
    assert (layer, head) == (default.depth - 1, default.heads - 1)
    assert f"layer {layer} · head {head}" in strip.layout.title.text and f"layer {layer} · head {head}" in \
        diff.layout.title.text
    attn = next(t for t in strip.data if t.type == "heatmap" and t.xaxis == "x4")     # the strip's last panel
    np.testing.assert_allclose(exact(heat(_only(strip, attn))), trace.drawable("attn")[layer, 0, head].numpy(),
                               rtol=1e-5, atol=1e-6)


def _only(fig: Any, trace: Any) -> Any:
    """`fig` with `trace` alone, for `heat` to read."""
    return fig.__class__(data=[trace], layout=fig.layout)


def test_a_cross_attention_tile_focuses_its_layer_and_head() -> None:
    loaded = fresh(depth=2, heads=4)
    session = {loaded.name: loaded}
    args = [session, loaded.name, SOURCE, TARGET, "attn", 0, 0]
    pick = views.on_pick(cross.cross, {"layer": 5, "head": 6}, 4)
    layer, head, grid, focused, encoder, summary = pick(event(layer=1, head=2, query=3, key=1), *args)
    assert (layer, head) == (1, 2)
    assert "cross-attention layer 1 · head 2" in focused.layout.title.text
    assert "Cross-attention layer 1, head 2" in summary
    np.testing.assert_allclose(exact(heat(focused)), direct(loaded, SOURCE, TARGET).cross.drawable("attn")[1, 0, 2],
                               rtol=1e-5, atol=1e-6)


def test_a_refused_pick_says_why_in_place(default: models.Loaded) -> None:
    """A pick on a model the tab refuses leaves the sliders and figures as they are and says why in the summary."""
    pick = views.in_place(views.on_pick(views.selective, {"query": 5}, 5), 6)
    out = pick(event(query=3), None, "no-such-model", "hi", 0, 0, 1)
    assert out[:5] == tuple(gr.update() for _ in range(5)) and out[5].startswith("**Not drawn:**")
