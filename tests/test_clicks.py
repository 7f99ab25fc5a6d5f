"""The Explore tab's click and zoom handlers as plain functions (app/views.py): what a click payload from the page
(app/heatmap.js) does to the sliders and the views, and what a zoom brings back."""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("gradio")
import gradio as gr  # noqa: E402

from app import heatmap, limits, models, views  # noqa: E402
from app.heatmap import PlotlyView  # noqa: E402
from xattn import masks, viz  # noqa: E402


def event(**data: Any) -> gr.EventData:
    return gr.EventData(None, data)


def heat(value: Any) -> dict:
    """The first heatmap of a figure the way the page receives it."""
    sent = PlotlyView("figure", render=False).postprocess(value)
    return next(t for t in json.loads(sent.plot)["data"] if t["type"] == "heatmap")


def exact(trace: dict) -> np.ndarray:
    from test_app import array
    return array(trace["customdata"]).astype(np.float64)


@pytest.fixture(scope="module")
def default() -> models.Loaded:
    return models.bundled(models.default_name())


@contextlib.contextmanager
def no_free_slot() -> Iterator[None]:
    """Every slot outside Gradio's queue taken (views.FOCUS_SLOTS), as by as many requests as the queue runs."""
    taken = [views.FOCUS_SLOTS.acquire(blocking=False) for _ in range(limits.CONCURRENCY)]
    try:
        assert all(taken)
        yield
    finally:
        for _ in taken:
            views.FOCUS_SLOTS.release()


def explore_args(loaded: models.Loaded, layer: int = 2, head: int = 0, query: int = 5) -> list[Any]:
    return [None, loaded.name, loaded.example, "attn", layer, head, query]


def test_a_grid_tile_click_focuses_its_layer_head_and_query(default: models.Loaded) -> None:
    layer, head, query, grid, focused, strip, row, info = views.explore_pick(
        *explore_args(default), event(layer=0, head=3, query=9, key=4))
    assert (layer, head, query) == (0, 3, 9)
    ids = default.tokenizer.encode(default.example)
    _, trace = default.model.run_with_trace(torch.tensor([ids]))
    assert "customdata" not in heat(focused)            # exact values stay on the server: see the next test
    focused, strip = heatmap.as_figure(focused), heatmap.as_figure(strip)     # kept JSON (views.head_views)
    assert focused.layout.meta["xattn"]["focus"] == strip.layout.meta["xattn"]["focus"] == \
        row.layout.meta["xattn"]["focus"]                # sent with the click's focus, its query too
    assert "layer 0 · head 3" in focused.layout.title.text and "layer 0 · head 3" in strip.layout.title.text
    assert "Where does" in row.layout.title.text and "·9 look" in row.layout.title.text
    assert row.layout.meta["xattn"]["focus"] == {**row.layout.meta["xattn"]["focus"], "layer": 0, "head": 3,
                                                 "query": 9}
    # nothing said about what the page shows: the grid is drawn too, its tiles knowing their layer and head
    tiles = [t for t in grid.data if t.type == "heatmap"]
    assert [(t.meta["layer"], t.meta["head"]) for t in tiles] == [(lr, h) for lr in range(default.depth)
                                                                    for h in range(default.heads)]


