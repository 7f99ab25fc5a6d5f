"""Head statistics as layers × heads heatmaps: one row per statistic, one column per model, one colour scale
per statistic shared across the row so models compare cell by cell."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..stats import STATS, HeadStats
from .figures import _title
from .style import TEMPLATE, colorbar

# Per statistic: display name, colour scale, fixed range (None: 0 to the largest value drawn).
STAT_STYLE: dict[str, tuple[str, str, tuple[float, float] | None]] = {
    "entropy": ("entropy (nats)", "Purples", None),
    "max_weight": ("max weight", "Blues", (0.0, 1.0)),
    "bos": ("on BOS", "Blues", (0.0, 1.0)),
    "distance": ("distance (tokens)", "Greens", None),
    "previous": ("previous token", "Blues", (0.0, 1.0)),
    "diagonal": ("diagonal", "Blues", (0.0, 1.0)),
    "selection": ("mean F", "Oranges", None),
    "pruned": ("pruned (F ≥ ln 100)", "Oranges", (0.0, 1.0)),
    "target": ("on the task's key", "Blues", (0.0, 1.0)),
    "importance": ("importance |∂L/∂ξ|", "Reds", None),
}


def head_stats_figure(stats: HeadStats | Mapping[str, HeadStats], names: Sequence[str] | None = None) -> go.Figure:
    """Layers × heads heatmaps of `names` (default: every statistic any model has), one column per model
    (`{model name: HeadStats}`, or one HeadStats). Each cell is labelled with its value; hover gives the id of
    the sequence where that head shows the statistic most (`HeadStats.examples`), also in the cell's customdata."""
    models = {"": stats} if isinstance(stats, HeadStats) else dict(stats)
    if not models:
        raise ValueError("head_stats_figure needs at least one HeadStats")
    present = {s for h in models.values() for s in h.values}
    rows = [s for s in STATS if s in present] if names is None else list(names)
    unknown = [s for s in rows if s not in present]
    if unknown or not rows:
        raise ValueError(f"statistic(s) {unknown or rows} not in these results; they hold {sorted(present)}")
    fig = make_subplots(rows=len(rows), cols=len(models), column_titles=list(models) if len(models) > 1 else None,
                        horizontal_spacing=0.03,
                        vertical_spacing=0.25 / len(rows))
    for r, stat in enumerate(rows, start=1):
        label, colorscale, fixed = STAT_STYLE[stat]
        drawn = [h.values[stat].numpy() for h in models.values() if stat in h.values]
        lo, hi = fixed or (0.0, max(float(np.max(v)) for v in drawn) or 1.0)
        domain = fig.get_subplot(r, 1).yaxis.domain
        bar = colorbar(label, y=(domain[0] + domain[1]) / 2, len=domain[1] - domain[0], thickness=10,
                       tickfont=dict(size=9))
        bar["title"]["font"] = dict(size=10)
        fig.update_layout({f"coloraxis{r}": dict(colorscale=colorscale, cmin=lo, cmax=hi, colorbar=bar)})
        for c, h in enumerate(models.values(), start=1):
            if stat not in h.values:      # in paper coordinates: plotly.js drops an axis that holds no trace
                axes = fig.get_subplot(r, c)
                fig.add_annotation(text="does not apply", showarrow=False, font=dict(color="grey"), xref="paper",
                                   yref="paper", x=sum(axes.xaxis.domain) / 2, y=sum(axes.yaxis.domain) / 2)
                fig.update_xaxes(visible=False, row=r, col=c)
                fig.update_yaxes(visible=False, row=r, col=c)
                continue
            values = h.values[stat].numpy()
            layers, heads = values.shape
            fig.add_trace(go.Heatmap(
                z=values, x=list(range(heads)), y=list(range(layers)), coloraxis=f"coloraxis{r}",
                customdata=h.examples[stat].numpy(), texttemplate="%{z:.2f}", textfont=dict(size=9),
                hovertemplate=f"layer %{{y}} · head %{{x}}<br>{label}: %{{z:.4g}}<br>"
                              "clearest example: sequence %{customdata}<extra></extra>"), row=r, col=c)
    fig.update_xaxes(tickmode="linear", dtick=1, tickfont=dict(size=9), title=None)
    fig.update_yaxes(tickmode="linear", dtick=1, tickfont=dict(size=9), autorange="reversed")
    fig.update_xaxes(title=dict(text="head", font=dict(size=10)), row=len(rows))
    fig.update_yaxes(title=dict(text="layer", font=dict(size=10)), col=1)
    first = next(iter(models.values()))
    fig.update_layout(template=TEMPLATE, width=190 * len(models) + 260, height=120 * len(rows) + 120,
                      title=_title("Head statistics", [f"{first.sequences:,} sequences per model",
                                                       "cell: mean over every query after the first"]))
    return fig
