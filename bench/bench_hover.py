"""What hover reasons cost: bytes of figure JSON per drawn attention cell for Explore's grid, focused head and stage
strip, with and without `layout.meta["xattn"]["why"]` (viz.cells.why), for a causal RealFormer and one with selective
attention (whose pruning adds a matrix per layer). Fresh 6 × 8 models, dim 64, seed 0.

    python bench/bench_hover.py
"""
from __future__ import annotations

import torch

import xattn
from xattn import viz

LAYERS, HEADS = 6, 8


def sizes(fig) -> tuple[int, int]:
    """(figure JSON bytes, the same without the why matrices)."""
    full = len(fig.to_json())
    fig.layout.meta["xattn"].pop("why")
    return full, len(fig.to_json())


def main() -> None:
    print("| model | N | view | B/cell | B/cell without why | why share |")
    print("|---|---:|---|---:|---:|---:|")
    for name, options in [("residual", {}), ("residual + selective", {"attn_selective": True})]:
        for n in (128, 512):
            torch.manual_seed(0)
            model = xattn.TransformerWrapper(num_tokens=256, max_seq_len=n, attn_layers=xattn.Decoder(
                dim=64, depth=LAYERS, heads=HEADS, attn_dim_head=8, residual_attn=True, **options)).eval()
            _, trace = model.run_with_trace(torch.randint(0, 256, (1, n)))
            views = {"grid (96² a tile)": (viz.grid(trace, "attn", max_cells=LAYERS * HEADS * 96 ** 2), LAYERS * HEADS),
                     "focused head": (viz.heatmap_region(trace, 5, 0, "attn"), 1),
                     "stage strip (5 panels)": (viz.stages(trace, 5, 0, max_cells=256 ** 2), 5)}
            for view, (fig, panels) in views.items():
                full, bare = sizes(fig)
                cells = panels * n * n
                share = (full - bare) / full
                print(f"| {name} | {n} | {view} | {full / cells:.2f} | {bare / cells:.2f} | {share:.1%} |")


if __name__ == "__main__":
    main()
