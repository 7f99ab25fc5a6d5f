"""xattn.viz: traces → plotly figures, one name and one colour scale per stage, light payloads.

    from xattn import viz
    viz.heatmap(trace, layer=1, head=0, stage="attn").show()
"""
from .export import save_trace, to_html, to_png
from .figures import (
    FULL_RESOLUTION,
    MAX_CELLS,
    diff,
    grid,
    heatmap,
    js_divergence,
    key_labels,
    layer_similarity,
    mask_breakdown,
    mask_figure,
    query_row,
    selection,
    stages,
    token_labels,
    visible_token,
)
from .lod import SCREEN, heatmap_region, pool_figure
from .payload import Scale, decode, max_pool
from .style import MASKED_COLOR, STAGE_STYLE, StageStyle, stage_style

__all__ = [
    "heatmap", "grid", "stages", "diff", "selection", "query_row", "layer_similarity", "mask_figure", "mask_breakdown",
    "to_html", "to_png", "save_trace", "token_labels", "js_divergence", "STAGE_STYLE", "StageStyle", "stage_style",
    "key_labels", "MASKED_COLOR", "Scale", "decode", "max_pool", "FULL_RESOLUTION", "MAX_CELLS", "heatmap_region",
    "SCREEN", "pool_figure", "visible_token",
]
