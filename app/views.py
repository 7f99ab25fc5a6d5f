"""The five views as plain functions: (session, inputs) → figures and markdown. No Gradio layout here.

Each view tokenises the text (cut to the model's `max_seq_len` with a warning), traces the model with
`run_with_trace` and composes `xattn.viz` figures. A ValueError anywhere becomes a `gr.Error` carrying its
sentence (see `friendly`); the page runs each view through `in_place`, which says it in the view's summary
instead, leaving the figures as they were.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import plotly.graph_objects as go
import torch

import xattn
from xattn import masks, viz
from xattn.attention import PRUNE_AT, PRUNED_BELOW
from xattn.predictions import next_tokens
from xattn.viz.cells import Shown

from . import heatmap, limits, models, texts
from .ahead import Ahead
from .models import Loaded, Session

Figure = go.Figure
log = logging.getLogger(__name__)
PAD_SIDES = ("right", "left")
SIZE_FIELD = "The window / prefix / block size"
GRID_TILE_CELLS = 96       # cells per side of one grid tile, about what a tile shows on screen


@dataclass(frozen=True)
class Screen:
    """How many pixels across the page's Explore views draw a head in: the focused head and one stage-strip panel
    (app/heatmap.js measures them and sends them with each request). A first view has at most a cell per pixel, its
    blocks max-pooled: more would be drawn over each other, costing the page time for cells nobody sees. The defaults
    (a notebook's, an API caller's) are viz.SCREEN and a panel's 256."""

    head: int = viz.SCREEN
    strip: int = 256

    @classmethod
    def of(cls, value: Any) -> Screen:
        """From the page's {"head": px, "strip": px} (or its JSON), each kept within heatmap.ZOOM_PIXELS; the
        defaults for anything else."""
        value = page_json(value)
        if not all(k in value for k in ("head", "strip")):
            return cls()
        return cls(heatmap.zoom_pixels(value["head"]), heatmap.zoom_pixels(value["strip"]))


def page_json(value: Any) -> dict:
    """What the page's screen component sends (JSON: `Screen`, and `run_views`' "drawn"), or a click's pixels, as
    a dict; {} for anything else."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    return value if isinstance(value, dict) else {}


@dataclass
class Run:
    """One traced input: the model, its tokens and labels, logits, trace and notes for the reader."""

    loaded: Loaded
    ids: list[int]
    labels: list[str]
    logits: torch.Tensor
    trace: xattn.Trace
    pad_mask: torch.Tensor | None = None
    attn_mask: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def queries(self) -> int:
        """Query rows of the trace: the tokens, after the model's memory tokens if it has any."""
        return self.trace.visible.shape[1]

    def summary(self) -> str:
        """Markdown: which model read how many tokens, and every note."""
        lines = [f"{self.loaded.describe()}", f"Read **{self.n} tokens**: `{''.join(self.labels)}`"]
        return "\n\n".join(lines + [f"**Note:** {note}" for note in self.notes])


# Work the server does while idle (app/ahead.py): the app's launch starts it; every request marks itself served.
# A click's last request (its sliders and predictions) leaves once its views are drawn: 0.1 s after, the page is
# idle too. The latest Run's plan only: an older run's heads are unlikely to be clicked.
AHEAD = Ahead(quiet_s=0.1, most=1)


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What every handler shares: its ValueErrors and KeyErrors become a `gr.Error` with their sentence, any
    other failure a short `gr.Error` (the details go to the server log, never to the client), and the
    figures it returns fill the width of their slot. Work ahead waits while it runs (AHEAD.serving)."""
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            with AHEAD.serving():
                result = fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, KeyError) as err:
            message = str(err.args[0] if err.args else err)
            if message.split(" ", 1)[0].isalpha():               # a word, not a file or model name
                message = message[:1].upper() + message[1:]
            log.warning("refused %s: %s", fn.__name__, message)    # one line, no traceback: no server fault
            raise gr.Error(message, print_exception=False) from None
        except MemoryError:
            log.exception("out of memory in %s", fn.__name__)
            raise gr.Error("The server ran out of memory for this request: try a shorter text or a smaller "
                           "model. The app is still running.") from None
        except Exception as err:  # noqa: BLE001 -- a request must never take the app down or leak internals
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(f"Something went wrong ({type(err).__name__}); the app is still running. "
                           "Try other inputs, or report this with the server log.") from None
        for figure in result if isinstance(result, (tuple, list)) else ():
            fitted(figure)
        return result
    return wrapped


def fitted(figure: Any) -> Any:
    """A figure (anything else as it is) made to fill the width of its slot."""
    if isinstance(figure, Figure):
        figure.update_layout(width=None, autosize=True)
    return figure


def in_place(fn: Callable[..., Any], outputs: int) -> Callable[..., Any]:
    """A `friendly` view as the page runs it: a refusal leaves its `outputs` as they are (the figures keep their
    last good content) except the last, the summary, which says why in place; a toast says it too. API
    callers get the view itself, whose refusals are errors."""
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error as err:
            gr.Warning(err.message)
            return (*(gr.update() for _ in range(outputs - 1)), f"**Not drawn:** {err.message}")
    return wrapped


def tokens(loaded: Loaded, text: str, reserve: int = 0) -> tuple[list[int], list[str]]:
    """Token ids and notes for `text`, cut to leave `reserve` positions (for padding) within max_seq_len."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("The text is empty: type something for the model to read.")
    if len(text) > limits.MAX_TEXT_CHARS:
        raise ValueError(f"The text has {len(text):,} characters; the limit here is {limits.MAX_TEXT_CHARS:,} "
                         f"(and {loaded.name} reads at most {loaded.max_seq_len - reserve} tokens of it).")
    unknown = models.unknown_characters(loaded, text)
    if unknown:
        shown = "".join(unknown[:20]) + ("…" if len(unknown) > 20 else "")
        raise ValueError(f"The model {loaded.name} cannot read this text: {len(unknown)} character(s) are not in its "
                         f"alphabet: {shown!r}. It reads only {loaded.tokenizer.alphabet!r}.")
    ids = loaded.tokenizer.encode(text)
    notes = []
    room = loaded.max_seq_len - reserve
    if len(ids) > room:
        notes.append(f"The text is {len(ids)} tokens long (the BOS token included) but {loaded.name} reads at "
                     f"most {room} here, so only the first {room} are shown.")
        gr.Warning(notes[-1])
        ids = ids[:room]
    return ids, notes


