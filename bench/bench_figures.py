"""Figure payload and build time: xattn's grid vs bertviz's model_view for the same attention tensors.

    python bench/bench_figures.py                 # 6 layers × 8 heads at N = 128 and 512
    python bench/bench_figures.py --sizes 128     # quicker
    python bench/bench_figures.py --assets        # also render the README figures to assets/figures/

Bytes per cell = len(figure JSON) / (layers × heads × N²). "wire" is the same JSON sent as a string
inside JSON, as gradio's gr.Plot sends it. bertviz is a test-only dependency.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

import xattn
from xattn import viz
from xattn.registry import Pretrained, pretrained
from xattn.train import TrainConfig, train
from xattn.viz.payload import pool_factor

LAYERS, HEADS = 6, 8
ASSETS = Path(__file__).resolve().parent.parent / "assets" / "figures"


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def bench(n: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = xattn.TransformerWrapper(num_tokens=256, max_seq_len=n, attn_layers=xattn.Decoder(
        dim=64, depth=LAYERS, heads=HEADS, attn_dim_head=8, residual_attn=True)).eval()
    tokens = torch.randint(0, 256, (1, n))
    _, trace = model.run_with_trace(tokens, stages=["attn"])
    cells = LAYERS * HEADS * n * n

    fig, grid_s = timed(lambda: viz.grid(trace, "attn"))
    factor = pool_factor(n, LAYERS * HEADS, viz.MAX_CELLS)
    text, json_s = timed(fig.to_json)
    focused = viz.heatmap(trace, 0, 0).to_json()

    from bertviz import model_view
    attention = tuple(layer.nan_to_num()[None] for layer in trace.drawable("attn")[:, 0])   # [1, h, n, n] each
    labels = [str(t) for t in tokens[0].tolist()]
    html, bertviz_s = timed(lambda: model_view(attention, labels, html_action="return").data)
    return dict(n=n, bytes_per_cell=len(text) / cells, wire_per_cell=len(json.dumps(text)) / cells,
                build_ms=1e3 * (grid_s + json_s), focused_per_cell=len(focused) / (n * n),
                bertviz_per_cell=len(html) / cells, bertviz_ms=1e3 * bertviz_s,
                drawn=f"{math.ceil(n / factor)}² (pooled {factor}×{factor})" if factor > 1 else f"{n}² (full)")


def trained(config: TrainConfig, directory: str | None) -> Pretrained:
    """The model `config` describes: trained here (seeded) into a temporary folder, or read from `directory`
    where such a run wrote it."""
    with tempfile.TemporaryDirectory() as out:
        if directory is None:
            config.out = directory = out
            train(config, progress=False)
        return pretrained(config.name, directory=directory)


def render_assets(directory: str | None) -> None:
    """README figures from a small induction model with residual + selective attention, trained for a few
    minutes with xattn.train (or read from `directory`)."""
    p = trained(TrainConfig(task="induction", variant="both", steps=800, eval_size=300, threads=2), directory)
    card = p.card
    ids = p.tokenizer.encode("thequickbrownfox|thequickbrownfox")[:-1]     # BOS + text, last char to predict
    _, trace = p.model.run_with_trace(torch.tensor([ids]), labels=[p.tokenizer.labels(ids)])
    head = card["notable_heads"][0]
    ASSETS.mkdir(parents=True, exist_ok=True)
    figures = {
        "grid_attn.png": viz.grid(trace, "attn"),
        "stages.png": viz.stages(trace, head["layer"], head["head"]),
        "layer_similarity.png": viz.layer_similarity(trace),
    }
    for name, fig in figures.items():
        viz.to_png(fig, ASSETS / name, scale=1.5)
        print("wrote", ASSETS / name)
    print(f"model: induction, residual + selective attention, eval accuracy {card['eval']['accuracy']}%, "
          f"notable head layer {head['layer']} head {head['head']}")


def render_options_figure(directory: str | None) -> None:
    """The README's figure of newer options' stages: the `showcase` variant (T5 bias, pre-softmax talking heads,
    soft-capping, a learned sink, RMSNorm) trained on the variables task (~2 minutes, or read from `directory`)."""
    p = trained(TrainConfig(task="variables", variant="showcase", steps=1500, eval_size=500, threads=2), directory)
    ids = p.tokenizer.encode(p.example)
    _, trace = p.model.run_with_trace(torch.tensor([ids]), labels=[p.tokenizer.labels(ids)])
    head = p.card["notable_heads"][0]
    stages = ["scores", "talking_heads_pre", "position_bias", "softclamped", "pre_softmax", "attn"]
    fig = viz.stages(trace, head["layer"], head["head"], stages=stages)
    viz.to_png(fig, ASSETS / "stages_options.png", scale=1.5)
    print("wrote", ASSETS / "stages_options.png", f"(variables-showcase, {p.card['eval']['accuracy']}% accuracy, "
          f"layer {head['layer']} head {head['head']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--assets", action="store_true", help="also write the README PNGs to assets/figures/")
    parser.add_argument("--checkpoint-dir", help="with --assets: use the induction-both model trained into this folder")
    parser.add_argument("--showcase-dir", help="with --assets: use the variables-showcase model trained there")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"grid of {LAYERS} layers × {HEADS} heads, attention stage; bytes per attention cell, build time")
    print("|    N | grid drawn at | xattn grid B/cell | as gr.Plot sends it | xattn build "
          "| bertviz model_view B/cell | bertviz build |")
    print("|-----:|:--------------|------------------:|--------------------:|------------:|--------------------------:|--------------:|")
    focused = {}
    for n in args.sizes:
        r = bench(n)
        focused[n] = r["focused_per_cell"]
        print(f"| {n:4d} | {r['drawn']:13} | {r['bytes_per_cell']:17.2f} | {r['wire_per_cell']:19.2f} | "
              f"{r['build_ms']:8.0f} ms | {r['bertviz_per_cell']:25.1f} | {r['bertviz_ms']:10.0f} ms |")
    print("xattn build = viz.grid + fig.to_json; bertviz build = model_view(html_action='return').")
    print("focused single heatmap, exact float32 hover values included: "
          + ", ".join(f"{n}: {r:.1f} B/cell" for n, r in focused.items()))
    if args.assets:
        render_assets(args.checkpoint_dir)
        render_options_figure(args.showcase_dir)


if __name__ == "__main__":
    main()
