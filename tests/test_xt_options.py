"""Every x-transformers option in tests/xt_cases.py: xattn either refuses it by name or matches it.

For each case: seed, build the x-transformers model, `.eval()`, add 0.1·N(0,1) to every parameter (so
zero / identity inits cannot hide a wrong mapping), then `xattn.from_x_transformers(model)`:
  - a refusal must be a ValueError whose message names at least one of the case's `options`
    (any other exception is a failure);
  - a loaded model's logits must match x-transformers' (float32, atol 1e-5, rtol 1e-4) on 2 random
    sequences of 10 tokens, and again with a padding mask (second row's last 3 tokens padded; only
    unpadded positions compared);
  - its `run_with_trace` must give an `attn` stage [layers, b, heads, i, j] with nothing on invisible keys,
    a `post_softmax` stage whose rows sum to 1 (`attn` is `post_softmax` after post-softmax head mixing),
    and `post_softmax` / `pre_softmax` equal to x-transformers' `post_softmax_attn` / `pre_softmax_attn`
    per attention layer (skipped, with the reason, where the shapes differ).
`test_supported_count` counts the cases that load and match, and must not fall below MIN_SUPPORTED.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import xt_cases as X
from xt_cases import CASES

import xattn

pytest.importorskip("x_transformers")

# Cases that load and match x-transformers today; raise it as support grows, never lower it.
MIN_SUPPORTED = 75

ATOL, RTOL = 1e-5, 1e-4
IDS = [c.id for c in CASES]


@dataclass
class Prepared:
    reference: torch.nn.Module
    model: Any = None                # the xattn model, when it loaded
    error: BaseException | None = None

    @property
    def outcome(self) -> str:
        if self.model is not None:
            return "loaded"
        return "refused" if type(self.error) is ValueError else "crashed"


@functools.cache
def prepared(case_id: str) -> Prepared:
    case = X.CASES_BY_ID[case_id]
    torch.manual_seed(0)
    reference = X.build_reference(case).eval()
    X.randomize_(reference)
    try:
        model = xattn.from_x_transformers(reference)
    except Exception as err:  # noqa: BLE001 - classified by the tests
        return Prepared(reference, error=err)
    return Prepared(reference, model=model)


@functools.cache
def logit_errors(case_id: str) -> dict[str, float]:
    """Max |xattn − x-transformers| over compared logits, unpadded and padded (loaded cases only)."""
    case, prep = X.CASES_BY_ID[case_id], prepared(case_id)
    errors = {}
    for padded in (False, True):
        inputs = X.make_inputs(case, prep.reference, padded=padded)
        with torch.no_grad():
            ref = X.reference_logits(prep.reference, case, inputs)
            ours = X.xattn_logits(prep.model, case, inputs)
        assert ours.shape == ref.shape, f"logits shape {tuple(ours.shape)} != x-transformers' {tuple(ref.shape)}"
        valid = inputs["valid"]
        excess = ((ours - ref).abs() - (ATOL + RTOL * ref.abs()))[valid]
        errors["padded" if padded else "unpadded"] = (ours - ref)[valid].abs().max().item()
        errors[("padded" if padded else "unpadded") + "_excess"] = excess.max().item()
    return errors


def matches(case_id: str) -> bool:
    if prepared(case_id).outcome != "loaded":
        return False
    try:
        errors = logit_errors(case_id)
    except Exception:  # noqa: BLE001
        return False
    return all(v <= 0 for k, v in errors.items() if k.endswith("_excess"))


def names_an_option(message: str, options: tuple[str, ...]) -> bool:
    return any(option.lower() in message.lower() for option in options)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_option_refused_or_matching(case: X.Case):
    prep = prepared(case.id)
    if prep.outcome == "crashed":
        pytest.fail(f"from_x_transformers raised {type(prep.error).__name__}: {prep.error} "
                    f"(a refusal must be a ValueError naming one of {list(case.options)})")
    if prep.outcome == "refused":
        message = str(prep.error)
        assert names_an_option(message, case.options), \
            f"refusal does not name any of {list(case.options)}: {message}"
        return
    errors = logit_errors(case.id)
    assert errors["unpadded_excess"] <= 0, f"logits differ from x-transformers: {errors}"
    assert errors["padded_excess"] <= 0, f"logits differ from x-transformers with a padding mask: {errors}"


def loaded_or_skip(case: X.Case) -> Prepared:
    prep = prepared(case.id)
    if prep.outcome != "loaded":
        pytest.skip(f"not loaded ({prep.outcome}): {type(prep.error).__name__}: {str(prep.error)[:200]}")
    return prep


def traced(case: X.Case, prep: Prepared, padded: bool):
    inputs = X.make_inputs(case, prep.reference, padded=padded)
    with torch.no_grad():
        ref_logits, inter = X.reference_logits(prep.reference, case, inputs, return_intermediates=True)
        logits, trace = X.xattn_logits(prep.model, case, inputs, trace=True)
    return inputs, ref_logits, inter, logits, trace


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_trace_attention_rows(case: X.Case, padded: bool):
    prep = loaded_or_skip(case)
    inputs, ref_logits, _, logits, trace = traced(case, prep, padded)
    valid = inputs["valid"]
    torch.testing.assert_close(logits[valid], ref_logits[valid], atol=ATOL, rtol=RTOL,
                               msg=lambda m: f"run_with_trace logits differ from x-transformers: {m}")
    attn = trace["attn"]
    assert attn.ndim == 5 and attn.shape[1] == inputs["tokens"].shape[0], f"attn stage shape {tuple(attn.shape)}"
    visible = getattr(trace, "visible", None)
    if visible is not None and tuple(visible.shape) == tuple(attn.shape[1:2] + attn.shape[3:]):
        hidden = ~visible[None, :, None].expand_as(attn)
        if hidden.any():
            assert attn[hidden].abs().max().item() <= 1e-6, "attention on keys the trace marks invisible"
    if not case.normalized:
        pytest.skip(f"{list(case.options)}: attention rows are not a distribution (sigmoid / signed)")
    sums = trace["post_softmax"].sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0,
                               msg=lambda m: f"attention rows do not sum to 1: {m}")


def reference_layers(case: X.Case, inter, count: int) -> list | None:
    """x-transformers' Intermediates that line up with xattn's `count` traced layers, or None."""
    everything = list(inter.attn_intermediates)
    self_attn = [i for i in everything if i.layer_type == "a"]
    if count == len(everything):
        return everything
    if count == len(self_attn):
        return self_attn
    return None


@pytest.mark.parametrize("stage,theirs", [("post_softmax", "post_softmax_attn"), ("pre_softmax", "pre_softmax_attn")])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_trace_matches_x_transformers(case: X.Case, stage: str, theirs: str):
    prep = loaded_or_skip(case)
    for padded in (False, True):
        _, _, inter, _, trace = traced(case, prep, padded)
        if stage not in trace:
            pytest.skip(f"xattn's trace has no {stage!r} stage")
        ours = trace[stage]
        refs = reference_layers(case, inter, ours.shape[0])
        if refs is None:
            pytest.skip(f"xattn traced {ours.shape[0]} layers; x-transformers has "
                        f"{[i.layer_type for i in inter.attn_intermediates]} attention layers")
        ref = torch.stack([getattr(i, theirs) for i in refs])
        if ours.shape != ref.shape:
            pytest.skip(f"{stage} shape {tuple(ours.shape)} != x-transformers' {theirs} {tuple(ref.shape)} "
                        f"(extra key columns: memory / zero key-values or attention sinks)")
        fill = -torch.finfo(ref.dtype).max / 2
        ref_fill, our_fill = ref <= fill, ours <= fill       # cells carrying a mask's fill value
        assert torch.equal(ref_fill, our_fill), \
            f"{stage}: masked cells differ from x-transformers' ({int((ref_fill ^ our_fill).sum())} cells)"
        keep = ~ref_fill
        label = f"{stage} vs x-transformers' {theirs} (padded={padded})"
        torch.testing.assert_close(ours[keep], ref[keep], atol=ATOL, rtol=RTOL,
                                   msg=lambda m, label=label: f"{label}: {m}")


def test_supported_count():
    supported = [c.id for c in CASES if matches(c.id)]
    assert len(supported) >= MIN_SUPPORTED, \
        f"{len(supported)} cases load and match x-transformers, fewer than MIN_SUPPORTED={MIN_SUPPORTED}: {supported}"
