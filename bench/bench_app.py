"""Request → figure latency of the app's Explore endpoint through gradio_client, beside the plain forward,
the traced forward and the figure build measured in the same process, for a fresh 6-layer × 8-head model.

    python bench/bench_app.py [--sizes 128 512] [--repeats 3]

The target: a request within 2× (traced forward + figure build). `payload` is the size of the Explore
response as gradio_client receives it (four plotly figures as JSON strings inside JSON, plus the summary).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from gradio_client import Client  # noqa: E402

from app import main as app_main  # noqa: E402
from app import models, views  # noqa: E402

CONFIG = dict(depth=6, heads=8, dim=256, options=["causal", "residual_attn", "attn_selective", "pre_norm",
                                                   "use_abs_pos_emb"], seed=0, max_seq_len=512)


def median_ms(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of `fn` in ms over `repeats` runs after one warm-up, and its last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    port = app_main.free_port()
    server = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = connect(f"http://127.0.0.1:{port}/")
        run(client, args.sizes, args.repeats)
    finally:
        server.terminate()
        server.wait()


def connect(url: str, timeout_s: float = 120.0) -> Client:
    """A client of the app server at `url`, once it answers."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return Client(url, verbose=False)
        except Exception:  # not listening yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def run(client: Client, sizes: list[int], repeats: int) -> None:
    name = client.predict(*CONFIG.values(), api_name="/fresh_model")[0]["value"]
    loaded = models.fresh(**CONFIG)                     # the same seeded weights, in this process
    rng = random.Random(0)
    print(f"model: {name}; server in its own process; torch threads {torch.get_num_threads()}; "
          f"median of {repeats} runs\n")
    print(f"{'N':>5} {'forward':>9} {'traced':>9} {'figures':>9} {'request':>9} "
          f"{'req/(traced+fig)':>17} {'payload':>10}")
    for n in sizes:
        text = "".join(rng.choice(models.ASCII) for _ in range(n - 1))       # + <bos> = n tokens
        inputs = ("attn", CONFIG["depth"] - 1, 0, n - 1)
        tokens = torch.tensor([loaded.tokenizer.encode(text)])
        with torch.no_grad():
            forward, _ = median_ms(partial(loaded.model, tokens), repeats)
        traced, _ = median_ms(partial(loaded.model.run_with_trace, tokens), repeats)
        direct, _ = median_ms(partial(views.explore, {name: loaded}, name, text, *inputs), repeats)
        request, response = median_ms(partial(client.predict, name, text, *inputs, api_name="/explore"), repeats)
        figures = direct - traced
        payload = len(json.dumps(response))
        print(f"{n:>5} {forward:>7.1f}ms {traced:>7.1f}ms {figures:>7.1f}ms {request:>7.1f}ms "
              f"{request / direct:>16.2f}× {payload / 1e6:>8.2f}MB")


if __name__ == "__main__":
    main()
