"""Generation speed: xattn's per-step latency with and without the KV cache, next to x-transformers' generate.

    python bench/bench_generate.py [--steps 16] [--repeats 5] [--threads 2]

dim 256, 6 layers, 8 heads, batch 1, prompts of N = 128 and 512 tokens, greedy. Per-step latency is
(time for `steps` steps − time for 1 step) / (steps − 1), so the prompt pass is left out; runs are interleaved
and each is the median of `repeats`. Columns: x-transformers' `AutoregressiveWrapper.generate` (its own KV cache;
none for selective attention, which it recomputes), xattn cached and recomputed without recording (stages=()),
xattn cached recording every stage the model uses (the default), and the recorded rows' bytes per step.
Targets: xattn cached ÷ x-transformers ≤ 1.2 per step; recompute ÷ cached ≥ 3 at N = 512.
"""
from __future__ import annotations

import argparse

import torch
import x_transformers
from timing import interleaved_medians  # bench/ is the script's folder
from tqdm import tqdm

import xattn
from xattn.memory import reuse_freed_memory

VARIANTS = {"plain": {}, "residual+selective": {"residual_attn": True, "attn_selective": True}}


def per_step(runs: dict[str, object], steps: int, repeats: int) -> dict[str, float]:
    """{name: seconds per step} from interleaved medians of `steps`-step and 1-step runs."""
    calls = {f"{name}/{k}": (lambda fn=fn, k=k: fn(k)) for name, fn in runs.items() for k in (1, steps)}
    median = interleaved_medians(calls, repeats)
    return {name: (median[f"{name}/{steps}"] - median[f"{name}/1"]) / (steps - 1) for name in runs}


@torch.no_grad()
def measure(n: int, options: dict, steps: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    reference = x_transformers.TransformerWrapper(
        num_tokens=256, max_seq_len=n + steps,
        attn_layers=x_transformers.Decoder(dim=256, depth=6, heads=8, **options)).eval()
    wrapper = x_transformers.AutoregressiveWrapper(reference)
    model = xattn.from_x_transformers(reference)
    prompt = torch.randint(0, 256, (1, n))
    runs = {
        "x-transformers": lambda k: wrapper.generate(prompt, k, temperature=0.0),
        "cached": lambda k: model.generate(prompt, k, stages=()),
        "recompute": lambda k: model.generate(prompt, k, cache=False, stages=()),
        "cached+rows": lambda k: model.generate(prompt, k),
    }
    result = per_step(runs, steps, repeats)
    generation = model.generate(prompt, steps)
    assert torch.equal(generation.new_tokens, wrapper.generate(prompt, steps, temperature=0.0)), "greedy differs"
    result["row_bytes"] = generation.nbytes() / steps
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reuse_freed_memory()
    cases = [(name, options, n) for name, options in VARIANTS.items() for n in (128, 512)]
    rows = []
    for name, options, n in tqdm(cases, desc="variants × N"):
        rows.append((name, n, measure(n, options, args.steps, args.repeats)))
    print(f"\ntorch {torch.__version__}, {args.threads} threads, {args.steps} steps, median of {args.repeats} "
          "interleaved runs, ms per step\n")
    print("| variant | N | x-transformers | xattn cached | xattn recompute | cached + rows | cached ÷ x-t (≤ 1.2) "
          "| recompute ÷ cached (≥ 3 at 512) | rows per step |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, n, r in rows:
        print(f"| {name} | {n} | {r['x-transformers'] * 1e3:.2f} | {r['cached'] * 1e3:.2f} | "
              f"{r['recompute'] * 1e3:.2f} | {r['cached+rows'] * 1e3:.2f} | {r['cached'] / r['x-transformers']:.2f} | "
              f"{r['recompute'] / r['cached']:.1f} | {r['row_bytes'] / 1024:.0f} KiB |")


if __name__ == "__main__":
    main()
