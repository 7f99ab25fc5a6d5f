"""The Explore tab's text view, predictions, threshold and hover reasons in real chromium: a click on a token
makes it the query (sliders and views follow), the focused head's hover says which mask hides a cell and which
keys F prunes, and the threshold hides cells. Same set-up and skips as test_browser_clicks.py."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from test_browser_clicks import CELL, browser_page, local_only, sliders, title_has  # noqa: F401 -- a fixture

from app import models
from xattn.viz.cells import pruned

from test_browser import DRAW_TIMEOUT_MS

TOKEN = ("(q) => { const t = document.querySelector(`#token-text [data-q=\"${q}\"]`);"
         " t.scrollIntoView({block: 'center'});"
         " const b = t.getBoundingClientRect(); return [b.left + b.width / 2, b.top + b.height / 2]; }")

PANEL = """([id, query, key]) => {
  const gd = document.querySelector('#' + id + ' .js-plotly-plot');
  gd.scrollIntoView({block: 'center'});
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
  return [box.left + xa._offset + xa.l2p(key), box.top + ya._offset + ya.l2p(query)];
}"""


def hover_tip(page: Any, query: int, key: int) -> str:
    """The focused head's tooltip over cell (query, key), once it shows the server's answer (the exact value and
    why the cell is hidden: views.hover_cell) rather than the value its colour stands for."""
    page.mouse.move(5, 5)
    x, y = page.evaluate(CELL, [query, key])
    page.mouse.move(x, y)
    tip = page.locator("#focused-head .xattn-tip")
    tip.wait_for(state="visible", timeout=5_000)
    page.wait_for_function("([q, k]) => { const asked = document.querySelector('#focused-head .xattn-view')"
                           ".parentElement.dataset.hovered; if (!asked) return false;"
                           " const cell = JSON.parse(asked); return cell.query === q && cell.key === k; }",
                           arg=[query, key], timeout=5_000)
    return tip.inner_text()


def test_a_token_click_picks_the_query_and_hover_says_why(browser_page: tuple[Any, list[str]],  # noqa: F811
                                                           server: str, tmp_path: Path) -> None:
    page, requests = browser_page
    shots = Path(os.environ.get("XATTN_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    default = models.bundled(models.default_name())
    ids = default.tokenizer.encode(default.example)
    labels = [f"{t}·{i}" for i, t in enumerate(default.tokenizer.labels(ids))]
    _, trace = default.model.run_with_trace(torch.tensor([ids]))
    notable = default.card["notable_heads"][0]                        # the page opens on the card's first head
    layer, head = notable["layer"], notable["head"]
    title_has(page, "focused-head", f"layer {layer} · head {head}")
    page.locator("#token-text [data-q]").first.wait_for(timeout=DRAW_TIMEOUT_MS)
    page.get_by_text("probability").first.wait_for(timeout=DRAW_TIMEOUT_MS)      # the predictions table

    # a click on token 6 of the text makes it the query: sliders, query row and text view follow
    x, y = page.evaluate(TOKEN, 6)
    page.mouse.click(x, y)
    title_has(page, "where-the-query-looks", f"Where does {labels[6]} look?")
    assert sliders(page) == [layer, head, 6]
    page.wait_for_function("() => document.querySelector('#token-text [data-q=\"6\"]').style.outline.includes('solid')",
                           timeout=DRAW_TIMEOUT_MS)
    page.get_by_text(f"next token after {labels[6]}").first.wait_for(timeout=DRAW_TIMEOUT_MS)

    # hover: a masked cell names its mask, a pruned key says so with its F
    assert "masked by the causal mask" in hover_tip(page, 2, 10)
    cut = pruned(trace, layer)
    q, k = np.argwhere(cut)[0]
    tip = hover_tip(page, int(q), int(k))
    assert "pruned by F" in tip
    f = float(tip.split("F = ")[1].split(")")[0])
    selection = trace["selection"][layer, 0, 0]                        # F: selective attention's head 0
    assert abs(f - float(selection[q, k])) < 0.05 * float(selection.max())

    # a threshold hides cells (drawn white) and says so; the BOS column goes with the sink switch
    box = page.get_by_label("number input for hide attention below", exact=True)
    box.fill("0.2")
    box.press("Tab")                          # the box commits its number when it loses focus
    title_has(page, "focused-head", "attention below 0.2 hidden")
    page.get_by_label("hide the BOS / sink column").check()
    try:
        title_has(page, "focused-head", "attention below 0.2 hidden · sink column hidden")
    except Exception:
        page.screenshot(path=str(shots / "failed-threshold.png"), full_page=True)
        raise
    assert "hidden: the sink column" in hover_tip(page, 8, 0)
    attn = trace["attn"][layer, 0, head].numpy()
    q, k = next((q, k) for q, k in np.argwhere(trace.visible[0].numpy()) if k > 0 and attn[q, k] < 0.2)
    assert "hidden: attention below 0.2" in hover_tip(page, int(q), int(k))
    page.mouse.move(5, 5)
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / "explore-tokens.png"), full_page=True)

    # the other tabs' figures hover the same way: the Masking debugger's effective mask names each hiding mask
    # (2 pad tokens on the left, a sliding window of 4, causal)
    page.get_by_role("tab", name="Masking debugger").click()
    page.wait_for_selector("#effective-mask .js-plotly-plot .heatmaplayer image", state="attached",
                           timeout=DRAW_TIMEOUT_MS)
    for (query, key), says in {(10, 12): "masked (the causal mask)", (12, 3): "masked (the custom mask)",
                               (12, 0): "masked (the padding mask)", (10, 9): "visible"}.items():
        page.mouse.move(5, 5)
        x, y = page.evaluate(PANEL, ["effective-mask", query, key])
        page.mouse.move(x, y)
        tip = page.locator("#effective-mask .xattn-tip")
        tip.wait_for(state="visible", timeout=5_000)
        assert says in tip.inner_text(), (query, key, tip.inner_text())
    assert local_only(requests, server) == []