def trace_text(loaded: Loaded, text: str, *, padding: int = 0, pad_left: bool = False,
               custom: Callable[[int], torch.Tensor | None] | None = None, progress: gr.Progress | None = None) -> Run:
    """Tokenise, add `padding` pad tokens (masked out) on the right or left, add the `custom(n)` mask, trace."""
    ids, notes = tokens(loaded, text, reserve=padding)
    pads, real = [loaded.tokenizer.pad_id] * padding, [True] * len(ids)
    ids = pads + ids if pad_left else ids + pads
    n = len(ids)
    pad_mask = torch.tensor([[False] * padding + real if pad_left else real + [False] * padding]) if padding else None
    attn_mask = custom(n) if custom is not None else None
    if progress is not None:
        progress(0.3, desc=f"Tracing {n} tokens through {loaded.depth} layers")
    labels = loaded.tokenizer.labels(ids)
    limits.check(loaded.model.config, n)
    logits, trace = loaded.model.run_with_trace(torch.tensor([ids]), mask=pad_mask, attn_mask=attn_mask,
                                                labels=[labels])
    notes += overflow_notes(trace)
    if progress is not None:
        progress(0.7, desc="Drawing")
    return Run(loaded, ids, labels, logits, trace, pad_mask, attn_mask, notes)


def overflow_notes(trace: xattn.Trace, part: str = "") -> list[str]:
    """A warning (shown, and returned as a note) if a number overflowed where no mask hides it, in `part`."""
    overflow = trace.nonfinite()
    if not overflow:
        return []
    cells = ", ".join(f"{count} in {stage}" for stage, count in overflow.items())
    note = (f"Numerical overflow{f' in {part}' if part else ''}: {cells} are NaN or infinite although no mask "
            "hides them. The figures draw them grey like masked cells; they are not masked.")
    gr.Warning(note)
    return [note]


# The latest traces (Explore's clicks and zooms) and generations (the Generate tab's scrubber), so that what the
# page shows can be redrawn without running the model again: key → (value, bytes it holds).
RECENT: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
RECENT_LOCK = threading.Lock()


def recall(key: tuple, *, touch: bool = True) -> Any | None:
    """The value kept under `key` (now the most recent, unless not to `touch` it: work ahead's look), or None."""
    with RECENT_LOCK:
        entry = RECENT.get(key)
        if entry is None:
            return None
        if touch:
            RECENT.move_to_end(key)
        return entry[0]


def remember(key: tuple, value: Any, size: int, most: int) -> None:
    """Keep `value`, which holds `size` bytes, under `key`: at most `most` values of its kind (`key[0]`) and
    limits.RECENT_BYTES in all, the oldest let go first; a value bigger than that is not kept."""
    with RECENT_LOCK:
        RECENT.pop(key, None)
        if size <= limits.RECENT_BYTES:
            RECENT[key] = (value, size)
        while (kind := [k for k in RECENT if k[0] == key[0]]) and len(kind) > most:
            del RECENT[kind[0]]
        while sum(held for _, held in RECENT.values()) > limits.RECENT_BYTES:
            RECENT.popitem(last=False)


def trace_key(loaded: Loaded, text: str) -> tuple:
    """The key a trace of `text` by `loaded` is kept under (`explore_run`)."""
    return ("trace", id(loaded.model), text)


def kept_run(key: tuple) -> Run | None:
    """The run kept under `key` (`trace_key`), with notes of its own for the caller to add to; None if not kept."""
    run = recall(key)
    return None if run is None else dataclasses.replace(run, notes=list(run.notes))


def explore_run(loaded: Loaded, text: str, progress: gr.Progress | None = None, *, reuse: bool = True) -> Run:
    """`trace_text(loaded, text)`, kept among the recent ones (at most limits.RECENT_RUNS, counting twice the
    recorded stages for the drawable copies made from them); with `reuse`, a kept one is used again. Each
    caller gets its own notes."""
    key = trace_key(loaded, text)
    if reuse:
        run = kept_run(key)
        if run is not None and run.loaded.model is loaded.model:     # the same model, not one reusing its id
            return run
    run = trace_text(loaded, text, progress=progress)
    remember(key, dataclasses.replace(run, notes=list(run.notes)), 2 * run.trace.nbytes(), limits.RECENT_RUNS)
    return run


def index(value: float | None, count: int, what: str, owner: str) -> int:
    """A layer, head or query index checked against `count`, with a sentence saying the valid range."""
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
            or int(value) != value or not 0 <= value < count):
        plural = "queries" if what == "query" else f"{what}s"
        raise ValueError(f"{what.capitalize()} {value} does not exist: {owner} has {plural} 0 to {count - 1}.")
    return int(value)


def picks(run: Run, layer: float, head: float | None = None, query: float | None = None) -> tuple[int, ...]:
    """Validated (layer, head?, query?) for `run`."""
    name = run.loaded.name
    chosen = [index(layer, run.loaded.depth, "layer", name)]
    if head is not None:
        chosen.append(index(head, run.loaded.heads, "head", name))
    if query is not None:
        last = run.queries - 1
        chosen.append(index(query, max(run.queries, run.loaded.max_seq_len), "query", name))
        if chosen[-1] > last:      # a query slider left past the end of a shorter text: its last token
            run.notes.append(f"Query {chosen[-1]} is past the end of this text ({run.queries} tokens, the BOS "
                             f"token included): showing its last token, {last}.")
            chosen[-1] = last
    return tuple(chosen)


def token_count(session: Session | None, model: str, text: str) -> int | None:
    """How many tokens `model` reads of `text` (BOS included, cut at max_seq_len); None if it cannot read it."""
    try:
        loaded = models.resolve(model, session)
        return min(len(loaded.tokenizer.encode(text)), loaded.max_seq_len) if text.strip() else None
    except ValueError:
        return None


def check_stage(stage: str) -> str:
    if stage not in xattn.STAGES:
        raise ValueError(f"Unknown stage {stage!r}; the stages are {', '.join(xattn.STAGES)}.")
    return stage


def strip_stages(loaded: Loaded) -> list[str]:
    """The stages worth a panel for this model: a stage its options leave unchanged is skipped."""
    return [stage for stage in loaded.model.config.attn_layers.stages_in_use() if stage not in xattn.TERMS]


