"""Custom attention masks (True = may attend), a breakdown of what each mask removes, and why a cell is hidden."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from .attention import causal_visible, window_visible
from .config import LayersConfig

if TYPE_CHECKING:
    from .trace import Trace


def no_mask(n: int) -> Tensor:
    """Every query may see every key."""
    return torch.ones(n, n, dtype=torch.bool)


def sliding_window(n: int, window: int = 4) -> Tensor:
    """Each query sees keys within `window` positions on either side (causality is added by a Decoder)."""
    if window < 0:
        raise ValueError(f"the window must be 0 or more positions, got {window}")
    pos = torch.arange(n)
    return (pos[:, None] - pos[None, :]).abs() <= window


def prefix_lm(n: int, prefix: int = 4) -> Tensor:
    """The first `prefix` tokens see each other fully; the rest see the prefix and their own past."""
    if prefix < 0:
        raise ValueError(f"the prefix length must be 0 or more, got {prefix}")
    visible = causal_visible(n)
    visible[:prefix, :prefix] = True
    return visible


def block_diagonal(n: int, block: int = 4) -> Tensor:
    """Queries see only keys in their own block of `block` consecutive positions."""
    if block < 1:
        raise ValueError(f"blocks must hold at least one position, got {block}")
    blocks = torch.arange(n) // block
    return blocks[:, None] == blocks[None, :]


PRESETS: dict[str, Callable[..., Tensor]] = {
    "none": no_mask, "sliding window": sliding_window, "prefix-LM": prefix_lm, "block-diagonal": block_diagonal,
}


def parse_mask(text: str, n: int) -> Tensor:
    """A mask typed as n rows of n '0'/'1' characters (spaces ignored). Raises ValueError saying what is wrong."""
    rows = [line.replace(" ", "").replace(",", "") for line in text.strip().splitlines() if line.strip()]
    if len(rows) != n:
        raise ValueError(f"the mask needs {n} rows (one per token), it has {len(rows)}")
    for index, row in enumerate(rows):
        if len(row) != n or set(row) - {"0", "1"}:
            raise ValueError(f"mask row {index + 1} must be {n} characters of 0 or 1, got {row[:40]!r}")
    return torch.tensor([[c == "1" for c in row] for row in rows], dtype=torch.bool)


def format_mask(mask: Tensor) -> str:
    """The inverse of `parse_mask`: rows of 0/1."""
    return "\n".join("".join("1" if v else "0" for v in row) for row in mask.tolist())


MASKS = ("padding", "custom", "causal", "window")   # a hidden cell's reason: the first of these that hides it
REASONS = ("visible", *MASKS)                       # reason codes: 0 visible, k = MASKS[k - 1]


def mask_parts(config: LayersConfig, n: int, mask: Tensor | None = None, attn_mask: Tensor | None = None,
               device: torch.device | None = None, offset: int = 0) -> dict[str, Tensor | None]:
    """Each mask of MASKS alone, as [b|1, 1, i, j] True where it lets key j be seen by query i (None where the
    layers have no such mask): the one place that says what each mask hides. `padding` hides padded keys
    (mask [b, n], True = a real token), `custom` is the attn_mask ([i, j] or [b, i, j]), `causal` hides future
    keys (causal layers only), `window` keys more than attn_max_attend_past positions back. offset: the n
    queries are the last of offset + n keys (a cached step)."""
    window = config.attn.max_attend_past
    return {
        "padding": None if mask is None else rearrange(mask, "b j -> b 1 1 j"),
        "custom": None if attn_mask is None else attn_mask.view(-1, 1, n, n),
        "causal": causal_visible(n, device, offset)[None, None] if config.causal else None,
        "window": None if window is None else window_visible(n, window, device, offset)[None, None],
    }


def each_mask(config: LayersConfig, batch: int, n: int, mask: Tensor | None = None,
              attn_mask: Tensor | None = None) -> dict[str, Tensor]:
    """`mask_parts` as visibility [b, n, n] each, all True where the layers have no such mask: what the masking
    debugger draws side by side."""
    full = torch.ones(batch, n, n, dtype=torch.bool)
    return {name: full if part is None else part.expand(batch, 1, n, n)[:, 0]
            for name, part in mask_parts(config, n, mask, attn_mask).items()}


def custom_adds_nothing(parts: dict[str, Tensor]) -> bool:
    """True when the custom mask of `breakdown(...)` hides no (query, key) pair that padding, causal or the window
    do not hide already, so it changes nothing: e.g. prefix-LM in a decoder, whose extra visibility (the prefix
    seeing its own later tokens) lies in the future that causal hides: custom ∧ causal = causal."""
    others = parts["padding"] & parts["causal"] & parts["window"]
    return not bool((others & ~parts["custom"]).any())


def breakdown(model: torch.nn.Module, n: int, mask: Tensor | None = None,
              attn_mask: Tensor | None = None) -> dict[str, Tensor]:
    """`each_mask` for `model`, and the masks combined ("effective", exactly what `model` uses).

    A model with memory tokens sees them in front: the maps then cover M + n positions, as its trace does.
    """
    layers = getattr(model, "attn_layers", model)
    if getattr(model, "num_memory_tokens", 0):
        mask, attn_mask = model.layer_masks(mask, attn_mask)
        n += model.num_memory_tokens
    batch = 1
    if mask is not None:
        batch = mask.shape[0]
    elif attn_mask is not None and attn_mask.ndim == 3:
        batch = attn_mask.shape[0]
    effective = layers.visible_mask(batch, n, mask, attn_mask)
    full = torch.ones(batch, n, n, dtype=torch.bool)
    return {**each_mask(layers.config, batch, n, mask, attn_mask),
            "effective": full if effective is None else effective[:, 0].expand(batch, n, n)}


def reasons(parts: dict[str, Tensor]) -> Tensor:
    """Why each cell is hidden, as codes into REASONS [b, i, j] uint8: 0 where every mask of `parts` (from
    `each_mask` or `breakdown`) lets the key be seen, else 1 + the index in MASKS of the first mask hiding it."""
    codes = torch.zeros(torch.broadcast_shapes(*(parts[name].shape for name in MASKS)), dtype=torch.uint8)
    for code in range(len(MASKS), 0, -1):                   # the last mask first: the first hiding a cell wins
        hidden = ~parts[MASKS[code - 1]]
        if hidden.any():
            codes.masked_fill_(hidden, code)
    return codes


def trace_reasons(trace: Trace) -> Tensor:
    """`reasons` over a trace's own axes [b, query, key]: the extra key columns in front are visible; in a
    cross-attention trace a hidden context position is padding. Made once per trace (every view of it asks)."""
    def make() -> Tensor:
        if trace.is_cross:
            return torch.where(trace.visible, 0, REASONS.index("padding")).to(torch.uint8)
        batch, n = trace.visible.shape[0], trace.visible.shape[1]
        return F.pad(reasons(each_mask(trace.config.attn_layers, batch, n, trace.mask, trace.attn_mask)),
                     (len(trace.key_extras), 0), value=0)
    return trace.derived("reasons", make)
