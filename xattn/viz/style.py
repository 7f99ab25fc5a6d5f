"""One name and one colour scale per stage, shared by every figure and by the app.

Logit stages are diverging and centred on 0; `attn` is a probability on a fixed 0–1 scale; the
selective penalty F is non-negative. Masked cells always take MASKED_COLOR.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go

from ..masks import MASKS
from ..stages import STAGES


@dataclass(frozen=True)
class StageStyle:
    """How one quantity is drawn: display name, plotly colour scale, and its value range rule."""

    name: str
    colorscale: str
    diverging: bool = False                        # symmetric range ±max|v| centred on 0
    fixed_range: tuple[float, float] | None = None  # else [0, max] (sequential) or ±max (diverging)
    adds: str = ""                                  # what this stage changes, for panel subtitles
    bar: str = ""                                   # a short colour-bar title where the name is long


LOGITS = "RdBu_r"
STAGE_STYLE: dict[str, StageStyle] = {
    "scores": StageStyle("Scores", LOGITS, diverging=True, adds="q·kᵀ/√d of this layer"),
    "residual": StageStyle("Residual", LOGITS, diverging=True, adds="previous layer's logits, carried in"),
    "scores_residual": StageStyle("Scores + residual", LOGITS, diverging=True, adds="+ previous layer's logits",
                                  bar="logits"),
    "talking_heads_pre": StageStyle("Talking heads (pre-softmax)", LOGITS, diverging=True,
                                    adds="+ a learned mix of the heads", bar="logits"),
    "position_bias": StageStyle("Position bias", LOGITS, diverging=True,
                                adds="the position bias alone (ALiBi, T5, dynamic, data-dependent)", bar="bias"),
    "biased": StageStyle("Biased", LOGITS, diverging=True, adds="+ position bias"),
    "softclamped": StageStyle("Soft-capped", LOGITS, diverging=True, adds="v·tanh(logit / v)"),
    "magnitude": StageStyle("Magnitude", LOGITS, diverging=True, adds="|logit| (Cog: signs return after softmax)"),
    "masked": StageStyle("Masked", LOGITS, diverging=True, adds="padding, custom, window and causal masks applied"),
    "cope": StageStyle("CoPE position logits", "PRGn", diverging=True, adds="q · embedding of a gate-counted position",
                       bar="CoPE"),
    "selection": StageStyle("Selection penalty F", "Oranges", adds="selective attention's F, same for every head",
                            bar="F"),
    "pre_softmax": StageStyle("Pre-softmax", LOGITS, diverging=True, adds="+ CoPE, − penalty F, + sink"),
    "topk": StageStyle("Top-k", LOGITS, diverging=True, adds="all but each query's k largest logits masked"),
    "post_softmax": StageStyle("Post-softmax", "Viridis", fixed_range=(0.0, 1.0), adds="softmax over the keys",
                               bar="weights"),
    "attn": StageStyle("Attention", "Viridis", fixed_range=(0.0, 1.0),
                       adds="softmax, then any post-softmax mix"),
}
assert set(STAGE_STYLE) == set(STAGES)

DIFF_STYLE = StageStyle("Δ", "PiYG_r", diverging=True, adds="a − b")
DIVERGENCE_STYLE = StageStyle("JS divergence (bits)", "Purples")
MASKED_COLOR = "#c9c9c9"
HIDDEN_COLOR = "#ffffff"    # cells a display filter hides (viz.cells.Shown)
MASK_COLORS = {"visible": "#4575b4", "masked": MASKED_COLOR, "fully masked query": "#d73027"}
REMOVER_COLORS = {"padding": "#fdae61", "custom": "#9467bd", "causal": MASKED_COLOR,    # in the order they are checked
                  "window": "#80cdc1"}
assert tuple(REMOVER_COLORS) == MASKS
PRUNE_COLORS = {"kept": "#4575b4", "pruned by F": "#f46d43", "masked": MASKED_COLOR}
FLAG_COLOR = "#d73027"    # outline of fully masked query rows
HEAD_COLORS = ("#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb", "#000000")

# Colour bars: a fixed gap right of the plot (plotly's default is a fraction of the plot's width), so that the room
# they take beside it is the same at every width, and COLORBAR_ROOM holds it: plotly widens a margin too narrow for
# what it holds by drawing the whole figure a second time.
COLORBAR_GAP = 16
COLORBAR_THICKNESS = 14
COLORBAR_ROOM = 110
TEMPLATE = go.layout.Template(layout=dict(
    font=dict(family="Inter, Helvetica Neue, Arial, sans-serif", size=12, color="#222"),
    paper_bgcolor="white", plot_bgcolor="white", margin=dict(l=70, r=COLORBAR_ROOM, t=80, b=90),
    hoverlabel=dict(font_size=12), showlegend=True,
    legend=dict(orientation="h", yref="container", y=0.0, yanchor="bottom", x=1, xanchor="right"),
    # plotly's default hides tick labels past the figure's edge by measuring every label, a forced page
    # layout each: most of a redraw's time on a page as large as the app's. The margins keep labels inside.
    xaxis=dict(ticklabeloverflow="allow"), yaxis=dict(ticklabeloverflow="allow"),
))

# Charts without colour bars (bars, lines) need no room for one
CHART_TEMPLATE = go.layout.Template(TEMPLATE).update(layout_margin_r=30)

# A heatmap's axes: no grid or zero lines, which the cells would cover anyway (each is an element drawn per tick)
HEATMAP_AXIS = dict(showgrid=False, zeroline=False)


def colorbar(title: str | None = None, **more: Any) -> dict:
    """A colour bar as every figure draws one: COLORBAR_GAP right of the plot, its title along its side (a title
    on top is as wide as its text), `more` plotly colorbar properties."""
    titled = {"title": {"text": title, "side": "right"}} if title else {}
    return {"x": 1, "xanchor": "left", "xpad": COLORBAR_GAP, "thickness": COLORBAR_THICKNESS, **titled, **more}


def colorbar_room(ticktext: Iterable[str]) -> int:
    """The right margin a colour bar labelled with `ticktext` needs, at least COLORBAR_ROOM: a category bar's
    names ("fully masked query") are wider than numbers. Counted generously, 6 px a character of the template's
    12 px font (drawn: 5.1), since too little room costs a second draw and too much only a little space."""
    return max(COLORBAR_ROOM, COLORBAR_GAP + COLORBAR_THICKNESS + 40 + 6 * max(map(len, ticktext), default=0))


def stage_style(stage: str) -> StageStyle:
    """The style of a stage; ValueError for an unknown name."""
    if stage not in STAGE_STYLE:
        raise ValueError(f"unknown stage {stage!r}; stages are {list(STAGES)}")
    return STAGE_STYLE[stage]

