"""The Cross-attention view: an encoder–decoder (`xattn.XTransformer`) reads a source with its encoder and a
target with its decoder; the view draws the decoder's cross-attention (decoder tokens × source tokens) and the
encoder's self-attention. Tokenising, refusals and checks are the other views' (`views.tokens`, `views.index`,
`views.friendly`): a ValueError becomes a `gr.Error` carrying its sentence.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr
import numpy as np
import torch

import xattn
from xattn import viz

from . import limits, models, views
from .models import Loaded, Session
from .views import Figure

SOURCE_EXAMPLE = "a=3;b=5;?a"
STRONGEST_SHOWN = 16          # decoder tokens whose strongest source token the summary names


@dataclass
class CrossRun:
    """One traced source–target pair: tokens and labels of both, the decoder's logits, the trace (its `cross`
    and `encoder` parts) and notes for the reader."""

    loaded: Loaded
    source_ids: list[int]
    target_ids: list[int]
    source_labels: list[str]
    target_labels: list[str]
    logits: torch.Tensor
    trace: xattn.Trace
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [self.loaded.describe(),
                 f"Source (encoder input): **{len(self.source_ids)} tokens**: `{''.join(self.source_labels)}`",
                 f"Target (decoder input): **{len(self.target_ids)} tokens**: `{''.join(self.target_labels)}`"]
        return "\n\n".join(lines + [f"**Note:** {note}" for note in self.notes])


def encoder_decoder(session: Session | None, name: str, progress: gr.Progress | None) -> Loaded:
    """The model called `name`, refused with a sentence unless it is an encoder–decoder."""
    if progress is not None:
        progress(0.05, desc=f"Loading {name}")
    loaded = models.resolve(name, session)
    if loaded.encdec:
        return loaded
    if loaded.model.config.attn_layers.cross_attend:
        raise ValueError(f"{loaded.name} has cross-attention layers but no encoder to read a source: upload it as "
                         "the decoder of an encoder–decoder (XTransformer), or build a fresh encoder–decoder.")
    raise ValueError(f"{loaded.name} has no cross-attention: build a fresh encoder–decoder, or upload one.")


def source_tokens(loaded: Loaded, source: str) -> tuple[list[int], list[str]]:
    """`views.tokens` for the source: cut at the encoder's max_seq_len (not the decoder's), refusals and notes
    saying that they are about the source."""
    try:
        ids, notes = views.tokens(loaded, source, reserve=loaded.max_seq_len - loaded.max_source_len)
    except ValueError as err:
        raise ValueError(f"Source (the encoder's input): {err}") from None
    return ids, [f"Source: {note}" for note in notes]


def trace_pair(loaded: Loaded, source: str, target: str, progress: gr.Progress | None = None) -> CrossRun:
    """Tokenise source and target (BOS first in both, each cut to its side's max_seq_len with a note), check
    the trace's size, and trace the encoder–decoder."""
    source_ids, notes = source_tokens(loaded, source)
    target_ids, target_notes = views.tokens(loaded, target)
    notes += [f"Target: {note}" for note in target_notes]
    limits.check(loaded.model.config, len(target_ids), n_src=len(source_ids))
    if progress is not None:
        progress(0.3, desc=f"Tracing {len(source_ids)} source and {len(target_ids)} target tokens")
    source_labels, target_labels = loaded.tokenizer.labels(source_ids), loaded.tokenizer.labels(target_ids)
    logits, trace = loaded.model.run_with_trace(torch.tensor([source_ids]), torch.tensor([target_ids]),
                                                src_labels=[source_labels], tgt_labels=[target_labels])
    for part, traced in (("the encoder", trace.encoder), ("the decoder", trace), ("the cross-attention", trace.cross)):
        notes += views.overflow_notes(traced, part)
    if progress is not None:
        progress(0.7, desc="Drawing")
    return CrossRun(loaded, source_ids, target_ids, source_labels, target_labels, logits, trace, notes)


def strongest(trace: xattn.Trace, layer: int, head: int, stage: str) -> str:
    """A sentence: for each decoder token (the first STRONGEST_SHOWN), the source token with the largest value."""
    values = trace.drawable(stage)[trace.layer_index(layer), 0, head].numpy()     # [decoder token, key]
    rows, keys = viz.token_labels(trace), viz.key_labels(trace)
    pairs = [f"`{rows[i]}` → `{keys[int(np.nanargmax(row))]}`"
             for i, row in enumerate(values[:STRONGEST_SHOWN]) if not np.isnan(row).all()]
    more = f" (first {STRONGEST_SHOWN} of {len(rows)})" if len(rows) > STRONGEST_SHOWN else ""
    return (f"Cross-attention layer {layer}, head {head}: the source token each decoder token gives the largest "
            f"`{stage}`{more}: " + ", ".join(pairs) + ".")


@views.friendly
def cross(session: Session | None, model: str, source: str, target: str, stage: str, layer: float, head: float,
          progress: gr.Progress = gr.Progress()) -> tuple[Figure, Figure, Figure, str]:
    """An encoder–decoder on a source and a target: the cross-attention layers × heads grid of `stage`, the
    focused cross-attention head (decoder tokens down, source tokens across), the encoder's self-attention grid,
    and a summary. `layer` is a cross-attention layer (`Loaded.depth` counts them)."""
    loaded = encoder_decoder(session, model, progress)
    run = trace_pair(loaded, source, target, progress)
    stage = views.check_stage(stage)
    layer = views.index(layer, loaded.depth, "cross-attention layer", loaded.name)
    head = views.index(head, loaded.heads, "head", loaded.name)
    cross_trace = run.trace.cross
    summary = "\n\n".join([run.summary(), strongest(cross_trace, layer, head, stage)])
    return (viz.grid(cross_trace, stage), viz.heatmap(cross_trace, layer, head, stage),
            viz.grid(run.trace.encoder, stage), summary)
