"""The Explore tab in real chromium (Playwright, Debian's /usr/bin/chromium): how long until every view is drawn
after a page load, a Run, a click on a grid tile (focus another head: at once, as the pointer arrives, and after
the pointer rested on the tile for the 0.4 s before the click, in which the page asks for that head's views), a
click on a cell of the focused head (pick a query), a zoom (a region at full resolution) and a hover on the
focused head (until the server's exact value is shown: the page gets colour codes only, views.lighter), and how
many bytes of figure JSON each drawn heatmap cell costs. The server runs in its own process, as in bench_app.py.

    python bench/bench_browser.py [--repeats 3] [--load-only]

`--load-only` times page loads alone: the first after the server starts, then `repeats` more, each in a fresh
browser context (an empty cache), with the server warm; and when, in the page, the views were mounted (Gradio's
start-up), plotly.js was ready, and the first and last view were drawn.

Models: the bundled default; a fresh 6 layers × 8 heads, dim 256 model reading 512 tokens; a fresh 2 × 4, dim 64
model reading 2,048 tokens (the issue's sizes; its first view of a head is max-pooled to 512 × 512, a zoom brings
full resolution).
"Drawn" is read off the page: each view stamps what it has drawn (app/heatmap.js), and a click counts as done when
the focused head, stage strip and query row are redrawn for the new focus, the grid has moved its outline and the
text view (shaded by the focused query) is replaced. "Forward pass" is the model's traced run on the same text in
this process (views.explore_run), the part of a Run no page can save.
"""
from __future__ import annotations

import argparse
import functools
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_browser_clicks import CELL, TILE  # noqa: E402  (where to point the mouse, as the browser test does)
from timing import timed as seconds  # noqa: E402  (bench/, this script's folder)

from app import main as app_main  # noqa: E402
from app import models, ui, views  # noqa: E402

from test_browser import fill_fields  # noqa: E402  (fills a form field until it keeps its value)

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
VIEWS = ["layers-heads", "focused-head", "stage-strip", "where-the-query-looks"]
TIMEOUT_MS = 60_000
STAMPS = """(views) => Object.fromEntries(views.map(id => {
  const view = document.querySelector('#' + id + ' .xattn-view');
  return [id, view ? Object.assign({}, view.parentElement.dataset) : {}];
}))"""
# The text view drawn now, marked so that its replacement can be told apart.
MARK_TEXT = "() => document.querySelectorAll('#token-text .xattn-tokens').forEach(t => { t.dataset.old = '1'; })"
# Every view drawn since `before` (drawn counters), all showing focus `focus` ("layer,head,query" or a prefix), and
# the text view replaced.
DONE = """([views, before, focus, redrawn]) => {
  const text = document.querySelector('#token-text .xattn-tokens');
  if (!text || text.dataset.old) return false;
  const now = Object.fromEntries(views.map(id => {
    const view = document.querySelector('#' + id + ' .xattn-view');
    return [id, view ? view.parentElement.dataset : {}];
  }));
  return views.every(id => (now[id].focus || '').startsWith(focus))
    && redrawn.every(id => Number(now[id].drawn || 0) > Number((before[id] || {}).drawn || 0));
}"""


# The layer, head and query boxes show the focus the views show: a click's views come first (views.focus_views),
# its sliders with the request that follows, and the next action must not land on a page still changing.
SETTLED = """() => {
  const view = document.querySelector('#focused-head .xattn-view');
  const focus = view ? view.parentElement.dataset.focus || '' : '';
  const box = what => [...document.querySelectorAll('input')].find(i =>
    i.getAttribute('aria-label') === `number input for ${what}`);
  return focus === ['layer', 'head', 'query'].map(what => (box(what) || {}).value).join(',');
}"""


# Run in the page before its own scripts: when the views are mounted, plotly.js is ready and each view is drawn.
MARKS = """(() => {
  const marks = window.xattnLoad = {};
  const mark = what => { if (!(what in marks)) marks[what] = performance.now(); };
  let plotly;
  Object.defineProperty(window, 'Plotly', {configurable: true, get: () => plotly,
                                           set: value => { plotly = value; mark('plotly.js ready'); }});
  const mounted = new MutationObserver(() => {
    if (document.querySelectorAll('.xattn-view').length) { mark('views mounted'); mounted.disconnect(); }
  });
  mounted.observe(document, {childList: true, subtree: true});
  new MutationObserver(changes => changes.forEach(() => { mark('first view drawn'); marks['last view drawn'] =
    performance.now(); })).observe(document, {attributes: true, subtree: true, attributeFilter: ['data-drawn']});
})()"""
LOAD_MARKS = ["views mounted", "plotly.js ready", "first view drawn", "last view drawn"]


