"""The attention-score stages, in the order they are computed. One name and one meaning everywhere.

Extra key columns stand in front of the tokens on every stage's key axis, in x-transformers' order: the
learned sink (attn_head_learned_sink), the zero key (attn_add_zero_kv), the memory keys (attn_num_mem_kv).
Zero and memory keys are real keys from `scores` on (the zero key scores 0). The sink joins the logits at
`pre_softmax`; before that its column shows the sink's logit in running stages and 0 in terms.
"""
from __future__ import annotations

STAGES: tuple[str, ...] = (
    "scores", "residual", "scores_residual", "talking_heads_pre", "position_bias", "biased", "softclamped",
    "magnitude", "masked", "cope", "selection", "pre_softmax", "topk", "post_softmax", "attn",
)

DESCRIPTIONS: dict[str, str] = {
    "scores": "q·kᵀ × scale of this layer alone, or as the options define similarity (qk-norm: cosine "
              "similarity × its scale; L2 distance: −‖q − k‖² × scale); queries and keys rotated by rotary, and "
              "scaled by xPos, first",
    "residual": "what residual attention (RealFormer) adds: the previous attention layer's pre-softmax logits "
                "(zeros where off, and in the first layer)",
    "scores_residual": "scores + residual",
    "talking_heads_pre": "+ the heads mixed by a learned h × h matrix (pre-softmax talking heads; added, so the "
                         "identity init doubles the scores)",
    "position_bias": "the position bias term alone: ALiBi's distance penalty, T5's learned bucket bias, the dynamic "
                     "bias MLP's output, or data-dependent ALiBi's summed forget gates; added before any mask",
    "biased": "after the position bias (ALiBi, T5 relative, dynamic or data-dependent ALiBi)",
    "softclamped": "soft-capped: v·tanh(logit / v), after position bias and before masking",
    "magnitude": "the logits' absolute values (Cog signed attention; their signs return after softmax)",
    "masked": "after the padding, custom, window (max_attend_past) and causal masks (hidden cells hold −finfo.max, "
              "as x-transformers)",
    "cope": "CoPE's contextual position logits, added after masking: q · a position embedding at a position "
            "counted by the sigmoid gates of the masked logits",
    "selection": "the selective-attention penalty F this layer subtracts from every head (zeros where off)",
    "pre_softmax": "the logits that enter softmax (the learned sink joins here; sparse top-k cuts them next)",
    "topk": "sparse top-k: only each query's k largest logits kept, the rest filled like masked ones",
    "post_softmax": "the attention function's output: softmax, or sigmoid; × the logits' signs with Cog signed "
                    "attention",
    "attn": "the pattern that weights the values (post_softmax after any post-softmax head mix)",
}

# Stages x-transformers also exposes, by the field of its attention intermediates that holds them.
X_TRANSFORMERS_FIELDS: dict[str, str] = {"scores_residual": "qk_similarities", "pre_softmax": "pre_softmax_attn",
                                         "post_softmax": "post_softmax_attn"}

# Stages that hold one term of a sum rather than the running logits: {term: the stage that adds it in}.
TERMS: dict[str, str] = {"residual": "scores_residual", "position_bias": "biased", "cope": "pre_softmax",
                         "selection": "pre_softmax"}

# Stages whose values are attention weights rather than logits: in [0, 1] (rows need not sum to 1 with sigmoid;
# signed, in [-1, 1], with Cog signed attention; talking heads mix `attn` freely).
PROBABILITY_STAGES = frozenset({"post_softmax", "attn"})
# Stages that hold the same values for every head (selective attention's F comes from the gate head alone).
HEAD_SHARED = frozenset({"selection"})
# Stages from which invisible cells carry the mask's fill value (CoPE's term is meaningless there: drawn hidden too).
MASKED_STAGES = frozenset({"masked", "cope", "pre_softmax", "topk", "post_softmax", "attn"})


def check_stages(stages: tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """Validate a stage selection (None means all), keeping the computation order."""
    if stages is None:
        return STAGES
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    return tuple(s for s in STAGES if s in stages)
