"""Core speed: xattn's forward vs x-transformers' on the same weights, and the cost of tracing.

Prints, for dim 256, 6 layers, 8 heads, batch 1, N = 128 and 512, timings measured side by side
(interleaved repeats, median): xattn forward ÷ x-transformers forward, run_with_trace ÷ xattn forward,
the trace's bytes, and run_with_trace with every stage then read as a stacked tensor; first with
glibc's default allocator settings, then after `xattn.memory.reuse_freed_memory()`.
Usage: python bench/bench_core.py [--repeats 15] [--threads 2]
"""
from __future__ import annotations

import argparse

import torch
import x_transformers
from timing import interleaved_medians  # bench/ is the script's folder

import xattn
from xattn.memory import reuse_freed_memory

VARIANTS = {"plain": {}, "residual+selective": {"residual_attn": True, "attn_selective": True}}


def measure(n: int, options: dict, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    reference = x_transformers.TransformerWrapper(
        num_tokens=256, max_seq_len=512,
        attn_layers=x_transformers.Decoder(dim=256, depth=6, heads=8, **options)).eval()
    model = xattn.from_x_transformers(reference)
    tokens = torch.randint(0, 256, (1, n))
    runs = {
        "x-transformers": lambda: reference(tokens),
        "xattn": lambda: model(tokens),
        "run_with_trace": lambda: model.run_with_trace(tokens),
        "trace+stack": lambda: dict(model.run_with_trace(tokens)[1].stages),   # every stage read as [L,b,h,i,j]
    }
    with torch.no_grad():
        median = interleaved_medians(runs, repeats)
        _, trace = model.run_with_trace(tokens)
    return dict(**median, trace_bytes=trace.nbytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} interleaved runs")
    print(f"{'allocator':<10}{'variant':<20}{'N':>5}{'x-t ms':>9}{'xattn ms':>10}{'trace ms':>10}{'+stack ms':>11}"
          f"{'xattn/x-t':>11}{'trace/fwd':>11}{'trace MB':>10}")
    for allocator in ("default", "reuse"):   # the second pass keeps freed memory (irreversible, so it runs last)
        if allocator == "reuse" and not reuse_freed_memory():
            print("reuse_freed_memory() is not available here (not glibc)")
            break
        for name, options in VARIANTS.items():
            for n in (128, 512):
                r = measure(n, options, args.repeats)
                print(f"{allocator:<10}{name:<20}{n:>5}{r['x-transformers'] * 1e3:>9.1f}{r['xattn'] * 1e3:>10.1f}"
                      f"{r['run_with_trace'] * 1e3:>10.1f}{r['trace+stack'] * 1e3:>11.1f}"
                      f"{r['xattn'] / r['x-transformers']:>11.3f}"
                      f"{r['run_with_trace'] / r['xattn']:>11.3f}{r['trace_bytes'] / 2**20:>10.1f}")


if __name__ == "__main__":
    main()
