"""What a drawn cell leaves out, and why.

- `Shown`: the display filter of a view: hide attention below a threshold, hide the sink column (the first
  token, BOS, and a learned `sink` key). Hidden cells are drawn white; the values shown are the model's own
  (rows are **not** renormalised), and the colour scale spans the cells still shown.
- `why`: the reason each cell of a layer shows what it shows, as one small code matrix per figure (a code per
  cell, in the figure's `layout.meta["xattn"]["why"]`, with the names to look the codes up in): visible, hidden
  by a mask (padding, custom, causal, window: `xattn.masks.trace_reasons`), or pruned by selective
  attention's F (F ≥ PRUNE_AT), the code then carrying F's value on a one-byte scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..attention import PRUNE_AT
from ..masks import REASONS, trace_reasons
from ..trace import Trace
from .payload import SAFE_CODES, any_pool, max_pool

SINK = "sink"                          # the learned sink's key column (`trace.key_extras`)
PRUNED = len(REASONS)                  # why-codes from here on: pruned, F on PRUNED_LEVELS levels
PRUNED_LEVELS = len(SAFE_CODES) - PRUNED


def pruned(trace: Trace, layer: int, batch: int = 0) -> np.ndarray:
    """[query, key] True where selective attention's F prunes a visible key in `layer` (F ≥ PRUNE_AT)."""
    if "selection" not in trace:
        return np.zeros(tuple(trace.visible.shape[1:]), dtype=bool)
    return trace.visible[batch].cpu().numpy() & (_selection(trace, layer, batch) >= PRUNE_AT)


@dataclass(frozen=True)
class Shown:
    """Which cells a view draws: those whose attention weight (|weight| of the `attn` stage, of the same layer and
    head) is at least `threshold`, and the sink column unless `hide_sink`. The default shows everything."""

    threshold: float = 0.0
    hide_sink: bool = False

    def __post_init__(self) -> None:
        if (isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float))
                or not 0 <= self.threshold <= 1):
            raise ValueError(f"the threshold is an attention weight from 0 to 1; got {self.threshold!r}")

    @property
    def active(self) -> bool:
        return self.threshold > 0 or self.hide_sink

    def sink_columns(self, trace: Trace) -> list[int]:
        """Key columns hidden by `hide_sink`: a learned sink's, and the first token's (BOS, the usual sink)."""
        if not self.hide_sink or trace.is_cross:
            return []
        extras = list(trace.key_extras)
        return ([extras.index(SINK)] if SINK in extras else []) + [len(extras) + trace.memory_tokens]

    def hidden(self, trace: Trace, layers: list[int], heads: list[int], batch: int = 0) -> np.ndarray | None:
        """[layer, head, query, key] True where this filter hides a cell; None when it hides nothing."""
        if not self.active:
            return None
        positions = [trace.layer_index(layer) for layer in layers]
        weights = trace.drawable("attn")[positions, batch][:, heads].abs().cpu().numpy()
        hidden = weights < self.threshold                # NaN (masked) compares False: masked stays masked
        hidden[..., self.sink_columns(trace)] = True
        return hidden

    def note(self) -> str:
        """A subtitle saying what is hidden, '' when nothing is."""
        parts = ([f"attention below {self.threshold:g} hidden"] if self.threshold > 0 else []) + \
            (["sink column hidden"] if self.hide_sink else [])
        return " · ".join(parts + ["values not renormalised"]) if parts else ""


