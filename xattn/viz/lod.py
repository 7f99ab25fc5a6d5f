"""Level of detail: one head's stage, or any rectangle of it, at screen resolution.

A first view of a long input is max-pooled down to about a screen's worth of cells (each block keeps its
peak, so a sharp stripe survives), and a zoomed-in view asks for the visible rectangle again: once it fits
the budget it comes at full resolution. Every view of one head is encoded on the colour scale of the whole
head, so colours do not jump while zooming, and carries its exact float32 values for hover. The axes are
token positions (numbers), the same in every view, so a pooled overview and a full-resolution detail can lie
on one plot; token labels become tick labels once few enough tokens are visible.

    fig = viz.heatmap_region(trace, layer=2, head=0, stage="attn")                          # the whole head
    fig = viz.heatmap_region(trace, layer=2, head=0, stage="attn", region=(100, 164, 0, 64))  # a detail
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from ..stages import DESCRIPTIONS
from ..trace import Trace
from .cells import Shown, pool_shown, why
from .figures import (
    _any_masked,
    _checked_from_now,
    _coloraxis,
    _flag_rows,
    _head,
    _heatmap,
    _legend_masked,
    _pool_note,
    _title,
    axis_titles,
    key_labels,
    token_labels,
)
from .payload import Scale, max_pool
from .style import HEATMAP_AXIS, STAGE_STYLE, TEMPLATE

SCREEN = 512                  # cells per side of a first view; beyond it, blocks are max-pooled
SCREEN_CELLS = SCREEN * SCREEN
LABELLED_TOKENS = 64          # tick labels are token labels when at most this many tokens are visible
TICK_LABELS = 40              # … at most this many of them on an axis (760 px wide figures)


@dataclass(frozen=True)
class Region:
    """Queries i0 ≤ i < i1 and keys j0 ≤ j < j1 of one head (half-open, like Python slices)."""

    i0: int
    i1: int
    j0: int
    j1: int

    @classmethod
    def of(cls, region: tuple[int, int, int, int] | Region | None, n: int, keys: int | None = None) -> Region:
        """`region` (i0, i1, j0, j1) clipped to a head of n queries × `keys` keys (default n); None is the whole
        head. An empty or inverted rectangle is refused with a ValueError."""
        keys = n if keys is None else keys
        if region is None:
            return cls(0, n, 0, keys)
        if isinstance(region, Region):
            region = (region.i0, region.i1, region.j0, region.j1)
        if len(region) != 4 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in region):
            raise ValueError(f"a region is four whole numbers (i0, i1, j0, j1); got {region!r}")
        i0, i1, j0, j1 = (int(v) for v in region)
        clipped = cls(max(i0, 0), min(i1, n), max(j0, 0), min(j1, keys))
        if clipped.rows <= 0 or clipped.cols <= 0:
            raise ValueError(f"the region queries {i0}..{i1 - 1} × keys {j0}..{j1 - 1} shows no cell of this "
                             f"head of {n} queries × {keys} keys")
        return clipped

    @property
    def rows(self) -> int:
        return self.i1 - self.i0

    @property
    def cols(self) -> int:
        return self.j1 - self.j0

    def whole(self, n: int, keys: int | None = None) -> bool:
        return (self.i0, self.i1, self.j0, self.j1) == (0, n, 0, n if keys is None else keys)


def region_factor(rows: int, cols: int, max_cells: int) -> int:
    """Smallest f such that a rows × cols rectangle pooled in f × f blocks has at most `max_cells` cells."""
    if max_cells < 1:
        raise ValueError(f"max_cells must be at least 1; got {max_cells}")
    f = max(1, math.ceil(math.sqrt(rows * cols / max_cells)))
    while math.ceil(rows / f) * math.ceil(cols / f) > max_cells:
        f += 1
    return f


def head_region(trace: Trace, layer: int, head: int, stage: str = "attn", *,
                region: tuple[int, int, int, int] | Region | None = None, max_cells: int = SCREEN_CELLS,
                batch: int = 0, shown: Shown | None = None) -> tuple[np.ndarray, np.ndarray | None, Region, int, Scale]:
    """The values drawn for `region` of one head's stage: (values max-pooled in factor × factor blocks, NaN
    where masked or hidden; where `shown` hides a block, or None; the region, clipped; the factor, 1 = full
    resolution; the colour scale of the whole head's cells shown)."""
    values = _head(trace, stage, layer, head, batch)
    style, shown = STAGE_STYLE[stage], shown or Shown()
    box = Region.of(region, *values.shape)
    factor = region_factor(box.rows, box.cols, max_cells)
    hidden = shown.hidden(trace, [layer], [head], batch)
    hidden = None if hidden is None else hidden[0, 0]
    whole = values if hidden is None else np.where(hidden, np.nan, values)
    cut = None if hidden is None else hidden[box.i0:box.i1, box.j0:box.j1]
    drawn, hidden = pool_shown(values[box.i0:box.i1, box.j0:box.j1], cut, factor, signed=style.diverging)
    return drawn, hidden, box, factor, Scale.covering(whole, diverging=style.diverging,
                                                      fixed=None if shown.active else style.fixed_range)


def _ticks(labels: list[str], start: int, stop: int) -> dict:
    """Token labels as tick labels when few tokens are visible (every one up to TICK_LABELS, else every k-th),
    else plain positions."""
    if stop - start > LABELLED_TOKENS:
        return dict(tickmode="auto", tickvals=None, ticktext=None)
    shown = list(range(start, stop, math.ceil((stop - start) / TICK_LABELS)))
    return dict(tickmode="array", tickvals=shown, ticktext=[labels[k] for k in shown])


