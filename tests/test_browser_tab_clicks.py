"""Clicks on the tabs other than Explore, in real chromium (app/heatmap.js role "pick", views.on_pick): a cell of
Selective attention's gate/F figure picks its query, a bar of its F row marks that key in the tab's heatmaps, and
a cell of RealFormer's layer-similarity matrix focuses that layer and head; the sliders and titles follow.

Skips as test_browser.py does.
"""
from __future__ import annotations

import numpy as np
import torch

from app import models

from test_browser import DRAW_TIMEOUT_MS, opened_page

# Where to point the mouse: the centre of cell (row, column) of `id`'s panel `panel` (1 = the first), on its
# category or linear axes; for a bar, half its height.
CELL = """([id, panel, row, col, bar]) => {
  const gd = document.querySelector('#' + id + ' .js-plotly-plot');
  gd.scrollIntoView({block: 'center'});
  const fl = gd._fullLayout, xa = fl['xaxis' + (panel > 1 ? panel : '')], ya = fl['yaxis' + (panel > 1 ? panel : '')];
  const box = gd.getBoundingClientRect();
  return [box.left + xa._offset + xa.l2p(col), box.top + ya._offset + ya.l2p(bar === null ? row : bar / 2)];
}"""
TITLE = "([id, text]) => { const gd = document.querySelector('#' + id + ' .js-plotly-plot');" \
        " return !!gd && !!gd._fullLayout && gd._fullLayout.title.text.includes(text); }"
MARKS = """(id) => (document.querySelector('#' + id + ' .js-plotly-plot').layout.shapes || [])
  .filter(s => s.name === 'xattn-mark').map(s => [s.xref, s.x0, s.yref, s.y0])"""
# The layer, head and query number boxes of the tab on show.
SLIDERS = """() => Object.fromEntries(['layer', 'head', 'query'].map(what => [what,
  [...document.querySelectorAll(`input[aria-label="number input for ${what}"]`)]
    .filter(e => e.offsetParent !== null).map(e => parseInt(e.value, 10))[0]]))"""


def test_clicks_on_selective_and_realformer_move_their_sliders(server: str) -> None:
    default = models.bundled(models.default_name())                # residual and selective attention
    ids = default.tokenizer.encode(default.example)
    labels = [f"{t}·{i}" for i, t in enumerate(default.tokenizer.labels(ids))]
    _, trace = default.model.run_with_trace(torch.tensor([ids]))
    with opened_page(server) as page:
        wait = lambda id, text: page.wait_for_function(TITLE, arg=[id, text], timeout=DRAW_TIMEOUT_MS)  # noqa: E731

        # Selective attention: a cell (query 6, key 2) of the gate panel picks query 6
        page.get_by_role("tab", name="Selective attention").click()
        wait("F-for-the-chosen-query", "Where does")
        wait("gate-head-F-and-pruned-keys", "Selective attention")
        layer = page.evaluate(SLIDERS)["layer"]
        page.mouse.click(*page.evaluate(CELL, ["gate-head-F-and-pruned-keys", 1, 6, 2, None]))
        wait("F-for-the-chosen-query", f"Where does {labels[6]} look?")
        assert page.evaluate(SLIDERS)["query"] == 6
        # a bar of query 6's F row (its largest F) marks that key column in the tab's query × key figures
        f = np.nan_to_num(trace.drawable("selection")[layer, 0, 0, 6].numpy())
        key = int(f.argmax())
        assert f[key] > 0
        page.wait_for_timeout(400)
        page.mouse.click(*page.evaluate(CELL, ["F-for-the-chosen-query", 1, 0, key, float(f[key])]))
        page.wait_for_function(f"() => ({MARKS})('gate-head-F-and-pruned-keys').length === 3", timeout=5_000)
        marks = page.evaluate(MARKS, "gate-head-F-and-pruned-keys")
        assert sorted(m[0] for m in marks) == ["x", "x2", "x3"] and {m[1] for m in marks} == {key - 0.5}

        # RealFormer: the bottom-right cell of the consecutive-layers matrix (layers L−2 → L−1, the last head)
        # focuses the last layer and head
        page.get_by_role("tab", name="RealFormer").click()
        wait("layer-similarity-residual-on", "similarity")
        last_layer, last_head = default.depth - 1, default.heads - 1
        page.mouse.click(*page.evaluate(CELL, ["layer-similarity-residual-on", 1, default.depth - 2, last_head,
                                               None]))
        wait("scores-residual-sum", f"layer {last_layer} · head {last_head}")
        wait("attention-residual-on-off", f"layer {last_layer} · head {last_head}")
        shown = page.evaluate(SLIDERS)
        assert (shown["layer"], shown["head"]) == (last_layer, last_head)
