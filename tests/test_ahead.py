"""Work done while the server is idle (app/ahead.py): each head's Explore views made after a Run, before the clicks
that ask for them (views.plan_ahead, views.head_views)."""
from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import torch

pytest.importorskip("gradio")

from app import heatmap, models, views  # noqa: E402
from app.ahead import Ahead  # noqa: E402


def test_work_ahead_waits_for_a_quiet_server_and_runs_the_newest_plan_first() -> None:
    done: list[tuple[str, float]] = []

    def task(name: str) -> None:
        if name == "fails":
            raise RuntimeError("a task that fails")
        done.append((name, time.monotonic()))

    ahead = Ahead(quiet_s=0.2, most=2)
    ahead.plan("a", [lambda: task("a0")])
    assert ahead.idle(1) and done == []                                # not started: nothing runs, no thread
    ahead.start()
    with ahead.serving():
        ahead.plan("a", [lambda: task("a1"), lambda: task("fails"), lambda: task("a2")])
        ahead.plan("b", [lambda: task("b0")])
        ahead.plan("b", [lambda: task("b1")])                          # replaces b's plan
        time.sleep(0.3)
        assert done == []                                              # a request is being served
    ended = time.monotonic()
    assert ahead.idle(10)
    assert [name for name, _ in done] == ["b1", "a1", "a2"]            # newest plan first; a failure skips one task
    assert done[0][1] - ended >= 0.19                                   # quiet for quiet_s first
    done.clear()
    with ahead.serving():
        for key in "cde":
            ahead.plan(key, [lambda key=key: task(key)])
    assert ahead.idle(10) and [name for name, _ in done] == ["e", "d"]  # at most `most` plans: c was dropped
    done.clear()
    with ahead.serving():
        ahead.plan("f", [lambda: task("f")])
        ahead.stop()
    assert ahead.idle(10) and done == []


@pytest.fixture
def ahead(monkeypatch: pytest.MonkeyPatch) -> Ahead:
    """views' work ahead, started (as the served app's) and with no wait for quiet."""
    started = Ahead(quiet_s=0.0, most=2)
    started.start()
    monkeypatch.setattr(views, "AHEAD", started)
    monkeypatch.setattr(views, "WORTH_AHEAD_CELLS", 0)          # these small heads are made ahead too
    return started


