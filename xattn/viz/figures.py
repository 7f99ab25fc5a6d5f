"""Trace → plotly figures. Queries run down the rows, keys along the columns; masked cells are grey.
A cross-attention trace (`trace.cross`) has decoder tokens down the rows and context (encoder) tokens along
the columns. Key axes start with the extra key columns (sink, zero key, memory key/values), named as such.

Heatmap values travel as one-byte codes (see payload.py) on a colour axis whose colour bar is
labelled in real values; focused single-head views also carry the exact float32 values for hover.
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import textwrap

import numpy as np
import plotly.graph_objects as go
from plotly.colors import get_colorscale
from plotly.subplots import make_subplots
from torch import Tensor

from ..attention import PRUNED_BELOW
from ..masks import MASKS, reasons
from ..stages import DESCRIPTIONS, HEAD_SHARED, MASKED_STAGES, PROBABILITY_STAGES
from ..trace import Trace
from .cells import Shown, pool_shown, pruned, why
from .payload import HIDDEN_CODE, LEVELS, MASKED_CODE, SAFE_CODES, Scale, max_pool, pool_factor
from .style import (
    CHART_TEMPLATE,
    DIFF_STYLE,
    DIVERGENCE_STYLE,
    FLAG_COLOR,
    HEAD_COLORS,
    HEATMAP_AXIS,
    HIDDEN_COLOR,
    MASK_COLORS,
    MASKED_COLOR,
    PRUNE_COLORS,
    REMOVER_COLORS,
    STAGE_STYLE,
    TEMPLATE,
    StageStyle,
    colorbar,
    colorbar_room,
    stage_style,
)

FULL_RESOLUTION = 2048        # single heatmaps are max-pooled only beyond this many tokens
MAX_CELLS = 1 << 20           # grid cell budget before max-pooling
EXACT_HOVER_TOKENS = 256      # stage strips carry exact hover values up to this many tokens
ROW_BARS = 256                # a query row over more keys is drawn as one step line per head, not bars
DEFAULT_STAGES = ("scores", "scores_residual", "masked", "pre_softmax", "attn")
TOP_CHANGES = 5               # cells circled in a diff
COMPACT_HEADS = 6            # a grid of more heads titles its columns h0, h1 …
SUBTITLE_CHARS = 18          # a stage strip's panel subtitles wrap at this many characters
TITLE_Y = 0.98               # a title's top, as a fraction of the figure's height
SUBPLOT_TITLE_SIZE = 13      # px: plotly's 16 makes a panel's title wider than a narrow panel
TITLE_NAME_CHARS = 40          # a name in a title is cut to this many characters
TITLE_NOTE_CHARS = 64        # a title's small-type lines wrap at this many characters …
TITLE_NOTE_LINES = 2         # … and stop after this many
OWN_RANGE = frozenset({"scores"})   # stages a stage strip gives a colour range of their own
# What a label shows for a character it would otherwise show as nothing: a Unicode control picture (U+2400 + code),
# but for the three a text is full of, signs common fonts have (the control pictures are missing from DejaVu, all a
# plain Linux desktop may have, which draws ␠ as an empty box): ␣ for a space, ↵ for a newline, ⇥ for a tab.
PICTURES = {**{chr(c): chr(0x2400 + c) for c in range(32)}, " ": "␣", "\n": "↵", "\t": "⇥", "\x7f": "␡"}


# validation and data access

def _check_index(what: str, value: int, count: int, unit: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < count:
        raise ValueError(f"{what} {value!r} is out of range: the trace has {count} {unit} (0..{count - 1})")


def _check_stage(trace: Trace, stage: str) -> StageStyle:
    style = stage_style(stage)
    if stage not in trace:
        raise ValueError(f"stage {stage!r} was not traced (traced: {list(trace.stages)}); "
                         f"include it in run_with_trace(stages=...)")
    return style


def _layer_position(trace: Trace, layer: int) -> int:
    if isinstance(layer, bool) or layer not in trace.layers:
        raise ValueError(f"layer {layer!r} was not traced; traced layers: {trace.layers}")
    return trace.layers.index(layer)


def _heads(trace: Trace, stage: str, layer: int, batch: int, head: int | None = None,
           query: int | None = None) -> np.ndarray:
    """Drawable values [head, query, key] of one layer and batch row, NaN where masked; with `head`, that head's
    [query, key], made from its own record alone unless the whole stage is made already; with `query`, only
    that query's row ([head, key], or [key])."""
    _check_stage(trace, stage)
    position = _layer_position(trace, layer)
    _check_index("batch", batch, trace.shape[1], "batch rows")
    if head is not None:
        _check_index("head", head, trace.record(stage, position).shape[1], "heads")
    if query is not None:
        _check_index("query", query, trace.visible.shape[1], "queries")
    return trace.drawable(stage, position, head, query)[batch].cpu().numpy()


def _head(trace: Trace, stage: str, layer: int, head: int, batch: int) -> np.ndarray:
    return _heads(trace, stage, layer, batch, head)


def visible_token(token: str) -> str:
    """A token as a label people can see: a space becomes ␣, a newline ↵, a tab ⇥, other control characters their
    Unicode control pictures; anything else is left as it is. Every token label uses it."""
    return "".join(PICTURES.get(c, c) for c in token)


def short(text: str, limit: int = TITLE_NAME_CHARS) -> str:
    """`text` cut to `limit` characters with an ellipsis: a long model name in a title."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def wrap(text: str, width: int = SUBTITLE_CHARS) -> str:
    """`text` broken into lines of at most `width` characters (at spaces) joined by <br>: a panel subtitle that
    stays within its panel when the figure is drawn narrow."""
    return "<br>".join(textwrap.wrap(text, width, break_long_words=False)) or text


def plural(count: int, noun: str) -> str:
    """'1 layer', '2 layers'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def position_labels(tokens: list[str], memory_tokens: int = 0) -> list[str]:
    """Axis labels 'token·position' (positions keep repeated tokens apart, `visible_token` shows spaces), after
    'mem 0', 'mem 1' … for `memory_tokens` learned memory tokens in front."""
    return list(_position_labels(tuple(tokens), memory_tokens))


