"""Clicks, zooms and hover on the Explore tab's own Plotly views (app/heatmap.py), in real chromium: a grid
tile focuses its layer and head, a cell of the focused head picks its query, a zoom on a long input brings the
visible region at full resolution — and the page asks nothing of any host but the app's own.

Skips without chromium or Playwright, unless XATTN_REQUIRE_BROWSER=1 (CI). Screenshots as in test_browser.py.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
import torch

from app import heatmap, models
from xattn import viz

from test_browser import DRAW_TIMEOUT_MS, fill_fields, opened_page

# Page-side helpers: where to point the mouse, and what a view holds.
TILE = """([layer, head]) => {
  const gd = document.querySelector('#layers-heads .js-plotly-plot');
  gd.scrollIntoView({block: 'center'});
  const t = gd._fullData.find(d => d.type === 'heatmap' && d.meta.layer === layer && d.meta.head === head);
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
  const x = t.x0 + (t.z[0].length - 1) * t.dx / 2, y = t.y0 + (t.z.length - 1) * t.dy / 2;   // the tile's centre
  return [box.left + xa._offset + xa.l2p(x), box.top + ya._offset + ya.l2p(y)];
}"""
CELL = """([query, key]) => {
  const gd = document.querySelector('#focused-head .js-plotly-plot');
  gd.scrollIntoView({block: 'center'});
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
  return [box.left + xa._offset + xa.l2p(key), box.top + ya._offset + ya.l2p(query)];
}"""
HEATMAPS = """(id) => {
  const gd = document.querySelector('#' + id + ' .js-plotly-plot');
  return {title: gd._fullLayout.title.text, traces: gd._fullData.filter(d => d.type === 'heatmap').map(t => ({
    x0: t.x0, dx: t.dx, y0: t.y0, dy: t.dy, rows: t.z.length, cols: t.z[0].length, meta: t.meta,
    exact: t.customdata ? Array.from(t.customdata, r => Array.from(r, v => (v === null ? NaN : v))) : null}))};
}"""
STAMP = "(id) => Object.assign({}, document.querySelector('#' + id + ' .xattn-view').parentElement.dataset)"


def title_has(page: Any, elem_id: str, text: str) -> None:
    page.wait_for_function("([id, text]) => { const gd = document.querySelector('#' + id + ' .js-plotly-plot');"
                           " return gd && gd._fullLayout && gd._fullLayout.title.text.includes(text); }",
                           arg=[elem_id, text], timeout=DRAW_TIMEOUT_MS)


def sliders(page: Any) -> list[int]:
    """The Explore tab's layer, head and query number boxes."""
    return [int(page.get_by_label(f"number input for {what}", exact=True).first.input_value())
            for what in ("layer", "head", "query")]


def sliders_reach(page: Any, expected: list[int]) -> None:
    """Wait until the layer, head (and query) number boxes read `expected`: a click's views come first
    (views.focus_views), its sliders with the click's own request once they are drawn."""
    page.wait_for_function("(expected) => ['layer', 'head', 'query'].slice(0, expected.length).every((what, k) => "
                           "[...document.querySelectorAll('input')].find(i => i.getAttribute('aria-label') === "
                           "`number input for ${what}`).value === String(expected[k]))", arg=expected,
                           timeout=DRAW_TIMEOUT_MS)


def local_only(requests: list[str], server: str) -> list[str]:
    """The requests that went to a host other than the app's own loopback address."""
    home = urlparse(server).hostname
    return [u for u in requests if urlparse(u).scheme not in ("data", "blob") and urlparse(u).hostname != home]


@pytest.fixture
def browser_page(server: str) -> Iterator[tuple[Any, list[str]]]:
    """A chromium page on the app, with every request it makes recorded."""
    requests: list[str] = []
    with opened_page(server, requests=requests) as page:
        yield page, requests