def test_a_run_makes_the_other_heads_views_ahead_and_a_click_sends_them(ahead: Ahead,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = models.fresh(2, 3, 24, ["causal"], 0, 64)
    session, text = {loaded.name: loaded}, "attention, made ahead"
    opened = views.explore_page(session, loaded.name, text, "attn", 1, 2, 4)
    focus = heatmap.meta_of(opened[1])["focus"]
    assert ahead.idle(60)
    run = views.explore_run(loaded, text)
    made = {(layer, head) for layer in range(2) for head in range(3)
            if views.recall(("ahead", focus["run"], views.view_keys(run, "attn", layer, head, views.Shown())["head"],
                             views.Screen())) is not None}
    assert made == {(layer, head) for layer in range(2) for head in range(3)}      # the Run's head, and each other

    def click(layer: int, head: int, query: int) -> dict:
        return views.focus_views({**{k: focus[k] for k in ("run", "stage", "threshold", "hide_sink")},
                                  "layer": layer, "head": head, "query": query, "averaged": False,
                                  "shown": {"grid": focus["grid"], "head": focus["key"]}})

    with views.RECENT_LOCK:                      # the exact hover values of every head let go of meanwhile
        for key in [key for key in views.RECENT if key[0] == "hover"]:
            del views.RECENT[key]

    def never(*_: object) -> None:
        raise AssertionError("made again at the click")

    with monkeypatch.context() as patched:       # the click sends what was made ahead
        patched.setattr(views, "make_head_views", never)
        answer = click(0, 1, 7)["views"]
    head = heatmap.as_figure(answer["head"])
    assert head.layout.meta["xattn"]["focus"]["query"] == 7 and "layer 0 · head 1" in head.layout.title.text
    ids = loaded.tokenizer.encode(text)
    _, trace = loaded.model.run_with_trace(torch.tensor([ids]))
    question = {"hover": head.layout.meta["xattn"]["hover"], "trace": 0, "row": 7, "col": 3, "query": 7, "key": 3,
                "layer": 0}
    assert views.hover_cell(question)["value"] == pytest.approx(float(trace.drawable("attn")[0, 0, 1, 7, 3]),
                                                                rel=1e-6)     # its hover answers again
    # the same as a click makes without work ahead
    with views.RECENT_LOCK:
        for key in [key for key in views.RECENT if key[0] == "ahead"]:
            del views.RECENT[key]
    again = click(0, 1, 7)["views"]
    for role in ("head", "strip", "row", "text"):
        assert answer[role] == again[role], role


def test_work_ahead_for_a_run_let_go_of_makes_nothing(ahead: Ahead) -> None:
    loaded = models.fresh(1, 2, 16, [], 0, 64)
    session, text = {loaded.name: loaded}, "a run let go of"
    with ahead.serving():                        # the plan waits: the run is let go of meanwhile
        opened = views.explore_page(session, loaded.name, text, "attn", 0, 0, 2)
        run_key = heatmap.meta_of(opened[1])["focus"]["run"]
        with views.RECENT_LOCK:
            del views.RECENT[("page", run_key)]
    assert ahead.idle(60)
    with views.RECENT_LOCK:
        made = [key for key in views.RECENT if key[0] == "ahead" and key[1] == run_key]
    assert len(made) == 1                        # the Run's own head only


def test_two_asking_for_one_heads_views_make_them_once(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = models.fresh(1, 2, 16, [], 0, 64)
    run = views.explore_run(loaded, "made once")
    made, real = [], views.make_head_views

    def slow(*args: object) -> views.HeadViews:
        made.append(args)
        time.sleep(0.2)
        return real(*args)

    monkeypatch.setattr(views, "make_head_views", slow)
    answers: list[views.HeadViews] = []
    askers = [threading.Thread(target=lambda: answers.append(
        views.head_views(run, "attn", 0, 1, views.Shown(), "some page run"))) for _ in range(2)]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join()
    assert len(made) == 1 and answers[0] is answers[1]


def test_small_heads_are_made_at_the_click_not_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    started = Ahead(quiet_s=0.0, most=1)
    started.start()
    monkeypatch.setattr(views, "AHEAD", started)
    monkeypatch.setattr(views, "WORTH_AHEAD_CELLS", 64 * 64)          # more than a head of this text has
    loaded = models.fresh(1, 3, 24, [], 0, 64)
    opened = views.explore_page({loaded.name: loaded}, loaded.name, "quick to make", "attn", 0, 1, 2)
    run_key = heatmap.meta_of(opened[1])["focus"]["run"]
    assert started.idle(60) and not started.plans
    with views.RECENT_LOCK:
        assert len([key for key in views.RECENT if key[0] == "ahead" and key[1] == run_key]) == 1


def test_kept_head_views_are_the_same_models() -> None:
    """Kept views are keyed by the model's id, which a later model may reuse: another model object under the same
    key gets views of its own."""
    a = models.fresh(1, 2, 16, [], 0, 64)
    b = dataclasses.replace(models.fresh(1, 2, 16, [], 1, 64), name=a.name)    # other weights, the same name
    text = "same key, other model"
    made = [views.head_views(views.explore_run(m, text), "attn", 0, 1, views.Shown(), "one page run key")
            for m in (a, b)]
    assert made[0] is not made[1] and made[0].figures != made[1].figures
    assert views.head_views(views.explore_run(b, text), "attn", 0, 1, views.Shown(), "one page run key") is made[1]