@functools.lru_cache(maxsize=16)
def _position_labels(tokens: tuple[str, ...], memory_tokens: int) -> tuple[str, ...]:
    """position_labels, kept for the latest inputs: one view asks for its labels several times, and a click
    on a 2,048-token input redraws four views."""
    memory = [f"mem {m}" for m in range(memory_tokens)]
    return tuple(memory + [f"{visible_token(token)}·{i}" for i, token in enumerate(tokens)])


def token_labels(trace: Trace, batch: int = 0) -> list[str]:
    """A trace's `position_labels`: its token labels, or token ids if it has none."""
    _check_index("batch", batch, trace.tokens.shape[0], "batch rows")
    tokens = trace.labels[batch] if trace.labels else [str(t) for t in trace.tokens[batch].tolist()]
    return position_labels(tokens, trace.memory_tokens)


def key_labels(trace: Trace, batch: int = 0) -> list[str]:
    """Column labels: the names of the extra key columns in front (`trace.key_extras`), then the tokens' for
    self-attention, or for cross-attention the context positions', 'label·j' (from `trace.key_labels`, else 'ctx·j')."""
    if not trace.is_cross:
        return [*trace.key_extras, *token_labels(trace, batch)]
    _check_index("batch", batch, trace.visible.shape[0], "batch rows")
    keys = trace.key_labels[batch] if trace.key_labels else ["ctx"] * (trace.visible.shape[-1] - len(trace.key_extras))
    return [*trace.key_extras, *(f"{visible_token(key)}·{j}" for j, key in enumerate(keys))]


def axis_titles(trace: Trace) -> tuple[str, str]:
    """(x, y) axis titles of a query × key panel."""
    return ("context (encoder) token", "decoder token") if trace.is_cross else ("key", "query")


def _flags(trace: Trace) -> tuple[bool, bool]:
    """(residual attention on, selective attention on) in a trace's layers, from its model config; cross-attention
    layers chain their logits by cross_residual_attn and are never selective."""
    layers = trace.config.attn_layers
    return (layers.cross_residual_attn, False) if trace.is_cross else (layers.residual_attn, layers.selective)


# building blocks

@functools.cache
def _colorscale(name: str) -> tuple[tuple[float, str], ...]:
    """plotly's colour scale `name` as (position, colour) stops: plotly rebuilds its list of names each call."""
    return tuple((float(p), str(color)) for p, color in get_colorscale(name))


def _coloraxis(style: StageStyle, scale: Scale, *, masked: bool, title: str | None = None,
               hidden: bool = False) -> dict:
    """A colour axis over the codes of `scale`: the stage's colours, grey for the masked code, white for the
    hidden one (a display filter's), colour-bar ticks labelled in real values."""
    top = HIDDEN_CODE if hidden else MASKED_CODE if masked else int(SAFE_CODES[LEVELS - 1])
    stops = [[int(SAFE_CODES[round(p * (LEVELS - 1))]) / top, color] for p, color in _colorscale(style.colorscale)]
    if masked or hidden:
        stops.append([MASKED_CODE / top, MASKED_COLOR])
    if hidden:
        stops.append([1.0, HIDDEN_COLOR])
    ticks = np.linspace(scale.lo, scale.hi, 5)
    return dict(colorscale=stops, cmin=0, cmax=top, colorbar=colorbar(
        title or style.name, tickvals=[scale.code(t) for t in ticks], ticktext=[f"{t:.3g}" for t in ticks]))


def _category_axis(colors: dict[str, str]) -> dict:
    """A colour axis for codes 0..k-1, one flat colour each, named on the colour bar."""
    k = len(colors)
    stops = [[(code + edge) / k, color] for code, color in enumerate(colors.values()) for edge in (0, 1)]
    return dict(colorscale=stops, cmin=-0.5, cmax=k - 0.5,
                colorbar=colorbar(tickvals=list(range(k)), ticktext=list(colors)))


def _heatmap(z: np.ndarray, axis: str, *, scale: Scale | None = None, labels: list[str] | None = None,
             factor: int = 1, exact: bool = False, name: str = "value", where: str = "",
             keys: list[str] | None = None, hidden: np.ndarray | None = None,
             categories: list[str] | None = None, checked: bool = True) -> go.Heatmap:
    """A heatmap sent as uint8 codes: values encoded on `scale` (kept in `meta` for decoding), HIDDEN_CODE
    where `hidden` (a display filter's), or category codes when there is no scale. Token labels on the axes at
    full resolution (`keys` along x when they are not the queries), positions when pooled; with `exact` the
    float32 values ride along as customdata for hover. The trace's `name` names the value, `meta` the
    `categories` of category codes, for the app's hover (app/heatmap.js). Unless `checked`, plotly takes its
    properties without checking them one by one (for figures built at every click: their builders turn checking
    back on once built, `_checked_from_now`)."""
    if labels is not None and factor == 1:
        axes = dict(x=labels if keys is None else keys, y=labels)
    else:
        axes = dict(x0=(factor - 1) / 2, dx=factor, y0=(factor - 1) / 2, dy=factor)
    position = ("query %{y}<br>key %{x}" if factor == 1
                else f"query ≈%{{y:.0f}}<br>key ≈%{{x:.0f}} ({factor}×{factor} block)")
    value = f"<br>{name}: %{{customdata:.4g}}" if exact else ""
    meta = dict(lo=scale.lo, hi=scale.hi) if scale is not None else None if categories is None else \
        dict(categories=categories)
    optional = {k: v for k, v in (("meta", meta), ("customdata", z.astype(np.float32) if exact else None))
                if v is not None}                   # left out, not null: an unchecked trace keeps what it is given
    return go.Heatmap(z=z if scale is None else scale.encode(z, hidden), coloraxis=axis, name=name,
                      hovertemplate=f"{where}{position}{value}<extra></extra>", _validate=checked, **axes, **optional)