def strip(run: Run, layer: int, head: int, stages: list[str], max_cells: int | None = None,
          view_filter: Shown | None = None) -> Figure:
    """viz.stages for one head (exact hover values only while panels are wide enough to point at a cell),
    each panel max-pooled to `max_cells`, cells hidden by `view_filter`."""
    return viz.stages(run.trace, layer, head, stages=stages, max_cells=max_cells, shown=view_filter)


def load(session: Session | None, name: str, progress: gr.Progress | None) -> Loaded:
    if progress is not None:
        progress(0.05, desc=f"Loading {name}")
    return models.single_stack(models.resolve(name, session))


# The views


@friendly
def explore(session: Session | None, model: str, text: str, stage: str, layer: float, head: float, query: float,
            threshold: float = 0.0, hide_sink: bool = False,
            progress: gr.Progress = gr.Progress()) -> tuple[Figure, Figure, Figure, Figure, str]:
    """Layers × heads grid, the focused head's heatmap, its stage strip and where one query looks; the heatmaps
    hide attention below `threshold` and, with `hide_sink`, the BOS / sink column (viz.cells.Shown)."""
    return explored(session, model, text, stage, layer, head, query, progress,
                    view_filter=filter_of(threshold, hide_sink))


@friendly
def explore_page(session: Session | None, model: str, text: str, stage: str, layer: float, head: float, query: float,
                 threshold: float = 0.0, hide_sink: bool = False, averaged: bool = False, screen: Any = None,
                 progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
    """Explore as the page runs it (its Run, its tab, its controls): the views, then the text view and predictions,
    then the summary, in one request (`with_text`); the first views pooled to the page's `screen` (Screen.of). Where
    the page has drawn this request's views and text view already (`run_views`: the screen says so), the predictions
    and summary alone."""
    if drawn_of(screen) == ran_key(model, text, stage, layer, head, query, threshold, hide_sink, averaged):
        run = explore_run(load(session, model, progress), text, progress)
        for note in run.notes:              # said here: run_views ran outside any request that could show them
            gr.Warning(note)
        return (*(gr.skip() for _ in range(5)), next_table(run, picks(run, layer, head, query)[2]), run.summary())
    figures = explored(session, model, text, stage, layer, head, query, progress,
                       view_filter=filter_of(threshold, hide_sink), page=True, screen=Screen.of(screen))
    return with_text(figures, session, model, text, layer, head, query, averaged, threshold, hide_sink)


def drawn_of(screen: Any) -> str | None:
    """The `ran_key` a page request's screen carries where the page has drawn its views already (`run_views`)."""
    return page_json(screen).get("drawn")


def ran_key(model: str, text: str, *controls: Any) -> str:
    """What a page request asks for (model, text, stage, layer, head, query, filter, the text view's switch), as a
    key: `run_views` answers with it, and the request that follows sends it back in its screen."""
    return heatmap.key_of("ran", model, text, *(float(c) if isinstance(c, (int, float)) else c for c in controls))


RUN_FIELDS = ("model", "text", "stage", "layer", "head", "query", "threshold", "hide_sink", "averaged")
# A Run run_views answers shows no progress (no request is running): it takes Runs of at most this many score cells
# (layers × heads × tokens²; 512 tokens × 6 layers × 8 heads, about half a second here), and a larger one goes
# through its request, which shows its progress.
RUN_VIEWS_CELLS = 16 * 1024 * 1024


def run_views(data: Any) -> dict:
    """A Run on the page, answered straight (a Gradio server function, as `focus_views`): {"views": {"grid" | "head"
    | "strip" | "row": the figure as its slot sends it, "text": the text view}, "drawn": `ran_key`} for the page's
    Explore inputs {"model", "text", "stage", "layer", "head", "query", "threshold", "hide_sink", "averaged",
    "screen"}, and the model's "key" where it is one of the session's own (models.shared). The page draws the
    views, then sends the Run's own request with "drawn" in its screen, which brings the predictions and summary.
    {} for a Run over RUN_VIEWS_CELLS (the request shows its progress), a refusal (the request says why) or no free
    slot: the request then does everything."""
    if not isinstance(data, dict) or not all(k in data for k in RUN_FIELDS) or not isinstance(data["model"], str):
        return {}
    loaded = models.shared(data.get("key"), data["model"])
    if loaded is None or loaded.encdec:
        return {}
    session = {loaded.name: loaded}
    tokens = token_count(session, loaded.name, data["text"]) if isinstance(data["text"], str) else None
    if tokens is None or loaded.depth * loaded.heads * tokens ** 2 > RUN_VIEWS_CELLS:
        return {}
    return in_slot(functools.partial(run_answer, session), data)


def run_answer(session: Session, data: dict) -> dict:
    """run_views' answer, within a slot."""
    model, text, stage, layer, head, query, threshold, hide_sink, averaged = (data[k] for k in RUN_FIELDS)
    try:
        figures = explored(session, model, text, stage, layer, head, query, page=True,
                           view_filter=filter_of(threshold, hide_sink), screen=Screen.of(data.get("screen")))
        text_view = explore_text(session, model, text, layer, head, query, averaged, threshold, hide_sink)[0]
    except (gr.Error, ValueError, KeyError, TypeError):
        return {}
    return {"views": {**slot_views(figures), "text": text_view}, "drawn": ran_key(*(data[k] for k in RUN_FIELDS))}


@friendly
def explore_loaded(session: Session | None, model: str, text: str, stage: str, layer: float, head: float,
                   query: float, threshold: float = 0.0, hide_sink: bool = False, averaged: bool = False,
                   screen: Any = None, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
    """explore_page, as the page runs it after a model is chosen, built or uploaded; an encoder–decoder is left as
    it is (its views are on the Cross-attention tab), instead of answering with an error."""
    if models.resolve(model, session).encdec:
        return tuple(gr.skip() for _ in range(7))
    return explore_page(session, model, text, stage, layer, head, query, threshold, hide_sink, averaged, screen,
                        progress)


def with_text(figures: tuple[Any, ...], session: Session | None, model: str, text: str, layer: float, head: float,
              query: float, averaged: bool, threshold: float, hide_sink: bool) -> tuple[Any, ...]:
    """Explore's `figures` (views, then the summary) with the text view and predictions of the same focus before
    the summary: the page gets every view of the tab in one round trip instead of two."""
    return (*figures[:-1], *explore_text(session, model, text, layer, head, query, averaged, threshold, hide_sink),
            figures[-1])


def filter_of(threshold: float, hide_sink: bool) -> Shown:
    """Explore's display filter from its controls (a threshold of None, from an API client, is 0)."""
    return Shown(0.0 if threshold is None else threshold, bool(hide_sink))


def view_keys(run: Run, stage: str, layer: int, head: int, view_filter: Shown) -> dict[str, str]:
    """The keys (heatmap.key_of) of what the grid and the focused head show: the input, stage, head and filter."""
    shown_as = (view_filter.threshold, view_filter.hide_sink)
    return {"grid": heatmap.key_of(run.loaded.name, run.ids, stage, *shown_as),
            "head": heatmap.key_of(run.loaded.name, run.ids, stage, layer, head, *shown_as)}


def explored(session: Session | None, model: str, text: str, stage: str, layer: float, head: float, query: float,
             progress: gr.Progress | None = None, *, shown: dict | None = None,
             view_filter: Shown | None = None, page: bool = False, screen: Screen = Screen()) -> tuple[Any, ...]:
    """explore's figures, tagged for the page (what each shows, the focus, the token labels), the first views of the
    focused head and strip pooled to `screen`. `shown` names what
    the page shows now ({"grid": key, "head": key}, from a click): a view that would show the same again is
    left as it is (`gr.update()`), so a click on a cell redraws only the query row. `view_filter` hides cells
    of the heatmaps. For the `page`, the focused head and the strip leave their exact hover values on the server
    (`make_head_views`), and the focus names the run, stage and filter for `focus_views`."""
    loaded = load(session, model, progress)
    run = explore_run(loaded, text, progress, reuse=shown is not None)
    page_run = None
    if page:            # the page's clicks may ask for their views straight away (`focus_views`)
        page_run = heatmap.key_of("run", id(loaded.model), run.ids)
        remember(("page", page_run), trace_key(loaded, text), 0, limits.RECENT_RUNS)
    views = views_of(run, stage, layer, head, query, shown=shown, view_filter=view_filter, page_run=page_run,
                     screen=screen)
    if page_run is not None and shown is None:       # a Run: the other heads' views, made ahead of their clicks
        plan_ahead(run, stage, *picks(run, layer, head), view_filter or Shown(), page_run, screen)
    return views


def views_of(run: Run, stage: str, layer: float, head: float, query: float, *, shown: dict | None = None,
             view_filter: Shown | None = None, page_run: str | None = None,
             screen: Screen = Screen(), labels_in_row: bool = False) -> tuple[Any, ...]:
    """`explored`'s figures and summary from a kept `run`; with `page_run` (the page's name for the run), for
    the page: lighter, leaner, and their focus says what a click must send back to `focus_views`; with
    `labels_in_row`, the focused head and strip take their token labels from the query row (one answer's)."""
    view_filter = view_filter or Shown()
    layer, head, query = picks(run, layer, head, query)
    stage = check_stage(stage)
    trace = run.trace
    labels, key_labels = viz.token_labels(trace), viz.key_labels(trace)
    shown = shown or {}
    keys = view_keys(run, stage, layer, head, view_filter)
    focus = {"layer": layer, "head": head, "query": query, "key": keys["head"], "grid": keys["grid"]}
    page = page_run is not None
    if page:
        focus.update(run=page_run, stage=stage, threshold=view_filter.threshold, hide_sink=view_filter.hide_sink)
    same = {what: shown.get(what) == key for what, key in keys.items()}
    grid = gr.update() if same["grid"] else heatmap.tag_grid(
        viz.grid(trace, stage, max_cells=grid_cells(run), shown=view_filter), layers=list(trace.layers),
        heads=list(range(run.loaded.heads)), stage=stage, labels=labels, keys=key_labels, key=keys["grid"],
        focus=focus)
    if same["head"]:
        focused = strip_fig = gr.update()
    elif page:
        focused, strip_fig = head_views(run, stage, layer, head, view_filter, page_run, screen).sent(
            focus, labels_in_row)
    else:
        focused, strip_fig = head_figures(run, stage, layer, head, view_filter, focus, screen)
    row = heatmap.tag_row(viz.query_row(trace, layer, query, stage=stage, shown=view_filter), labels=labels,
                          keys=key_labels, key=keys["head"], focus=focus)
    if page:
        grid, row = (heatmap.lean(f) if isinstance(f, Figure) else f for f in (grid, row))
    return grid, focused, strip_fig, row, run.summary()


def head_figures(run: Run, stage: str, layer: int, head: int, view_filter: Shown, focus: dict,
                 screen: Screen = Screen()) -> tuple[Figure, Figure]:
    """Explore's focused head and its stage strip, their first views pooled to `screen`."""
    keys, stages = view_keys(run, stage, layer, head, view_filter), strip_stages(run.loaded)
    labels, key_labels = viz.token_labels(run.trace), viz.key_labels(run.trace)
    first_view = viz.heatmap_region(run.trace, layer, head, stage, shown=view_filter, max_cells=screen.head ** 2)
    focused = heatmap.tag_head(first_view, stage=stage, key=keys["head"], focus=focus)
    strip_fig = heatmap.tag_strip(strip(run, layer, head, stages, screen.strip ** 2, view_filter), stages=stages,
                                  labels=labels, keys=key_labels, key=keys["head"], focus=focus)
    return focused, strip_fig


@dataclass(frozen=True)
class HeadViews:
    """A head's focused heatmap and stage strip as the page gets them (`make_head_views`: without their exact hover
    values, lean, kept as JSON data without a focus), and what was taken out for the hover ({its key: heatmap.Kept})."""

    figures: tuple[dict, dict]
    kept: dict[str, heatmap.Kept]
    nbytes: int
    model: weakref.ref                               # whose: keys hold the model's id, which a new one may reuse

    def sent(self, focus: dict, labels_in_row: bool = False) -> tuple[dict, dict]:
        """The two views for the page with `focus` (heatmap.refocused); their exact values are kept among the recent
        hovers again."""
        for key, kept in self.kept.items():
            remember(("hover", key), kept, kept.nbytes, limits.RECENT_HOVERS)
        return (heatmap.refocused(self.figures[0], focus, labels_in_row=labels_in_row),
                heatmap.refocused(self.figures[1], focus, labels_in_row=labels_in_row))


# A head of this many query × key cells or more: the other heads' views are made ahead (plan_ahead). A count, not
# a time: 2,048 tokens (4.2 M, 0.09-0.2 s to make a head's views) yes, 512 (0.26 M, 0.03-0.07 s) and the bundled
# models no; there a click makes its head at once, and work ahead only competes with the page drawing the Run.
WORTH_AHEAD_CELLS = 1024 * 1024
MAKING: dict[tuple, threading.Lock] = {}       # head_views being made: a second asker waits for the first


def head_views(run: Run, stage: str, layer: int, head: int, view_filter: Shown, page_run: str,
               screen: Screen = Screen()) -> HeadViews:
    """`head_figures` for the page of `page_run`, made once for each stage, head, filter and screen and kept (at
    most limits.AHEAD_HEADS): by the first click that asks, or while the server is idle (`plan_ahead`)."""
    key = ("ahead", page_run, view_keys(run, stage, layer, head, view_filter)["head"], screen)
    with RECENT_LOCK:
        making = MAKING.setdefault(key, threading.Lock())
    try:
        with making:
            made = recall(key)
            if made is None or made.model() is not run.loaded.model:
                made = make_head_views(run, stage, layer, head, view_filter, screen)
                remember(key, made, made.nbytes, limits.AHEAD_HEADS)
            return made
    finally:
        with RECENT_LOCK:
            MAKING.pop(key, None)


def make_head_views(run: Run, stage: str, layer: int, head: int, view_filter: Shown,
                    screen: Screen = Screen()) -> HeadViews:
    """head_views' figures, made: each without its exact hover values and why-codes, which stay here for the hover's
    questions (`hover_cell`: a focused head sends a byte and a third a cell instead of eight) under a key of its own
    (the model object's identity tells apart two models of one name, two sessions' uploads; the screen, two poolings
    of one head), lean, filling its slot's width."""
    head_key = view_keys(run, stage, layer, head, view_filter)["head"]
    figures, kept, held = [], {}, 0
    for view, figure in zip(("head", "strip"), head_figures(run, stage, layer, head, view_filter, {}, screen),
                                strict=True):
        key = heatmap.key_of(head_key, id(run.loaded.model), screen.head, screen.strip, view)
        figure, kept[key] = heatmap.on_demand(figure, key)
        sent = fitted(heatmap.lean(figure)).to_json()          # plotly's JSON, kept as data (heatmap.refocused)
        figures.append(json.loads(sent))
        held += len(sent)
    held += sum(k.nbytes for k in kept.values())
    return HeadViews((figures[0], figures[1]), kept, held, weakref.ref(run.loaded.model))


def plan_ahead(run: Run, stage: str, layer: int, head: int, view_filter: Shown, page_run: str,
               screen: Screen = Screen()) -> None:
    """Make every other head's `head_views` while the server is idle (app/ahead.py), the heads after the focused
    one first, at most limits.AHEAD_HEADS of them, where a head has WORTH_AHEAD_CELLS or more (smaller heads' are
    made at the click); each task finds the run among the kept ones (it is dropped when they let go of it)."""
    if run.queries * run.trace.visible.shape[-1] < WORTH_AHEAD_CELLS:
        return
    heads = [(layer_, head_) for layer_ in run.trace.layers for head_ in range(run.loaded.heads)]
    start = heads.index((layer, head)) + 1 if (layer, head) in heads else 0
    later = [at for at in heads[start:] + heads[:start] if at != (layer, head)][: limits.AHEAD_HEADS - 1]

    def task(layer: int, head: int) -> None:
        kept = recall(("page", page_run), touch=False)
        run = recall(kept, touch=False) if kept is not None else None
        if run is not None:
            head_views(run, stage, layer, head, view_filter, page_run, screen)

    AHEAD.plan(page_run, [functools.partial(task, *at) for at in later])


PINNED: dict[str, heatmap.Kept] = {}      # hover values kept for good: those of the views every page opens on


def pin_hovers(figures: list[Any]) -> None:
    """Keep the hover values taken out of these figures (make_head_views) for as long as the app runs (not among the
    recent ones)."""
    for figure in figures:
        key = heatmap.meta_of(figure).get("hover")
        kept = recall(("hover", key)) if key else None
        if kept is not None:
            PINNED[key] = kept


def hover_cell(data: Any) -> dict:
    """A page's hover on a figure sent without its exact values (make_head_views): {"hover": its key, "trace", "row",
    "col", "query", "key", "layer"} → the cell's exact value and why (heatmap.hover_cell); {} once the figure is no
    longer kept."""
    key = data.get("hover") if isinstance(data, dict) else None
    with AHEAD.serving():
        kept = PINNED.get(key) or recall(("hover", key)) if isinstance(key, str) else None
        return {} if kept is None else heatmap.hover_cell(kept, data)


# focus_views runs outside Gradio's queue (a server function): at most this many at once, as the queue's own
# limit; a click finding none free goes through the queue instead (the page's fallback).
FOCUS_SLOTS = threading.BoundedSemaphore(limits.CONCURRENCY)


def focus_views(data: Any) -> dict:
    """A click on Explore's grid, focused head or strip, answered straight to the page (a Gradio server function):
    {"views": {"grid" | "head" | "strip" | "row": the figure as its slot sends it, or None where it shows the
    same; "text": the text view}, "head": the key of what the head's views show (a later question's `shown`)}
    for the click's {"run", "stage", "threshold", "hide_sink"} (its views' focus), {"layer", "head", "query",
    "shown"} and "averaged" (the text view's switch). The page draws them as they come, then sends the click's
    own request (explore_click with "drawn"), which brings the sliders, predictions and summary; it also asks
    while the pointer rests on a tile, before the click. {} when the run is no longer kept, the click is refused or
    FOCUS_SLOTS are all taken: the page then sends that request alone, which redraws or says why."""
    if not isinstance(data, dict) or not isinstance(data.get("run"), str):
        return {}
    return in_slot(focus_answer, data)


def in_slot(answer: Callable[[dict], dict], data: dict) -> dict:
    """A server function's `answer(data)`, within one of FOCUS_SLOTS and marked served (work ahead waits); {} when
    every slot is taken."""
    if not FOCUS_SLOTS.acquire(blocking=False):
        return {}
    try:
        with AHEAD.serving():
            return answer(data)
    finally:
        FOCUS_SLOTS.release()


def slot_views(figures: tuple[Any, ...]) -> dict[str, Any]:
    """A page answer's grid, head, strip and row: each figure as its slot sends it, a kept head's views
    (head_views) as they are, None where the view shows the same (gr.update())."""
    return {role: heatmap.plot_value(fitted(figure)) if isinstance(figure, Figure) else
            figure if heatmap.is_plot_value(figure) else None
            for role, figure in zip(("grid", "head", "strip", "row"), figures, strict=False)}


def focus_answer(data: dict) -> dict:
    """focus_views' answer, within a slot."""
    kept = recall(("page", data["run"]))
    run = kept_run(kept) if kept is not None else None
    if run is None:
        return {}
    try:
        shown = data.get("shown") if isinstance(data.get("shown"), dict) else {}
        averaged, view_filter = bool(data.get("averaged")), filter_of(data.get("threshold"), data.get("hide_sink"))
        layer, head, query = picks(run, *(clicked(data, what, -1) for what in ("layer", "head", "query")))
        stage = check_stage(data.get("stage"))
        figures = views_of(run, stage, layer, head, query, shown=shown, view_filter=view_filter,
                           page_run=data["run"], screen=Screen.of(data.get("pixels")), labels_in_row=True)
        text = shaded_text(run, layer, head, query, averaged, view_filter)
    except (ValueError, KeyError, TypeError):
        return {}
    return {"views": {**slot_views(figures), "text": text},
            "head": view_keys(run, stage, layer, head, view_filter)["head"]}


def grid_cells(run: Run) -> int:
    """The grid's cell budget: about a screen's worth for the whole grid (GRID_TILE_CELLS per side per tile),
    never more than viz.grid's own."""
    return min(viz.MAX_CELLS, run.loaded.depth * run.loaded.heads * GRID_TILE_CELLS ** 2)


def clicked(data: Any, what: str, default: int) -> int:
    """A whole number ≥ 0 from a click's event data, else `default` (the views check the range)."""
    value = data.get(what) if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return default
    return int(value)


@friendly
def explore_pick(session: Session | None, model: str, text: str, stage: str, layer: float, head: float,
                 query: float, evt: gr.EventData, threshold: float = 0.0, hide_sink: bool = False,
                 screen: Any = None, progress: gr.Progress = gr.Progress()) -> list[Any]:
    """A click in the Explore tab: a grid tile focuses its layer and head (and the clicked query), a cell of
    the focused head or its stage strip, or a token of the text view, picks its query. Returns the layer, head
    and query sliders, then explore's views (those that would show the same again are left as they are), pooled
    to the page's `screen` (Screen.of)."""
    data = getattr(evt, "_data", None) or {}
    layer, head = clicked(data, "layer", int(layer)), clicked(data, "head", int(head))
    query = clicked(data, "query", int(query))
    if data.get("drawn"):           # the page has its views from focus_views: the sliders and summary only
        run = explore_run(load(session, model, progress), text, progress)
        return [*picks(run, layer, head, query), *(gr.skip() for _ in range(4)), run.summary()]
    shown = data.get("shown") if isinstance(data.get("shown"), dict) else {}
    views = explored(session, model, text, stage, layer, head, query, progress, shown=shown,
                     view_filter=filter_of(threshold, hide_sink), page=True, screen=Screen.of(screen))
    return [layer, head, query, *views]


@friendly
def explore_click(session: Session | None, model: str, text: str, stage: str, layer: float, head: float,
                  query: float, evt: gr.EventData, threshold: float = 0.0, hide_sink: bool = False,
                  averaged: bool = False, screen: Any = None, progress: gr.Progress = gr.Progress()) -> list[Any]:
    """explore_pick as the page runs it: the sliders, the views, then the text view and predictions of the new
    focus, then the summary, in one request (`with_text`). A click whose views the page has drawn already
    (focus_views, "drawn") gets the predictions alone: it has the text view too."""
    moved = explore_pick(session, model, text, stage, layer, head, query, evt, threshold, hide_sink, screen, progress)
    if (getattr(evt, "_data", None) or {}).get("drawn"):
        table = next_table(explore_run(load(session, model, None), text), moved[2])
        return [*moved[:-1], gr.skip(), table, moved[-1]]
    return [*moved[:3], *with_text(tuple(moved[3:]), session, model, text, *moved[:3], averaged, threshold, hide_sink)]


def on_pick(view: Callable[..., Any], fields: dict[str, int], outputs: int) -> Callable[..., list[Any]]:
    """A click on a figure of `view`'s tab (role "pick" in app/heatmap.js) as the page runs it: each value the
    click names among `fields` (layer, head, query → the index of that slider's value among the view's
    arguments) replaces the slider's, and the view redraws in the same request. Returns those sliders, then the
    view's `outputs` figures and summary; a click that moves no slider changes nothing. (Explore has its own,
    which also redraws only the views whose content changes: explore_pick.)"""
    def picked(evt: gr.EventData, *args: Any) -> list[Any]:
        data = getattr(evt, "_data", None) or {}
        moved = list(args)
        for what, at in fields.items():
            moved[at] = clicked(data, what, moved[at])
        if moved == list(args):
            return [gr.skip() for _ in range(len(fields) + outputs)]
        return [*(moved[at] for at in fields.values()), *view(*moved)]
    picked.__name__ = f"{view.__name__}_pick"
    return friendly(picked)


@friendly
def explore_zoom(session: Session | None, model: str, text: str, stage: str, layer: float, head: float,
                 evt: gr.EventData, threshold: float = 0.0, hide_sink: bool = False) -> Any:
    """A zoom on the focused head: the visible region again, at the detail the plot's width can show (full
    resolution once it fits). Nothing changes if the head shown is no longer the one chosen."""
    data = getattr(evt, "_data", None) or {}
    region = data.get("region")
    if not (isinstance(region, list) and len(region) == 4 and all(isinstance(v, int) for v in region)):
        raise ValueError("A zoom names its region as four whole numbers [i0, i1, j0, j1].")
    run = explore_run(load(session, model, None), text)
    layer, head = picks(run, layer, head)
    stage = check_stage(stage)
    hiding = filter_of(threshold, hide_sink)
    key = view_keys(run, stage, layer, head, hiding)["head"]
    if data.get("head") != key:
        return gr.update()
    cells = heatmap.zoom_pixels(data.get("px")) ** 2
    figure = viz.heatmap_region(run.trace, layer, head, stage, region=tuple(region), max_cells=cells, shown=hiding)
    return heatmap.tag_head(figure, stage=stage, key=key, focus={"layer": layer, "head": head, "key": key})


def predictions(run: Run, position: int, heading: str) -> str:
    """Markdown: the model's five most likely next tokens after token `position` of `run` (viz.predictions_table)."""
    return viz.predictions_table(next_tokens(run.loaded.model, run.logits, run.loaded.tokenizer, position), heading)


@friendly
def explore_text(session: Session | None, model: str, text: str, layer: float, head: float, query: float,
                 averaged: bool = False, threshold: float = 0.0, hide_sink: bool = False) -> tuple[str, str]:
    """The text shaded by the attention the query pays each token (the focused head's, or with `averaged` the
    mean over heads; the display filter leaves hidden tokens unshaded), and the model's top-5 next tokens there."""
    run = explore_run(load(session, model, None), text)
    return text_view(run, *picks(run, layer, head, query), averaged, filter_of(threshold, hide_sink))


def text_view(run: Run, layer: int, head: int, query: int, averaged: bool, view_filter: Shown) -> tuple[str, str]:
    """explore_text from a kept `run`, at a checked focus."""
    return shaded_text(run, layer, head, query, averaged, view_filter), next_table(run, query)


def next_table(run: Run, query: int) -> str:
    """The predictions alone: the model's top-5 next tokens after (checked) position `query`."""
    token = query - run.trace.memory_tokens
    label = viz.token_labels(run.trace)[query]
    return (predictions(run, token, f"next token after `{viz.display_label(label)}`") if token >= 0
            else f"*{label} is a memory token: the model predicts nothing there.*")


def shaded_text(run: Run, layer: int, head: int, query: int, averaged: bool, view_filter: Shown) -> str:
    """The text view alone: shaded by the focused head, or with `averaged` the mean over the layer's heads."""
    return viz.token_html(run.trace, layer, query, head=None if averaged else head, shown=view_filter)


@friendly
def realformer(session: Session | None, model: str, text: str, layer: float, head: float, other: str,
               progress: gr.Progress = gr.Progress()) -> tuple[Figure, Figure, Figure, Figure, str]:
    """Own scores, the residual carried in and their sum; residual attention on vs off; layer similarity."""
    loaded = load(session, model, progress)
    flipped = {"residual_attn": not loaded.model.config.attn_layers.residual_attn}
    twin = (models.with_config(loaded, **flipped) if other == texts.SAME_WEIGHTS
            else models.counterpart(loaded, **flipped))
    run = trace_text(loaded, text, progress=progress)
    layer, head = picks(run, layer, head)
    twin_run = trace_text(twin, text)
    sum_strip = strip(run, layer, head, ["scores", "residual", "scores_residual", "attn"])
    on, off = (run, twin_run) if not flipped["residual_attn"] else (twin_run, run)
    difference = viz.diff(on.trace, off.trace, layer=layer, head=head,
                          names=(f"residual on: {on.loaded.name}", f"off: {off.loaded.name}"))
    note = f"Compared with **{twin.name}**; the difference is residual on − off."
    layers = list(run.trace.layers)
    return (sum_strip, difference, heatmap.tag_similarity(viz.layer_similarity(on.trace, share=off.trace), layers),
            heatmap.tag_similarity(viz.layer_similarity(off.trace, share=on.trace), layers),
            "\n\n".join([run.summary(), note]))


@friendly
def selective(session: Session | None, model: str, text: str, layer: float, head: float, query: float,
              progress: gr.Progress = gr.Progress()) -> tuple[Figure, Figure, Figure, Figure, str]:
    """The gate head, F and the pruned keys; one head's logits before and after F; F across layers."""
    loaded = load(session, model, progress)
    if not loaded.model.config.attn_layers.selective:
        raise ValueError(f"{loaded.name} does not use selective attention. Pick a model with 'selective' "
                         "or 'both' in its name, or build a fresh one with selective attention ticked.")
    run = trace_text(loaded, text, progress=progress)
    layer, head, query = picks(run, layer, head, query)
    penalty = run.trace["selection"][layer, 0, 0, query]
    order = [k for k in penalty.argsort(descending=True).tolist() if penalty[k] > 0]
    keys, queries = viz.key_labels(run.trace), viz.token_labels(run.trace)   # extra key columns, memory tokens
    strongest = ", ".join(f"`{keys[k]}` (F = {float(penalty[k]):.2f})" for k in order[:8])
    pruned = sum(float(penalty[k]) >= PRUNE_AT for k in order)
    lost = (f"In layer {layer}, F lowers {len(order)} earlier key(s) for query {query} (`{queries[query]}`)"
            + (f"; strongest: {strongest}" if order else "") + f". {pruned} of them are pruned "
            f"(F ≥ {PRUNE_AT:.1f}: their weight is cut below {PRUNED_BELOW:g} of an unpenalised key's).")
    before_after = strip(run, layer, head, ["masked", "selection", "pre_softmax", "attn"])
    return (viz.selection(run.trace, layer), before_after, viz.query_row(run.trace, layer, query, stage="selection"),
            viz.grid(run.trace, "selection", heads=[0]), "\n\n".join([run.summary(), lost]))


def custom_mask(preset: str, size: float, mask_text: str, n: int) -> torch.Tensor | None:
    """The custom mask chosen in the form: a preset with its size, or the free edit when it is filled in."""
    if mask_text and mask_text.strip():
        if len(mask_text) > 4 * (n + 1) ** 2:
            raise ValueError(f"The mask text has {len(mask_text):,} characters; {n} rows of {n} digits need far "
                             "fewer.")
        return masks.parse_mask(mask_text, n)
    if preset not in masks.PRESETS:
        raise ValueError(f"Unknown mask preset {preset!r}; choose one of {', '.join(masks.PRESETS)}.")
    if preset == "none":
        return None
    return masks.PRESETS[preset](n, models.whole(size, SIZE_FIELD, 1 if preset == "block-diagonal" else 0))


def adds_nothing_note(loaded: Loaded, preset: str, mask_text: str, parts: dict[str, torch.Tensor]) -> list[str]:
    """A sentence when the custom mask changes nothing (`masks.custom_adds_nothing`), saying why."""
    if not masks.custom_adds_nothing(parts) or (preset == "none" and not (mask_text or "").strip()):
        return []
    if preset == "prefix-LM" and not (mask_text or "").strip() and loaded.model.config.attn_layers.causal:
        return [f"**The prefix-LM mask changes nothing here:** {loaded.name} is a decoder, whose causal mask already "
                "hides every key after the query; what prefix-LM opens beyond causal (the prefix seeing its own "
                "later tokens) lies in that future, so custom ∧ causal = causal. Try it on an encoder (a fresh "
                "model without *causal*)."]
    return ["**The custom mask changes nothing here:** every pair it hides is hidden by the padding, causal or "
            "window mask already."]


@friendly
def masking(session: Session | None, model: str, text: str, preset: str, size: float, mask_text: str,
            padding: float, pad_side: str, layer: float, head: float,
            progress: gr.Progress = gr.Progress()) -> tuple[Figure, Figure, Figure, str]:
    """Each mask, the effective mask, rows left with no key, and what the custom mask changed downstream."""
    *shown, _ = masked(session, model, text, preset, size, mask_text, padding, pad_side, layer, head, progress)
    return tuple(shown)


@friendly
def masking_page(session: Session | None, model: str, text: str, preset: str, size: float, mask_text: str,
                 padding: float, pad_side: str, layer: float, head: float, filled: str | None,
                 progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
    """`masking` as the page runs it: the free-edit box counts as an edit only when it differs from what the
    last run put there (`filled`), and after each run it holds the custom mask in use, labelled with the size a
    mask needs here. Returns the figures, the box, what was filled, then the summary."""
    edited = mask_text if (mask_text or "").strip() != (filled or "").strip() else ""
    *figures, summary, run = masked(session, model, text, preset, size, edited, padding, pad_side, layer, head,
                                    progress)
    used = "" if run.attn_mask is None else masks.format_mask(run.attn_mask)
    pads = 0 if run.pad_mask is None else int((~run.pad_mask).sum())
    label = (f"free edit: {run.n} rows of {run.n} digits 0/1 (row = query, column = key) for {run.n - pads} tokens, "
             f"<bos> first, and {pads} pad tokens; edit and Run to override the preset")
    return (*figures, gr.update(value=used, label=label), used, summary)


def masked(session: Session | None, model: str, text: str, preset: str, size: float, mask_text: str,
           padding: float, pad_side: str, layer: float, head: float,
           progress: gr.Progress | None) -> tuple[Any, ...]:
    """The Masking debugger's figures and summary, and the run they show."""
    loaded = load(session, model, progress)
    padding = models.whole(padding, f"Padding (pad tokens, for {loaded.name})", 0, loaded.max_seq_len - 2)
    if pad_side not in PAD_SIDES:
        raise ValueError(f"Padding goes on the {' or the '.join(PAD_SIDES)}, not {pad_side!r}.")
    pad_left = pad_side == "left"
    run = trace_text(loaded, text, padding=padding, pad_left=pad_left, progress=progress,
                     custom=lambda n: custom_mask(preset, size, mask_text, n))
    layer, head = picks(run, layer, head)
    parts = masks.breakdown(loaded.model, run.n, mask=run.pad_mask, attn_mask=run.attn_mask)
    removed = [f"**{name}** hides {int((~visible).sum())} of {run.n * run.n} query–key pairs"
               for name, visible in parts.items()]
    queries = viz.token_labels(run.trace)
    empty = [f"`{queries[q]}` (position {q})" for q in run.trace.fully_masked[0].nonzero().flatten().tolist()]
    flagged = (f"**Flagged:** {len(empty)} row(s) have no visible key, so their attention output is set to zero: "
               + ", ".join(empty)) if empty else "Every query still sees at least one key."
    unmasked = trace_text(loaded, text, padding=padding, pad_left=pad_left)
    real = torch.ones(1, run.n, dtype=torch.bool) if run.pad_mask is None else run.pad_mask
    changed = int((run.logits.argmax(-1) != unmasked.logits.argmax(-1))[real].sum())
    downstream = (f"Downstream, the custom mask changes the predicted next token at {changed} of "
                  f"{run.n - padding} real positions.")
    last = run.n - 1 - (0 if pad_left else padding)              # the last real token
    said = f"after `{viz.display_label(run.labels[last])}·{last}`"
    downstream += "\n\n" + predictions(unmasked, last, f"without the custom mask, {said}") + "\n\n" + \
        predictions(run, last, f"with the custom mask, {said}")
    nothing = adds_nothing_note(loaded, preset, mask_text, parts)
    return (viz.mask_figure(run.trace), viz.mask_breakdown(parts, viz.token_labels(run.trace)),
            viz.diff(run.trace, unmasked.trace, layer=layer, head=head, names=("with the custom mask", "without")),
            "\n\n".join([run.summary(), *nothing, "; ".join(removed) + ".", flagged, downstream]), run)


@friendly
def compare(session: Session | None, model_a: str, model_b: str, text: str, stage: str, layer: float, head: float,
            progress: gr.Progress = gr.Progress()) -> tuple[Figure, Figure, Figure, str]:
    """Two models on the same text: the same head and stage side by side, and their difference."""
    a = trace_text(load(session, model_a, progress), text, progress=progress)
    b = trace_text(load(session, model_b, None), text)
    if a.ids != b.ids:
        raise ValueError(f"{a.loaded.name} and {b.loaded.name} read this text as different tokens "
                         f"({a.n} vs {b.n}), so their attention cannot be compared cell by cell.")
    layer, head = picks(a, layer, head)
    picks(b, layer, head)
    stage = check_stage(stage)
    said = f"after the last token (`{viz.display_label(a.labels[-1])}`)"
    guesses = [predictions(r, r.n - 1, f"{r.loaded.name}, {said}") for r in (a, b)]
    return (viz.heatmap(a.trace, layer, head, stage, name=f"A: {a.loaded.name}"),
            viz.heatmap(b.trace, layer, head, stage, name=f"B: {b.loaded.name}"),
            viz.diff(a.trace, b.trace, layer=layer, head=head, stage=stage,
                     names=(f"A: {a.loaded.name}", f"B: {b.loaded.name}")),
            "\n\n".join([a.summary(), b.summary(), *guesses]))
