"""Server time of one Explore page request, part by part: the bundled default model, a fresh 6 × 8 model reading
512 tokens and a fresh 2 × 4 model reading 2,048 (the issue's sizes).

    python bench/bench_explore.py [--sizes 512 2048] [--repeats 5]

Each round traces a new text (`trace`: tokenise, traced forward, overflow check), then builds what
views.explored builds from it, in the page's order: the grid, the focused head, the stage strip and the query
row (each tagged for the page), the text view and predictions (`text`), the four figures as the page's
PlotlyView sends them (`json`); then the whole `views.explore_page` on another new text (`page`), and a click
on another head's tile as the page asks for its views (`click`: views.focus_views, JSON included), and what the
server makes while idle after that Run (`ahead`: every other head's views but the click's, app/ahead.py). Median and
best of interleaved rounds (bench/timing.py), in ms: on a busy machine the best is the steadier. The page's
target (issue 10): 0.3 s bundled, 1 s at 512 tokens, for the whole browser round trip (bench/bench_browser.py).
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from app import heatmap, models, ui, views  # noqa: E402
from bench.timing import interleaved_times  # noqa: E402
from xattn import viz  # noqa: E402

SIZES = {512: dict(depth=6, heads=8, dim=256), 2048: dict(depth=2, heads=4, dim=64)}   # tokens → fresh model


def parts(session: dict | None, loaded: models.Loaded, texts: list[str], stage: str, layer: int, head: int,
          query: int) -> dict:
    """{part: callable}: one Explore request step by step, each round on a new text."""
    cycle, name, stages = iter(texts * 1000), loaded.name, views.strip_stages(loaded)     # a new text each time
    now: dict = {}

    def trace() -> None:
        now["text"] = next(cycle)
        now["run"] = run = views.explore_run(views.load(session, name, None), now["text"], reuse=False)
        now["labels"], now["keys"] = viz.token_labels(run.trace), viz.key_labels(run.trace)
        now["figures"] = {}

    def tagged(what: str, fig: object) -> None:
        now["figures"][what] = fig

    def grid() -> None:
        run = now["run"]
        tagged("grid", heatmap.tag_grid(viz.grid(run.trace, stage, max_cells=views.grid_cells(run)),
                                        layers=list(run.trace.layers), heads=list(range(loaded.heads)), stage=stage,
                                        labels=now["labels"], keys=now["keys"], key="k", focus={}))

    def focused() -> None:
        tagged("head", heatmap.tag_head(viz.heatmap_region(now["run"].trace, layer, head, stage), stage=stage,
                                        key="k", focus={}))

    def strip() -> None:
        tagged("strip", heatmap.tag_strip(views.strip(now["run"], layer, head, stages, views.Screen().strip ** 2),
                                          stages=stages, labels=now["labels"], keys=now["keys"], key="k", focus={}))

    def row() -> None:
        fig = viz.query_row(now["run"].trace, layer, query, stage=stage)
        tagged("row", heatmap.tag_row(fig, labels=now["labels"], keys=now["keys"], key="k", focus={}))

    def page() -> None:
        now["page_text"] = next(cycle)
        now["page"] = views.explore_page(session, name, now["page_text"], stage, layer, head, query)

    def click() -> None:
        """A click on another head's grid tile, as the page asks for its views (views.focus_views)."""
        focus = heatmap.meta_of(now["page"][1])["focus"]
        now["clicks"] = now.get("clicks", 0) + 1
        other = (head + 1 + now["clicks"] % (loaded.heads - 1)) % loaded.heads       # never the page's head
        assert views.focus_views({**focus, "head": other, "shown": {"grid": focus["grid"], "head": focus["key"]}})

    def ahead() -> None:
        """What the server makes while idle after a Run (app/ahead.py): every other head's views, one by one."""
        focus = heatmap.meta_of(now["page"][1])["focus"]
        run = views.explore_run(views.load(session, name, None), now["page_text"])
        for other in [(lr, h) for lr in run.trace.layers for h in range(loaded.heads) if (lr, h) != (layer, head)]:
            views.head_views(run, stage, *other, views.Shown(), focus["run"])

    view = heatmap.plotly_view("bench")
    return {"trace": trace, "grid": grid, "head": focused, "strip": strip, "row": row,
            "text": lambda: views.explore_text(session, name, now["text"], layer, head, query),   # its trace kept
            "json": lambda: [view.postprocess(fig) for fig in now["figures"].values()],
            "page": page, "click": click, "ahead": ahead}


def report(title: str, times: dict[str, list[float]]) -> None:
    """Median and best time of each part, and their sums over the parts of one request."""
    for stat, of in (("median", statistics.median), ("best", min)):
        ms = {part: 1e3 * of(t) for part, t in times.items()}
        steps = sum(v for part, v in ms.items() if part not in ("page", "click", "ahead"))
        print(f"{title}, {stat}:\n  " + "  ".join(f"{part} {v:.1f}" for part, v in ms.items())
              + f"  (sum of the steps {steps:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(0)
    print(f"torch threads {torch.get_num_threads()}; {args.repeats} interleaved rounds; ms")
    default = models.bundled(models.default_name())
    start = ui.Controls(default).start(default)
    texts = ["".join(rng.sample(default.example, len(default.example))) for _ in range(2 * args.repeats + 2)]
    report(f"bundled {default.name} ({default.depth} × {default.heads}, {len(texts[0])} characters)",
           interleaved_times(parts(None, default, texts, "attn", start["layer"], start["head"], start["query"]),
                               args.repeats))
    for n in args.sizes:
        size = SIZES[n]
        loaded = models.fresh(**size, options=[], seed=0, max_seq_len=n)
        texts = ["".join(rng.choice(models.ASCII) for _ in range(n - 1)) for _ in range(2 * args.repeats + 2)]
        report(f"fresh {size['depth']} × {size['heads']}, dim {size['dim']}, {n} tokens",
               interleaved_times(parts({loaded.name: loaded}, loaded, texts, "attn", 0, 1, min(100, n - 1)),
                                   args.repeats))


if __name__ == "__main__":
    main()