def _checked_from_now(fig: go.Figure) -> go.Figure:
    """`fig`, built without plotly's per-property checks for speed (its `_validate` switch), checking every later
    change as a figure built checked does: a misspelt property is an error, a property set to None is unset."""
    for part in (fig, fig.layout, *fig.data):
        part._validate = True
    return fig


def _flag_rows(fig: go.Figure, rows: np.ndarray, *, xref: str = "x", yref: str = "y", legend: bool = True) -> None:
    """Outline every run of fully masked query rows (queries with no visible key) across a panel."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], rows.astype(np.int8), [0]])))
    for k, (start, stop) in enumerate(zip(edges[::2], edges[1::2], strict=True)):   # edges come in pairs
        fig.add_shape(type="rect", xref=f"{xref} domain", x0=0, x1=1, yref=yref, y0=start - 0.5, y1=stop - 0.5,
                      line=dict(color=FLAG_COLOR, width=2), name="fully masked query (no visible key)",
                      showlegend=legend and k == 0)


def _side_colorbars(axes: list[dict]) -> None:
    """Stack the colour bars of several colour axes (`_coloraxis` dicts, changed in place) one above the other to
    the right of the panels: side by side they would overlap once the figure is drawn narrower than designed."""
    gap, size = 0.06, 1 / len(axes)
    for k, axis in enumerate(axes):
        axis["colorbar"].update(len=size - gap, lenmode="fraction", y=1 - k * size, yanchor="top")


def _legend_masked(fig: go.Figure, values: np.ndarray) -> None:
    """A legend swatch for the grey of masked cells, when there are any."""
    if np.isnan(values).any():
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="masked", hoverinfo="skip",
                                 marker=dict(symbol="square", size=12, color=MASKED_COLOR)))


def _title(main: str, notes: list[str]) -> dict:
    """`main`, then the notes in small type: at most TITLE_NOTE_CHARS a line, at most TITLE_NOTE_LINES lines (cut
    with an ellipsis), so a title stays inside a figure drawn as narrow as a pair's slot. A phrase (the notes
    split at " · ") that fits on a line starts a new line rather than break across two, while a shown line is
    left; the rest wrap word by word. Order the notes by how much they matter: the last are cut first."""
    lines: list[str] = []
    for phrase in (p for note in notes if note for p in note.split(" · ")):
        if lines and len(lines[-1]) + 3 + len(phrase) <= TITLE_NOTE_CHARS:
            lines[-1] += " · " + phrase
        elif len(phrase) <= TITLE_NOTE_CHARS and len(lines) < TITLE_NOTE_LINES:
            lines.append(phrase)
        else:                                            # go on from the last line, wrapped (and cut below)
            lines[-1:] = textwrap.wrap(" · ".join([*lines[-1:], phrase]), TITLE_NOTE_CHARS)
    if len(lines) > TITLE_NOTE_LINES:
        lines = [*lines[: TITLE_NOTE_LINES - 1], lines[TITLE_NOTE_LINES - 1].rstrip(" ·") + " …"]
    return dict(text="<br>".join([main, *(f"<sup>{line}</sup>" for line in lines)]), x=0.01, xanchor="left",
                yref="container", y=TITLE_Y, yanchor="top", pad=dict(t=12))   # grows down, not both ways


def _pool_note(factor: int) -> str:
    return f"max-pooled {factor}×{factor} (each block shows its peak)" if factor > 1 else ""


def _hover_meta(fig: go.Figure, trace: Trace, batch: int, layers: list[int] | None, factor: int = 1,
                **more: object) -> None:
    """What the app's hover reads (layout.meta["xattn"]): the query and key labels, and why cells are masked or
    pruned (cells.why over `layers`, pooled by `factor`); `more` adds fields (the layer of a one-layer figure)."""
    labels, keys = token_labels(trace, batch), key_labels(trace, batch)
    old = fig.layout.meta if isinstance(fig.layout.meta, dict) else {}
    fig.layout.meta = {**old, "xattn": {**old.get("xattn", {}), "labels": labels, "keys": keys, "n": len(labels),
                                        "n_keys": len(keys), **more, "why": why(trace, layers, factor=factor,
                                                                                  batch=batch)}}


def _focused(values: np.ndarray, style: StageStyle, labels: list[str], fully_masked: np.ndarray,
             main: str, notes: list[str], keys: list[str] | None = None,
             titles: tuple[str, str] = ("key", "query")) -> tuple[go.Figure, int]:
    """One query × key panel with exact hover values, pooled beyond FULL_RESOLUTION tokens; `keys` label
    the columns when they are not the queries, `titles` name the (x, y) axes.
    Returns the figure and the pooling factor."""
    factor = math.ceil(max(values.shape[-2:]) / FULL_RESOLUTION)
    shown = max_pool(values, factor, signed=style.diverging)
    scale = Scale.covering(shown, diverging=style.diverging, fixed=style.fixed_range)
    fig = go.Figure(_heatmap(shown, "coloraxis", scale=scale, labels=labels, factor=factor, exact=True,
                             name=style.name, keys=keys), layout=dict(
        template=TEMPLATE, width=760, height=720,
        title=_title(main, [_pool_note(factor), *notes]),     # the description last: cut first
        coloraxis=_coloraxis(style, scale, masked=bool(np.isnan(shown).any())),
        xaxis=dict(title=titles[0], constrain="domain"),
        yaxis=dict(title=titles[1], autorange="reversed", scaleanchor="x", constrain="domain")))
    _legend_masked(fig, shown)
    _flag_rows(fig, fully_masked)
    return fig, factor


# public figures

def heatmap(trace: Trace, layer: int, head: int, stage: str = "attn", *, batch: int = 0,
            name: str = "") -> go.Figure:
    """One head's stage as a query × key heatmap: token labels, exact values on hover, masked cells grey,
    fully masked query rows outlined. Full resolution up to FULL_RESOLUTION tokens. Given a cross-attention
    trace (`trace.cross`, layer = cross-attention layer) its rows are decoder tokens, its columns context tokens.
    `name` (e.g. the model's) leads the title's small type."""
    values = _head(trace, stage, layer, head, batch)
    style = STAGE_STYLE[stage]
    kind = "cross-attention layer" if trace.is_cross else "layer"
    fig, factor = _focused(values, style, token_labels(trace, batch), trace.fully_masked[batch].cpu().numpy(),
                           f"{style.name} · {kind} {layer} · head {head}", [short(name), DESCRIPTIONS[stage]],
                           keys=key_labels(trace, batch), titles=axis_titles(trace))
    _hover_meta(fig, trace, batch, [layer], factor, layer=layer)
    return fig


def grid(trace: Trace, stage: str = "attn", *, layers: list[int] | None = None, heads: list[int] | None = None,
         batch: int = 0, max_cells: int = MAX_CELLS, shown: Shown | None = None) -> go.Figure:
    """Layers × heads small multiples of one stage on a shared colour axis, every tile on one pair of axes
    (`_tile_origins`: a browser draws one plot, not one per tile). Above `max_cells` cells in all, every panel is
    max-pooled by the same factor (so a sharp peak stays visible), and the title says so. `shown` hides cells (a
    threshold, the sink column: see cells.Shown). Given a cross-attention trace (`trace.cross`) the rows are its
    cross-attention layers, and each panel has decoder tokens down and context tokens across. Each tile's `meta`
    holds its `origin` (where its query 0, key 0 sits on the axes); `layout.meta["xattn"]["why"]` says why cells are
    masked or pruned (cells.why)."""
    style = _check_stage(trace, stage)
    _check_index("batch", batch, trace.shape[1], "batch rows")
    layers = list(trace.layers) if layers is None else list(layers)
    heads = list(range(trace.shape[2])) if heads is None else list(heads)
    if not layers or not heads:
        raise ValueError("grid needs at least one layer and one head")
    positions = [_layer_position(trace, layer) for layer in layers]
    kind = "cross-attention layer" if trace.is_cross else "layer"
    rows = [f"{'cross ' * trace.is_cross}layer {layer}" for layer in layers]
    columns = [f"head {h}" if len(heads) <= COMPACT_HEADS else f"h{h}" for h in heads]
    for head in heads:
        _check_index("head", head, trace.shape[2], "heads")
    if max_cells < len(layers) * len(heads):
        raise ValueError(f"max_cells = {max_cells} leaves less than one cell per panel")
    whole = trace.drawable(stage)[:, batch]                                       # [layer, head, query, key]
    if positions != list(range(whole.shape[0])):                  # a copy only for a choice of layers or heads
        whole = whole[positions]
    values = (whole if heads == list(range(whole.shape[1])) else whole[:, heads]).cpu().numpy()
    factor = pool_factor(max(values.shape[-2:]), len(layers) * len(heads), max_cells)   # cross: i ≠ j
    shown = shown or Shown()
    pooled, hidden = pool_shown(values, shown.hidden(trace, layers, heads, batch), factor, signed=style.diverging)
    scale = _scale(pooled, style, shown)

    ys, xs, (height, width) = _tile_origins(len(layers), len(heads), pooled.shape[-2:], factor)
    tiles = []
    for r, c in itertools.product(range(len(layers)), range(len(heads))):
        tile = _heatmap(pooled[r, c], "coloraxis", scale=scale, factor=factor, name=style.name,
                        hidden=None if hidden is None else hidden[r, c], checked=False)
        tile.update(x0=tile.x0 + xs[c], y0=tile.y0 + ys[r], meta={**tile.meta, "origin": [ys[r], xs[c]]},
                    hovertemplate=f"layer {layers[r]} · head {heads[c]}<extra></extra>")   # the axes are shared
        tiles.append(tile)
    # the tiles and the figure are built without plotly's property-by-property checks (its own `_validate` switch):
    # about a third of a 48-tile grid's build time; tests/test_viz.py checks that plotly, checking all, makes the same
    # figure
    axis = dict(HEATMAP_AXIS, ticks="", tickmode="array")
    fig = go.Figure(data=tiles, _validate=False, layout=dict(
        template=TEMPLATE, width=min(1600, 120 * len(heads) + 200), height=120 * len(layers) + 200,
        margin=dict(t=110),
        xaxis=dict(axis, tickvals=[x + (width - 1) / 2 for x in xs], ticktext=columns, side="top",
                   range=[-0.5, xs[-1] + width - 0.5], constrain="domain"),
        yaxis=dict(axis, tickvals=[y + (height - 1) / 2 for y in ys], ticktext=rows,
                   range=[ys[-1] + height - 0.5, -0.5], scaleanchor="x", constrain="domain"),
        coloraxis=_coloraxis(style, scale, masked=_any_masked(pooled, hidden), hidden=hidden is not None),
        title=_title(f"{style.name} · {plural(len(layers), kind)} × {plural(len(heads), 'head')}",
                     [shown.note(), _pool_note(factor), DESCRIPTIONS[stage]]),  # description last
        meta=dict(xattn=dict(hidden_keys=shown.sink_columns(trace), threshold=shown.threshold))))
    _hover_meta(fig, trace, batch, layers, factor, tiles=[[layer, head] for layer in layers for head in heads])
    _legend_masked(fig, pooled)
    return _checked_from_now(fig)


def _tile_origins(rows: int, cols: int, cells: tuple[int, int], factor: int) -> tuple[list[int], list[int],
                                                                                        tuple[int, int]]:
    """Where each tile of a rows × cols grid of [query, key] panels of `cells` (pooled by `factor`) starts on
    the shared axes, in token units, a gap of about a sixteenth of a tile between tiles: (row origins, column
    origins, (tile height, tile width))."""
    height, width = cells[0] * factor, cells[1] * factor
    gap = max(1, math.ceil(max(height, width) / 16))
    return ([r * (height + gap) for r in range(rows)], [c * (width + gap) for c in range(cols)], (height, width))


def _scale(values: np.ndarray, style: StageStyle, shown: Shown) -> Scale:
    """The colour scale of the cells drawn: the stage's own, or with a display filter on, the cells it shows
    (so hiding the sink lets the rest use the whole scale; the values themselves are not renormalised)."""
    return Scale.covering(values, diverging=style.diverging, fixed=None if shown.active else style.fixed_range)


def _any_masked(values: np.ndarray, hidden: np.ndarray | None) -> bool:
    """Whether any drawn cell is masked (NaN and not merely hidden by a display filter)."""
    masked = np.isnan(values)
    return bool((masked if hidden is None else masked & ~hidden).any())


def stages(trace: Trace, layer: int, head: int, *, stages: list[str] | None = None, batch: int = 0,
           exact: bool | None = None, max_cells: int | None = None, shown: Shown | None = None) -> go.Figure:
    """The stages of one head side by side (default scores → + residual → masked → pre-softmax → attention),
    each titled with what it changes. Stages drawn with the same colour scale share one range, except those in
    OWN_RANGE (a layer's own scores: small beside the logits residual attention carries in after them).

    `exact` adds float32 values for hover; by default only up to EXACT_HOVER_TOKENS tokens, past which a
    panel's cells are under a pixel wide and the exact values would be most of the payload. With `max_cells`,
    panels above that many cells are max-pooled down to it (peaks kept), and the title says so. `shown` hides
    cells of every panel where this head's attention is below its threshold, and the sink column (cells.Shown)."""
    chosen = [s for s in DEFAULT_STAGES if s in trace] if stages is None else list(stages)
    if not chosen:
        raise ValueError(f"none of the stages {list(DEFAULT_STAGES)} were traced; traced: {list(trace.stages)}")
    values = {s: _head(trace, s, layer, head, batch) for s in chosen}
    factor = 1 if max_cells is None else pool_factor(max(trace.visible.shape[-2:]), 1, max_cells)
    shown = shown or Shown()
    hiding = shown.hidden(trace, [layer], [head], batch)
    pooled = {s: pool_shown(v, None if hiding is None else hiding[0, 0], factor, signed=STAGE_STYLE[s].diverging)
              for s, v in values.items()}
    values, hidden = {s: v for s, (v, _) in pooled.items()}, {s: h for s, (_, h) in pooled.items()}
    exact = trace.visible.shape[-1] <= EXACT_HOVER_TOKENS if exact is None else exact
    residual, selective = _flags(trace)
    caveats = {"scores_residual": "" if residual else " (residual attention off)",
               "residual": "" if residual else " (residual attention off)",
               "selection": "" if selective else " (selective attention off)"}
    titles = [f"{STAGE_STYLE[s].name}<br><sup>{wrap(STAGE_STYLE[s].adds + caveats.get(s, ''))}</sup>" for s in chosen]
    labels, fully_masked = token_labels(trace, batch), trace.fully_masked[batch].cpu().numpy()
    keys = key_labels(trace, batch)
    layout = _strip_layout(tuple(titles), axis_titles(trace))

    groups: dict[str, list[int]] = {}        # colour range → 1-based columns drawn with it
    for column, stage in enumerate(chosen, start=1):
        groups.setdefault(stage if stage in OWN_RANGE else STAGE_STYLE[stage].colorscale, []).append(column)
    axes: list[str] = []
    panels, flagged = [], []
    for k, columns in enumerate(groups.values()):
        axis = "coloraxis" if k == 0 else f"coloraxis{k + 1}"
        members = [chosen[c - 1] for c in columns]
        style = STAGE_STYLE[members[0]]
        stacked = np.stack([values[s] for s in members])
        scale = _scale(stacked, style, shown)
        masked = any(_any_masked(values[s], hidden[s]) for s in members)
        layout[axis] = _coloraxis(style, scale, masked=masked, hidden=hiding is not None,
                                  title="logits" if style.diverging and len(members) > 1 else style.bar or None)
        axes.append(axis)
        for column, stage in zip(columns, members, strict=True):
            panel = _heatmap(values[stage], axis, scale=scale, labels=labels, exact=exact, name=STAGE_STYLE[stage].name,
                             keys=keys, factor=factor, hidden=hidden[stage], checked=False)
            suffix = column if column > 1 else ""          # make_subplots' names: x, x2, x3 …
            panels.append(panel.update(xaxis=f"x{suffix}", yaxis=f"y{suffix}"))
            flagged += [column] if stage in MASKED_STAGES else []
    _side_colorbars([layout[axis] for axis in axes])
    lines = max(t.count("<br>") for t in titles) + 1
    notes = [shown.note(), _pool_note(factor), "what each step changes"]
    layout.update(template=TEMPLATE, width=280 * len(chosen) + 150, height=400 + 14 * lines,
                  margin=dict(t=80 + 14 * lines), title=_title(f"Stages · layer {layer} · head {head}", notes),
                  meta=dict(xattn=dict(hidden_keys=shown.sink_columns(trace), threshold=shown.threshold)))
    fig = go.Figure(data=panels, layout=layout, _validate=False)        # built unchecked, as grid's
    for column in flagged:
        _flag_rows(fig, fully_masked, xref=f"x{column}", yref=f"y{column}", legend=column == len(chosen))
    _legend_masked(fig, np.stack(list(values.values())))
    _hover_meta(fig, trace, batch, [layer], factor, layer=layer)
    return _checked_from_now(fig)


@functools.lru_cache(maxsize=32)
def _strip_axes(titles: tuple[str, ...], xy: tuple[str, str]) -> str:
    """A stage strip's subplot layout (one row of panels sharing the query axis, reversed; the panels' titles and
    the x and y axis titles `xy`) as JSON, made by make_subplots once per set of titles: building it is most of a
    strip's time otherwise."""
    fig = make_subplots(rows=1, cols=len(titles), shared_yaxes=True, subplot_titles=titles, horizontal_spacing=0.02)
    fig.update_xaxes(**HEATMAP_AXIS)
    fig.update_yaxes(autorange="reversed", **HEATMAP_AXIS)
    fig.update_xaxes(title_text=xy[0], col=1)                       # the panels share their keys: named once
    fig.update_xaxes(showticklabels=False, col=None, selector=lambda axis: axis.anchor != "y")
    fig.update_yaxes(title_text=xy[1], col=1)
    fig.update_annotations(font_size=SUBPLOT_TITLE_SIZE)
    return json.dumps({k: v for k, v in fig.to_plotly_json()["layout"].items() if k != "template"})


def _strip_layout(titles: tuple[str, ...], xy: tuple[str, str]) -> dict:
    """A fresh copy of _strip_axes, for a figure to change."""
    return json.loads(_strip_axes(titles, xy))


def _weights(trace: Trace, stage: str, layer: int, head: int, batch: int) -> np.ndarray:
    """One head's values for a difference: attention weights where a mask hides a key are 0 (the weight it
    gets), not missing, so a difference shows the attention a mask removed; other stages stay NaN there."""
    values = _head(trace, stage, layer, head, batch)
    return np.nan_to_num(values, nan=0.0) if stage in PROBABILITY_STAGES else values


def diff(a: Trace, b: Trace, *, layer: int, head: int, stage: str = "attn", stage_b: str | None = None,
         batch: int = 0, names: tuple[str, str] | None = None) -> go.Figure:
    """a's `stage` minus b's `stage_b` (default the same stage) for one head, diverging around 0, with the
    largest changes circled. b is either a itself (then the stages differ) or a trace of equal length; `names`
    say what a and b are (models, settings) in the title. Attention weights a mask hides count as 0, so the
    attention a mask removes shows as a negative difference; only cells hidden on both sides are grey."""
    stage_b = stage if stage_b is None else stage_b
    if b is a and stage_b == stage:
        raise ValueError("this diff would compare a stage with itself: give stage_b, or a second trace as b")
    va, vb = _weights(a, stage, layer, head, batch), _weights(b, stage_b, layer, head, batch)
    if va.shape != vb.shape:
        raise ValueError(f"the traces differ in length ({va.shape[-1]} vs {vb.shape[-1]} tokens); "
                         f"diff needs inputs of equal length")
    delta = va - vb
    if {stage, stage_b} & PROBABILITY_STAGES:            # grey only where neither side lets a weight through
        delta[~(a.visible[batch] | b.visible[batch]).cpu().numpy()] = np.nan
    labels, keys = token_labels(a, batch), key_labels(a, batch)
    stages = STAGE_STYLE[stage].name + ("" if stage_b == stage else f" − {STAGE_STYLE[stage_b].name}")
    main = f"Δ {'= ' * (stage_b != stage)}{stages} · layer {layer} · head {head}"
    sides = f"{short(names[0])} − {short(names[1])}" if names else "" if b is a else "a − b (another trace)"
    magnitude = np.nan_to_num(np.abs(delta), nan=-1.0).ravel()
    top = [k for k in np.argsort(magnitude)[::-1][:TOP_CHANGES] if magnitude[k] > 0]
    rows, cols = np.unravel_index(np.asarray(top, dtype=np.int64), delta.shape)
    biggest = (f"largest |Δ| = {magnitude[top[0]]:.3g} at query {labels[rows[0]]} → key {keys[cols[0]]} (circled)"
               if top else "no difference")
    fully_masked = (a.fully_masked[batch] | b.fully_masked[batch]).cpu().numpy()
    fig, factor = _focused(delta, DIFF_STYLE, labels, fully_masked, main, [sides, biggest], keys=keys,
                           titles=axis_titles(a))
    _hover_meta(fig, a, batch, [layer], factor, layer=layer)
    fig.add_trace(go.Scatter(x=[keys[c] if factor == 1 else c for c in cols],
                             y=[labels[r] if factor == 1 else r for r in rows], mode="markers",
                             name=f"{len(top)} largest |Δ|", customdata=delta[rows, cols],
                             marker=dict(symbol="circle-open", size=16, color="black", line=dict(width=2)),
                             hovertemplate="query %{y}<br>key %{x}<br>Δ: %{customdata:.4g}<extra>large change</extra>"))
    return fig


def selection(trace: Trace, layer: int, *, batch: int = 0) -> go.Figure:
    """Selective attention in one layer: the gate (head 0's masked logits, whose positive part prunes),
    the penalty F it accumulates for later queries, and the keys each query has effectively pruned
    (F ≥ ln(1/PRUNED_BELOW): the key's weight is cut below PRUNED_BELOW of an unpenalised key's)."""
    gate = _head(trace, "masked", layer, 0, batch)
    visible = trace.visible[batch].cpu().numpy()
    penalty = np.where(visible, _head(trace, "selection", layer, 0, batch), np.nan)
    cut = pruned(trace, layer, batch)
    state = np.where(visible, cut, 2).astype(np.uint8)             # 0 kept, 1 pruned, 2 masked
    _, selective = _flags(trace)
    labels, keys = token_labels(trace, batch), key_labels(trace, batch)
    fig = make_subplots(rows=1, cols=3, shared_yaxes=True, horizontal_spacing=0.02, subplot_titles=[
        f"Gate: head 0 logits<br><sup>{wrap('positive part prunes keys for later queries')}</sup>",
        f"{STAGE_STYLE['selection'].name}<br><sup>{wrap('summed gate of earlier queries, subtracted from every head')}"
        "</sup>",
        f"Pruned keys<br><sup>{wrap(f'F ≥ ln {1 / PRUNED_BELOW:g}: weight × < {PRUNED_BELOW:g}')}</sup>"])
    axes = {}
    for column, (values, style, axis) in enumerate([(gate, STAGE_STYLE["masked"], "coloraxis"),
                                                    (penalty, STAGE_STYLE["selection"], "coloraxis2")], start=1):
        scale = Scale.covering(values, diverging=style.diverging, fixed=style.fixed_range)
        axes[axis] = _coloraxis(style, scale, masked=bool(np.isnan(values).any()), title="gate" if column == 1 else "F")
        fig.add_trace(_heatmap(values, axis, scale=scale, labels=labels, exact=True, name=style.name, keys=keys),
                      row=1, col=column)
    axes["coloraxis3"] = _category_axis(PRUNE_COLORS)
    fig.add_trace(_heatmap(state, "coloraxis3", labels=labels, keys=keys, categories=list(PRUNE_COLORS)), row=1, col=3)
    _side_colorbars(list(axes.values()))
    fig.update_layout(axes)
    fig.update_annotations(font_size=SUBPLOT_TITLE_SIZE)
    _legend_masked(fig, penalty)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title_text="key")
    fig.update_yaxes(title_text="query", col=1)
    per_query = cut.sum(-1)
    worst = int(per_query.argmax())
    fig.update_layout(template=TEMPLATE, width=1250, height=560, margin=dict(t=150, r=colorbar_room(PRUNE_COLORS)),
                      title=_title(f"Selective attention · layer {layer}", [
                          "" if selective else "selective attention is off in this model: F is zero",
                          f"{int(cut.sum())} (query, key) pairs pruned",
                          f"most by query {labels[worst]}: {int(per_query[worst])}" if cut.any() else ""]))
    _hover_meta(fig, trace, batch, [layer], layer=layer)
    return fig


def query_row(trace: Trace, layer: int, query: int, *, stage: str = "attn", batch: int = 0,
              shown: Shown | None = None) -> go.Figure:
    """Where does one token look? Its row of `stage` over the keys, one bar per head (one bar per key for a
    stage every head shares, such as selective attention's F); over more than ROW_BARS keys, one step line per
    head instead (a browser draws a path per head, not heads × keys bars). `shown` leaves out the bars the
    heatmaps hide (cells.Shown: a head's attention below the threshold, the sink column; for a shared stage, the
    sink column)."""
    row = _heads(trace, stage, layer, batch, query=query)          # [head, key]
    style, labels, keys = STAGE_STYLE[stage], token_labels(trace, batch), key_labels(trace, batch)
    names = ["every head"] if stage in HEAD_SHARED else [f"head {h}" for h in range(row.shape[0])]
    x = np.asarray(keys, dtype=object)       # an array, not a list: plotly checks a list's labels one by one
    steps = len(keys) > ROW_BARS
    masked = int(np.isnan(row[0]).sum())
    shown = shown or Shown()
    if shown.active:
        if stage in HEAD_SHARED:
            hidden = np.zeros(row.shape, dtype=bool)
            hidden[:, shown.sink_columns(trace)] = True
        else:
            hidden = shown.hidden(trace, [layer], list(range(row.shape[0])), batch)[0, :, query]
        row = np.where(hidden, np.nan, row)
    spans = [_shown_span(row[h]) for h in range(len(names))]
    traces = [go.Scatter(x0=start, dx=1, y=row[h, start:stop], text=x[start:stop], name=name, mode="lines",
                         line=dict(color=HEAD_COLORS[h % len(HEAD_COLORS)], width=1.2, shape="hvh"),
                         hovertemplate=f"{name}<br>key %{{text}}<br>{style.name}: %{{y:.4g}}<extra></extra>",
                         _validate=False)
              if steps else
              go.Bar(x=x, y=row[h], name=name, marker_color=HEAD_COLORS[h % len(HEAD_COLORS)],
                     hovertemplate=f"{name}<br>key %{{x}}<br>{style.name}: %{{y:.4g}}<extra></extra>", _validate=False)
              for (h, name), (start, stop) in zip(enumerate(names), spans, strict=True)]
    xaxis = dict(type="linear", range=[-0.5, len(keys) - 0.5]) if steps else dict(type="category")
    return _checked_from_now(go.Figure(traces, _validate=False, layout=dict(   # built unchecked, as grid's
        template=CHART_TEMPLATE, barmode="group", width=900, height=460, bargap=0.2,
        xaxis=dict(title=dict(text=axis_titles(trace)[0]), **xaxis), yaxis=dict(title=dict(text=style.name)),
        title=_title(f"Where does {labels[query]} look? · {style.name} · layer {layer}", [
            shown.note(), DESCRIPTIONS[stage], f"{masked} masked keys have no bar" if masked else "",
            "no visible key: this query's output is zeroed" if trace.fully_masked[batch, query] else ""]))))


def _shown_span(values: np.ndarray) -> tuple[int, int]:
    """(first, last + 1) of the keys a step line draws: NaN keys (masked, hidden) before and after them draw nothing
    and have no hover, so the line leaves them out (a causal query's later keys: half a row, on average)."""
    drawn = np.flatnonzero(~np.isnan(values))
    return (int(drawn[0]), int(drawn[-1]) + 1) if drawn.size else (0, 0)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen–Shannon divergence in bits over the last axis: 0 for equal distributions, 1 for disjoint ones."""
    m = (p + q) / 2

    def kl_to_m(x: np.ndarray) -> np.ndarray:
        present = x > 0                   # 0 · log 0 = 0; where x > 0, m ≥ x / 2 > 0
        return np.where(present, x * np.log2(np.where(present, x, 1) / np.where(present, m, 1)), 0.0).sum(-1)

    return (kl_to_m(p) + kl_to_m(q)) / 2


def _divergences(trace: Trace, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(each head vs the same head one traced layer up [layer − 1, head], each head vs its layer's other heads
    [layer, head]): mean Jensen–Shannon divergence over queries with a visible key."""
    stage = "post_softmax" if "post_softmax" in trace else "attn"
    _check_stage(trace, stage)
    _check_index("batch", batch, trace.shape[1], "batch rows")
    p = np.nan_to_num(trace.drawable(stage)[:, batch].double().cpu().numpy())    # [layer, head, query, key]
    rows = ~trace.fully_masked[batch].cpu().numpy()
    heads = p.shape[1]
    across = js_divergence(p[:-1], p[1:])[..., rows].mean(-1)                   # [layer - 1, head]
    within = np.stack([[js_divergence(layer[h], layer)[:, rows].mean(-1) for h in range(heads)] for layer in p])
    return across, within.sum(-1) / max(heads - 1, 1)                           # self-JS is 0


def layer_similarity(trace: Trace, *, batch: int = 0, share: Trace | None = None) -> go.Figure:
    """How alike attention distributions are (Jensen–Shannon divergence, mean over queries with a visible
    key): each head against the same head in the next traced layer — the RealFormer view — and each
    head against the other heads of its layer. Compares the `post_softmax` stage (still a distribution where
    post-softmax talking heads mix `attn`), or `attn` in a trace without it. With `share` (e.g. the same text
    with residual attention off) the colour range covers both, so the two figures compare by colour. With one
    traced layer there is no consecutive pair: a sentence stands in that panel's place."""
    across, others = _divergences(trace, batch)
    pairs = [(across, others)] + ([] if share is None else [_divergences(share, batch)])
    scale_top = float(max(m.max(initial=0) for pair in pairs for m in pair)) or 1.0
    head_names = [f"head {h}" for h in range(others.shape[1])]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=[
        "Consecutive layers<br><sup>each head vs the same head one layer up</sup>",
        "Heads within a layer<br><sup>each head vs the layer's other heads (mean)</sup>"])
    for column, (matrix, names) in enumerate([(across, [f"L{a}→L{b}" for a, b in itertools.pairwise(trace.layers)]),
                                              (others, [f"layer {layer}" for layer in trace.layers])], start=1):
        if not matrix.size:
            fig.update_xaxes(visible=False, row=1, col=column)
            fig.update_yaxes(visible=False, row=1, col=column)
            fig.add_annotation(text="one traced layer:<br>no consecutive layers to compare", showarrow=False,
                               xref=f"x{column if column > 1 else ''} domain", x=0.5,
                               yref=f"y{column if column > 1 else ''} domain", y=0.5)
            continue
        fig.add_trace(go.Heatmap(z=matrix.astype(np.float32), x=head_names, y=names, coloraxis="coloraxis",
                                 texttemplate="%{z:.3f}",
                                 hovertemplate="%{y} · %{x}<br>JS: %{z:.4f} bits<extra></extra>"),
                      row=1, col=column)
    residual, _ = _flags(trace)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(template=TEMPLATE, width=1000, height=220 + 45 * max(len(trace.layers), 2), margin=dict(t=150),
                      coloraxis=dict(colorscale=DIVERGENCE_STYLE.colorscale, cmin=0, cmax=scale_top,
                                     colorbar=colorbar(DIVERGENCE_STYLE.name)),
                      title=_title("Attention similarity (Jensen–Shannon divergence, lower = more alike)", [
                          f"residual attention {'on' if residual else 'off'}",
                          f"mean across consecutive layers {across.mean():.3f} bits" if across.size
                          else "one traced layer: no consecutive pairs",
                          "colour range shared with the other figure" if share is not None else ""]))
    return fig


