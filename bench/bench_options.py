"""Option speed: x-transformers forward vs xattn forward vs xattn run_with_trace, one case per option group.

For each option group of tests/xt_cases.py, the first of its representative cases that xattn loads is
built at dim 256, 6 layers, 8 heads (dim_head 64, as bench_core), batch 1, on the CPU, and timed at
N = 128 and 512: interleaved repeats after a warm-up, median. Prints milliseconds and the ratios
xattn/x-t (forward) and trace/fwd (run_with_trace ÷ xattn forward). A group none of whose representatives
loads prints "refused: <message>" for its first one.

    python bench/bench_options.py [--repeats 7] [--threads 2] [--all]

`--all` benches every case instead of one per group (slower).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
import xt_cases as X  # noqa: E402
from timing import interleaved_medians  # noqa: E402  (bench/ is the script's folder)

import xattn  # noqa: E402
from xattn.memory import reuse_freed_memory  # noqa: E402

SIZES = dict(dim=256, depth=6, heads=8, dim_head=64, num_tokens=256, max_seq_len=512)
LENGTHS = (128, 512)

# Per group, in order of preference: the first that xattn loads is benched.
REPRESENTATIVES: dict[str, list[str]] = {
    "supported": ["residual_selective"],
    "blocks": ["rmsnorm", "sandwich_norm", "post_norm", "scale_residual", "macaron", "value_residual"],
    "embedding": ["post_emb_norm", "memory_tokens", "emb_dim", "l2norm_embed"],
    "scores": ["rel_pos_bias", "qk_norm", "kv_heads", "num_mem_kv", "rotary_full"],
    "combos": ["res_sel_rel_pos_bias", "res_sel_rmsnorm", "res_sel_qk_norm", "res_sel_kv_heads",
               "res_sel_sandwich_norm"],
    "cross": ["cross_decoder", "xtransformer"],
}


def load(case: X.Case):
    """(x-transformers model, xattn model or None, refusal message)."""
    torch.manual_seed(0)
    reference = X.build_reference(case, **SIZES).eval()
    X.randomize_(reference, scale=0.02)
    try:
        return reference, xattn.from_x_transformers(reference), ""
    except Exception as err:  # noqa: BLE001 - reported, not raised
        kind = "refused" if type(err) is ValueError else f"crashed ({type(err).__name__})"
        return reference, None, f"{kind}: {err}"


def measure(case: X.Case, reference, model, n: int, repeats: int) -> dict[str, float]:
    inputs = X.make_inputs(case, reference, batch=1, n=n, num_tokens=SIZES["num_tokens"])
    runs = {
        "x-transformers": lambda: X.reference_logits(reference, case, inputs),
        "xattn": lambda: X.xattn_logits(model, case, inputs),
        "run_with_trace": lambda: X.xattn_logits(model, case, inputs, trace=True),
    }
    with torch.no_grad():
        return interleaved_medians(runs, repeats)


def chosen_cases(bench_all: bool) -> list[tuple[str, X.Case, tuple]]:
    """(group, case, load result) to bench or report."""
    if bench_all:
        return [(c.group, c, load(c)) for c in X.CASES]
    picked = []
    for group, ids in REPRESENTATIVES.items():
        first = None
        for case_id in ids:
            case = X.CASES_BY_ID[case_id]
            loaded = load(case)
            first = first or (case, loaded)
            if loaded[1] is not None:
                picked.append((group, case, loaded))
                break
        else:
            picked.append((group, *first))
    return picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--all", action="store_true", help="bench every case, not one per group")
    parser.add_argument("--default-allocator", action="store_true",
                        help="keep glibc's default allocator settings (bench_core shows both)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reused = not args.default_allocator and reuse_freed_memory()   # as the app does: see bench_core
    warnings.filterwarnings("ignore")
    try:
        from loguru import (
            logger,  # x-transformers warns about small rotary dims through loguru
        )
        logger.remove()
    except ImportError:
        pass
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} interleaved runs, "
          f"dim {SIZES['dim']}, depth {SIZES['depth']}, heads {SIZES['heads']}, batch 1, CPU, "
          f"{'reuse_freed_memory()' if reused else 'default allocator'}")
    print(f"{'group':<11}{'case':<24}{'N':>5}{'x-t ms':>9}{'xattn ms':>10}{'trace ms':>10}"
          f"{'xattn/x-t':>11}{'trace/fwd':>11}")
    for group, case, (reference, model, message) in chosen_cases(args.all):
        if model is None:
            print(f"{group:<11}{case.id:<24}  {message.splitlines()[0][:160]}")
            continue
        for n in LENGTHS:
            try:
                r = measure(case, reference, model, n, args.repeats)
            except Exception as err:  # noqa: BLE001
                print(f"{group:<11}{case.id:<24}{n:>5}  failed: {type(err).__name__}: {str(err)[:120]}")
                continue
            print(f"{group:<11}{case.id:<24}{n:>5}{r['x-transformers'] * 1e3:>9.1f}{r['xattn'] * 1e3:>10.1f}"
                  f"{r['run_with_trace'] * 1e3:>10.1f}{r['xattn'] / r['x-transformers']:>11.3f}"
                  f"{r['run_with_trace'] / r['xattn']:>11.3f}")


if __name__ == "__main__":
    main()