def pool_shown(values: np.ndarray, hidden: np.ndarray | None, factor: int, *,
               signed: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(values max-pooled over the cells shown, NaN where a block shows none; True where a pooled cell shows
    nothing only because the filter hides it — or None without a filter)."""
    if hidden is None:
        return max_pool(values, factor, signed=signed), None
    shown = max_pool(np.where(hidden, np.nan, values), factor, signed=signed)
    return shown, np.isnan(shown) & any_pool(~np.isnan(values), factor)


def why(trace: Trace, layers: list[int] | None = None, *, region: tuple[int, int, int, int] | None = None,
        factor: int = 1, batch: int = 0) -> dict:
    """Why each cell of `layers` (None: masks only, the same in every layer) shows what it shows, over `region`
    (i0, i1, j0, j1; default the whole head) in `factor` × `factor` blocks, for hover. Codes are indices into
    `names`, sent as SAFE_CODES bytes (4/3 bytes a cell): a mask's reason, else PRUNED + F's level on [lo, hi]
    for keys pruned by F. A block takes its largest code (its first-listed mask when all are hidden, its
    strongest pruning if any). `codes[0]` holds the masks alone, then one matrix per layer of `layers` (listed)
    where F prunes. A whole head's are made once per trace for each layer and factor (every head of a layer
    asks the same); a zoom's region is made each time."""
    if region is not None:
        return _why(trace, layers, region, factor, batch)
    key = ("why", None if layers is None else tuple(layers), factor, batch)
    whole = (0, trace.visible.shape[1], 0, trace.visible.shape[2])
    return dict(trace.derived(key, lambda: _why(trace, layers, whole, factor, batch)))


def _why(trace: Trace, layers: list[int] | None, region: tuple[int, int, int, int], factor: int, batch: int) -> dict:
    i0, i1, j0, j1 = region
    masked = trace.derived(("why masked", batch),                    # the masks' codes, every layer's the same
                           lambda: trace_reasons(trace)[batch].cpu().numpy().astype(np.float32))[i0:i1, j0:j1]
    cuts = {layer: _cut(trace, layer, batch)[i0:i1, j0:j1] for layer in (layers or [])}
    selective = [layer for layer, cut in cuts.items() if cut.any()]
    top = float(max([PRUNE_AT, *(_selection(trace, layer, batch).max() for layer in selective)]))
    codes = []
    for layer in [None, *selective]:
        code = masked.copy()
        if layer is not None:                        # pruned cells only: PRUNED + F's level on [PRUNE_AT, top]
            cut = np.nonzero(cuts[layer])
            penalty = _selection(trace, layer, batch)[i0:i1, j0:j1][cut]
            code[cut] = PRUNED + np.rint((penalty - PRUNE_AT) / max(top - PRUNE_AT, 1e-9) * (PRUNED_LEVELS - 1))
        codes.append(SAFE_CODES[max_pool(code, factor).astype(np.int64)])
    return dict(names=[*REASONS, "pruned by F"], codes=np.stack(codes), layers=selective,
                region=[i0, i1, j0, j1], factor=factor, pruned=PRUNED, f=[PRUNE_AT, top], levels=PRUNED_LEVELS)


def _selection(trace: Trace, layer: int, batch: int) -> np.ndarray:
    """F [query, key] of `layer` as float32, made once per trace."""
    return trace.derived(("selection", layer, batch), lambda: trace.record(
        "selection", trace.layer_index(layer))[batch, 0].float().cpu().numpy())


def _cut(trace: Trace, layer: int, batch: int) -> np.ndarray:
    """`pruned`, made once per trace."""
    return trace.derived(("pruned", layer, batch), lambda: pruned(trace, layer, batch))


def decode_why(meta: dict, layer: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(reason names [i, j], F where pruned else NaN) from a `why` dict: the inverse of `why`, for tests and
    readers of exported figures."""
    index = np.full(256, -1)
    index[SAFE_CODES] = np.arange(len(SAFE_CODES))
    codes = np.asarray(meta["codes"])
    k = index[codes[meta["layers"].index(layer) + 1 if layer in meta["layers"] else 0]]
    lo, hi = meta["f"]
    f = np.where(k >= meta["pruned"], lo + (k - meta["pruned"]) * (hi - lo) / (meta["levels"] - 1), np.nan)
    return np.asarray(meta["names"])[np.minimum(k, meta["pruned"])], f
