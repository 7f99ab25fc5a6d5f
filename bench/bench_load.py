"""Load test: concurrent gradio_client sessions on loopback, each with its own fresh model, text and picks,
every response checked against `run_with_trace` computed directly for that request; then an overload phase
against a server with a tiny queue, counting the "busy" answers.

    python bench/bench_load.py [--sessions 32] [--requests 3] [--overload 24]

Prints p50/p95 latency per request, errors (a wrong number counts as an error) and busy answers.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from gradio_client import Client  # noqa: E402

from app import limits, models  # noqa: E402
from app import main as app_main  # noqa: E402

from test_app import array, exact, same, traces  # noqa: E402

STAGES = ("scores", "pre_softmax", "attn")


def session(url: str, i: int, requests: int) -> tuple[list[float], list[str]]:
    """One user: build a fresh model of its own, then explore it `requests` times with its own text."""
    position = ("use_abs_pos_emb", "rotary_pos_emb", "alibi_pos_bias")[i % 3]
    options = ["causal", "pre_norm", position] + ["residual_attn"] * (i % 2) + ["attn_selective"] * (i % 4 == 1)
    args = (1 + i % 3, 1 + i % 2, 16 * (1 + i % 2), options, 1000 + i, 48)
    latencies, errors = [], []
    try:
        client = Client(url, verbose=False)
        start = time.perf_counter()
        dropdown, *_ = client.predict(*args, api_name="/fresh_model")
        latencies.append(time.perf_counter() - start)
        mine = models.fresh(*args)
        if dropdown["value"] != mine.name:
            errors.append(f"session {i}: got model {dropdown['value']!r}, expected {mine.name!r}")
        for r in range(requests):
            text = f"s{i}r{r}=" + "abcdefghijklmnop"[(i + r) % 16:] + ";"
            stage, layer, head, query = STAGES[(i + r) % 3], args[0] - 1, (i + r) % args[1], len(text) // 2
            start = time.perf_counter()
            _, heatmap, _, row, _ = client.predict(mine.name, text, stage, layer, head, query, api_name="/explore")
            latencies.append(time.perf_counter() - start)
            trace = mine.model.run_with_trace(torch.tensor([mine.tokenizer.encode(text)]))[1]
            same(exact(traces(heatmap)[0]), trace.drawable(stage)[layer, 0, head])
            for h, bar in enumerate(traces(row, "bar")):
                same(array(bar["y"]), trace.drawable(stage)[layer, 0, h, query])
    except Exception as err:  # noqa: BLE001 -- counted and reported
        errors.append(f"session {i}: {type(err).__name__}: {str(err)[:200]}")
        traceback.print_exc()
    return latencies, errors


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load_phase(sessions: int, requests: int) -> None:
    demo, url = app_main.launch(port=None, block=False)
    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(sessions) as pool:
            results = list(pool.map(lambda i: session(url, i, requests), range(sessions)))
        wall = time.perf_counter() - start
    finally:
        demo.close()
    latencies = [t for times, _ in results for t in times]
    errors = [e for _, errs in results for e in errs]
    print(f"load: {sessions} sessions × (1 fresh model + {requests} explore), concurrency {limits.CONCURRENCY}, "
          f"queue {limits.QUEUE_SIZE}: {len(latencies)} requests in {wall:.1f} s")
    print(f"  latency p50 {statistics.median(latencies):.2f} s, p95 {percentile(latencies, 0.95):.2f} s, "
          f"max {max(latencies):.2f} s; errors {len(errors)} (wrong numbers count as errors)")
    for error in errors[:10]:
        print("  ", error)


def overload_phase(count: int) -> None:
    """`count` simultaneous requests against concurrency 1 and a queue of 2: the rest must hear "busy"."""
    default = models.bundled(models.default_name())
    demo, url = app_main.launch(port=None, block=False, concurrency=1, queue_size=2)
    try:
        clients = [Client(url, verbose=False) for _ in range(count)]

        def call(i: int) -> str:
            try:
                clients[i].predict(default.name, default.example, "attn", 0, 0, 1, api_name="/explore")
                return "ok"
            except Exception as err:  # noqa: BLE001
                return "busy" if "Queue is full" in str(err) else f"error: {type(err).__name__}: {err}"
        with ThreadPoolExecutor(count) as pool:
            outcomes = list(pool.map(call, range(count)))
        after = call(0)
    finally:
        demo.close()
    other = [o for o in outcomes if o not in ("ok", "busy")]
    print(f"overload: {count} at once against concurrency 1, queue 2: {outcomes.count('ok')} answered, "
          f"{outcomes.count('busy')} busy ('Queue is full! Please try again.'), {len(other)} other errors; "
          f"next request after: {after}")
    for error in other[:5]:
        print("  ", error)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--requests", type=int, default=3, help="explore requests per session")
    parser.add_argument("--overload", type=int, default=24, help="simultaneous requests in the overload phase")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_phase(args.sessions, args.requests)
    overload_phase(args.overload)


if __name__ == "__main__":
    main()
