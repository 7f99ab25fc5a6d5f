"""Light figure payloads: values as one-byte codes, and NaN-aware max-pooling for big grids.

Plotly ≥ 6 ships numpy arrays as base64 typed arrays, and its JSON writes base64's '+' and '/' as the
six-byte escapes \\u002b and \\u002f. Codes are drawn from the 207 byte values that never produce
either character wherever they sit in the stream, so every cell costs exactly 4/3 bytes on the wire.
205 of them are value levels (odd, so 0 sits exactly mid-range of a symmetric scale); the next one
marks masked cells, the last cells a display filter hides.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F

SAFE_CODES = np.array([c for c in range(256) if c < 224 and c & 15 != 15 and c & 63 < 62], dtype=np.uint8)
LEVELS = 205
MASKED_CODE = int(SAFE_CODES[LEVELS])
HIDDEN_CODE = int(SAFE_CODES[LEVELS + 1])       # a cell a display filter hides (cells.Shown): drawn white
LEVEL_OF_CODE = np.full(256, -1)
LEVEL_OF_CODE[SAFE_CODES[:LEVELS]] = np.arange(LEVELS)


@dataclass(frozen=True)
class Scale:
    """A linear value range [lo, hi] split into LEVELS levels, each sent as one safe byte."""

    lo: float
    hi: float

    @property
    def step(self) -> float:
        """Value difference between neighbouring levels (decoding is exact to half of this)."""
        return (self.hi - self.lo) / (LEVELS - 1)

    def level(self, values: np.ndarray) -> np.ndarray:
        return np.clip(np.rint((np.asarray(values, dtype=np.float64) - self.lo) / self.step), 0, LEVELS - 1)

    def encode(self, values: np.ndarray, hidden: np.ndarray | None = None) -> np.ndarray:
        """Values (NaN = masked) → uint8 codes; HIDDEN_CODE where `hidden`."""
        values = np.asarray(values)
        codes = SAFE_CODES[self.level(np.nan_to_num(values)).astype(np.int64)]
        codes = np.where(np.isnan(values), MASKED_CODE, codes)
        return (codes if hidden is None else np.where(hidden, HIDDEN_CODE, codes)).astype(np.uint8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """uint8 codes → values, NaN for masked."""
        levels = LEVEL_OF_CODE[np.asarray(codes, dtype=np.int64)]
        return np.where(levels < 0, np.nan, self.lo + levels * self.step)

    def code(self, value: float) -> int:
        """The code a single value is drawn with (for colour-bar ticks)."""
        return int(SAFE_CODES[int(self.level(np.array(value)))])

    @classmethod
    def covering(cls, values: np.ndarray, *, diverging: bool, fixed: tuple[float, float] | None = None) -> Scale:
        """The fixed range, else ±max|v| (diverging) or [min(0, min v), max v], ignoring NaN."""
        if fixed is not None:
            return cls(*fixed)
        finite = np.asarray(values)[np.isfinite(values)]
        if diverging:
            top = float(np.abs(finite).max()) if finite.size else 0.0
            return cls(-top, top) if top > 0 else cls(-1.0, 1.0)
        lo = min(0.0, float(finite.min())) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 1.0
        return cls(lo, hi) if hi > lo else cls(lo, lo + 1.0)


def decode(heatmap: go.Heatmap) -> np.ndarray:
    """The values a quantized heatmap trace shows (NaN where masked), from its codes and `meta` range."""
    return Scale(heatmap.meta["lo"], heatmap.meta["hi"]).decode(heatmap.z)


def pool_factor(n: int, panels: int, max_cells: int) -> int:
    """Smallest f such that `panels` heatmaps of ⌈n/f⌉² cells fit within `max_cells`."""
    f = 1
    while panels * math.ceil(n / f) ** 2 > max_cells and f < n:
        f += 1
    return f


def max_pool(values: np.ndarray, factor: int, *, signed: bool = False) -> np.ndarray:
    """Max-pool the last two axes [..., i, j] in factor × factor blocks, ignoring NaN.

    Each block keeps its largest value, or with `signed` its value of largest magnitude (sign kept,
    so strong negative logits survive too). Edge blocks are cut short; all-NaN blocks stay NaN (masked).
    Torch's max_pool2d finds each block's peak (the first one in row-major order on a tie), NaN ranking
    below every number, and the value is taken from there: one pass, no padded copy.
    """
    if factor == 1:
        return values
    *lead, i, j = values.shape
    flat = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(-1, i, j)
    key = flat.abs().nan_to_num_(-math.inf, math.inf) if signed else flat.nan_to_num(-math.inf, math.inf, -math.inf)
    _, peak = F.max_pool2d(key, factor, ceil_mode=True, return_indices=True)     # flat indices into i × j
    best = flat.reshape(len(flat), -1).gather(1, peak.reshape(len(flat), -1))
    return best.reshape(*lead, *peak.shape[-2:]).numpy()


def any_pool(mask: np.ndarray, factor: int) -> np.ndarray:
    """True for each factor × factor block (of the last two axes, edge blocks cut short, as `max_pool`) holding
    any True cell of `mask`."""
    if factor == 1:
        return np.asarray(mask, dtype=bool)
    *lead, i, j = mask.shape
    flat = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)).reshape(-1, i, j)
    pooled = F.max_pool2d(flat, factor, ceil_mode=True)
    return pooled.reshape(*lead, *pooled.shape[-2:]).numpy() > 0
