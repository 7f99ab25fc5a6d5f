"""The attention-score stages, in the order they are computed. One name and one meaning everywhere."""
from __future__ import annotations

STAGES: tuple[str, ...] = (
    "scores", "residual", "scores_residual", "position_bias", "biased", "masked", "selection", "pre_softmax", "attn",
)

DESCRIPTIONS: dict[str, str] = {
    "scores": "q·kᵀ × scale of this layer alone (queries and keys rotated by rotary, and scaled by xPos, first)",
    "residual": "previous layer's pre-softmax logits, added by residual attention (RealFormer)",
    "scores_residual": "scores + residual",
    "position_bias": "the position bias term alone: ALiBi's distance penalty, T5's learned bucket bias, the dynamic "
                     "bias MLP's output, or data-dependent ALiBi's summed forget gates; added before any mask",
    "biased": "after position bias (ALiBi, T5 relative, dynamic or data-dependent ALiBi)",
    "masked": "after padding, custom and causal masks",
    "selection": "selective-attention penalty F subtracted from every head",
    "pre_softmax": "the logits that enter softmax",
    "attn": "the attention pattern (softmax)",
}

# Stages that hold one term of a sum rather than the running logits: {term: the stage that adds it in}.
TERMS: dict[str, str] = {"residual": "scores_residual", "position_bias": "biased", "selection": "pre_softmax"}

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
