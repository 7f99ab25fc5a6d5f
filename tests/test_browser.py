"""The app in a real browser (Debian chromium through Playwright): the page runs the default example on
load, a heatmap is drawn with the trace's shape and values, and switching tabs draws each view.

Skips without chromium or Playwright, unless XATTN_REQUIRE_BROWSER=1 (CI), where that is a failure.
Screenshots go to a temporary folder, or to $XATTN_SCREENSHOTS (the README's come from assets/screenshots).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app import bundle, heatmap, models
from xattn import viz

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
DRAW_TIMEOUT_MS = 90_000
# tab → (a heatmap it draws, screenshot name)
TABS = {"Explore": ("focused-head", "explore"), "RealFormer": ("scores-residual-sum", "realformer"),
        "Selective attention": ("gate-head-F-and-pruned-keys", "selective"),
        "Masking debugger": ("effective-mask", "masking"), "Compare": ("A-B", "compare")}


def need_browser() -> Any:
    """playwright.sync_api, or skip (fail when XATTN_REQUIRE_BROWSER=1) if it or chromium is missing."""
    required = os.environ.get("XATTN_REQUIRE_BROWSER") == "1"
    try:
        from playwright import sync_api
    except ImportError:
        sync_api = None
    missing = [what for what, ok in (("chromium at /usr/bin/chromium", CHROMIUM.exists()),
                                     ("the playwright package", sync_api is not None)) if not ok]
    if missing:
        (pytest.fail if required else pytest.skip)(f"browser test needs {' and '.join(missing)}")
    return sync_api


@contextmanager
def opened_page(server: str, width: int = 1500, height: int = 1100,
                requests: list[str] | None = None) -> Iterator[Any]:
    """The app's page open in headless chromium at a window of `width` × `height`, each URL it asks for added to
    `requests` if given; the browser closes on exit."""
    sync_api = need_browser()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            if requests is not None:
                page.on("request", lambda request: requests.append(request.url))
            page.goto(server)
            yield page
        finally:
            browser.close()


def fill_fields(page: Any, values: dict[str, Any]) -> None:
    """Fill the fields labelled by `values`' keys, and again until each holds its value: a field filled the moment
    its folded section opens can be reset as the section's components mount (the page is usable before its
    opening requests are answered)."""
    for _ in range(5):
        for label, value in values.items():
            page.get_by_label(label, exact=True).fill(str(value))
        page.wait_for_timeout(200)
        if all(page.get_by_label(label, exact=True).input_value() == str(value) for label, value in values.items()):
            return
    raise AssertionError(f"the fields would not keep {values}")


def richest_model() -> models.Loaded:
    """A bundled model for the default's task with residual and selective attention, else the default."""
    default = models.bundled(models.default_name())
    for name in models.bundled_names():
        loaded = models.bundled(name)
        options = loaded.model.config.attn_layers
        if options.residual_attn and options.selective and loaded.tokenizer == default.tokenizer:
            return loaded
    return default


def drawn_heatmap(page: Any, elem_id: str, shots: Path) -> dict:
    """Wait until the plot `elem_id` has painted a heatmap (else keep a screenshot of the page), and read
    back what plotly holds for it."""
    selector = f"#{elem_id} .js-plotly-plot .heatmaplayer image"
    try:
        page.wait_for_selector(selector, state="attached", timeout=DRAW_TIMEOUT_MS)
    except Exception:
        page.screenshot(path=str(shots / f"failed-{elem_id}.png"), full_page=True)
        raise
    return page.evaluate("""(id) => {
        const gd = document.querySelector('#' + id + ' .js-plotly-plot');
        const t = gd._fullData.find(d => d.type === 'heatmap');
        const img = gd.querySelector('.heatmaplayer image');
        return {title: gd._fullLayout.title.text, rows: t.z.length, cols: t.z[0].length,
                exact: t.customdata ? Array.from(t.customdata, r => Array.from(r)) : null,
                codes: Array.from(t.z, r => Array.from(r)), lo: t.meta.lo, hi: t.meta.hi,
                painted: (img.getAttribute('href') || img.getAttribute('xlink:href') || '').length};
    }""", elem_id)


