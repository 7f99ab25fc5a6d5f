"""A figure slot of our own: Plotly.js in a `gr.HTML` custom component, with clicks, zooms and hover.

`gr.Plot` sends no click or zoom events. `plotly_view` draws the same value a `gr.Plot` gets (`{"type":
"plotly", "plot": <figure JSON>}`, so API clients see no difference) with plotly.js (its cartesian bundle trimmed to
the traces the app draws, app/bundle.py, when it is the installed plotly package's version, else the package's own
full bundle) and the views' own code (app/heatmap.js, one script for the page: each view's js_on_load only calls
it), both served by this app's own file route (no CDN: the page works offline), and sends back:

- `pick`: a click on a heatmap cell or a grid tile, as {"query", "key"} (+ {"layer", "head"} for a tile of
  the layers × heads grid), with "shown": {"grid", "head"}, the keys (`key_of`) of what the page shows; on
  the Heads view's statistics, {"layer", "head", "stat"}; on the other tabs' views (role "pick"), the same
  without "shown", and {"layer", "head"} for a cell of a layer-similarity matrix (`tag_similarity`);
- `zoom`: a zoom or pan on a focused head, as {"region": [i0, i1, j0, j1], "px": plot width in pixels,
  "head": its key}; the answer (a `viz.heatmap_region` figure of that region) is laid over the first,
  pooled view at the detail the screen can show.

Views on one page share a focus (layer, head, query, from the figures' `layout.meta["xattn"]`) and a key
(clicked in the page): the grid outlines the focused tile, a focused head outlines the query row and the key
column, the bars of the query row mark the key. Hover shows the value and token labels everywhere, decoded
from the one-byte codes where no exact values ride along.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import gradio as gr
import numpy as np
import plotly
import plotly.graph_objects as go
from gradio import component_meta
from gradio.components.plot import PlotData

from xattn import viz
from xattn.masks import REASONS

from . import bundle

FULL_PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


def js_version(path: Path) -> str | None:
    """The version a plotly.js bundle names in its header comment ('plotly.js … v4.1.1'), if any."""
    if not path.is_file():
        return None
    with path.open(encoding="utf-8", errors="replace") as script:      # the header only, not megabytes of script
        found = re.search(r"plotly\.js[^\n]*? v(\d+\.\d+\.\d+)", script.read(300))
    return found.group(1) if found else None


def page_plotly_js() -> Path:
    """The plotly.js the page loads: the app's own bundle (app/bundle.py: the cartesian bundle registering only the
    traces the app draws) when it is the installed plotly's own version (the figures' JSON is written for that one),
    else the installed package's full bundle."""
    own = js_version(bundle.BUNDLE)
    return bundle.BUNDLE if own is not None and own == js_version(FULL_PLOTLY_JS) else FULL_PLOTLY_JS


PLOTLY_JS = page_plotly_js()
# The views' own code, loaded once for the page (it defines xattnView); each view's js_on_load only calls it (JS)
VIEW_JS = Path(__file__).resolve().parent / "heatmap.js"
EVENTS = ("pick", "zoom")          # what a view sends Python (heatmap.js `trigger`; gr.HTML finds them quoted in JS)
JS = f"xattnView(element, trigger, props, server, upload, watch);   // sends {', '.join(repr(e) for e in EVENTS)}"


def page_url(path: Path) -> str:
    """Where the page gets one of its scripts: relative to the page (so the app also works under a path prefix),
    named by its content, so a browser never runs a cached copy of an older one."""
    version = hashlib.sha1(path.read_bytes()).hexdigest()[:12]
    return f"gradio_api/file={path.as_posix()}?v={version}"


PAGE_SCRIPTS = (PLOTLY_JS, VIEW_JS)
PAGE_URLS = [page_url(path) for path in PAGE_SCRIPTS]
HEAD = "".join(f'<script src="{url}"></script>' for url in PAGE_URLS)
# The page's own response names its scripts for preloading (app/main.py): the browser fetches them while Gradio's
# scripts load, instead of once the views are mounted and add HEAD (about a second later).
PRELOAD = ", ".join(f"<{quote(url, safe='/=?')}>; rel=preload; as=script" for url in PAGE_URLS)
ZOOM_PIXELS = (64, 1024)           # a zoom request's cells per side, whatever width the browser claims

