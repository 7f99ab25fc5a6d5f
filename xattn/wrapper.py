"""TransformerWrapper: token + position embedding → attention layers → logits, with tracing."""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Iterable, Sequence

import torch
from einops import repeat
from torch import Tensor, nn

from .hooks import HookFn, HookPoint, NameFilter, attached, hook_points
from .layers import AttentionLayers
from .trace import Trace, build_trace, recording


class TransformerWrapper(nn.Module):
    """x-transformers' TransformerWrapper for the options xattn supports.

    Absolute position embedding (scaled by dim ** -0.5) unless the layers use rotary embeddings or
    `use_abs_pos_emb=False`; logits by a bias-less projection, or tied to the token embedding.
    """

    def __init__(self, *, num_tokens: int, max_seq_len: int, attn_layers: AttentionLayers,
                 use_abs_pos_emb: bool = True, emb_dropout: float = 0.0, tie_embedding: bool = False) -> None:
        super().__init__()
        if not isinstance(attn_layers, AttentionLayers):
            raise TypeError("attn_layers must be an xattn Encoder, Decoder or AttentionLayers")
        for name, value in (("num_tokens", num_tokens), ("max_seq_len", max_seq_len)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive whole number, got {value!r}")
        dim = attn_layers.dim
        self.num_tokens, self.max_seq_len = num_tokens, max_seq_len
        self.config = dict(num_tokens=num_tokens, max_seq_len=max_seq_len, use_abs_pos_emb=use_abs_pos_emb,
                           emb_dropout=emb_dropout, tie_embedding=tie_embedding, attn_layers=attn_layers.config)
        self.token_emb = nn.Embedding(num_tokens, dim)
        nn.init.kaiming_normal_(self.token_emb.weight)
        self.pos_emb = nn.Embedding(max_seq_len, dim) if use_abs_pos_emb and not attn_layers.rotary_dim else None
        self.pos_scale = dim ** -0.5
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.attn_layers = attn_layers
        self.tie_embedding = tie_embedding
        self.to_logits = None if tie_embedding else nn.Linear(dim, num_tokens, bias=False)

    def check_input(self, tokens: Tensor) -> None:
        if tokens.ndim != 2 or tokens.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"tokens must be an integer tensor [batch, seq], got {tokens.dtype} {tuple(tokens.shape)}")
        if tokens.shape[1] == 0:
            raise ValueError("the input is empty: give at least one token")
        if tokens.shape[1] > self.max_seq_len:
            raise ValueError(f"the input has {tokens.shape[1]} tokens; this model takes at most {self.max_seq_len}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.num_tokens):
            raise ValueError(f"token ids must lie in [0, {self.num_tokens}); got {int(tokens.min())}..{int(tokens.max())}")

    def forward(self, tokens: Tensor, mask: Tensor | None = None, attn_mask: Tensor | None = None) -> Tensor:
        """tokens [b, n] → logits [b, n, num_tokens]."""
        self.check_input(tokens)
        x = self.token_emb(tokens)
        if self.pos_emb is not None:
            positions = torch.arange(tokens.shape[1], device=tokens.device)
            x = x + self.pos_emb(positions) * self.pos_scale
        x = self.attn_layers(self.emb_dropout(x), mask=mask, attn_mask=attn_mask)
        return x @ self.token_emb.weight.t() * self.pos_scale if self.tie_embedding else self.to_logits(x)

    # hooks and traces

    def hook_points(self) -> dict[str, HookPoint]:
        """Every hook point by name, e.g. `layers.3.attn.hook_pre_softmax`."""
        return hook_points(self.attn_layers)

    def hooks(self, hooks: Iterable[tuple[NameFilter, HookFn]]) -> AbstractContextManager[None]:
        """Context manager attaching `(name or predicate, fn(tensor, hook))` pairs; removed on exit,
        also on an exception. A fn returning a tensor replaces the stage; returning None only reads."""
        return attached(self.attn_layers, hooks)

    @torch.no_grad()
    def run_with_trace(self, tokens: Tensor, mask: Tensor | None = None, attn_mask: Tensor | None = None,
                       stages: Sequence[str] | None = None, layers: Sequence[int] | None = None,
                       labels: list[list[str]] | None = None) -> tuple[Tensor, Trace]:
        """Forward pass that records the chosen stages (default all) of the chosen layers (default all)."""
        if layers is not None:
            bad = [l for l in layers if not 0 <= l < self.attn_layers.depth]
            if bad:
                raise ValueError(f"layer(s) {bad} out of range: the model has layers 0..{self.attn_layers.depth - 1}")
        with recording(self.attn_layers, stages, layers) as kept:
            logits = self(tokens, mask=mask, attn_mask=attn_mask)
        b, n = tokens.shape
        visible = self.attn_layers.visible_mask(b, n, mask, attn_mask, tokens.device)
        visible = torch.ones(b, n, n, dtype=torch.bool, device=tokens.device) if visible is None \
            else repeat(visible[:, 0], "b i j -> (r b) i j", r=b // visible.shape[0])
        return logits, build_trace(kept, visible, tokens, self.config, labels)

    def with_config(self, **layer_changes: Any) -> "TransformerWrapper":
        """A new model with the same weights under changed attention-layer options
        (e.g. `residual_attn=False` to see what RealFormer contributes). `self` is untouched."""
        twin = build(changed_config(self.config, **layer_changes)).to(self.device)
        twin.load_state_dict(self.state_dict())
        return twin.train(self.training)

    @property
    def device(self) -> torch.device:
        return self.token_emb.weight.device

    def save(self, path: str) -> None:
        """Write `path` (safetensors weights) and its JSON config beside it; see `xattn.load`."""
        from .io import save
        save(self, path)


def changed_config(config: dict[str, Any], **layer_changes: Any) -> dict[str, Any]:
    """A copy of a model config with some attention-layer options changed."""
    return dict(config, attn_layers={**config["attn_layers"], **layer_changes})


def build(config: dict[str, Any]) -> TransformerWrapper:
    """A fresh model from a config dict as `TransformerWrapper.config` holds it."""
    from .layers import Decoder, Encoder
    config = dict(config)
    layer_config = dict(config.pop("attn_layers"))
    kinds = {"Encoder": Encoder, "Decoder": Decoder, "AttentionLayers": AttentionLayers}
    kind = layer_config.pop("kind", "AttentionLayers")
    if kind not in kinds:
        raise ValueError(f"unknown attention layers kind {kind!r}; expected one of {list(kinds)}")
    return TransformerWrapper(attn_layers=kinds[kind](**layer_config), **config)