def test_a_click_gets_its_views_straight_from_the_server(default: models.Loaded) -> None:
    """views.focus_views answers a click the page makes on a view it drew (with that view's focus) with the same
    figures and text view the click's request would bring, JSON as the slots send them; the request itself, told
    they are drawn, then brings only the sliders and summary."""
    opened = views.explore_page(None, *explore_args(default)[1:])
    focus = heatmap.meta_of(opened[1])["focus"]
    assert focus["stage"] == "attn" and focus["threshold"] == 0.0 and focus["hide_sink"] is False
    click = {**{k: focus[k] for k in ("run", "stage", "threshold", "hide_sink")}, "averaged": False,
             "layer": 1, "head": 2, "query": 9, "shown": {"grid": focus["grid"], "head": focus["key"]}}
    whole = views.focus_views(click)
    answer = whole["views"]
    expected = views.explore_click(*explore_args(default), event(**click))
    assert expected[:3] == [1, 2, 9] and answer["grid"] is None                 # the grid shows the same: kept
    sent = [json.loads(PlotlyView("figure", render=False).postprocess(figure).plot) for figure in expected[4:7]]
    got = {role: json.loads(answer[role]["plot"]) for role in ("head", "strip", "row")}
    labels = got["row"]["layout"]["meta"]["xattn"]["labels"]
    for role in ("head", "strip"):         # one label list per answer: the row's (app/heatmap.js puts it back)
        assert got[role]["layout"]["meta"]["xattn"]["labels"] == heatmap.ROW_LABELS
        got[role]["layout"]["meta"]["xattn"]["labels"] = labels
    for role, plot in zip(("head", "strip", "row"), sent, strict=True):
        assert got[role] == plot, role                                          # hover keys and all
    assert answer["text"] == expected[7]
    # asked again for another query of that head (the page asked while the pointer rested on the tile): its head
    # and strip are left as they are, the row and text view follow the query
    again = views.focus_views({**click, "query": 4, "shown": {"grid": focus["grid"], "head": whole["head"]}})
    assert again["head"] == whole["head"] and again["views"]["head"] is None and again["views"]["strip"] is None
    assert "·4 look?" in json.loads(again["views"]["row"]["plot"])["layout"]["title"]["text"]
    assert 'data-query="4"' in again["views"]["text"]

    drawn = views.explore_click(*explore_args(default), event(**click, drawn=True))
    assert drawn[:3] == [1, 2, 9] and all(isinstance(v, dict) and v.get("__type__") == "update"
                                          for v in drawn[3:7])
    assert drawn[7].get("__type__") == "update" and drawn[8:] == expected[8:]   # the text view drawn already
    # refused: a run no longer kept, a head past the model's, a malformed click (the request then says why)
    assert views.focus_views({**click, "run": "0" * 16}) == {}
    assert views.focus_views({**click, "head": default.heads}) == {}
    assert views.focus_views({**click, "threshold": 2}) == {} and views.focus_views(None) == {}
    # outside Gradio's queue, but no more at once than it runs: a click finding no slot goes through the queue
    with no_free_slot():
        assert views.focus_views(click) == {}
    assert views.focus_views(click)["views"]["head"] is not None


def test_a_run_of_a_bundled_model_gets_its_views_straight_from_the_server(default: models.Loaded) -> None:
    """views.run_views answers the page's Run of a bundled model with the views and text view its request would
    bring, JSON as the slots send them; the request, its screen naming what was drawn, then brings the predictions
    and summary alone. A session's own model, a refusal or no free slot: {} (the request does everything)."""
    text = default.example[:-3]
    inputs = [default.name, text, "attn", 1, 2, 7, 0.0, False, True]
    asked = dict(zip(("model", "text", "stage", "layer", "head", "query", "threshold", "hide_sink", "averaged"),
                     inputs, strict=True), screen='{"head": 300, "strip": 120}')
    answer = views.run_views(asked)
    expected = views.explore_page(None, *inputs, asked["screen"])
    sent = [json.loads(PlotlyView("figure", render=False).postprocess(figure).plot) for figure in expected[:4]]
    for role, plot in zip(("grid", "head", "strip", "row"), sent, strict=True):
        assert json.loads(answer["views"][role]["plot"]) == plot, role
    assert answer["views"]["text"] == expected[4] and "the mean of" in expected[4]
    screen = json.dumps({"head": 300, "strip": 120, "drawn": answer["drawn"]})
    drawn = views.explore_page(None, *inputs, screen)
    assert all(v.get("__type__") == "update" for v in drawn[:5]) and drawn[5:] == expected[5:]
    moved = views.explore_page(None, *inputs[:5], 8, *inputs[6:], screen)     # another query than drawn: all
    assert heatmap.meta_of(moved[1])["focus"]["query"] == 8 and isinstance(moved[4], str)
    fresh = models.fresh(1, 2, 16, ["causal"], 0, 64)          # a model of no session the request names: unknown
    assert views.run_views({**asked, "model": fresh.name}) == {}
    assert views.run_views({**asked, "query": 99}) == {} and views.run_views({**asked, "text": ""}) == {}
    assert views.run_views(None) == {} and views.run_views({"model": default.name}) == {}
    with no_free_slot():
        assert views.run_views(asked) == {}


