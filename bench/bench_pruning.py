"""Selective attention's context pruning on the bundled models: accuracy against KV memory held.

    python bench/bench_pruning.py      # ~2 min on 2 cores: a markdown table and assets/figures/pruning.png
    python bench/bench_pruning.py --samples 500 --no-figure

Leviathan et al. (2024) drop a key from the context once selective attention's F passes a threshold, or keep a
fixed budget of the keys with the lowest F. Here each bundled model answers freshly drawn task samples (seed
SEED, not the training or card seeds) by greedy generation from BOS + prompt, its prompt fed one token at a time
so pruning acts on every query (`xattn.generate`); accuracy is % of answer characters right (variables: the one
answer character, the same as the cards' teacher-forced metric; induction: the generated copy). KV held is the
key/value pairs the answer steps' queries read, summed over layers, as a % of an unpruned run. Models without
`attn_selective` are pruned by head 0's own positive logits summed as F would be: a control.
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from tqdm import tqdm

import xattn
from xattn import viz
from xattn.tasks import Sample, get_task

MODELS = ("variables-baseline", "variables-residual", "variables-selective", "variables-both",
          "induction-baseline", "induction-selective")
POLICIES: tuple[xattn.Prune | None, ...] = (None, *(xattn.Prune(threshold=t) for t in (100, 30, 10, 3, 1)),
                                            *(xattn.Prune(budget=b) for b in (16, 8, 4)))
SEED = 2024
FIGURE = Path(__file__).resolve().parent.parent / "assets" / "figures" / "pruning.png"


def by_prompt_length(samples: list[Sample]) -> list[list[Sample]]:
    """Samples grouped so each batch has one prompt length (and so, per task, one answer length)."""
    groups: dict[tuple[int, int], list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[len(sample.prompt), len(sample.answer)].append(sample)
    return list(groups.values())


@torch.no_grad()
def measure(loaded: xattn.registry.Pretrained, groups: list[list[Sample]], prune: xattn.Prune | None
            ) -> tuple[float, float]:
    """(accuracy %, KV held % of unpruned) over every sample."""
    tokenizer = loaded.tokenizer
    right = total = held = unpruned = 0
    for group in groups:
        prompt = torch.tensor([tokenizer.encode(s.prompt) for s in group])
        answer = torch.tensor([tokenizer.encode(s.answer)[1:] for s in group])
        generation = loaded.model.generate(prompt, answer.shape[1], prune=prune, stages=())
        right += int((generation.new_tokens == answer).sum())
        total += answer.numel()
        held += int(generation.kv_held.sum())
        unpruned += int(generation.kv_unpruned.sum()) * len(group)
    return 100.0 * right / total, 100.0 * held / unpruned


def label(prune: xattn.Prune | None) -> str:
    return "none" if prune is None else str(prune)


def table(results: dict[str, list[tuple[float, float]]]) -> str:
    head = "| model | " + " | ".join(label(p) for p in POLICIES) + " |"
    rows = [f"| `{name}` | " + " | ".join(f"{acc:.1f} ({kv:.0f}%)" for acc, kv in cells) + " |"
            for name, cells in results.items()]
    return "\n".join([head, "|---|" + "---:|" * len(POLICIES), *rows])


def figure(results: dict[str, list[tuple[float, float]]]) -> go.Figure:
    """Accuracy against KV held, one panel per task, one colour per variant (thresholds solid, budgets dotted)."""
    tasks = list(dict.fromkeys(name.split("-")[0] for name in results))
    fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=tasks, horizontal_spacing=0.08)
    colours = {"baseline": "#9e9e9e", "residual": "#ff9800", "selective": "#2196f3", "both": "#2e7d32"}
    kinds = {"threshold": [i for i, p in enumerate(POLICIES) if p is None or p.threshold is not None],
             "budget": [i for i, p in enumerate(POLICIES) if p is None or p.budget is not None]}
    for name, cells in results.items():
        task, variant = name.split("-")
        for kind, picks in kinds.items():
            fig.add_scatter(x=[cells[k][1] for k in picks], y=[cells[k][0] for k in picks], mode="lines+markers",
                            name=variant, legendgroup=variant, showlegend=task == tasks[0] and kind == "threshold",
                            line=dict(color=colours[variant], dash="solid" if kind == "threshold" else "dot"),
                            marker=dict(size=5), row=1, col=tasks.index(task) + 1)
    fig.update_xaxes(title_text="KV held, % of unpruned", autorange="reversed")
    fig.update_yaxes(title_text="answer accuracy %", col=1)
    fig.update_layout(width=760, height=360, margin=dict(l=55, r=10, t=60, b=45), template="plotly_white",
                      title=dict(text="Context pruning: solid = F threshold, dotted = budget", font=dict(size=14)))
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1500, help="samples per task (induction: a third)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-figure", action="store_true", help="skip writing assets/figures/pruning.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, list[tuple[float, float]]] = {}
    with tqdm(total=len(MODELS) * len(POLICIES), desc="models × policies") as bar:
        for name in MODELS:
            loaded = xattn.pretrained(name)
            task = get_task(loaded.card["task"])
            groups = by_prompt_length(task.samples(args.samples if task.name == "variables" else args.samples // 3,
                                                   SEED))
            results[name] = []
            for prune in POLICIES:
                results[name].append(measure(loaded, groups, prune))
                bar.update()
    print("\naccuracy % (KV held at the answer steps, % of unpruned), per pruning policy:\n")
    print(table(results))
    if not args.no_figure:
        viz.to_png(figure(results), FIGURE, scale=1.0)
        print(f"\nwrote {FIGURE}")


if __name__ == "__main__":
    main()
