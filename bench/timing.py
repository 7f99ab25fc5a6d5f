"""Timing shared by the benchmarks: medians of runs interleaved so that load on the machine hits each alike."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_times(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """{name: seconds of each round} over `repeats` rounds, each round calling every run once, after one warm-up
    call each."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():
        fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    return times


def interleaved_medians(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """{name: median seconds} of `repeats` interleaved rounds (interleaved_times)."""
    return {name: statistics.median(t) for name, t in interleaved_times(runs, repeats).items()}