def test_a_run_of_a_session_model_gets_its_views_by_the_key_only_its_page_knows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """run_views finds a session's own model by its key (models.share: the page is told the keys of its session's
    models): the views are its request's. Without the key, with another model's key or another name, or a Run over
    RUN_VIEWS_CELLS (which shows its progress in its request): {}. Held weakly there: once let go, it is gone."""
    fresh, other = models.fresh(1, 2, 16, ["causal"], 0, 64), models.fresh(1, 2, 16, ["causal"], 1, 64)
    key = models.share(fresh)
    assert models.share(other) != key and len(key) >= 20          # each model a key of its own, not guessable
    text = "a=1;b=2;?a"
    inputs = [fresh.name, text, "attn", 0, 1, 5, 0.0, False, False]
    asked = dict(zip(views.RUN_FIELDS, inputs, strict=True), screen='{"head": 300, "strip": 120}', key=key)
    answer = views.run_views(asked)
    expected = views.explore_page({fresh.name: fresh}, *inputs, asked["screen"])
    sent = [json.loads(PlotlyView("figure", render=False).postprocess(figure).plot) for figure in expected[:4]]
    for role, plot in zip(("grid", "head", "strip", "row"), sent, strict=True):
        assert json.loads(answer["views"][role]["plot"]) == plot, role
    assert answer["views"]["text"] == expected[4]
    for wrong in ({"key": None}, {"key": other.key}, {"key": 7}, {"model": other.name + "!"}):
        assert views.run_views({**asked, **wrong}) == {}, wrong
    cells = fresh.depth * fresh.heads * len(fresh.tokenizer.encode(text)) ** 2          # 1 × 2 × 11²
    monkeypatch.setattr(views, "RUN_VIEWS_CELLS", cells - 1)
    assert views.run_views(asked) == {}
    monkeypatch.setattr(views, "RUN_VIEWS_CELLS", cells)
    assert views.run_views(asked)["drawn"] == answer["drawn"]
    gone = models.fresh(1, 1, 8, [], 5, 32)
    name, key = gone.name, models.share(gone)
    assert models.shared(key, name) is gone
    del gone                                                  # let go of, as a session's state lets go of a model
    gc.collect()
    assert models.shared(key, name) is None
    assert models.shared(key, models.default_name()) is models.bundled(models.default_name())


def test_the_page_asks_the_server_for_exact_hover_values(default: models.Loaded) -> None:
    """The page's focused head and strip carry colour codes only; a hover asks for a cell's exact value and why it
    is masked (views.hover_cell), answered from what the server kept of that figure."""
    *_, focused, strip, _, _ = views.explore_pick(*explore_args(default), event(layer=1, head=2, query=9))
    ids = default.tokenizer.encode(default.example)
    _, trace = default.model.run_with_trace(torch.tensor([ids]))
    reasons = masks.trace_reasons(trace)[0]
    for figure, stages in ((focused, ["attn"]), (strip, views.strip_stages(default))):
        figure = heatmap.as_figure(figure)
        meta = figure.layout.meta["xattn"]
        assert "why" not in meta and all(t.customdata is None for t in figure.data if t.type == "heatmap")
        heatmaps = [k for k, t in enumerate(figure.data) if t.type == "heatmap"]
        for index, stage in zip(heatmaps, stages, strict=True):
            expected = trace.drawable(stage)[1, 0, 2].numpy()
            for q, k in [(9, 3), (3, 9), (0, 0), (len(ids) - 1, 5)]:
                answer = views.hover_cell({"hover": meta["hover"], "trace": index, "row": q, "col": k, "query": q,
                                           "key": k, "layer": 1})
                if np.isnan(expected[q, k]):
                    assert answer["value"] is None
                else:
                    assert answer["value"] == pytest.approx(float(expected[q, k]), rel=1e-6, abs=1e-7)
                # the mask that hides the cell (scores, before masking, still have a value there)
                assert answer.get("mask") == (masks.REASONS[int(reasons[q, k])] if reasons[q, k] else None)
    assert views.hover_cell({"hover": "gone", "trace": 0, "row": 0, "col": 0, "query": 0, "key": 0}) == {}
    assert views.hover_cell({"hover": meta["hover"], "trace": -1, "row": 0, "col": 0, "query": 0, "key": 0}) == {}