def test_clicks_focus_a_head_and_pick_a_query(browser_page: tuple[Any, list[str]], server: str,
                                              tmp_path: Path) -> None:
    page, requests = browser_page
    shots = Path(os.environ.get("XATTN_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    default = models.bundled(models.default_name())
    ids = default.tokenizer.encode(default.example)
    _, trace = default.model.run_with_trace(torch.tensor([ids]))
    labels = [f"{t}·{i}" for i, t in enumerate(default.tokenizer.labels(ids))]
    notable = default.card["notable_heads"][0]                        # the page opens on the card's first head
    title_has(page, "focused-head", f"layer {notable['layer']} · head {notable['head']}")

    # hover on a grid tile: its layer and head, token labels and the value
    x, y = page.evaluate(TILE, [0, 2])
    page.mouse.move(x, y)
    tip = page.locator("#layers-heads .xattn-tip")
    tip.wait_for(state="visible", timeout=5_000)
    assert "layer 0 · head 2" in tip.inner_text() and "Attention:" in tip.inner_text()

    # a click on tile (layer 0, head 2) focuses that head: sliders, focused head and its values follow, and the
    # views stay where they are on the page while the click's own request is on its way
    where = "() => Math.round(document.querySelector('#focused-head').getBoundingClientRect().top + window.scrollY)"
    before = page.evaluate(where)
    page.mouse.click(x, y)
    title_has(page, "focused-head", "layer 0 · head 2")
    title_has(page, "stage-strip", "layer 0 · head 2")
    drawn = page.evaluate(where)
    assert page.evaluate(HEATMAPS, "focused-head")["traces"][0]["exact"] is None   # on the server till a hover asks
    # its token labels came once, with the query row of the same answer (heatmap.ROW_LABELS)
    ticks = page.evaluate("() => document.querySelector('#focused-head .js-plotly-plot')._fullLayout.xaxis.ticktext")
    assert ticks and set(ticks) <= set(labels) and labels[0] in ticks
    sliders_reach(page, [0, 2])
    assert before == drawn == page.evaluate(where)
    page.wait_for_function(f"() => ({STAMP})('layers-heads').focus.startsWith('0,2,')", timeout=DRAW_TIMEOUT_MS)

    # a click on a cell of the focused head picks its query (row 9, key 4); hover names both tokens
    x, y = page.evaluate(CELL, [9, 4])
    page.mouse.move(x, y)
    tip = page.locator("#focused-head .xattn-tip")
    tip.wait_for(state="visible", timeout=5_000)
    assert labels[9] in tip.inner_text() and labels[4] in tip.inner_text()
    # the tip first shows the value the colour stands for (≈), then the server's exact value
    page.wait_for_function(f"() => ({STAMP})('focused-head').hovered", timeout=5_000)
    exact = float(trace.drawable("attn")[0, 0, 2, 9, 4])
    written = page.evaluate("v => Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(3)"
                            " : v.toPrecision(4)", exact)
    assert f"Attention: {written}" in tip.inner_text() and "≈" not in tip.inner_text()
    page.mouse.click(x, y)
    title_has(page, "where-the-query-looks", f"Where does {labels[9]} look?")
    sliders_reach(page, [0, 2, 9])
    for view in ("layers-heads", "focused-head", "stage-strip", "where-the-query-looks"):
        page.wait_for_function(f"() => ({STAMP})('{view}').focus === '0,2,9'", timeout=DRAW_TIMEOUT_MS)
    # that click left the focused head as it was (nothing to redraw); the next tile click still redraws it
    page.wait_for_timeout(400)                  # two clicks within 300 ms are a double click to plotly
    # the pointer resting on a tile asks for that head's views before the click, which then draws them at once
    x, y = page.evaluate(TILE, [1, 1])
    page.mouse.move(x, y)
    page.wait_for_function("() => window.xattnViews.early", timeout=DRAW_TIMEOUT_MS)
    page.mouse.click(x, y)
    title_has(page, "focused-head", "layer 1 · head 1")
    title_has(page, "stage-strip", "layer 1 · head 1")
    sliders_reach(page, [1, 1])
    query = sliders(page)[2]                      # the clicked row of the tile, not the query of the rest (9)
    assert query != 9
    page.wait_for_function(f"() => ({STAMP})('where-the-query-looks').focus === '1,1,{query}'", timeout=DRAW_TIMEOUT_MS)
    assert page.locator("#token-text .xattn-tokens").get_attribute("data-query") == str(query)
    # a server that no longer keeps the run (focus_views answers {}): the click's own request redraws everything
    from app import views
    views.RECENT.clear()
    page.wait_for_timeout(400)
    x, y = page.evaluate(TILE, [0, 0])
    page.mouse.click(x, y)
    title_has(page, "focused-head", "layer 0 · head 0")
    sliders_reach(page, [0, 0])
    page.mouse.move(5, 5)
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / "explore-clicks.png"), full_page=True)
    assert local_only(requests, server) == [], "the page reached beyond the app's own host"
    assert all(any(u.endswith(url) for u in requests) for url in heatmap.PAGE_URLS), \
        "plotly.js and the views' code did not come from the app"


