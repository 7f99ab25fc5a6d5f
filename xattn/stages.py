"""The attention-score stages, in the order they are computed. One name and one meaning everywhere."""
from __future__ import annotations

STAGES: tuple[str, ...] = (
    "scores", "residual", "scores_residual", "biased", "softclamped", "magnitude", "masked", "selection",
    "pre_softmax", "topk", "attn",
)

DESCRIPTIONS: dict[str, str] = {
    "scores": "q·kᵀ × scale of this layer alone, or as the options define similarity (qk-norm: cosine "
              "similarity × its scale; L2 distance: −‖q − k‖² × scale)",
    "residual": "previous layer's pre-softmax logits, added by residual attention (RealFormer)",
    "scores_residual": "scores + residual",
    "biased": "after position bias (ALiBi)",
    "softclamped": "soft-capped: v·tanh(logit / v), after position bias and before masking",
    "magnitude": "the logits' absolute values (Cog signed attention; their signs return after softmax)",
    "masked": "after padding, custom, window (max_attend_past) and causal masks",
    "selection": "selective-attention penalty F subtracted from every head",
    "pre_softmax": "the logits that enter softmax (sparse top-k cuts them first)",
    "topk": "sparse top-k: only each query's k largest logits kept, the rest filled like masked ones",
    "attn": "the attention pattern (softmax, or sigmoid; × the logits' signs with Cog signed attention)",
}

# Stages that hold one term of a sum rather than the running logits: {term: the stage that adds it in}.
TERMS: dict[str, str] = {"residual": "scores_residual", "selection": "pre_softmax"}

# Stages whose values are attention weights rather than logits: in [0, 1] (rows need not sum to 1 with sigmoid;
# signed, in [-1, 1], with Cog signed attention).
PROBABILITY_STAGES = frozenset({"attn"})
# Stages from which invisible cells carry the mask's fill value.
MASKED_STAGES = frozenset({"masked", "pre_softmax", "topk", "attn"})


def check_stages(stages: tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """Validate a stage selection (None means all), keeping the computation order."""
    if stages is None:
        return STAGES
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    return tuple(s for s in STAGES if s in stages)