def test_the_opening_views_answer_hovers_for_good(default: models.Loaded) -> None:
    """Every page opens on the views ui.build made once: what their hover asks for is pinned, never let go."""
    opening = views.explore_page(None, default.name, default.example, "attn", 0, 1, 4)
    views.pin_hovers(list(opening[:4]))
    question = {"hover": heatmap.meta_of(opening[1])["hover"], "trace": 0, "row": 4, "col": 2, "query": 4,
                "key": 2, "layer": 0}
    for k in range(limits.RECENT_HOVERS + 2):              # more figures than the recent ones kept (each threshold's)
        views.explore_page(None, default.name, default.example, "attn", 2, 3, 5, 0.01 * (k + 1))
    assert views.recall(("hover", question["hover"])) is None                  # let go of among the recent ones
    ids = default.tokenizer.encode(default.example)
    _, trace = default.model.run_with_trace(torch.tensor([ids]))
    assert views.hover_cell(question)["value"] == pytest.approx(float(trace.drawable("attn")[0, 0, 1, 4, 2]), rel=1e-6)


def test_hovers_tell_two_models_of_one_name_apart() -> None:
    """Two sessions' models of the same name (two uploads of one file name): each page's hover answers from its own."""
    a = models.fresh(1, 2, 16, [], 0, 64)
    b = dataclasses.replace(models.fresh(1, 2, 16, [], 1, 64), name=a.name)          # other weights, same name
    question = {"trace": 0, "row": 3, "col": 1, "query": 3, "key": 1, "layer": 0}
    pages = [views.explore_page({m.name: m}, m.name, "hello", "attn", 0, 1, 3)[1] for m in (a, b)]   # both shown
    answers = [views.hover_cell({"hover": heatmap.meta_of(page)["hover"], **question})["value"] for page in pages]
    for loaded, answer in zip((a, b), answers, strict=True):                   # then hovered
        _, trace = loaded.model.run_with_trace(torch.tensor([loaded.tokenizer.encode("hello")]))
        assert answer == pytest.approx(float(trace.drawable("attn")[0, 0, 1, 3, 1]), rel=1e-6)
    assert answers[0] != answers[1]


def test_the_page_gets_each_label_list_once() -> None:
    """heatmap.lean: the key labels go only when they differ from the query labels, and the query row's hover
    text (the key labels, per head) rides as a reference the page resolves (app/heatmap.js)."""
    loaded = models.fresh(1, 2, 16, ["attn_add_zero_kv"], 0, 300)         # a zero key in front: keys ≠ queries
    plain = models.fresh(1, 2, 16, [], 0, 300)
    text = "abcdefghij" * 29
    for model, same in ((plain, True), (loaded, False)):
        session = {model.name: model}
        api = views.explore(session, model.name, text, "attn", 0, 1, 5)
        page = views.explore_page(session, model.name, text, "attn", 0, 1, 5)
        api_row, page_row = api[3], page[3]
        keys = api_row.layout.meta["xattn"]["keys"]
        assert len(keys) > viz.ROW_BARS                        # steps, each with the key labels as hover text
        assert all(list(t.text) == keys for t in api_row.data if t.type == "scatter")
        assert all(t.text is None and t.meta["text"] == "keys" for t in page_row.data if t.type == "scatter")
        for figure in page[:4]:
            meta = heatmap.meta_of(figure)
            assert ("keys" in meta) != same and (same or expand(meta["keys"]) == keys)
            assert expand(meta["labels"]) == api_row.layout.meta["xattn"]["labels"]
        assert page[0].layout.meta["xattn"]["labels"]["tokens"][:3] == ["<bos>", "a", "b"]   # positions implied


def expand(labels: list[str] | dict) -> list[str]:
    """heatmap.compact's labels as app/heatmap.js expands them."""
    return labels if isinstance(labels, list) else [*labels["head"], *(f"{t}·{i}" for i, t in
                                                                        enumerate(labels["tokens"]))]


