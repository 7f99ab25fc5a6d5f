"""The attention-score stages, in the order they are computed. One name and one meaning everywhere.

Extra key columns stand in front of the tokens on every stage's key axis, in x-transformers' order: the
learned sink (attn_head_learned_sink), the zero key (attn_add_zero_kv), the memory keys (attn_num_mem_kv).
Zero and memory keys are real keys from `scores` on (the zero key scores 0). The sink joins the logits at
`pre_softmax`; before that its column shows the sink's logit in running stages and 0 in terms.
"""
from __future__ import annotations

STAGES: tuple[str, ...] = (
    "scores", "residual", "scores_residual", "talking_heads_pre", "biased", "masked", "cope", "selection",
    "pre_softmax", "softmax", "attn",
)

DESCRIPTIONS: dict[str, str] = {
    "scores": "q·kᵀ × scale of this layer alone",
    "residual": "previous layer's pre-softmax logits, added by residual attention (RealFormer)",
    "scores_residual": "scores + residual",
    "talking_heads_pre": "+ the heads mixed by a learned h × h matrix (pre-softmax talking heads; added, so the "
                         "identity init doubles the scores)",
    "biased": "after position bias (ALiBi)",
    "masked": "after padding, custom and causal masks",
    "cope": "CoPE's contextual position logits, added after masking: q · a position embedding at a position "
            "counted by the sigmoid gates of the masked logits",
    "selection": "selective-attention penalty F subtracted from every head",
    "pre_softmax": "the logits that enter softmax (the learned sink joins here)",
    "softmax": "softmax of the pre-softmax logits (x-transformers' post_softmax_attn)",
    "attn": "the pattern that weights the values: softmax, then post-softmax talking heads (a learned head mix) "
            "and the pre-scale-post scale (a head mix of scores_residual, multiplied in)",
}

# Stages that hold one term of a sum rather than the running logits: {term: the stage that adds it in}.
TERMS: dict[str, str] = {"residual": "scores_residual", "cope": "pre_softmax", "selection": "pre_softmax"}

# Stages whose values are probabilities rather than logits.
PROBABILITY_STAGES = frozenset({"softmax", "attn"})
# Stages from which invisible cells carry the mask's fill value (CoPE's term is meaningless there: drawn hidden too).
MASKED_STAGES = frozenset({"masked", "cope", "pre_softmax", "softmax", "attn"})


def check_stages(stages: tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """Validate a stage selection (None means all), keeping the computation order."""
    if stages is None:
        return STAGES
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    return tuple(s for s in STAGES if s in stages)
