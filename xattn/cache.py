"""A key/value cache, so a decoder step runs only its new tokens through the layers.

Each self-attention layer keeps the keys (after qk-norm and rotary) and values (after the value-residual mix)
of every token seen so far, shared-head form [b, h, n, d]; memory and zero key/values are not cached (they
are prepended again each step). Selective attention's F is a running sum, so each layer also carries the sum
of head 0's gated positive logits over the queries seen so far: the next query's F row, without recomputing the
queries before it. `dropped` marks keys a pruning policy hid from later queries (`xattn.generate.Prune`): they
stay cached, but every later query sees them masked.

Options whose cached path is not implemented (`uncached_options`) make `TransformerWrapper.forward(cache=…)`
refuse; `generate` falls back to recomputing the whole sequence for them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import ModelConfig


def uncached_options(config: ModelConfig) -> list[str]:
    """The options of `config` that have no cached path: each needs every earlier token again at every step
    (memory tokens as queries, token shift's neighbours, data-dependent ALiBi's gates summed from the key, xPos's
    scale centred on the sequence's middle)."""
    layers = config.attn_layers
    checks = {"num_memory_tokens": config.num_memory_tokens > 0, "shift_tokens": any(layers.layer_shifts),
              "attn_data_dependent_alibi": layers.attn.data_dependent_alibi, "rotary_xpos": layers.rotary_xpos}
    return [name for name, on in checks.items() if on]


@dataclass
class LayerCache:
    """One self-attention layer's cache. keys, values [b, h, n, d]; selected [b, n] head 0's gated positive
    logits summed over the queries so far (the F row of the next query); dropped [b, n] keys hidden from later
    queries."""

    keys: Tensor | None = None
    values: Tensor | None = None
    selected: Tensor | None = None
    dropped: Tensor | None = None

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """The new tokens' k, v [b, h, i, d] appended; returns every cached token's keys and values."""
        new = k.shape[-2]
        if self.keys is not None:
            k, v = torch.cat((self.keys, k), dim=-2), torch.cat((self.values, v), dim=-2)
        self.dropped = torch.zeros(k.shape[0], new, dtype=torch.bool, device=k.device) if self.dropped is None \
            else F.pad(self.dropped, (0, new), value=False)
        self.keys, self.values = k, v
        return k, v

    def hide(self, visible: Tensor, new: int) -> Tensor:
        """visible [1, 1, i, j] (the last i of j tokens) with this layer's dropped keys hidden: [b|1, 1, i, j]."""
        if self.dropped is None or not self.dropped.any():
            return visible
        dropped = F.pad(self.dropped, (0, new), value=False)
        return visible & ~dropped[:, None, None, :]


@dataclass
class KVCache:
    """Per self-attention layer caches and the number of tokens they hold.

    track_selection: carry head 0's accumulated positive logits in layers without selective attention too
    (what pruning a model without `attn_selective` uses instead of F)."""

    layers: list[LayerCache]
    length: int = 0
    track_selection: bool = False

    @classmethod
    def empty(cls, num_layers: int, track_selection: bool = False) -> KVCache:
        return cls([LayerCache() for _ in range(num_layers)], track_selection=track_selection)


__all__ = ["KVCache", "LayerCache", "uncached_options"]