def test_labels_travel_without_their_positions() -> None:
    assert heatmap.compact(["sink", "<bos>·0", "a·1", "·2"]) == {"head": ["sink"], "tokens": ["<bos>", "a", ""]}
    assert heatmap.compact(["mem 0", "a·0", "b·1"]) == {"head": ["mem 0"], "tokens": ["a", "b"]}
    assert heatmap.compact(["a·0", "b·2"]) == ["a·0", "b·2"]                   # not the positions: sent as they are
    assert heatmap.compact(["x", "y"]) == ["x", "y"] and heatmap.compact([]) == []


def test_a_click_redraws_only_what_changes(default: models.Loaded) -> None:
    """The page says what it shows: a click on the grid it shows keeps the grid, one on the head it shows
    redraws only the query row."""
    *_, row, _ = views.explore_pick(*explore_args(default), event(query=1))
    shown = {"grid": row.layout.meta["xattn"]["focus"]["grid"], "head": row.layout.meta["xattn"]["focus"]["key"]}
    layer, head, query, grid, focused, strip, row, _ = views.explore_pick(
        *explore_args(default), event(query=7, key=3, shown=shown))
    assert (layer, head, query) == (2, 0, 7)
    assert grid == gr.update() and focused == gr.update() and strip == gr.update()
    assert "·7 look" in row.layout.title.text
    # another head: the grid stays, the head and strip are redrawn
    _, _, _, grid, focused, strip, _, _ = views.explore_pick(*explore_args(default),
                                                             event(layer=1, head=1, query=7, shown=shown))
    assert grid == gr.update() and focused != gr.update() and strip != gr.update()
    # another text than the grid shows: everything is redrawn
    args = explore_args(default)
    args[2] = default.example[:-2]
    _, _, _, grid, *_ = views.explore_pick(*args, event(layer=1, head=1, query=3, shown=shown))
    assert grid != gr.update()


@pytest.mark.parametrize("data", [{}, {"layer": "1"}, {"layer": -1, "head": None}, {"query": float("nan")},
                                  {"layer": True}, "not a dict"])
def test_a_click_with_nothing_usable_keeps_the_sliders(default: models.Loaded, data: Any) -> None:
    layer, head, query, *_ = views.explore_pick(*explore_args(default, 1, 2, 3),
                                                gr.EventData(None, data if isinstance(data, dict) else {}))
    assert (layer, head, query) == (1, 2, 3)


def test_a_click_past_the_model_gets_a_sentence(default: models.Loaded) -> None:
    with pytest.raises(gr.Error, match="Layer 9 does not exist"):
        views.explore_pick(*explore_args(default), event(layer=9, head=0))


def long_model() -> tuple[models.Loaded, str]:
    loaded = models.fresh(1, 2, 16, ["causal", "pre_norm", "use_abs_pos_emb"], 0, 1024)
    return loaded, ("the quick brown fox jumps over the lazy dog. " * 20)[:899]     # + BOS = 900 tokens


def test_a_zoom_brings_the_region_at_full_resolution() -> None:
    loaded, text = long_model()
    session = {loaded.name: loaded}
    _, focused, *_ = views.explore(session, loaded.name, text, "pre_softmax", 0, 1, 5)
    assert focused.layout.meta["xattn"]["factor"] == 2                             # 900 tokens, pooled 2 × 2
    key = focused.layout.meta["xattn"]["key"]
    detail = views.explore_zoom(session, loaded.name, text, "pre_softmax", 0, 1,
                                event(region=[400, 480, 300, 390], px=600, head=key))
    ids = loaded.tokenizer.encode(text)
    _, trace = loaded.model.run_with_trace(torch.tensor([ids]))
    shown = heat(detail)
    assert (shown["x0"], shown["dx"], shown["y0"], shown["dy"]) == (300, 1, 400, 1)
    np.testing.assert_allclose(exact(shown), trace.drawable("pre_softmax")[0, 0, 1, 400:480, 300:390].numpy(),
                               rtol=1e-5, atol=1e-6)
    assert detail.layout.meta["xattn"]["key"] == key
    # a narrow plot gets a coarser detail; a stale zoom (another head shown since) changes nothing
    coarse = views.explore_zoom(session, loaded.name, text, "pre_softmax", 0, 1,
                                event(region=[0, 900, 0, 900], px=10, head=key))
    assert coarse.layout.meta["xattn"]["factor"] == 15                             # 64 cells a side at least
    assert views.explore_zoom(session, loaded.name, text, "pre_softmax", 0, 0,
                              event(region=[400, 480, 300, 390], px=600, head=key)) == gr.update()


