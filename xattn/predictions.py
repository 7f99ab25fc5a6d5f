"""The model's next-token predictions: the k most likely tokens after a position, with their probabilities."""
from __future__ import annotations

from torch import Tensor, nn

from .tokenizer import CharTokenizer


def token_label(tokenizer: CharTokenizer, token: int) -> str:
    """A token id's label, or 'id N' for an id the tokenizer has no character for (a model with more ids)."""
    return tokenizer.labels([token])[0] if 0 <= token < tokenizer.vocab_size else f"id {token}"


def next_tokens(model: nn.Module, logits: Tensor, tokenizer: CharTokenizer, position: int, *, k: int = 5,
                batch: int = 0) -> list[tuple[str, float]] | None:
    """The `k` most likely next tokens after token `position` (0 = BOS), as (label, probability) pairs, most
    likely first: softmax over the logits at that position. None for a model without logits (return_only_embed:
    its output is embeddings)."""
    if model.config.return_only_embed:
        return None
    if logits.ndim != 3 or not 0 <= batch < logits.shape[0] or not 0 <= position < logits.shape[1]:
        raise ValueError(f"position {position} (batch row {batch}) is outside the logits "
                         f"{tuple(logits.shape)} [batch, token, vocabulary]")
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}")
    probabilities = logits[batch, position].double().softmax(dim=-1)
    top = probabilities.topk(min(k, probabilities.numel()))
    return [(token_label(tokenizer, int(i)), float(p)) for p, i in zip(top.values, top.indices, strict=True)]
