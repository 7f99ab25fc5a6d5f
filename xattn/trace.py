"""A trace: every attention-score stage of every traced layer, with the mask that shaped them.

`trace[stage]` is a float tensor [layers, batch, heads, query, key] holding exactly what the model
computed (masked cells keep the fill value −finfo.max, so numbers compare with x-transformers);
`trace.drawable(stage)` is the same with masked cells as NaN, for drawing. The key axis starts with the
attention layers' extra key columns (`trace.key_extras`: sink, zero key, memory key/values), visible to
every query, then the keys proper.

A model that cross-attends also has `trace.cross`: a Trace of its cross-attention layers, whose keys are
the context's positions ([cross layers, batch, heads, decoder token, context position], its own `visible`
and `key_labels`); an encoder–decoder's trace has `trace.encoder`, the encoder's self-attention.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .hooks import HookPoint, attached, hook_points
from .stages import MASKED_STAGES, STAGES, check_stages


def carries_fill(logits: Tensor) -> Tensor:
    """True where a logit holds a mask's fill value −finfo.max, possibly plus a finite score (or −inf)."""
    return logits <= -torch.finfo(logits.dtype).max / 2


class StackedStages(Mapping):
    """{stage: [layers, b, h, i, j]}, stacked from the per-layer records on first access.

    Recording keeps references to the tensors the forward pass made anyway, so tracing adds no
    copies; the one copy into a stacked tensor happens only for stages someone reads.
    """

    def __init__(self, records: dict[str, list[Tensor]]) -> None:
        self.records = records
        self.stacked: dict[str, Tensor] = {}

    def __getitem__(self, stage: str) -> Tensor:
        if stage not in self.stacked:
            self.stacked[stage] = torch.stack(self.records[stage])
        return self.stacked[stage]

    def __contains__(self, stage: object) -> bool:
        return stage in self.records        # Mapping's own would look the stage up, stacking it

    def __iter__(self) -> Iterator[str]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class Trace:
    """Recorded stages. `layers[k]` is the model layer that `trace[stage][k]` came from."""

    stages: StackedStages
    visible: Tensor                      # [batch, query, key] bool, True = the key is visible (memory tokens first)
    tokens: Tensor                       # [batch, seq] (memory tokens are not tokens: see `memory_tokens`)
    layers: list[int]
    config: ModelConfig
    labels: list[list[str]] | None = None  # token strings per batch row, for axes
    is_cross: bool = False                 # a cross-attention trace: keys are context positions, not the tokens
    key_labels: list[list[str]] | None = None  # cross-attention: labels of the context positions per batch row
    cross: Trace | None = None             # a cross-attending model's cross-attention layers
    encoder: Trace | None = None           # an encoder–decoder's encoder (self-attention of the source)
    key_extras: list[str] = field(default_factory=list)  # names of the extra key columns in front
    mask: Tensor | None = None             # the layers' padding mask [batch, query] (memory tokens first), if any
    attn_mask: Tensor | None = None        # the layers' custom mask [(batch,) query, query], if any
    _drawable: dict[str, Tensor] = field(default_factory=dict, repr=False)
    _derived: dict[Hashable, Any] = field(default_factory=dict, repr=False)   # what `derived` made

    def __getitem__(self, stage: str) -> Tensor:
        if stage not in self.stages:
            raise KeyError(f"stage {stage!r} was not traced; traced: {list(self.stages)}")
        return self.stages[stage]

    def __contains__(self, stage: str) -> bool:
        return stage in self.stages

    @property
    def memory_tokens(self) -> int:
        """How many learned memory tokens stand in front of the tokens on the query and key axes
        (`num_memory_tokens`): axis position M + t is token t."""
        return self.config.num_memory_tokens

    @property
    def fully_masked(self) -> Tensor:
        """[batch, query] True for queries with no visible key (their attention output is zeroed)."""
        return self.derived("fully_masked", lambda: ~self.visible.any(dim=-1))

    def derived(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """`make()`, made once per trace and kept under `key`: what the views of a trace ask for again and again
        (why each cell is masked, a layer's why-codes for hover) is made from it alone, and a trace never changes."""
        if key not in self._derived:
            self._derived[key] = make()
        return self._derived[key]

    @property
    def shape(self) -> tuple[int, ...]:
        first = next(iter(self.stages.records.values()))
        return (len(first),) + tuple(first[0].shape)

    def layer_index(self, layer: int) -> int:
        """Position in the trace of model layer `layer`."""
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not traced; traced layers: {self.layers}")
        return self.layers.index(layer)

    def record(self, stage: str, position: int) -> Tensor:
        """trace[stage][position], one traced layer's [b, h, i, j] as recorded, without stacking every layer's."""
        return self.stages.records[stage][position] if stage in self else self[stage]   # (which raises)

    def drawable(self, stage: str, position: int | None = None, head: int | None = None,
                 query: int | None = None) -> Tensor:
        """trace[stage] as float32 with masked cells as NaN: invisible cells from the `masked` stage on,
        and anywhere a mask's fill value was carried in (residual attention carries it between layers).
        With `position`, only that layer of the trace's [b, h, i, j], made from its own record unless the whole
        stage is made already: a view of one layer's stages does not pay for every layer's; with `head` too, only
        that head's [b, i, j], for a view of one head; with `query`, only that query's row of them ([b, h, j],
        [b, j]), for a view of one query."""
        if position is not None and stage not in self._drawable:
            record, visible = self.record(stage, position), self.visible[:, None]    # [b, h, i, j], [b, 1, i, j]
            if query is not None:
                record, visible = record[:, :, query], visible[:, :, query]
            if head is not None:
                record, visible = record[:, head], visible[:, 0]
            return self._nan_where_masked(stage, record, visible)
        if stage not in self._drawable:       # layer by layer into one tensor: no stacked copy of the raw stage
            records = self.stages.records[stage] if stage in self else self[stage]
            whole = torch.empty((len(records), *records[0].shape), device=records[0].device)
            for record, layer in zip(records, whole, strict=True):
                self._nan_where_masked(stage, record, self.visible[:, None], out=layer)
            self._drawable[stage] = whole
        whole = self._drawable[stage]
        if position is None:
            return whole
        layer = whole[position] if query is None else whole[position, :, :, query]
        return layer if head is None else layer[:, head]

    @staticmethod
    def _nan_where_masked(stage: str, values: Tensor, visible: Tensor, out: Tensor | None = None) -> Tensor:
        """`values` as float32 (written into `out` if given), NaN where a mask's fill was carried in and, from
        `masked` on, where not `visible`."""
        hidden = carries_fill(values)
        if stage in MASKED_STAGES:
            hidden = hidden | ~visible
        if out is None:
            return values.float().masked_fill(hidden, float("nan"))
        return out.copy_(values).masked_fill_(hidden, float("nan"))

    def nonfinite(self) -> dict[str, int]:
        """{stage: cells} where a number overflowed: ±inf, or NaN in a cell no mask hides. Empty when clean.
        Stages a layer leaves unchanged record the very same tensor: each tensor is checked once."""
        visible = self.visible[:, None]
        counts, checked = {}, {}

        def count(t: Tensor) -> int:
            view = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
            if view not in checked:
                checked[view] = overflowed(t, visible)
            return checked[view]

        for stage, records in self.stages.records.items():   # per layer: no stacked copy just to count
            bad = sum(count(t) for t in records)
            if bad:
                counts[stage] = bad
        return counts

    def nbytes(self) -> int:
        """Bytes the recorded stages hold, counting storage shared between stages once."""
        seen, total = set(), 0
        for t in (t for records in self.stages.records.values() for t in records):
            key = t.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
        return total


def overflowed(values: Tensor, visible: Tensor) -> int:
    """Cells of `values` that overflowed: NaN or +inf anywhere, -inf where `visible` (a mask's fill elsewhere).
    A clean tensor, nearly every one, costs a min-max pass over its distinct cells (an expanded one's stored
    values, not every cell they stand for), and a masked minimum if a mask's -inf is in it, instead of the six
    passes of the count, which runs only when something is off."""
    repeated = tuple(slice(0, 1) if stride == 0 else slice(None) for stride in values.stride())
    low, high = torch.aminmax(values[repeated])          # an expanded tensor's values, each once
    if high.isfinite() and (low.isfinite() or torch.where(visible, values, 0).amin() > float("-inf")):
        return 0
    return int((values.isnan() | values.isposinf() | (values.isneginf() & visible)).sum())


@contextmanager
def recording(model: nn.Module, stages: Sequence[str] | None = None,
              layers: Sequence[int] | None = None, cross: bool = False) -> Iterator[dict[str, dict[int, Tensor]]]:
    """Attach hooks that keep (by reference, no copy) each chosen stage of each chosen layer, of the
    self-attention layers or, with `cross`, of the cross-attention layers.

    Yields {stage: {layer: tensor [b, h, i, j]}}, filled as the model runs inside the block.
    """
    chosen = check_stages(stages)
    wanted = None if layers is None else set(layers)
    kept: dict[str, dict[int, Tensor]] = {s: {} for s in chosen}

    def keep(tensor: Tensor, hook: HookPoint) -> None:
        kept[hook.stage][hook.layer] = tensor.detach()

    names = {name for name, p in hook_points(model).items()
             if p.cross == cross and p.stage in chosen and (wanted is None or p.layer in wanted)}
    with attached(model, [(names.__contains__, keep)] if names else []):
        yield kept


def build_trace(kept: dict[str, dict[int, Tensor]], visible: Tensor, tokens: Tensor,
                config: ModelConfig, labels: list[list[str]] | None = None, **fields: Any) -> Trace:
    """A Trace over per-layer records, stacked into [layers, b, h, i, j] when read (no stage without a layer).
    `fields`: key_extras and the cross-attention ones (is_cross, key_labels, cross, encoder)."""
    layers = sorted(next(iter(kept.values())).keys()) if kept else []
    stages = StackedStages({s: [per_layer[layer] for layer in layers] for s, per_layer in kept.items()} if layers
                           else {})
    return Trace(stages=stages, visible=visible, tokens=tokens, layers=layers, config=config, labels=labels, **fields)


__all__ = ["Trace", "recording", "build_trace", "STAGES"]