TEMPLATE = '<div class="xattn-view"><div class="xattn-plot"></div><div class="xattn-tip"></div></div>'
CSS = """
.xattn-view { position: relative; width: 100%; }
.xattn-plot { width: 100%; }
.xattn-view.xattn-running { opacity: 0.55; transition: opacity 0.15s 0.2s; }
.xattn-tip { position: absolute; display: none; pointer-events: none; z-index: 20; padding: 4px 7px;
  background: rgba(255, 255, 255, 0.96); border: 1px solid #888; border-radius: 3px; color: #222;
  font: 12px/1.35 Inter, "Helvetica Neue", Arial, sans-serif; white-space: nowrap; box-shadow: 0 1px 4px #0003; }
"""


@contextlib.contextmanager
def no_stub() -> Iterator[None]:
    """Gradio writes a .pyi stub next to the source of every Component subclass it meets (for its own
    components' type hints): here that would be a file written into the installed app at import."""
    write = component_meta.create_or_modify_pyi
    component_meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:
        yield
    finally:
        component_meta.create_or_modify_pyi = write


with no_stub():
    class PlotlyView(gr.HTML):
        """A Plotly figure slot with `pick` (click) and `zoom` (relayout) events, whose value is a go.Figure sent as
        gr.Plot sends it. `role`: "grid", "head" (zoom for detail), "strip", "row", "heads" (a click sends the
        head's layer, head and statistic: app/heads.py) or "plot".

        A subclass, not a patched gr.HTML: Gradio answers a `gr.update()` by building a fresh component of the
        output's class for the session, and that copy must still turn figures into JSON."""

        def __init__(self, label: str, *, role: str = "plot", elem_id: str | None = None, value: Any = None,
                     server: list[Callable[[Any], dict]] | None = None, **kwargs: Any) -> None:
            super().__init__(value, label=label, show_label=False, container=True, html_template=TEMPLATE,
                             css_template=CSS, js_on_load=JS, head=HEAD, apply_default_css=False, elem_id=elem_id,
                             role=role, server_functions=server or None, **kwargs)

        def preprocess(self, payload: Any) -> Any:
            return payload

        def postprocess(self, value: Any) -> PlotData | None:   # type: ignore[override]
            """A figure as gr.Plot sends it: {"type": "plotly", "plot": <figure JSON>}."""
            if value is None or isinstance(value, PlotData):
                return value
            return PlotData(**(value if isinstance(value, dict) else plot_value(value)))

        def api_info(self) -> dict[str, Any]:
            return PLOT_API.copy()

        def example_payload(self) -> Any:
            return None

        def example_value(self) -> Any:
            return None


PLOT_API = gr.Plot(render=False).api_info()


def plot_value(fig: go.Figure) -> dict[str, str]:
    """A figure as a PlotlyView's value: {"type": "plotly", "plot": <figure JSON>}, as gr.Plot sends one."""
    return {"type": "plotly", "plot": fig.to_json()}


ROW_LABELS = {"as": "row"}      # a view's labels that are its answer's query row's (app/heatmap.js `expand`)


def refocused(figure: dict, focus: dict, *, labels_in_row: bool = False) -> dict[str, str]:
    """A figure kept as JSON data (its plotly JSON, parsed), as a PlotlyView's value (plot_value) whose meta carries
    `focus`: a head's views made once, sent with whichever query the click picked. With `labels_in_row`, its token
    labels are those of the query row sent with it (ROW_LABELS): one list per answer, not three."""
    layout = figure["layout"]
    xattn = {**layout["meta"]["xattn"], "focus": focus}
    if labels_in_row and "labels" in xattn:
        xattn["labels"] = ROW_LABELS
    meta = {**layout["meta"], "xattn": xattn}
    return {"type": "plotly", "plot": plotly.io.json.to_json_plotly({**figure, "layout": {**layout, "meta": meta}})}


def is_plot_value(value: Any) -> bool:
    """Whether `value` is a figure as a PlotlyView's value (plot_value, refocused), not a gr.update()."""
    return isinstance(value, dict) and isinstance(value.get("plot"), str)


def as_figure(value: Any) -> go.Figure:
    """A figure, or a plot value (as a PlotlyView's value), as a go.Figure: a view's output for a reader."""
    return go.Figure(json.loads(value["plot"])) if is_plot_value(value) else value


def meta_of(figure: Any) -> dict:
    """What a figure or plot value says of itself (layout.meta.xattn); {} for anything else."""
    meta = as_figure(figure).layout.meta if is_plot_value(figure) or isinstance(figure, go.Figure) else None
    return meta.get("xattn", {}) if isinstance(meta, dict) else {}