def stamps(page: Any) -> dict[str, dict[str, str]]:
    return page.evaluate(STAMPS, VIEWS)


# Timed in the page: from the click's pointerdown to the first frame after every view is drawn (DONE, checked as
# the page changes), the frame a person sees them in; the page's work after that frame is not waited for.
ARM = """([views, before, focus, redrawn]) => {
  const done = """ + DONE + """;
  const timing = window.xattnTiming = {};
  document.addEventListener('pointerdown', ev => { timing.start = performance.now(); }, {capture: true, once: true});
  const seen = new MutationObserver(() => {
    if (timing.drawn || timing.start === undefined || !done([views, before, focus, redrawn])) return;
    timing.drawn = performance.now();
    seen.disconnect();
    requestAnimationFrame(() => { timing.frame = performance.now(); });
  });
  seen.observe(document.body, {attributes: true, childList: true, subtree: true,
                               attributeFilter: ['data-drawn', 'data-focus', 'data-old']});
}"""


def timed(page: Any, action: Any, focus: str, redrawn: list[str]) -> tuple[float, int, int]:
    """Seconds from the click `action()` makes until every view is drawn for `focus` (the `redrawn` ones drawn
    anew) and shown (ARM), and the bytes and heatmap cells of the figures redrawn."""
    page.wait_for_timeout(400)          # two clicks within 300 ms are a double click to plotly (it resets the zoom)
    before = stamps(page)
    page.evaluate(MARK_TEXT)
    page.evaluate(ARM, [VIEWS, before, focus, redrawn])
    action()
    try:
        page.wait_for_function("() => window.xattnTiming.frame", timeout=TIMEOUT_MS, polling=20)
    except Exception:
        print(f"waiting for {focus!r}, {redrawn}: before {before}, now {stamps(page)}", file=sys.stderr)
        raise
    timing = page.evaluate("() => window.xattnTiming")
    elapsed = (timing["frame"] - timing["start"]) / 1000
    page.wait_for_function(SETTLED, timeout=TIMEOUT_MS, polling=20)   # not timed: the sliders follow the views
    after = stamps(page)
    new = [v for v in VIEWS if int(after[v].get("drawn", 0)) > int(before[v].get("drawn", 0))]
    return (elapsed, sum(int(after[v].get("bytes", 0)) for v in new),
            sum(int(after[v].get("cells", 0)) for v in new))


def fresh_model(page: Any, depth: int, heads: int, dim: int, max_seq_len: int) -> str:
    """Build a fresh model with the page's form (default options) and wait until it is explored."""
    if not page.get_by_label("depth", exact=True).is_visible():
        page.get_by_text("Load another model").click()
    fill_fields(page, {"depth": depth, "heads": heads, "dim": dim, "max_seq_len": max_seq_len, "seed": 0})
    page.get_by_role("button", name="Build fresh model").click()
    name = f"fresh {depth}×{heads} dim {dim} seed 0"
    page.get_by_text(name).first.wait_for(timeout=TIMEOUT_MS)
    page.get_by_text("Load another model").click()          # fold the form away again
    return name


def slider(page: Any, what: str) -> int:
    return int(page.get_by_label(f"number input for {what}", exact=True).first.input_value())


