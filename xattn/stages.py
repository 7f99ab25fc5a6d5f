"""The attention-score stages, in the order they are computed. One name and one meaning everywhere."""
from __future__ import annotations

STAGES: tuple[str, ...] = (
    "scores", "residual", "scores_residual", "biased", "masked", "selection", "pre_softmax", "attn",
)

DESCRIPTIONS: dict[str, str] = {
    "scores": "q·kᵀ × scale of this layer alone",
    "residual": "previous layer's pre-softmax logits, added by residual attention (RealFormer)",
    "scores_residual": "scores + residual",
    "biased": "after position bias (ALiBi)",
    "masked": "after padding, custom and causal masks",
    "selection": "selective-attention penalty F subtracted from every head",
    "pre_softmax": "the logits that enter softmax",
    "attn": "the attention pattern (softmax)",
}

# Stages that hold one term of a sum rather than the running logits: {term: the stage that adds it in}.
TERMS: dict[str, str] = {"residual": "scores_residual", "selection": "pre_softmax"}

# Stages whose values are probabilities rather than logits.
PROBABILITY_STAGES = frozenset({"attn"})
# Stages from which invisible cells carry the mask's fill value.
MASKED_STAGES = frozenset({"masked", "pre_softmax", "attn"})


def check_stages(stages: tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """Validate a stage selection (None means all), keeping the computation order."""
    if stages is None:
        return STAGES
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    return tuple(s for s in STAGES if s in stages)