def plotly_view(label: str, *, role: str = "plot", elem_id: str | None = None,
                elem_classes: list[str] | None = None, value: Any = None,
                server: list[Callable[[Any], dict]] | None = None) -> PlotlyView:
    """A PlotlyView; `value` (a figure) is drawn as the page opens, shipped in the page's config; `server` are the
    functions its page code may call by name: `hover_cell(data)` answers its hover's questions about figures sent
    `on_demand`, `focus_views(data)` a click's views (app/views.py)."""
    return PlotlyView(label, role=role, elem_id=elem_id, elem_classes=elem_classes, value=value, server=server)


def static_paths() -> list[str]:
    """The files outside Gradio's own that the app serves: plotly.js and the views' code, for plotly_view."""
    return [str(path) for path in PAGE_SCRIPTS]


# Figure tags: what each drawn view is, for clicks, hover and marks in the page


def key_of(*parts: Any) -> str:
    """A short id of what a figure shows (model, text, stage, layer, head), to tell stale events apart."""
    return hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _tag(fig: go.Figure, **meta: Any) -> go.Figure:
    old = fig.layout.meta if isinstance(fig.layout.meta, dict) else {}
    fig.update_layout(meta={**old, "xattn": {**old.get("xattn", {}), **meta}})
    return fig


def _name_traces(fig: go.Figure, name_of: Any) -> None:
    for trace in fig.data:
        if trace.type == "heatmap":
            trace.meta = {**(trace.meta or {}), **name_of(trace)}


def tag_grid(fig: go.Figure, *, layers: list[int], heads: list[int], stage: str, labels: list[str],
             keys: list[str], key: str, focus: dict) -> go.Figure:
    """viz.grid's tiles, in the order it adds them (layer by layer), learn their layer and head."""
    tiles = iter([(layer, head) for layer in layers for head in heads])
    name = viz.STAGE_STYLE[stage].name

    def of(_: Any) -> dict:
        layer, head = next(tiles)
        return {"layer": layer, "head": head, "name": name}

    _name_traces(fig, of)
    return _tag(fig, kind="grid", key=key, labels=labels, keys=keys, n=len(labels), n_keys=len(keys), focus=focus)


def tag_head(fig: go.Figure, *, stage: str, key: str, focus: dict) -> go.Figure:
    _name_traces(fig, lambda _: {"name": viz.STAGE_STYLE[stage].name})
    return _tag(fig, kind="head", key=key, focus=focus)


def tag_strip(fig: go.Figure, *, stages: list[str], labels: list[str], keys: list[str], key: str,
              focus: dict) -> go.Figure:
    """viz.stages' panels learn their stage from their column."""
    def of(trace: Any) -> dict:
        column = int((trace.xaxis or "x")[1:] or 1)
        return {"name": viz.STAGE_STYLE[stages[column - 1]].name}

    _name_traces(fig, of)
    return _tag(fig, kind="strip", key=key, labels=labels, keys=keys, n=len(labels), n_keys=len(keys), focus=focus)


def tag_row(fig: go.Figure, *, labels: list[str], keys: list[str], key: str, focus: dict) -> go.Figure:
    return _tag(fig, kind="row", key=key, labels=labels, keys=keys, n=len(labels), n_keys=len(keys), focus=focus)


def tag_similarity(fig: go.Figure, layers: list[int]) -> go.Figure:
    """viz.layer_similarity's matrices (rows of layers, a column per head) learn each row's layer, so a click on
    a cell focuses that layer and head: in the consecutive-layers panel (the first) a row compares layers a → b
    and stands for b, where the residual carried from a arrives; in the within-layer panel, its own layer."""
    _name_traces(fig, lambda trace: {"layers": layers[1:] if (trace.xaxis or "x") == "x" else layers})
    return fig


def lean(fig: go.Figure) -> go.Figure:
    """`fig` for the page without the label lists it would send twice (app/heatmap.js puts them back): the key
    labels when they are the query labels, and a trace's hover text when it is the key labels (the query row's
    steps)."""
    meta = fig.layout.meta.get("xattn") if isinstance(fig.layout.meta, dict) else None
    if not meta or "keys" not in meta:
        return fig
    keys = list(meta["keys"])
    for trace in fig.data:
        start = int(trace.x0 or 0) if trace.type == "scatter" and trace.text is not None else -1
        if start >= 0 and list(trace.text) == keys[start:start + len(trace.text)]:     # a run of them, from x0
            trace.update(text=None, meta={**(trace.meta or {}), "text": "keys", "from": start})
    sent = {k: v for k, v in meta.items() if k != "keys"}
    if "labels" in sent:
        sent["labels"] = compact(sent["labels"])
    if keys != list(meta.get("labels", [])):
        sent["keys"] = compact(keys)
    fig.layout.meta = {**fig.layout.meta, "xattn": sent}
    return fig


