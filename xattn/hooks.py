"""Named hook points, in the manner of TransformerLens.

Every attention-score stage passes through a `HookPoint`. With nothing attached a hook point
returns its input untouched at the cost of one dictionary look-up; a function attached to it may read
the tensor (return None) or replace it (return a tensor of the same shape). Functions are attached
for the calling thread only, so requests served concurrently on one shared model stay apart.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

HookFn = Callable[[Tensor, "HookPoint"], Tensor | None]
NameFilter = str | Callable[[str], bool]


# Attached functions live per thread: concurrent requests sharing one model never see each other's hooks.
_attached = threading.local()


def _registry() -> dict[int, list[HookFn]]:
    if not hasattr(_attached, "fns"):
        _attached.fns = {}
    return _attached.fns


class HookPoint(nn.Module):
    """An identity on a tensor that functions attached (in this thread) can read or replace.

    `layer` counts the self-attention layers, or with `cross` the cross-attention layers, whose points are
    named `cross_layers.{layer}.attn.hook_{stage}`.

    `front`, when set, gives key columns the layer adds only later (an attention sink): attached functions
    see them in front of the tensor, so every stage of a layer has the same key axis; edits to them are dropped.
    """

    def __init__(self, layer: int, stage: str, cross: bool = False) -> None:
        super().__init__()
        self.layer, self.stage, self.cross = layer, stage, cross
        self.name = f"{'cross_layers' if cross else 'layers'}.{layer}.attn.hook_{stage}"
        self.front: Callable[[Tensor], Tensor] | None = None

    @property
    def fns(self) -> list[HookFn]:
        """The functions attached to this point by the calling thread, in attachment order."""
        return _registry().get(id(self), [])

    @property
    def active(self) -> bool:
        return bool(self.fns)

    def __call__(self, tensor: Tensor) -> Tensor:  # bypasses nn.Module's call machinery: near zero cost when idle
        fns = self.fns
        if not fns:
            return tensor
        shown = tensor if self.front is None else torch.cat((self.front(tensor), tensor), dim=-1)
        current = shown
        for fn in fns:
            replaced = fn(current, self)
            if replaced is not None:
                if replaced.shape != shown.shape:
                    raise ValueError(f"hook on {self.name} returned shape {tuple(replaced.shape)}, "
                                     f"expected {tuple(shown.shape)}")
                current = replaced
        if current is shown:
            return tensor
        return current if self.front is None else current[..., shown.shape[-1] - tensor.shape[-1]:]

    def attach(self, fn: HookFn) -> None:
        _registry().setdefault(id(self), []).append(fn)

    def detach(self, fn: HookFn) -> None:
        fns = _registry().get(id(self), [])
        fns.remove(fn)
        if not fns:
            _registry().pop(id(self), None)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, attached={len(self.fns)}"


def hook_points(module: nn.Module) -> dict[str, HookPoint]:
    """All hook points below `module`, by their declared names (`layers.3.attn.hook_attn`), in firing order."""
    return {point.name: point for point in module.modules() if isinstance(point, HookPoint)}


def _matches(name_filter: NameFilter, name: str) -> bool:
    return name_filter(name) if callable(name_filter) else name_filter == name


@contextmanager
def attached(module: nn.Module, hooks: Iterable[tuple[NameFilter, HookFn]]) -> Iterator[None]:
    """Attach `(name or predicate, fn)` pairs for the duration of a `with` block; always detached on exit."""
    points = hook_points(module)
    added: list[tuple[HookPoint, HookFn]] = []
    try:
        for name_filter, fn in hooks:
            chosen = [p for n, p in points.items() if _matches(name_filter, n)]
            if not chosen:
                raise KeyError(f"no hook point matches {name_filter!r}; names look like "
                               f"{next(iter(points), 'layers.0.attn.hook_scores')!r}")
            for point in chosen:
                point.attach(fn)
                added.append((point, fn))
        yield
    finally:
        for point, fn in reversed(added):
            point.detach(fn)


