"""The Generate tab in real chromium: opening it generates, a budget-pruned run strikes through what the chosen
layer dropped, moving the step scrubber redraws the new token's row with the library's values, and Play moves on.

Skips without chromium or Playwright, unless XATTN_REQUIRE_BROWSER=1 (CI). The screenshot goes to a temporary
folder, or to $XATTN_SCREENSHOTS (the README's comes from assets/screenshots, see README, "Generate").
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import xattn
from app import generate, models
from xattn import viz

from test_browser import DRAW_TIMEOUT_MS, need_browser, opened_page

ROW = "#where-the-new-token-looks .js-plotly-plot"
BARS = f"() => {{ const gd = document.querySelector('{ROW}'); " \
       "return {title: gd._fullLayout.title.text, y: Array.from(gd._fullData[0].y, v => v === null ? NaN : v)}; }"


def row_title_has(page: Any, text: str) -> None:
    page.wait_for_function("([sel, text]) => { const gd = document.querySelector(sel);"
                           " return gd && gd._fullLayout && gd._fullLayout.title.text.includes(text); }",
                           arg=[ROW, text], timeout=DRAW_TIMEOUT_MS)


def test_generate_scrub_and_play(server: str, tmp_path: Path) -> None:
    need_browser()                         # skip before generating, not at the page
    shots = Path(os.environ.get("XATTN_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    default = models.bundled(models.default_name())
    steps = generate.DEFAULT_STEPS
    gen = default.model.generate(torch.tensor(default.tokenizer.encode(default.example)), steps,
                                 prune=xattn.Prune(budget=generate.DEFAULT_BUDGET))

    with opened_page(server, 1200, 1000) as page:
        page.get_by_role("tab", name="Generate").click()              # opening the tab generates
        row_title_has(page, f"Step {steps - 1}:")
        tab = page.locator("#generate-tab")                            # the layer and head the tab opened on
        layer, head = (int(tab.get_by_label(f"number input for {what}", exact=True).input_value())
                       for what in ("layer", "head"))
        page.get_by_label("budget", exact=True).check()
        page.get_by_role("button", name="Generate", exact=True).click()
        page.wait_for_selector("#generated-text [data-pruned]", timeout=DRAW_TIMEOUT_MS)
        struck = page.eval_on_selector_all("#generated-text [data-pruned]",
                                           "spans => spans.map(s => Number(s.dataset.position))")
        assert struck == gen.dropped[steps - 1][layer, 0].nonzero().flatten().tolist()

        before = page.evaluate(BARS)
        box = page.get_by_label("number input for step", exact=True)
        box.fill("2")
        box.press("Enter")                                             # the scrubber moves: step 2 is drawn
        row_title_has(page, "Step 2:")
        after = page.evaluate(BARS)
        np.testing.assert_allclose(np.array(after["y"], dtype=float), viz.step_row(gen, 2, layer, head),
                                   rtol=1e-5, atol=1e-6)
        assert len(after["y"]) == len(before["y"]) - (steps - 1 - 2), "step 2 reads fewer keys"
        page.wait_for_timeout(500)
        path = shots / "generate.png"
        page.locator("#generate-tab").screenshot(path=str(path))
        Image.open(path).convert("RGB").quantize(colors=64).save(path, optimize=True)   # a small PNG

        page.get_by_role("button", name=generate.PLAY).click()         # Play: one step per tick
        row_title_has(page, "Step 3:")
        page.get_by_role("button", name=generate.PAUSE).click()