@pytest.mark.parametrize("region, message", [(None, "four whole numbers"), ([1, 2, 3], "four whole numbers"),
                                             (["0", 1, 0, 1], "four whole numbers"),
                                             ([2000, 3000, 0, 10], "shows no cell")])
def test_a_bad_zoom_gets_a_sentence(region: Any, message: str) -> None:
    loaded, text = long_model()
    session = {loaded.name: loaded}
    _, focused, *_ = views.explore(session, loaded.name, text, "attn", 0, 0, 5)
    with pytest.raises(gr.Error, match=message):
        views.explore_zoom(session, loaded.name, text, "attn", 0, 0,
                           event(region=region, px=600, head=focused.layout.meta["xattn"]["key"]))


def test_zoom_pixels_are_bounded() -> None:
    assert [heatmap.zoom_pixels(v) for v in (600, 5, 10**9, "600", None, float("nan"), True)] == [
        600, 64, 1024, 64, 64, 64, 64]


def test_the_session_copy_gradio_makes_on_an_update_still_sends_figures(default: models.Loaded) -> None:
    """Gradio answers gr.update() by building the output's class again from its constructor arguments; that
    copy must turn a figure into gr.Plot's JSON, as the original does (else the next figure reaches the page as
    its repr)."""
    view = PlotlyView("focused head", role="head", elem_id="focused-head", render=False)
    copy = type(view)(**{**view.constructor_args, "render": False})
    figure = views.explore(None, *explore_args(default)[1:])[1]
    assert copy.postprocess(figure).model_dump() == view.postprocess(figure).model_dump()
    assert copy.postprocess(figure).model_dump()["type"] == "plotly"
    assert copy.get_config()["props"]["role"] == "head"


def test_a_long_query_row_is_one_step_line_per_head() -> None:
    loaded, text = long_model()
    _, _, _, row, _ = views.explore({loaded.name: loaded}, loaded.name, text, "attn", 0, 1, 500)
    ids = loaded.tokenizer.encode(text)
    _, trace = loaded.model.run_with_trace(torch.tensor([ids]))
    lines = [t for t in row.data if t.type == "scatter" and t.mode == "lines"]
    assert len(lines) == loaded.heads and not [t for t in row.data if t.type == "bar"]
    for h, line in enumerate(lines):               # causal: keys after the query are masked, and left out
        full = trace.drawable("attn")[0, 0, h, 500].numpy()
        assert np.isnan(full[501:]).all() and not np.isnan(full[:501]).any()
        np.testing.assert_allclose(np.asarray(line.y, dtype=float), full[:501], rtol=1e-5, atol=1e-6)
        assert (line.x0, line.dx, len(line.y), len(line.text)) == (0, 1, 501, 501) and line.text[500].endswith("·500")
    assert list(row.layout.xaxis.range) == [-0.5, len(ids) - 0.5]                # the axis still spans every key


def test_clicks_and_zooms_on_a_head_with_memory_rows_and_key_columns() -> None:
    """2 memory tokens (rows in front) and 3 memory key/values (columns in front): a click's query and key are
    positions on their own axes, and a zoom's region is clipped to each."""
    loaded = models.fresh(1, 2, 16, ["causal", "pre_norm", "use_abs_pos_emb"], 0, 64, 2, 0, 3)
    session, text = {loaded.name: loaded}, "hello there"
    args = [session, loaded.name, text, "attn", 0, 1, 3]
    _, _, query, _, focused, _, row, _ = views.explore_pick(*args, event(query=13, key=16))
    meta = heatmap.meta_of(focused)
    assert (meta["n"], meta["n_keys"]) == (14, 17) and query == 13
    assert expand(row.layout.meta["xattn"]["keys"])[:4] == ["mem kv 0", "mem kv 1", "mem kv 2", "mem 0"]
    detail = views.explore_zoom(session, *args[1:6], event(region=[10, 99, 12, 99], px=600, head=meta["key"]))
    assert detail.layout.meta["xattn"]["region"] == [10, 14, 12, 17]
    ids = loaded.tokenizer.encode(text)
    _, trace = loaded.model.run_with_trace(torch.tensor([ids]))
    np.testing.assert_allclose(exact(heat(detail)), trace.drawable("attn")[0, 0, 1, 10:14, 12:17].numpy(),
                               rtol=1e-5, atol=1e-6)