def mask_figure(trace: Trace, *, batch: int = 0) -> go.Figure:
    """The effective mask (padding, custom and causal combined): visible, masked, and fully masked query
    rows (no visible key: the model zeroes their output) in their own colour and outlined."""
    _check_index("batch", batch, trace.visible.shape[0], "batch rows")
    visible = trace.visible[batch].cpu().numpy()
    fully_masked = trace.fully_masked[batch].cpu().numpy()
    state = np.where(visible, 0, np.where(fully_masked[:, None], 2, 1)).astype(np.uint8)
    labels = token_labels(trace, batch)
    hidden = [labels[i] for i in np.flatnonzero(fully_masked)]
    fig = go.Figure(_heatmap(state, "coloraxis", labels=labels, keys=key_labels(trace, batch),
                             categories=list(MASK_COLORS)))
    fig.update_layout(template=TEMPLATE, width=720, height=700, coloraxis=_category_axis(MASK_COLORS),
                      margin=dict(r=colorbar_room(MASK_COLORS)),
                      xaxis=dict(title="key", constrain="domain"),
                      yaxis=dict(title="query", autorange="reversed", scaleanchor="x", constrain="domain"),
                      title=_title(f"Effective mask · batch row {batch}", [
                          f"{int(visible.sum())} of {visible.size} (query, key) pairs visible",
                          f"{len(hidden)} fully masked queries: "
                          f"{', '.join(hidden[:6])}{' …' if len(hidden) > 6 else ''}"
                          if hidden else "every query sees at least one key"]))
    _flag_rows(fig, fully_masked)
    _hover_meta(fig, trace, batch, None)
    return fig


