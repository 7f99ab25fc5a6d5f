"""xattn.viz: traces → plotly figures, one name and one colour scale per stage, light payloads.

    from xattn import viz
    viz.heatmap(trace, layer=1, head=0, stage="attn").show()
"""
from .cells import Shown, decode_why, why
from .export import save_trace, to_html, to_png
from .figures import (
    FULL_RESOLUTION,
    MAX_CELLS,
    ROW_BARS,
    diff,
    grid,
    heatmap,
    js_divergence,
    key_labels,
    layer_similarity,
    mask_breakdown,
    mask_figure,
    position_labels,
    query_row,
    selection,
    stages,
    token_labels,
    visible_token,
)
from .generation import generation_candidates, generation_memory, generation_row, generation_text, step_row
from .heads import STAT_STYLE, head_stats_figure
from .lod import SCREEN, heatmap_region, pool_figure
from .payload import Scale, decode, max_pool
from .style import MASKED_COLOR, STAGE_STYLE, StageStyle, stage_style
from .text import display_label, predictions_table, token_html

__all__ = [
    "heatmap", "grid", "stages", "diff", "selection", "query_row", "layer_similarity", "mask_figure", "mask_breakdown",
    "to_html", "to_png", "save_trace", "token_labels", "js_divergence", "STAGE_STYLE", "StageStyle", "stage_style",
    "key_labels", "MASKED_COLOR", "Scale", "decode", "max_pool", "FULL_RESOLUTION", "MAX_CELLS", "ROW_BARS",
    "heatmap_region", "SCREEN", "pool_figure", "Shown", "why", "decode_why", "token_html", "predictions_table",
    "display_label", "head_stats_figure", "STAT_STYLE", "visible_token",
    "position_labels", "generation_row", "generation_candidates", "generation_memory", "generation_text", "step_row",
]