def test_first_views_are_pooled_to_the_pages_pixels() -> None:
    """The page sends how many pixels across its focused head and a strip panel are (views.Screen): their first
    views have at most a cell per pixel, max-pooled; without them, the defaults (viz.SCREEN, 256)."""
    loaded, text = long_model()                                                     # 900 tokens
    session = {loaded.name: loaded}
    page = views.explore_page(session, loaded.name, text, "attn", 0, 1, 5, 0.0, False, False,
                              json.dumps({"head": 300, "strip": 100}))
    head, strip = heatmap.as_figure(page[1]), heatmap.as_figure(page[2])
    assert head.layout.meta["xattn"]["factor"] == 3                                # ⌈900 / 300⌉
    panels = [t for t in strip.data if t.type == "heatmap"]
    assert all(t.dx == 9 for t in panels) and "max-pooled 9×9" in strip.layout.title.text   # ⌈900 / 100⌉
    ids = loaded.tokenizer.encode(text)
    _, trace = loaded.model.run_with_trace(torch.tensor([ids]))
    pooled = viz.max_pool(trace.drawable("attn")[0, 0, 1].numpy(), 3)
    for row, col in [(100, 40), (299, 0), (150, 150)]:
        answer = views.hover_cell({"hover": head.layout.meta["xattn"]["hover"], "trace": 0, "row": row, "col": col,
                                   "query": 3 * row, "key": 3 * col, "layer": 0})
        expected = pooled[row, col]
        assert (answer["value"] is None) if np.isnan(expected) else answer["value"] == pytest.approx(float(expected))
    # a click asks with the page's pixels too; an API caller, or a page before its first draw, gets the defaults
    focus = head.layout.meta["xattn"]["focus"]
    click = {**{k: focus[k] for k in ("run", "stage", "threshold", "hide_sink")}, "layer": 0, "head": 0, "query": 5,
             "pixels": {"head": 450, "strip": 100}, "shown": {"grid": focus["grid"], "head": focus["key"]}}
    assert heatmap.meta_of(views.focus_views(click)["views"]["head"])["factor"] == 2
    assert views.explore(session, loaded.name, text, "attn", 0, 1, 5)[1].layout.meta["xattn"]["factor"] == 2
    assert views.Screen.of("") == views.Screen.of({"head": 1}) == views.Screen() == views.Screen(512, 256)
    assert views.Screen.of('{"head": 5, "strip": 1e9}') == views.Screen(64, 1024)        # within ZOOM_PIXELS


def test_one_head_pooled_for_two_screens_answers_each_hover_from_its_own() -> None:
    """Two pages of different widths on one run (two windows): each first view's hover keeps its own values."""
    loaded, text = long_model()                                                     # 900 tokens
    session = {loaded.name: loaded}
    heads = [heatmap.as_figure(views.explore_page(session, loaded.name, text, "attn", 0, 1, 5, 0.0, False, False,
                                                  json.dumps({"head": px, "strip": 100}))[1]) for px in (300, 450)]
    assert [h.layout.meta["xattn"]["factor"] for h in heads] == [3, 2]
    ids = loaded.tokenizer.encode(text)
    _, trace = loaded.model.run_with_trace(torch.tensor([ids]))
    values = trace.drawable("attn")[0, 0, 1].numpy()
    for head, factor in zip(heads, (3, 2), strict=True):
        expected = viz.max_pool(values, factor)[200, 10]
        answer = views.hover_cell({"hover": head.layout.meta["xattn"]["hover"], "trace": 0, "row": 200, "col": 10,
                                   "query": 200 * factor, "key": 10 * factor, "layer": 0})
        assert answer["value"] == pytest.approx(float(expected))
