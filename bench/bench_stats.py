"""Head-statistics throughput: sequences per second of `head_stats` on variables-task samples, with the local
engine and with Ray, in one run, and the largest difference between their numbers.

    python bench/bench_stats.py                     # 100,000 sequences, every statistic, both engines
    python bench/bench_stats.py --n 20000           # quicker
    RAY_ADDRESS=ray://head:10001 python bench/bench_stats.py --workers 32    # Ray on a running cluster
    python bench/bench_stats.py --figure            # also draw assets/figures/head_stats.png (the README figure)

The local engine runs on --workers torch threads and again on one, Ray on --workers single-threaded actors,
so both get the same CPUs. Starting a local Ray runtime is timed apart; Ray's own time includes starting its
actors (each builds the model once from its state dict).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

import xattn
from xattn.stats import TaskData, head_stats
from xattn.viz import head_stats_figure, to_png

FIGURE = Path(__file__).resolve().parent.parent / "assets" / "figures" / "head_stats.png"
VARIANTS = ("baseline", "residual", "selective", "both")


def figure(n: int, seed: int) -> None:
    """The four variables models side by side, every statistic, on the same `n` samples."""
    results = {v: head_stats(xattn.pretrained(f"variables-{v}").model, TaskData("variables", n, seed),
                             progress=False) for v in VARIANTS}
    to_png(head_stats_figure(results), FIGURE, scale=1.5)
    print(f"wrote {FIGURE} ({n:,} samples per model, seed {seed})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="sequences (variables-task samples)")
    parser.add_argument("--model", default="variables-both")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="torch threads (local) and Ray actors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure", action="store_true", help="also write the README figure")
    parser.add_argument("--figure-n", type=int, default=2000, help="samples per model in the figure")
    args = parser.parse_args()

    import ray
    model, data = xattn.pretrained(args.model).model, TaskData("variables", args.n, args.seed)
    local_s = {}
    for threads in dict.fromkeys((args.workers, 1)):
        torch.set_num_threads(threads)
        start = time.perf_counter()
        local = head_stats(model, data, batch_size=args.batch_size, progress=False)
        local_s[threads] = time.perf_counter() - start

    start = time.perf_counter()
    cluster = os.environ.get("RAY_ADDRESS")
    ray.init(**({} if cluster else {"num_cpus": args.workers + 1}), include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - start
    try:
        start = time.perf_counter()
        remote = head_stats(model, data, batch_size=args.batch_size, progress=False, backend="ray",
                            workers=args.workers)
        ray_s = time.perf_counter() - start
    finally:
        ray.shutdown()
    gap = max(float((remote.values[s] - v).abs().max()) for s, v in local.values.items())

    print(f"\n{args.model}, {args.n:,} variables samples, batch {args.batch_size}, {len(local.values)} statistics, "
          f"{args.workers} workers, {os.cpu_count()} CPUs")
    print("| engine | seconds | sequences/s |")
    print("|---|---:|---:|")
    for threads, seconds in local_s.items():
        print(f"| local ({threads} torch thread{'s' * (threads > 1)}) | {seconds:.1f} | {args.n / seconds:,.0f} |")
    print(f"| ray ({args.workers} actors; {'cluster' if cluster else 'local runtime'}) | {ray_s:.1f} | "
          f"{args.n / ray_s:,.0f} |")
    print(f"ray.init: {init_s:.1f} s (not counted above); largest |ray − local| over all statistics: {gap:.1e}")
    if args.figure:
        figure(args.figure_n, args.seed)


if __name__ == "__main__":
    main()
