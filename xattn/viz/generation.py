"""`Generation` → figures: where one step's new query looked, the candidates it weighed, the KV memory held
over the steps, and the text so far with the keys pruning dropped struck through.

Step s is the query at token position prompt_length + s − 1; its output picked token prompt_length + s. Its row's
keys are the extra key columns, the memory tokens, then the prompt_length + s tokens before the new one.
`vocab[i]` labels token id i (default: the id itself).
"""
from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from ..generate import Generation
from ..stages import MASKED_STAGES
from ..trace import carries_fill
from .figures import _check_index, _title, position_labels
from .style import CHART_TEMPLATE, HEAD_COLORS, MASKED_COLOR, PRUNE_COLORS, STAGE_STYLE, stage_style
from .text import display_label

PROMPT_COLOR, GENERATED_COLOR, NEW_COLOR = "#eef1f6", "#e2f0dd", "#4477aa"


def _check(gen: Generation, step: int, batch: int, layer: int | None = None) -> None:
    _check_index("step", step, gen.steps, "steps")
    _check_index("batch", batch, gen.tokens.shape[0], "batch rows")
    if layer is not None:
        _check_index("layer", layer, gen.dropped[step].shape[0], "layers")


def _names(gen: Generation, vocab: Sequence[str] | None, batch: int) -> list[str]:
    """The label of every token of batch row `batch` (prompt and generated)."""
    ids = gen.tokens[batch].tolist()
    return [str(i) if vocab is None else vocab[i] for i in ids]


def step_keys(gen: Generation, step: int, *, vocab: Sequence[str] | None = None, batch: int = 0) -> list[str]:
    """The key labels of step `step`'s row: extra key columns, 'mem m', then 'token·position'."""
    _check(gen, step, batch)
    tokens = _names(gen, vocab, batch)[: gen.prompt_length + step]
    return [*gen.key_extras, *position_labels(tokens, gen.memory_tokens)]


def pruned_keys(gen: Generation, step: int, layer: int, batch: int = 0) -> np.ndarray:
    """[keys] True where layer `layer` had pruned the key from step `step`'s context (on the row's key axis)."""
    _check(gen, step, batch, layer)
    front = len(gen.key_extras) + gen.memory_tokens
    return np.concatenate([np.zeros(front, dtype=bool), gen.dropped[step][layer, batch].cpu().numpy()])


def step_row(gen: Generation, step: int, layer: int, head: int, stage: str = "attn", batch: int = 0) -> np.ndarray:
    """[keys] `Generation.row` as float64 with hidden keys as NaN: a mask's fill value carried in, and from the
    `masked` stage on the keys this query cannot see (pruned, or masked as its `masked` row records)."""
    _check(gen, step, batch, layer)
    stage_style(stage)
    row = gen.row(step, stage, layer, head, batch)
    hidden = carries_fill(row).cpu().numpy()
    if stage in MASKED_STAGES:
        hidden |= pruned_keys(gen, step, layer, batch)
        if "masked" in gen.rows[step]:
            hidden |= carries_fill(gen.row(step, "masked", layer, head, batch)).cpu().numpy()
    return np.where(hidden, np.nan, row.double().cpu().numpy())


def generation_row(gen: Generation, step: int, layer: int, head: int, stage: str = "attn", *,
                   vocab: Sequence[str] | None = None, batch: int = 0) -> go.Figure:
    """Where step `step`'s new query looked: one head's row of `stage` over the keys so far, one bar per key;
    keys the layer pruned are marked × on the axis, masked ones (also those a pruned key's mask reaches through
    residual attention) have no bar."""
    values = step_row(gen, step, layer, head, stage, batch)
    keys, style = step_keys(gen, step, vocab=vocab, batch=batch), STAGE_STYLE[stage]
    pruned = pruned_keys(gen, step, layer, batch)
    tokens = _names(gen, vocab, batch)
    query, picked = tokens[gen.prompt_length + step - 1], tokens[gen.prompt_length + step]
    fig = go.Figure(go.Bar(x=keys, y=values, name=f"head {head}", marker_color=HEAD_COLORS[head % len(HEAD_COLORS)],
                           hovertemplate=f"key %{{x}}<br>{style.name}: %{{y:.4g}}<extra></extra>"))
    if pruned.any():
        fig.add_trace(go.Scatter(x=[k for k, p in zip(keys, pruned, strict=True) if p], y=[0] * int(pruned.sum()),
                                 mode="markers", name=f"pruned by layer {layer}", hoverinfo="x+name",
                                 marker=dict(symbol="x", size=9, color=PRUNE_COLORS["pruned by F"])))
    masked = int((np.isnan(values) & ~pruned).sum())
    fig.update_layout(template=CHART_TEMPLATE, width=900, height=420, bargap=0.15,
                      xaxis=dict(title="key", type="category"), yaxis=dict(title=style.name),
                      title=_title(f"Step {step}: {query}·{gen.prompt_length + step - 1} looks, picks {picked} · "
                                   f"{style.name} · layer {layer} · head {head}", [
                                       f"{int(pruned.sum())} keys pruned (×)" if pruned.any() else "",
                                       f"{masked} masked keys have no bar" if masked else ""]))
    return fig