def test_zoom_brings_the_region_at_full_resolution(browser_page: tuple[Any, list[str]], server: str,
                                                   tmp_path: Path) -> None:
    page, requests = browser_page
    shots = Path(os.environ.get("XATTN_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    title_has(page, "focused-head", "· head ")                     # drawn
    # a fresh 1 × 2 model reading 700 tokens: its first view is pooled 2 × 2
    page.get_by_text("Load another model").click()
    fill_fields(page, {"depth": 1, "heads": 2, "dim": 16, "max_seq_len": 1024, "seed": 0})
    page.get_by_role("button", name="Build fresh model").click()
    page.get_by_text("fresh 1×2 dim 16 seed 0").first.wait_for(timeout=DRAW_TIMEOUT_MS)
    text = ("the quick brown fox jumps over the lazy dog; " * 16)[:699]
    page.get_by_label("text", exact=True).fill(text)
    with page.expect_response(lambda r: r.url.rstrip("/").endswith("component_server")
                              and '"run_views"' in (r.request.post_data or "")) as ran:
        page.get_by_role("button", name="Run").first.click()
    assert set(ran.value.json()["views"]) == {"grid", "head", "strip", "row", "text"}   # the session's own model,
    title_has(page, "focused-head", "max-pooled 2×2")                    # found by run_views through the page's session
    first = page.evaluate(HEATMAPS, "focused-head")["traces"]
    assert len(first) == 1 and (first[0]["rows"], first[0]["dx"]) == (350, 2)
    # the strip's first view has a cell per pixel at most: the page sent how wide its panels are (views.Screen)
    title_has(page, "stage-strip", "max-pooled")
    panel, sent = page.evaluate("() => [document.querySelector('#stage-strip .js-plotly-plot')._fullLayout.xaxis"
                                "._length, window.xattnViews.pixels.strip]")
    assert abs(panel - sent) <= panel / 10                       # re-sent only when it changes by more than a tenth
    pooled = page.evaluate(HEATMAPS, "stage-strip")["traces"]
    assert all(t["dx"] == math.ceil(700 / sent) for t in pooled), (panel, sent, pooled[0]["dx"])

    fresh = models.fresh(1, 2, 16, models_options(), 0, 1024)
    ids = fresh.tokenizer.encode(text)
    _, trace = fresh.model.run_with_trace(torch.tensor([ids]))
    layer, head, query = sliders(page)
    values = trace.drawable("attn")[layer, 0, head].numpy()

    # the query row of 700 keys is drawn as steps whose hover names the key (labels sent once: heatmap.lean)
    labels = viz.position_labels(fresh.tokenizer.labels(ids))               # as the page shows them (␣ for a space)
    title_has(page, "where-the-query-looks", f"·{query} look?")          # drawn for this text (views draw in turn)
    key = int(np.nanargmax(values[query]))
    x, y = page.evaluate("""([key, value]) => {
      const gd = document.querySelector('#where-the-query-looks .js-plotly-plot');
      gd.scrollIntoView({block: 'center'});
      const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
      return [box.left + xa._offset + xa.l2p(key), box.top + ya._offset + ya.l2p(value)]; }""",
                         [key, float(values[query, key])])
    page.mouse.move(x, y)
    hover = page.locator("#where-the-query-looks .hoverlayer")
    page.wait_for_function("() => document.querySelector('#where-the-query-looks .hoverlayer').textContent.length > 0",
                           timeout=5_000)
    assert labels[key] in hover.text_content()
    page.mouse.move(5, 5)

    page.evaluate("() => Plotly.relayout(document.querySelector('#focused-head .js-plotly-plot'),"
                  " {'xaxis.range': [99.5, 159.5], 'yaxis.range': [259.5, 199.5]})")
    page.wait_for_function(f"() => ({STAMP})('focused-head').detail !== ''", timeout=DRAW_TIMEOUT_MS)
    drawn = page.evaluate(HEATMAPS, "focused-head")["traces"]
    assert len(drawn) == 2, "the detail lies over the pooled first view"
    detail = drawn[1]
    assert (detail["dx"], detail["dy"]) == (1, 1)
    i0, j0 = int(detail["y0"]), int(detail["x0"])
    assert i0 <= 200 and j0 <= 100 and i0 + detail["rows"] >= 260 and j0 + detail["cols"] >= 160
    np.testing.assert_allclose(np.array(detail["exact"], dtype=float),
                               values[i0:i0 + detail["rows"], j0:j0 + detail["cols"]], rtol=1e-5, atol=1e-6)
    # few tokens visible: token labels on the axes
    ticks = page.evaluate("() => document.querySelector('#focused-head .js-plotly-plot')._fullLayout.xaxis.ticktext")
    assert fresh.tokenizer.labels(ids)[100] == " " and ticks and ticks[0] == "␣·100"   # a space, shown visibly
    page.wait_for_timeout(300)
    page.locator("#focused-head").screenshot(path=str(shots / "explore-zoom.png"))

    # zooming back out drops the detail
    page.evaluate("() => Plotly.relayout(document.querySelector('#focused-head .js-plotly-plot'),"
                  " {'xaxis.autorange': true, 'yaxis.autorange': 'reversed'})")
    page.wait_for_function(f"() => ({STAMP})('focused-head').detail === ''", timeout=DRAW_TIMEOUT_MS)
    assert len(page.evaluate(HEATMAPS, "focused-head")["traces"]) == 1
    assert local_only(requests, server) == []


def models_options() -> list[str]:
    """The fresh-model form's options as the page starts with them (app/ui.py FRESH_OPTIONS)."""
    from app.ui import FRESH_OPTIONS
    return list(FRESH_OPTIONS)


def test_rapid_clicks_leave_sliders_views_and_text_agreeing(browser_page: tuple[Any, list[str]]) -> None:
    """Clicks on tiles and cells in quick succession (each click's views come first, its sliders after): once the
    page settles, the sliders, every view and the text view show one and the same focus."""
    page, _ = browser_page
    default = models.bundled(models.default_name())
    title_has(page, "focused-head", "layer")
    moves = [("tile", 1, 2), ("cell", 5, 3), ("tile", 0, 1), ("cell", 9, 2), ("tile", 2, 3), ("cell", 14, 0)]
    for kind, a, b in moves:
        x, y = page.evaluate(TILE if kind == "tile" else CELL, [a % default.depth, b] if kind == "tile" else [a, b])
        page.mouse.click(x, y)
        page.wait_for_timeout(60)                  # faster than a click's sliders arrive
    layer, head = 1, 0                             # then a tile, and a cell of its head as soon as it is drawn
    x, y = page.evaluate(TILE, [layer, head])
    page.mouse.click(x, y)
    title_has(page, "focused-head", f"layer {layer} · head {head}")
    x, y = page.evaluate(CELL, [3, 1])
    page.mouse.click(x, y)
    page.wait_for_function("([layer, head]) => ['layer', 'head'].every((what, k) => [...document.querySelectorAll("
                           "'input')].find(i => i.getAttribute('aria-label') === `number input for ${what}`).value"
                           " === String([layer, head][k]))", arg=[layer, head], timeout=DRAW_TIMEOUT_MS)
    page.wait_for_timeout(1500)
    focus = ",".join(str(v) for v in sliders(page))
    assert focus == f"{layer},{head},3"
    for view in ("layers-heads", "focused-head", "stage-strip", "where-the-query-looks"):
        assert page.evaluate(STAMP, view)["focus"] == focus, view
    assert page.locator("#token-text .xattn-tokens").get_attribute("data-query") == "3"