def compact(labels: list[str]) -> list[str] | dict:
    """Axis labels as the page gets them: {"head": the labels before the tokens (memory tokens, extra keys),
    "tokens": the tokens} when the rest are viz's 'token·position' (heatmap.js adds the positions back), else as
    they are."""
    labels = list(labels)
    last = labels[-1].rsplit("·", 1)[-1] if labels else ""
    start = len(labels) - 1 - int(last) if last.isdigit() else -1       # where token 0 would be
    if start < 0 or not all(label.endswith(f"·{i}") for i, label in enumerate(labels[start:])):
        return labels
    return {"head": labels[:start], "tokens": [label[: label.rindex("·")] for label in labels[start:]]}


# Hover on demand: a page's view without its exact values and why-codes, which the server keeps and the
# hover asks for a cell at a time (`hover_cell`): most of a focused head's bytes, for values read one by one.


@dataclass(frozen=True)
class Kept:
    """What `on_demand` took out of a figure: each trace's exact values (None for a trace without), and the
    why-codes (viz.cells.why) of the figure, if any."""

    exact: list[np.ndarray | None]
    why: dict | None

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.exact if v is not None) + (self.why["codes"].nbytes if self.why else 0)


def on_demand(fig: go.Figure, key: str) -> tuple[go.Figure, Kept]:
    """`fig` for the page without the exact hover values (customdata) of its heatmaps and its why-codes, tagged
    with `key` (layout.meta.xattn.hover) under which the server keeps them; and what was taken out. The page's
    hover shows the value its colour code stands for at once and asks for the rest (`hover_cell`)."""
    exact = []
    for trace in fig.data:
        values = trace.customdata if trace.type == "heatmap" else None
        exact.append(None if values is None else np.asarray(values, dtype=np.float32))
        if values is not None:
            trace.customdata = None
    meta = dict(fig.layout.meta["xattn"]) if isinstance(fig.layout.meta, dict) else {}
    why = meta.pop("why", None)
    fig.layout.meta = {**fig.layout.meta, "xattn": {**meta, "hover": key}}
    return fig, Kept(exact, None if why is None else {**why, "codes": np.asarray(why["codes"])})


def hover_cell(kept: Kept, data: Any) -> dict:
    """A hover's question about one drawn cell, {"trace", "row", "col"} (the cell of that heatmap) and
    {"query", "key", "layer"} (its first token position and layer, for why), answered from `kept`: {"value"} (None
    where masked), {"mask": name} or {"pruned": F}; {} for a question that names no cell."""
    if not isinstance(data, dict):
        return {}
    where = [data.get(k) for k in ("trace", "row", "col", "query", "key")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in where):
        return {}
    trace, row, col, query, key = where
    answer: dict[str, Any] = {}
    values = kept.exact[trace] if trace < len(kept.exact) else None
    if values is not None and row < values.shape[0] and col < values.shape[1]:
        value = float(values[row, col])
        answer["value"] = None if math.isnan(value) else value
    if kept.why is not None:
        i0, _, j0, _ = kept.why["region"]
        r, c = (query - i0) // kept.why["factor"], (key - j0) // kept.why["factor"]
        _, rows, cols = kept.why["codes"].shape
        if 0 <= r < rows and 0 <= c < cols:                 # decode that one cell's codes, not the whole matrix
            cell = {**kept.why, "codes": kept.why["codes"][:, r:r + 1, c:c + 1]}
            (name,), (f,) = (a.ravel() for a in viz.decode_why(cell, data.get("layer")))
            if not math.isnan(f):
                answer["pruned"] = float(f)
            elif name != REASONS[0]:                         # not "visible": the mask that hides it
                answer["mask"] = str(name)
    return answer


def zoom_pixels(value: Any) -> int:
    """A page's claimed plot width (a zoom request's, or its views' for their first views: views.Screen), as cells
    per side within ZOOM_PIXELS."""
    low, high = ZOOM_PIXELS
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return low
    return int(min(max(value, low), high))
