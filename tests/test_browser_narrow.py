"""The app in an 820-px-wide chromium window, one page for the whole module: nothing in any plot overlaps
(titles, subplot titles, colour bars, legends, tick labels, read from Plotly's DOM), and the page answers as a
new user expects: arrow keys and Enter run a view, a refusal keeps the figures and says why in place, a model
switch keeps text the new model can read, the mask box follows the preset.

A screenshot of each tab goes to a temporary folder, or to $XATTN_SCREENSHOTS. Skips as test_browser.py does.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app import models

from test_browser import DRAW_TIMEOUT_MS, fill_fields, opened_page

WIDTH = 820
# Every plot's boxes that must not overlap one another: the title, subplot titles and other annotations, colour
# bars, the legend; and within each axis, neighbouring tick labels. Returns what overlaps, by name.
OVERLAPS = r"""(id) => {
  const gd = document.querySelector('#' + id + ' .js-plotly-plot');
  if (!gd) return ['no plot in #' + id];
  const box = e => e.getBoundingClientRect();
  const named = [];
  const union = els => els.map(box).filter(r => r.width > 0 && r.height > 0).reduce((u, r) => ({
    left: Math.min(u.left, r.left), right: Math.max(u.right, r.right), top: Math.min(u.top, r.top),
    bottom: Math.max(u.bottom, r.bottom), width: 1, height: 1}), {left: 1e9, right: -1e9, top: 1e9, bottom: -1e9,
                                                                 width: 0, height: 0});
  const add = (what, el) => { const r = Array.isArray(el) ? union(el) : box(el);
                              if (r.width > 0 && r.height > 0) named.push([what, r]); };
  gd.querySelectorAll('.g-gtitle .gtitle').forEach(e => add('title', e));
  gd.querySelectorAll('.infolayer .annotation').forEach(e => add('annotation "' + e.textContent.slice(0, 30) + '"', e));
  // a colour bar as drawn: its bar, ticks and title (its background box is transparent)
  gd.querySelectorAll('.infolayer .colorbar').forEach((e, k) => add('colour bar ' + k, e.querySelector('.cbfills')
    ? [...e.children].filter(c => !c.classList.contains('cbbg')) : e));
  gd.querySelectorAll('.infolayer .legend').forEach(e => add('legend', e));
  document.querySelectorAll('#' + id + ' [data-testid="block-label"]').forEach(e => add('slot label', e));
  const hit = (a, b) => Math.min(a.right, b.right) - Math.max(a.left, b.left) > 1
                        && Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 1;
  const found = [];
  for (let i = 0; i < named.length; i++)
    for (let j = i + 1; j < named.length; j++)
      if (hit(named[i][1], named[j][1])) found.push(named[i][0] + ' × ' + named[j][0]);
  // Neighbouring tick labels: upright ones must not overlap; rotated ones (whose boxes overlap by design) must
  // stand at least a line's height apart along the axis.
  gd.querySelectorAll('.xaxislayer-above, .yaxislayer-above').forEach(layer => {
    const texts = [...layer.querySelectorAll('.xtick text, .ytick text')].filter(e => box(e).width > 0);
    const along = layer.classList.contains('xaxislayer-above') ? 'left' : 'top';
    const ticks = texts.map(e => ({r: box(e), turned: /rotate\((?!0[,)])/.test(e.getAttribute('transform') || ''),
                                   size: parseFloat(getComputedStyle(e).fontSize)}))
                       .sort((a, b) => a.r[along] - b.r[along]);
    for (let k = 1; k < ticks.length; k++) {
      const [a, b] = [ticks[k - 1], ticks[k]];
      const clash = a.turned ? b.r[along] - a.r[along] < 0.9 * a.size : hit(a.r, b.r);
      if (clash) { found.push('tick labels of ' + layer.getAttribute('class')); break; }
    }
    ticks.forEach(t => named.filter(([what]) => what.startsWith('colour bar') || what === 'title').forEach(
      ([what, r]) => { if (hit(t.r, r)) found.push('a tick label × ' + what); }));
  });
  const outer = box(document.querySelector('#' + id)), svg = box(gd.querySelector('.main-svg'));
  if (svg.right > outer.right + 1) found.push('plot wider than its slot by ' + (svg.right - outer.right) + ' px');
  named.filter(([what, r]) => what !== 'slot label' && (r.right > svg.right + 1 || r.left < svg.left - 1
                                                           || r.top < svg.top - 1)).forEach(
    ([what]) => found.push(what + ' is cut off at the edge'));
  return [...new Set(found)];
}"""
PAINTED = "(id) => !!document.querySelector('#' + id + ' .js-plotly-plot .heatmaplayer image')"
TITLE = "(id) => document.querySelector('#' + id + ' .js-plotly-plot')._fullLayout.title.text"
# how far plotly widened a plot's right margin for what it holds (its colour bars): a second draw of the figure
WIDENED = "(id) => { const fl = document.querySelector('#' + id + ' .js-plotly-plot')._fullLayout; " \
          "return fl._size.r - fl.margin.r; }"
# tab → the plots it draws (element ids)
TABS = {
    "Explore": ["layers-heads", "focused-head", "stage-strip", "where-the-query-looks"],
    "RealFormer": ["scores-residual-sum", "attention-residual-on-off", "layer-similarity-residual-on",
                   "layer-similarity-residual-off"],
    "Selective attention": ["gate-head-F-and-pruned-keys", "logits-before-and-after-F", "F-for-the-chosen-query",
                            "F-in-every-layer-gate-head"],
    "Masking debugger": ["effective-mask", "what-each-mask-removes", "attention-with-without-the-custom-mask"],
    "Compare": ["model-A", "model-B", "A-B"],
}


@pytest.fixture(scope="module")
def narrow(server: str) -> Iterator[Any]:
    """One chromium page on the app, 820 px wide, for the whole module."""
    with opened_page(server, WIDTH, 1000) as page:
        page.wait_for_function(PAINTED, arg="focused-head", timeout=DRAW_TIMEOUT_MS)
        yield page


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("XATTN_SCREENSHOTS") or tmp_path_factory.mktemp("narrow"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_title(page: Any, elem_id: str, text: str) -> None:
    page.wait_for_function("([id, text]) => { const gd = document.querySelector('#' + id + ' .js-plotly-plot');"
                           " return gd && gd._fullLayout && gd._fullLayout.title.text.includes(text); }",
                           arg=[elem_id, text], timeout=DRAW_TIMEOUT_MS)


def drawn(page: Any, ids: list[str]) -> None:
    """Wait until every plot of `ids` holds a figure, and the page is idle."""
    for elem_id in ids:
        page.wait_for_function("(id) => { const gd = document.querySelector('#' + id + ' .js-plotly-plot');"
                               " return gd && gd._fullLayout && gd._fullData && gd._fullData.length > 0; }",
                               arg=elem_id, timeout=DRAW_TIMEOUT_MS)
    page.wait_for_function("() => !document.querySelector('.progress-text, .eta-bar')", timeout=DRAW_TIMEOUT_MS)
    page.wait_for_timeout(300)


def test_every_tab_at_820_px_overlaps_nothing(narrow: Any, shots: Path) -> None:
    page, both = narrow, models.bundled(models.default_name())
    problems = {}
    for tab, ids in TABS.items():
        page.get_by_role("tab", name=tab).click()
        drawn(page, ids)
        page.screenshot(path=str(shots / f"narrow-{tab.split()[0].lower()}.png"), full_page=True)
        problems.update({f"{tab} / {elem_id}": found for elem_id in ids
                         if (found := page.evaluate(OVERLAPS, elem_id))})
        problems.update({f"{tab} / {elem_id}": f"right margin widened by {extra} px" for elem_id in ids
                         if (extra := page.evaluate(WIDENED, elem_id)) > 0})
    assert not problems, problems
    assert both.name in page.evaluate(TITLE, "model-A")                       # Compare names its models


def test_arrow_keys_and_enter_run_the_view(narrow: Any) -> None:
    page = narrow
    page.get_by_role("tab", name="Explore").click()
    head = page.get_by_label("range slider for head").first
    start = int(head.input_value())
    head.focus()
    page.keyboard.press("ArrowLeft" if start > 0 else "ArrowRight")
    moved = start - 1 if start > 0 else start + 1
    wait_title(page, "focused-head", f"head {moved}")
    box = page.get_by_label("text", exact=True).first
    box.fill("a=1;b=2;?a")
    box.press("Enter")
    page.wait_for_function("(id) => document.querySelector('#' + id + ' .js-plotly-plot')._fullData"
                           ".find(d => d.type === 'heatmap').z.length === 11", arg="focused-head",
                           timeout=DRAW_TIMEOUT_MS)


def test_a_refusal_keeps_the_figures_and_is_said_in_place(narrow: Any) -> None:
    page = narrow
    page.get_by_role("tab", name="Explore").click()
    before = page.evaluate(TITLE, "focused-head")
    box = page.get_by_label("text", exact=True).first
    box.fill("a=1;§")
    box.press("Enter")
    said = page.locator("p", has_text="Not drawn:").first
    said.wait_for(timeout=DRAW_TIMEOUT_MS)
    assert "cannot read this text" in said.inner_text()
    assert page.evaluate(TITLE, "focused-head") == before and page.evaluate(PAINTED, "focused-head")
    assert not page.locator("#focused-head .error").is_visible()            # no error veil over the figure


def test_a_model_switch_keeps_text_it_can_read(narrow: Any) -> None:
    page = narrow
    box = page.get_by_label("text", exact=True).first
    box.fill("b=4;?b")
    brackets = models.bundled("brackets-both").example
    for name, expected in (("variables-baseline", "b=4;?b"), ("brackets-both", brackets)):
        page.get_by_label("model", exact=True).click()
        page.get_by_role("option", name=name, exact=True).click()
        page.wait_for_function("([text]) => [...document.querySelectorAll('textarea')].some(t => t.value === text)",
                               arg=[expected], timeout=DRAW_TIMEOUT_MS)
        assert box.input_value() == expected
    page.get_by_label("model", exact=True).click()
    page.get_by_role("option", name=models.default_name(), exact=True).click()
    page.wait_for_function("([text]) => [...document.querySelectorAll('textarea')].some(t => t.value === text)",
                           arg=[models.bundled(models.default_name()).example], timeout=DRAW_TIMEOUT_MS)


def test_the_mask_box_follows_the_preset_size(narrow: Any) -> None:
    page = narrow
    page.get_by_role("tab", name="Masking debugger").click()
    drawn(page, TABS["Masking debugger"])
    box = page.get_by_label("window / prefix / block size", exact=True)
    box.fill("1")
    box.press("Enter")
    loaded = models.bundled(models.default_name())
    n = len(loaded.tokenizer.encode(loaded.example)) + 2
    rows = "\n".join("".join("1" if abs(i - j) <= 1 else "0" for j in range(n)) for i in range(n))
    page.wait_for_function("([text]) => [...document.querySelectorAll('textarea')].some(t => t.value === text)",
                           arg=[rows], timeout=DRAW_TIMEOUT_MS)
    assert page.get_by_text(f"free edit: {n} rows of {n} digits").first.is_visible()


def test_a_thousand_tokens_and_a_long_model_name_fit(narrow: Any, shots: Path) -> None:
    page = narrow
    page.get_by_text("Load another model").click()
    fill_fields(page, {"depth": 1, "heads": 1, "dim": 8, "max_seq_len": 1024})
    page.get_by_role("button", name="Build fresh model").click()
    name = page.wait_for_function("() => { const i = document.querySelector('input[aria-label=\"model\"]');"
                                  " return i && i.value.startsWith('fresh 1×1') ? i.value : null; }",
                                  timeout=DRAW_TIMEOUT_MS).json_value()
    assert len(name) > 60                                                      # a long name, all its options
    page.get_by_role("tab", name="Explore").click()
    box = page.get_by_label("text", exact=True).first
    box.fill(("the quick brown fox jumps over the lazy dog; " * 12 + "a=1;b=2;c=3;" * 40)[:999])   # a long run
    box.press("Enter")                                                                   # with no space in it
    page.locator("p", has_text="1000 tokens").first.wait_for(timeout=DRAW_TIMEOUT_MS)
    drawn(page, TABS["Explore"])
    assert page.evaluate("() => { const text = document.querySelector('#token-text .xattn-tokens');"
                         " return text.scrollWidth <= text.clientWidth; }"), "the text view runs past its width"
    page.screenshot(path=str(shots / "narrow-explore-1000.png"), full_page=True)
    problems = {elem_id: found for elem_id in TABS["Explore"] if (found := page.evaluate(OVERLAPS, elem_id))}
    page.get_by_role("tab", name="Compare").click()
    page.get_by_label("model B", exact=True).click()
    page.get_by_role("option", name=name, exact=True).click()         # the same model: the same tokens
    wait_title(page, "A-B", "B: fresh 1×1")
    drawn(page, TABS["Compare"])
    page.screenshot(path=str(shots / "narrow-compare-long-names.png"), full_page=True)
    problems.update({elem_id: found for elem_id in TABS["Compare"] if (found := page.evaluate(OVERLAPS, elem_id))})
    assert not problems, problems