def test_page_runs_the_default_example_and_switches_tabs(server: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    need_browser()                         # skip before tracing, not at the page
    from app import views
    explored, made = views.explored, []
    monkeypatch.setattr(views, "explored", lambda *args, **kwargs: made.append(args[2]) or explored(*args, **kwargs))
    shots = Path(os.environ.get("XATTN_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    default = models.bundled(models.default_name())
    ids = default.tokenizer.encode(default.example)
    _, trace = default.model.run_with_trace(torch.tensor([ids]))

    with opened_page(server) as page:
        asked: list[str] = []                                       # the server functions the page calls
        page.on("request", lambda r: asked.append(json.loads(r.post_data or "{}").get("fn_name", ""))
                if r.url.rstrip("/").endswith("component_server") else None)
        page.get_by_label("text", exact=True).fill(default.example[:-2])
        rows = ("(n) => document.querySelector('#focused-head .js-plotly-plot')._fullData.find(d => d.type === "
                "'heatmap').z.length === n")
        page.get_by_role("button", name="Run").first.click()       # its views first, straight from the server
        page.wait_for_function(rows, arg=len(ids) - 2, timeout=DRAW_TIMEOUT_MS)
        page.get_by_text(f"Read {len(ids) - 2} tokens").wait_for(timeout=DRAW_TIMEOUT_MS)   # then its request's
        assert asked.count("run_views") == 1 and made == [default.example[:-2]]            # summary: the
        # views made once, by run_views: the request, told they are drawn, made none
        page.get_by_label("text", exact=True).fill(default.example)
        page.get_by_role("button", name="Run").first.click()       # the default example, explicitly
        page.wait_for_function(rows, arg=len(ids), timeout=DRAW_TIMEOUT_MS)
        shown = drawn_heatmap(page, "focused-head", shots)
        assert shown["painted"] > 100, "the heatmap image is empty"
        assert (shown["rows"], shown["cols"]) == (len(ids), len(ids))
        notable = default.card["notable_heads"][0]                  # the page opens on the card's first head
        layer, head = notable["layer"], notable["head"]
        assert f"layer {layer} · head {head}" in shown["title"]
        scale = viz.Scale(shown["lo"], shown["hi"])                 # exact values come on hover (views.lighter)
        np.testing.assert_allclose(scale.decode(np.array(shown["codes"])),
                                   trace.drawable("attn")[layer, 0, head].numpy(), atol=scale.step / 2 + 1e-6)
        page.screenshot(path=str(shots / "explore.png"), full_page=True)

        both = richest_model()                                      # residual and selective: every view has content
        page.get_by_label("model", exact=True).click()
        page.get_by_role("option", name=both.name, exact=True).click()
        page.get_by_text(f"{both.name} — causal").first.wait_for(timeout=DRAW_TIMEOUT_MS)  # re-explored
        ids = both.tokenizer.encode(both.example)
        for tab, (elem_id, name) in list(TABS.items())[1:]:
            page.get_by_role("tab", name=tab).click()
            shown = drawn_heatmap(page, elem_id, shots)
            assert shown["painted"] > 100 and shown["rows"] >= len(ids), f"{tab}: nothing drawn"
            if name == "realformer":                                # layer 0 has nothing carried in: the last layer
                box = page.locator("input[aria-label='number input for layer']:visible")
                box.fill(str(both.depth - 1))
                box.press("Enter")
                page.wait_for_function("(t) => document.querySelector('#scores-residual-sum .js-plotly-plot')"
                                       "._fullLayout.title.text.includes(t)", arg=f"layer {both.depth - 1} ·",
                                       timeout=DRAW_TIMEOUT_MS)
            page.wait_for_timeout(500)                              # let the other plots of the tab settle
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    assert len(list(shots.glob("*.png"))) >= len(TABS)


def test_text_typed_before_the_page_load_answers_is_kept(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's load narrows the stage lists and the sliders' ranges and writes nothing else: a text typed while
    it is on its way (held here for a second) is still there once it has answered, the layer and head sliders span
    the model's, the query sliders the typed text's tokens (not the ceilings API callers are checked against)."""
    import threading
    import time

    from app import ui
    answered, narrow = threading.Event(), ui.stage_updates

    def slow(*args: Any) -> Any:
        time.sleep(1.0)
        try:
            return narrow(*args)
        finally:
            answered.set()

    monkeypatch.setattr(ui, "stage_updates", slow)
    with opened_page(server) as page:
        box = page.get_by_label("text", exact=True)
        box.fill("a=1;b=2;?a")
        assert answered.wait(30), "the page's load never asked for its stage lists"
        default = models.bundled(models.default_name())
        tops = {"layer": default.depth - 1, "head": default.heads - 1,
                "query": len(default.tokenizer.encode("a=1;b=2;?a")) - 1}
        page.wait_for_function("(tops) => Object.entries(tops).every(([what, top]) => document.querySelector("
                               "`input[aria-label='range slider for ${what}']`).max === String(top))", arg=tops,
                               timeout=DRAW_TIMEOUT_MS)
        assert box.input_value() == "a=1;b=2;?a"


def test_the_page_opens_drawn_and_the_tab_redraws_after_a_change(server: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The opening Explore views come with the page (no explore computed for it): the focused head carries the
    trace's values, drawn with the plotly.js the page preloaded (fetched once). Coming back to the tab after the
    text changed redraws the views for the new text."""
    from app import views
    explored, runs = views.explored, []
    monkeypatch.setattr(views, "explored", lambda *args, **kwargs: runs.append(args[2]) or explored(*args, **kwargs))
    default = models.bundled(models.default_name())
    ids = default.tokenizer.encode(default.example)
    _, trace = default.model.run_with_trace(torch.tensor([ids]))
    notable = default.card["notable_heads"][0]
    with opened_page(server) as page:
        shown = drawn_heatmap(page, "focused-head", tmp_path)
        fetched = page.evaluate("(urls) => urls.map(url => performance.getEntriesByType('resource').filter(e => "
                                "e.name.endsWith(url)).length)", heatmap.PAGE_URLS)
        assert fetched == [1] * len(heatmap.PAGE_SCRIPTS), "plotly.js or the views' code was fetched again"
        # plotly.js's own registry: the app's bundle registers the trace types the app draws, and no others
        traces = page.evaluate("() => Object.keys(Plotly.PlotSchema.get().traces)")
        assert sorted(traces) == sorted(bundle.TRACES), traces
        # each view's colour bars fit the room its figure leaves (viz COLORBAR_ROOM): plotly drew it once, without
        # widening a margin and drawing it all again
        widened = page.evaluate("""() => [...document.querySelectorAll('.xattn-view .js-plotly-plot')].map(gd =>
          [gd.closest('[id]').id, gd._fullLayout._size.r - gd._fullLayout.margin.r,
           Object.keys(gd._fullLayout._pushmargin || {}).filter(k => k.startsWith('cb')).length])""")
        assert len(widened) >= 4 and all(extra == 0 for _, extra, _ in widened), widened
        assert sum(bars for *_, bars in widened) >= 5, widened       # grid, head: one bar each; strip: three
        assert f"layer {notable['layer']} · head {notable['head']}" in shown["title"]
        values = trace.drawable("attn")[notable["layer"], 0, notable["head"]].numpy()
        scale = viz.Scale(shown["lo"], shown["hi"])
        np.testing.assert_allclose(scale.decode(np.array(shown["codes"])), values, atol=scale.step / 2 + 1e-6)
        # the opening head's exact values come on hover, from what the server pinned when it built the page
        x, y = page.evaluate("""() => { const gd = document.querySelector('#focused-head .js-plotly-plot');
          gd.scrollIntoView({block: 'center'}); const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
          const box = gd.getBoundingClientRect();
          return [box.left + xa._offset + xa.l2p(0), box.top + ya._offset + ya.l2p(3)]; }""")
        page.mouse.move(x, y)
        page.wait_for_function("() => document.querySelector('#focused-head .xattn-view').parentElement.dataset"
                               ".hovered", timeout=DRAW_TIMEOUT_MS)
        assert f"{values[3, 0]:.4g}"[:4] in page.locator("#focused-head .xattn-tip").inner_text()
        shorter = default.example[: len(default.example) // 2]
        page.get_by_label("text", exact=True).fill(shorter)
        page.get_by_role("tab", name="RealFormer").click()
        page.get_by_role("tab", name="Explore").click()
        n = len(default.tokenizer.encode(shorter))
        page.wait_for_function("(n) => document.querySelector('#focused-head .js-plotly-plot')"
                               "._fullData.find(d => d.type === 'heatmap').z.length === n", arg=n,
                               timeout=DRAW_TIMEOUT_MS)
    assert runs == [shorter], "the page's opening asked for an Explore of its own"
