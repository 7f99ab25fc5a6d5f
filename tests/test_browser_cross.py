"""The Cross-attention tab in a real browser (Debian chromium through Playwright): build a fresh encoder–decoder
with the form's box, open the tab, and the focused cross-attention head is drawn with decoder (target) tokens
down, source tokens across and the library's values.

Skips without chromium or Playwright, unless XATTN_REQUIRE_BROWSER=1 (CI), where that is a failure.
The screenshot goes to a temporary folder, or to $XATTN_SCREENSHOTS (the README's comes from assets/screenshots).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from app import cross, models

from conftest import form_options
from test_browser import DRAW_TIMEOUT_MS, drawn_heatmap, fill_fields, need_browser, opened_page

SIZES = {"depth": 2, "heads": 2, "dim": 32, "max_seq_len": 64}


def test_cross_attention_tab_draws_a_fresh_encoder_decoder(server: str, tmp_path: Path) -> None:
    need_browser()                         # skip before building a model, not at the page
    shots = Path(os.environ.get("XATTN_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    loaded = models.fresh(SIZES["depth"], SIZES["heads"], SIZES["dim"], form_options(residual=True), 0,
                          SIZES["max_seq_len"], encoder_decoder=True)
    typed = models.bundled(models.default_name()).example       # the page keeps the text: the new model reads it
    source, target = loaded.tokenizer.encode(cross.SOURCE_EXAMPLE), loaded.tokenizer.encode(typed)
    _, trace = loaded.model.run_with_trace(torch.tensor([source]), torch.tensor([target]))

    with opened_page(server) as page:
        drawn_heatmap(page, "focused-head", shots)                 # the page has loaded and explored
        page.get_by_text("Load another model").click()
        fill_fields(page, SIZES)
        page.get_by_label("selective attention", exact=True).uncheck()   # no side of an encoder–decoder takes it
        page.get_by_label("encoder–decoder (XTransformer)").check()
        page.get_by_role("button", name="Build fresh model").click()
        page.wait_for_function("(name) => [...document.querySelectorAll('input')].some(i => i.value === name)",
                               arg=loaded.name, timeout=DRAW_TIMEOUT_MS)   # the model dropdown shows it
        page.wait_for_timeout(1000)                                # the Explore step after a build skips it
        assert not page.get_by_text("is an encoder–decoder: it reads a source and a target").count(), \
            "building an encoder–decoder must not answer with the single-text views' refusal"
        page.get_by_role("tab", name="Cross-attention").click()
        shown = drawn_heatmap(page, "focused-cross-attention-head", shots)
        assert shown["painted"] > 100, "the heatmap image is empty"
        assert (shown["rows"], shown["cols"]) == (len(target), len(source))   # decoder down, source across
        layer = loaded.depth - 1                                    # the sliders land on the last layer, head 0
        assert f"cross-attention layer {layer} · head 0" in shown["title"]
        np.testing.assert_allclose(np.array(shown["exact"], dtype=float),
                                   trace.cross.drawable("attn")[layer, 0, 0].numpy(), rtol=1e-5, atol=1e-6)
        drawn_heatmap(page, "encoder-self-attention", shots)
        page.wait_for_timeout(500)                                  # let the other plots of the tab settle
        page.screenshot(path=str(shots / "cross.png"), full_page=True)
