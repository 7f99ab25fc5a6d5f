"""The app's text view, predictions, threshold and sink switch (app/views.py), over HTTP with gradio_client and
as plain functions, checked against the model run directly."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

pytest.importorskip("gradio")
import gradio as gr  # noqa: E402
from gradio_client import Client  # noqa: E402

import xattn  # noqa: E402
from app import models, views  # noqa: E402
from xattn.viz.payload import HIDDEN_CODE  # noqa: E402

from test_app import array, exact, traces  # noqa: E402


def softmax_top(logits: torch.Tensor, k: int = 5) -> list[float]:
    row = logits.double()
    p = torch.exp(row - row.max()) / torch.exp(row - row.max()).sum()
    return sorted(p.tolist(), reverse=True)[:k]


def percents(markdown: str) -> list[list[float]]:
    """The probability columns of every table in `markdown`, one list per table."""
    tables = [re.findall(r"\| ([\d.]+)% \|", block) for block in markdown.split("\n\n") if "probability" in block]
    return [[float(p) / 100 for p in table] for table in tables]


def test_threshold_and_sink_hide_cells_of_every_explore_heatmap(client: Client, default: models.Loaded) -> None:
    ids = default.tokenizer.encode(default.example)
    _, trace = default.model.run_with_trace(torch.tensor([ids]))
    layer, head, query = 1, 2, len(ids) - 1
    grid, focused, strip, _, _ = client.predict(default.name, default.example, "attn", layer, head, query, 0.2, True,
                                                api_name="/explore")
    attn = trace["attn"][layer, 0, head].abs().numpy()
    visible = trace.visible[0].numpy()
    hidden = visible & (attn < 0.2)
    hidden[:, 0] = True                                                   # the BOS column
    heat = traces(focused)[0]
    assert ((array(heat["z"]) == HIDDEN_CODE) == hidden).all()
    kept = visible & ~hidden
    np.testing.assert_allclose(exact(heat)[kept], attn[kept], rtol=1e-5)  # not renormalised
    tile = traces(grid)[layer * default.heads + head]
    assert ((array(tile["z"]) == HIDDEN_CODE) == hidden).all()
    assert all(((array(t["z"]) == HIDDEN_CODE) == hidden).all() for t in traces(strip))   # every stage's panel
    # off again: nothing hidden
    _, plain, *_ = client.predict(default.name, default.example, "attn", layer, head, query, 0, False,
                                  api_name="/explore")
    assert not (array(traces(plain)[0]["z"]) == HIDDEN_CODE).any()
    with pytest.raises(gr.Error, match="threshold"):
        views.explore(None, default.name, default.example, "attn", layer, head, query, 1.5, False)


def test_text_view_and_predictions_follow_the_query(client: Client, default: models.Loaded) -> None:
    ids = default.tokenizer.encode(default.example)
    logits, trace = default.model.run_with_trace(torch.tensor([ids]))
    layer, head, query = 2, 1, 8
    shown, table = client.predict(default.name, default.example, layer, head, query, False, 0, False,
                                  api_name="/explore_text")
    row = trace["attn"][layer, 0, head, query].numpy()
    alphas = [float(a) for a in re.findall(r"rgba\(37,99,235,([\d.]+)\)", shown)]
    np.testing.assert_allclose(alphas, row[: query + 1] / row[: query + 1].max(), atol=1e-3)
    assert shown.count("masked (causal)") == len(ids) - query - 1 and "&lt;bos&gt;" in shown
    assert f"after `{default.tokenizer.labels(ids)[query]}·{query}`" in table
    np.testing.assert_allclose(percents(table)[0], softmax_top(logits[0, query]), atol=5e-4)
    averaged, _ = client.predict(default.name, default.example, layer, head, query, True, 0, False,
                                 api_name="/explore_text")
    assert "the mean of 4 heads" in averaged and averaged != shown


def test_a_token_click_picks_the_query(default: models.Loaded) -> None:
    """The text view's `pick` carries only the query (and what the page shows): the head stays, the query moves."""
    layer, head, query, *_ = views.explore_pick(None, default.name, default.example, "attn", 2, 1, 5,
                                                gr.EventData(None, {"query": 3, "shown": {}}), 0.0, False)
    assert (layer, head, query) == (2, 1, 3)


def test_masking_and_compare_show_predictions(client: Client, default: models.Loaded) -> None:
    ids = default.tokenizer.encode(default.example)
    *_, info = client.predict(default.name, default.example, "block-diagonal", 4, "", 2, "right", 0, 0,
                              api_name="/masking")
    padded = torch.tensor([ids + [default.tokenizer.pad_id] * 2])
    pad = torch.tensor([[True] * len(ids) + [False] * 2])
    with_mask = default.model(padded, mask=pad, attn_mask=xattn.masks.block_diagonal(len(ids) + 2, 4))
    without = default.model(padded, mask=pad)
    before, after = percents(info)
    np.testing.assert_allclose(before, softmax_top(without[0, len(ids) - 1]), atol=5e-4)
    np.testing.assert_allclose(after, softmax_top(with_mask[0, len(ids) - 1]), atol=5e-4)
    assert "without the custom mask" in info and "with the custom mask" in info
    other = next(n for n in models.bundled_names() if n != default.name
                 and models.bundled(n).tokenizer == default.tokenizer)
    *_, summary = client.predict(default.name, other, default.example, "attn", 0, 0, api_name="/compare")
    a, b = percents(summary)
    np.testing.assert_allclose(a, softmax_top(default.model(torch.tensor([ids]))[0, -1]), atol=5e-4)
    np.testing.assert_allclose(b, softmax_top(models.bundled(other).model(torch.tensor([ids]))[0, -1]), atol=5e-4)