def generation_candidates(gen: Generation, step: int, *, vocab: Sequence[str] | None = None,
                          batch: int = 0) -> go.Figure:
    """The most probable next tokens at step `step` (`Generation.top_ids`, `top_probs`), the chosen one marked."""
    _check(gen, step, batch)
    ids, probs = gen.top_ids[batch, step].tolist(), gen.top_probs[batch, step].double().cpu().numpy()
    chosen = int(gen.tokens[batch, gen.prompt_length + step])
    name = (lambda i: str(i)) if vocab is None else vocab.__getitem__
    colors = [NEW_COLOR if i == chosen else MASKED_COLOR for i in ids]
    fig = go.Figure(go.Bar(x=probs, y=[f"{display_label(name(i))} " for i in ids], orientation="h", marker_color=colors,
                           text=[f"{p:.1%}" for p in probs], textposition="outside", cliponaxis=False, showlegend=False,
                           hovertemplate="%{y}: %{x:.4f}<extra></extra>"))
    outside = "" if chosen in ids else \
        f"picked {name(chosen)} ({float(gen.probs[batch, step]):.1%}, sampled outside the top {len(ids)})"
    fig.update_layout(template=CHART_TEMPLATE, width=420, height=420, bargap=0.25,
                      xaxis=dict(title="probability", range=[0, 1]), yaxis=dict(autorange="reversed", type="category"),
                      title=_title(f"Step {step}: top {len(ids)} next tokens", ["blue: the token picked", outside]))
    return fig


def generation_memory(gen: Generation, step: int | None = None, *, batch: int = 0) -> go.Figure:
    """Key/value pairs each step's query read, summed over layers (`Generation.kv_held`), against an unpruned
    run's (`kv_unpruned`); `step` is marked."""
    _check_index("batch", batch, gen.tokens.shape[0], "batch rows")
    steps = list(range(gen.steps))
    held, unpruned = gen.kv_held[batch].cpu().numpy(), gen.kv_unpruned.cpu().numpy()
    fig = go.Figure([go.Scatter(x=steps, y=unpruned, mode="lines", name="unpruned", line=dict(color=MASKED_COLOR,
                                                                                              width=3)),
                     go.Scatter(x=steps, y=held, mode="lines+markers", name="held", line=dict(color=NEW_COLOR))])
    notes = []
    if gen.steps:
        saved = 1 - held.sum() / unpruned.sum()
        notes.append(f"the last step holds {int(held[-1])} of {int(unpruned[-1])}; {saved:.0%} fewer over the run")
    if step is not None:
        _check_index("step", step, gen.steps, "steps")
        fig.add_vline(x=step, line=dict(color="#222", dash="dot"))
        notes.append(f"step {step}: {int(held[step])} of {int(unpruned[step])}")
    fig.update_layout(template=CHART_TEMPLATE, width=900, height=320,
                      xaxis=dict(title="step"), yaxis=dict(title="key/value pairs (all layers)", rangemode="tozero"),
                      title=_title("KV memory held per step", notes))
    return fig


def generation_text(gen: Generation, step: int, layer: int, *, vocab: Sequence[str] | None = None,
                    batch: int = 0) -> str:
    """HTML: the text step `step`'s query read (prompt, then generated tokens), the tokens layer `layer` had
    pruned from its context struck through, then the token it picked. Every token is a chip, as `display_label`
    shows it (a space as ␣), with `data-position`, `data-role` (prompt, generated, new) and, when struck,
    `data-pruned`."""
    _check(gen, step, batch, layer)
    tokens, dropped = _names(gen, vocab, batch), gen.dropped[step][layer, batch].tolist()
    chip = "white-space:pre;padding:1px 3px;margin:0 1px;border-radius:3px;"
    parts = []
    for position in range(gen.prompt_length + step + 1):
        new = position == gen.prompt_length + step
        role = "new" if new else "prompt" if position < gen.prompt_length else "generated"
        style = chip + (f"outline:2px solid {NEW_COLOR};font-weight:bold;" if new else "") + \
            f"background:{PROMPT_COLOR if role == 'prompt' else GENERATED_COLOR};"
        title = f"{tokens[position]}·{position} ({role})"
        text = html.escape(display_label(tokens[position]))
        if not new and dropped[position]:
            style += f"color:{PRUNE_COLORS['pruned by F']};text-decoration:line-through;"
            title += f", pruned from layer {layer}'s context"
        attrs = f'data-position="{position}" data-role="{role}"' + (' data-pruned="1"' if not new and dropped[position]
                                                                     else "")
        parts.append(f'<span {attrs} title="{html.escape(title)}" style="{style}">{text}</span>')
    arrow = f'<span style="color:#666"> → p = {float(gen.probs[batch, step]):.1%}</span>'
    legend = (f'<div style="font-size:12px;color:#555;margin-top:6px">step {step} · layer {layer}: '
              f'<span style="{chip}background:{PROMPT_COLOR}">prompt</span> '
              f'<span style="{chip}background:{GENERATED_COLOR}">generated</span> '
              f'<span style="{chip}color:{PRUNE_COLORS["pruned by F"]};text-decoration:line-through">pruned</span> '
              f'<span style="{chip}outline:2px solid {NEW_COLOR}">picked now</span> · {sum(dropped)} pruned</div>')
    return ('<div class="xattn-generation" style="font-family:ui-monospace,monospace;font-size:15px;'
            f'line-height:2.1">{"".join(parts)}{arrow}</div>{legend}')


__all__ = ["generation_row", "generation_candidates", "generation_memory", "generation_text", "step_row",
           "step_keys", "pruned_keys"]