def mask_breakdown(parts: dict[str, Tensor], labels: list[str] | None = None, *, batch: int = 0) -> go.Figure:
    """What each mask removes: every hidden (query, key) cell coloured by the first mask that hides it
    (padding, then custom, then causal, then the attn_max_attend_past window). `parts` is
    `xattn.masks.breakdown(...)`."""
    _check_index("batch", batch, parts["effective"].shape[0], "batch rows")
    code = reasons(parts)[batch].cpu().numpy()
    labels = labels or [str(i) for i in range(code.shape[0])]
    removed = ", ".join(f"{name} {int((~parts[name][batch]).sum())}" for name in MASKS)
    fig = go.Figure(_heatmap(code, "coloraxis", labels=labels, categories=["visible", *MASKS]))
    colors = {"visible": MASK_COLORS["visible"], **REMOVER_COLORS}
    fig.update_layout(template=TEMPLATE, width=720, height=700, coloraxis=_category_axis(colors),
                      margin=dict(r=colorbar_room(colors)),
                      xaxis=dict(title="key", constrain="domain"),
                      yaxis=dict(title="query", autorange="reversed", scaleanchor="x", constrain="domain"),
                      title=_title("What each mask removes", [
                          "each hidden cell takes the colour of the first mask that hides it",
                          f"cells hidden by each mask alone: {removed}"]),
                      meta=dict(xattn=dict(labels=labels, n=len(labels))))
    return fig