def measure(page: Any, label: str, n: int, depth: int, heads: int, repeats: int, texts: list[str],
            zoom: bool) -> dict[str, Any]:
    """Run (a new text each time: the views redraw only what changed), click-to-focus, cell-to-query (and
    zoom) on the model the page shows."""
    print(f"{label}: N = {n}", file=sys.stderr, flush=True)
    row: dict[str, Any] = {"model": label, "N": n}
    layer = slider(page, "layer")
    run_times = []
    for text in texts:
        page.get_by_label("text", exact=True).fill(text)
        button = page.get_by_role("button", name="Run").first
        button.scroll_into_view_if_needed()
        box = button.bounding_box()          # the click itself, as a person's: not Playwright's actionability waits
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        elapsed, *_ = timed(page, lambda x=x, y=y: page.mouse.click(x, y), f"{layer},", VIEWS)
        run_times.append(elapsed)
    row["run"] = statistics.median(run_times)
    tiles = [((depth - 1 - k) % depth, (k + 1) % heads) for k in range(repeats)]
    focus_times, sizes = [], []
    for tile_layer, tile_head in tiles:
        if (tile_layer, tile_head) == (slider(page, "layer"), slider(page, "head")):
            tile_head = (tile_head + 1) % heads
        x, y = page.evaluate(TILE, [tile_layer, tile_head])
        elapsed, size, cells = timed(page, lambda x=x, y=y: page.mouse.click(x, y), f"{tile_layer},{tile_head},",
                                     ["focused-head", "stage-strip", "where-the-query-looks"])
        focus_times.append(elapsed)
        sizes.append((size, cells))
    row["focus"] = statistics.median(focus_times)
    row["focus_bytes"] = statistics.median(s for s, _ in sizes)
    rested_times = []                # the pointer rests on the tile first (timed waits 0.4 s before the click)
    for k, (tile_layer, tile_head) in enumerate(tiles):
        tile_head = (tile_head + 1 + k) % heads
        if (tile_layer, tile_head) == (slider(page, "layer"), slider(page, "head")):
            tile_head = (tile_head + 1) % heads
        x, y = page.evaluate(TILE, [tile_layer, tile_head])
        page.mouse.move(x, y)
        elapsed, *_ = timed(page, lambda x=x, y=y: page.mouse.click(x, y), f"{tile_layer},{tile_head},",
                            ["focused-head", "stage-strip", "where-the-query-looks"])
        rested_times.append(elapsed)
    row["focus_rested"] = statistics.median(rested_times)
    row["per_cell"] = statistics.median(s / c for s, c in sizes if c)
    query_times = []
    for k in range(repeats):
        query = (n // 3 + 7 * k) % n
        x, y = page.evaluate(CELL, [query, max(query - 1, 0)])
        focus = f"{slider(page, 'layer')},{slider(page, 'head')},"      # at 512 tokens a cell is about a pixel
        elapsed, *_ = timed(page, lambda x=x, y=y: page.mouse.click(x, y), focus, ["where-the-query-looks"])
        query_times.append(elapsed)
    row["query"] = statistics.median(query_times)
    hover_times = []
    for k in range(repeats):                 # the focused head's exact values stay on the server till a hover asks
        query = (n // 2 + 5 * k) % n
        x, y = page.evaluate(CELL, [query, max(query - 2, 0)])
        before = page.evaluate("() => document.querySelector('#focused-head .xattn-view').parentElement.dataset"
                               ".hovered || ''")
        start = time.perf_counter()
        page.mouse.move(x, y)
        page.wait_for_function("(before) => { const d = document.querySelector('#focused-head .xattn-view')"
                               ".parentElement.dataset; return (d.hovered || '') !== before; }", arg=before,
                               timeout=TIMEOUT_MS, polling=10)
        hover_times.append(time.perf_counter() - start)
        page.mouse.move(5, 5)
    row["hover"] = statistics.median(hover_times)
    if zoom:
        zoom_times = []
        for k in range(repeats):
            i0 = 300 + 100 * k
            start = time.perf_counter()
            ranges = {"xaxis.range": [i0 - 200.5, i0 - 100.5], "yaxis.range": [i0 + 99.5, i0 - 0.5]}
            page.evaluate("(r) => Plotly.relayout(document.querySelector('#focused-head .js-plotly-plot'), r)", ranges)
            page.wait_for_function(f"() => {STAMPS}(['focused-head'])['focused-head'].detail === '[{i0},{i0 + 100},"
                                   f"{i0 - 200},{i0 - 100}]'", timeout=TIMEOUT_MS, polling=20)
            zoom_times.append(time.perf_counter() - start)
        row["zoom"] = statistics.median(zoom_times)
    return row


def page_load(browser: Any, url: str, opening: str,
              requests: list[str] | None = None) -> tuple[Any, float, dict[str, float]]:
    """A page opened in a fresh context (an empty cache), the seconds until every Explore view is drawn on the
    opening head, and the page's own marks on the way (MARKS, seconds since it was asked for); the URLs it
    requests are added to `requests`."""
    page = browser.new_context(viewport={"width": 1500, "height": 1100}).new_page()
    page.add_init_script(MARKS)
    if requests is not None:
        page.on("request", lambda request: requests.append(request.url))
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_function(DONE, arg=[VIEWS, {}, opening, VIEWS], timeout=TIMEOUT_MS, polling=20)
    elapsed = time.perf_counter() - start
    return page, elapsed, {what: ms / 1000 for what, ms in page.evaluate("() => window.xattnLoad").items()}


def wait_for(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load-only", action="store_true", help="time page loads only (first, then warm)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    port = app_main.free_port()
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows, rng, runs = [], random.Random(0), []        # runs: (model, texts) for the forward pass
    try:
        wait_for(url)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            default = models.bundled(models.default_name())
            start_at = ui.Controls(default).start(default)              # the card's notable head
            opening = f"{start_at['layer']},{start_at['head']},"
            if args.load_only:
                loads = []
                for _ in range(args.repeats + 1):          # one page at a time: an open one's timers run on
                    page, *timing = page_load(browser, url, opening)
                    page.context.close()
                    loads.append(tuple(timing))
                times = [t for t, _ in loads]
                print(f"page load: first {times[0]:.2f} s, warm server median of {args.repeats} "
                      f"{statistics.median(times[1:]):.2f} s ({', '.join(f'{t:.2f}' for t in times[1:])})")
                for name, rows in (("first", loads[:1]), ("warm median", loads[1:])):
                    print(f"  in the page ({name}, s): " + ", ".join(
                        f"{what} {statistics.median(marks.get(what, float('nan')) for _, marks in rows):.2f}"
                        for what in LOAD_MARKS))
                return
            requests: list[str] = []
            page, load, _ = page_load(browser, url, opening, requests)
            n = len(default.tokenizer.encode(default.example))
            texts = ["".join(rng.sample(default.example, len(default.example))) for _ in range(args.repeats)]
            rows.append({"load": load, **measure(page, default.name, n, default.depth, default.heads, args.repeats,
                                                 texts, zoom=False)})
            runs.append((lambda: default, texts))
            for depth, heads, dim, n, zoom in ((6, 8, 256, 512, False), (2, 4, 64, 2048, True)):
                name = fresh_model(page, depth, heads, dim, n)
                texts = ["".join(rng.choice(models.ASCII) for _ in range(n - 1))        # + the BOS token = n tokens
                         for _ in range(max(1, args.repeats - 1))]
                rows.append(measure(page, name, n, depth, heads, args.repeats, texts, zoom=zoom))
                runs.append((lambda args=(depth, heads, dim, list(ui.FRESH_OPTIONS), 0, n): models.fresh(*args),
                             texts))
            home = urlparse(url).hostname
            elsewhere = [u for u in requests if urlparse(u).scheme in ("http", "https", "ws", "wss")
                         and urlparse(u).hostname != home]
            browser.close()
    finally:
        server.terminate()
        server.wait()

    for row, (model, texts) in zip(rows, runs, strict=True):      # the server is gone: this process has the CPUs
        loaded = model()
        views.explore_run(loaded, texts[0], reuse=False)                                    # warm-up
        row["forward"] = statistics.median(seconds(functools.partial(views.explore_run, loaded, t, reuse=False))
                                           for t in texts)
    busy = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"chromium {CHROMIUM}, server in its own process; median of {args.repeats}; {os.cpu_count()} CPUs, "
          f"load average {busy} at the end; requests beyond {home}: {len(elsewhere)}\n")
    print("| model | N | page load | Run | forward pass | click tile → all views | the same, pointer rested 0.4 s "
          "| click cell → query row | zoom → detail | hover → exact value | bytes per drawn cell (tile click) "
          "| tile-click payload |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        cells = [row["model"], f"{row['N']:,}", f"{row['load']:.2f} s" if "load" in row else "—",
                 f"{row['run']:.2f} s", f"{row['forward']:.2f} s", f"{row['focus']:.2f} s",
                 f"{row['focus_rested']:.2f} s", f"{row['query']:.2f} s",
                 f"{row['zoom']:.2f} s" if "zoom" in row else "—", f"{row['hover'] * 1000:.0f} ms",
                 f"{row['per_cell']:.2f}",
                 f"{row['focus_bytes'] / 1e6:.2f} MB"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