def heatmap_region(trace: Trace, layer: int, head: int, stage: str = "attn", *,
                   region: tuple[int, int, int, int] | Region | None = None, max_cells: int = SCREEN_CELLS,
                   batch: int = 0, shown: Shown | None = None) -> go.Figure:
    """One head's stage over `region` (i0, i1, j0, j1) — default the whole head — with at most `max_cells`
    cells: max-pooled in square blocks when the region is bigger (a block keeps its value of largest
    magnitude for logits, its largest for attention and F), at full resolution once it fits. Colours use the
    whole head's range; exact float32 values ride along for hover; axes are token positions.

    `layout.meta["xattn"]` says what is drawn: n (queries), n_keys, region, factor, the query labels and the
    key labels, and `why` (cells.why) why cells are masked or pruned. `shown` hides cells (cells.Shown).
    Cross-attention traces (`trace.cross`) draw decoder rows against context columns."""
    shown = shown or Shown()
    drawn, hidden, box, factor, scale = head_region(trace, layer, head, stage, region=region, max_cells=max_cells,
                                                    batch=batch, shown=shown)
    style = STAGE_STYLE[stage]
    labels, keys = token_labels(trace, batch), key_labels(trace, batch)
    n, n_keys = len(labels), len(keys)
    heat = _heatmap(drawn, "coloraxis", scale=scale, factor=factor, exact=True, name=style.name, hidden=hidden,
                    checked=False)
    heat.update(x0=heat.x0 + box.j0, y0=heat.y0 + box.i0)
    notes = [shown.note(), _pool_note(factor)]
    whole = box.whole(n, n_keys)
    if not whole:
        notes.append(f"queries {box.i0}–{box.i1 - 1} × keys {box.j0}–{box.j1 - 1} of {n} × {n_keys}")
    notes.append(DESCRIPTIONS[stage])                   # the description last: a title too long cuts it first
    ranges = {} if whole else dict(x=dict(range=[box.j0 - 0.5, box.j1 - 0.5]),     # else the whole head, rows down
                                   y=dict(range=[box.i1 - 0.5, box.i0 - 0.5]))
    cut_to = None if whole else (box.i0, box.i1, box.j0, box.j1)          # why: a whole head's is kept per layer
    x_title, y_title = axis_titles(trace)
    kind = "cross-attention layer" if trace.is_cross else "layer"
    fig = go.Figure(heat, _validate=False, layout=dict(       # the layout at once and unchecked, as viz.grid's
        template=TEMPLATE, width=760, height=720, title=_title(f"{style.name} · {kind} {layer} · head {head}", notes),
        coloraxis=_coloraxis(style, scale, masked=_any_masked(drawn, hidden), hidden=hidden is not None),
        xaxis=dict(HEATMAP_AXIS, title=dict(text=x_title), constrain="domain", **ranges.get("x", {}),
                   **_ticks(keys, box.j0, box.j1)),
        yaxis=dict(HEATMAP_AXIS, title=dict(text=y_title), scaleanchor="x", constrain="domain",
                   **ranges.get("y", {"autorange": "reversed"}), **_ticks(labels, box.i0, box.i1)),
        meta=dict(xattn=dict(n=n, n_keys=n_keys, region=[box.i0, box.i1, box.j0, box.j1], factor=factor, labels=labels,
                             keys=keys, stage=stage, layer=layer, head=head, hidden_keys=shown.sink_columns(trace),
                             threshold=shown.threshold,
                             why=why(trace, [layer], factor=factor, batch=batch, region=cut_to)))))
    _legend_masked(fig, drawn)
    _flag_rows(fig, trace.fully_masked[batch].cpu().numpy())
    return _checked_from_now(fig)


def pool_figure(fig: go.Figure, max_cells: int) -> go.Figure:
    """Max-pool, in place, every heatmap of `fig` drawn in one-byte codes (`meta` holding its lo/hi) that has
    more than `max_cells` cells, to at most that many: the level of detail of a screen for figures built at
    full resolution (a stage strip of a long input). Blocks keep their peak (largest magnitude on a symmetric,
    diverging scale); exact hover values are pooled alike; the title says so. Returns `fig`."""
    factors = set()
    for trace in fig.data:
        if trace.type != "heatmap" or not isinstance(trace.meta, dict) or "lo" not in trace.meta:
            continue
        codes = np.asarray(trace.z)
        factor = region_factor(*codes.shape, max_cells)
        if factor == 1:
            continue
        scale = Scale(trace.meta["lo"], trace.meta["hi"])
        signed = scale.lo == -scale.hi
        pooled = max_pool(scale.decode(codes), factor, signed=signed)
        exact = None if trace.customdata is None else max_pool(np.asarray(trace.customdata, dtype=np.float32),
                                                               factor, signed=signed)
        x0, dx = (0, 1) if trace.x is not None else (trace.x0 or 0, trace.dx or 1)
        y0, dy = (0, 1) if trace.y is not None else (trace.y0 or 0, trace.dy or 1)
        trace.update(z=scale.encode(pooled), customdata=exact, x=None, y=None, x0=x0 + (factor - 1) / 2 * dx,
                     dx=factor * dx, y0=y0 + (factor - 1) / 2 * dy, dy=factor * dy)
        factors.add(factor)
    if factors and fig.layout.title.text:
        note = _pool_note(max(factors))
        text = fig.layout.title.text
        fig.layout.title.text = f"{text}<br><sup>{note}</sup>"
    return fig
