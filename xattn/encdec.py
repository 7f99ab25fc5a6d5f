"""XTransformer: x-transformers' encoder–decoder. An Encoder wrapper turns the source into embeddings, which a
cross-attending Decoder wrapper reads as its context; traced as three parts (encoder self-attention, decoder
self-attention, decoder cross-attention)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .config import EncDecConfig, ModelConfig, config_from_dict
from .trace import Trace
from .wrapper import TransformerWrapper, build


class XTransformer(nn.Module):
    """x-transformers' `XTransformer` for the options xattn supports: constructed with its keywords
    (`XTransformer(dim=…, enc_num_tokens=…, enc_depth=…, dec_num_tokens=…, dec_depth=…, tie_token_emb=…)`)
    or from a typed `EncDecConfig` (`config=`). Weights live under `encoder.*` and `decoder.*`."""

    def __init__(self, *, config: EncDecConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.config = config if config is not None else EncDecConfig.from_dict(kwargs)
        self.encoder = build(self.config.encoder)
        self.decoder = build(self.config.decoder)
        if self.config.tie_token_emb:
            self.decoder.token_emb = self.encoder.token_emb

    def forward(self, src: Tensor, tgt: Tensor, mask: Tensor | None = None, tgt_mask: Tensor | None = None) -> Tensor:
        """src [b, n_src], tgt [b, n_tgt] → the decoder's logits [b, n_tgt, dec_num_tokens]. mask [b, n_src] pads
        the source (x-transformers' name), in the encoder and as the decoder's context mask; tgt_mask pads tgt."""
        context = self.encoder(src, mask=mask)
        return self.decoder(tgt, mask=tgt_mask, context=context, context_mask=mask)

    @torch.no_grad()
    def run_with_trace(self, src: Tensor, tgt: Tensor, mask: Tensor | None = None, tgt_mask: Tensor | None = None,
                       stages: Sequence[str] | None = None, src_labels: list[list[str]] | None = None,
                       tgt_labels: list[list[str]] | None = None) -> tuple[Tensor, Trace]:
        """(logits, the decoder's trace): its self-attention as `trace[stage]`, its cross-attention as
        `trace.cross[stage]` (keys = source tokens) and the encoder's self-attention as `trace.encoder[stage]`."""
        context, encoder_trace = self.encoder.run_with_trace(src, mask=mask, stages=stages, labels=src_labels)
        src_labels = src_labels or [[str(t) for t in row] for row in src.tolist()]
        logits, trace = self.decoder.run_with_trace(tgt, mask=tgt_mask, stages=stages, labels=tgt_labels,
                                                    context=context, context_mask=mask, context_labels=src_labels)
        trace.encoder = encoder_trace
        return logits, trace

    @property
    def device(self) -> torch.device:
        return self.decoder.device


def build_any(config: ModelConfig | EncDecConfig | dict[str, Any]) -> TransformerWrapper | XTransformer:
    """A fresh model of either kind, from its config or the JSON form of one (`to_dict()`)."""
    config = config if isinstance(config, (ModelConfig, EncDecConfig)) else config_from_dict(config)
    return XTransformer(config=config) if isinstance(config, EncDecConfig) else build(config)
