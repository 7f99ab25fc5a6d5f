"""The input as text, each token shaded by the attention it receives from one query (as CircuitsVis' and
bertviz's users expect), and next-token predictions as a table. Both are plain strings (HTML, markdown), so a
notebook shows them with `IPython.display` and the app places them as they are.

Shading: the `attn` stage's row of the query (one head's, or the mean over heads); a token's shade is its
weight's magnitude over the largest weight shown in the row, so the darkest token is where the query looks
most. A key the query cannot see is grey and dotted (its title says which mask hides it); one the display
filter hides (cells.Shown: below the threshold, or the sink) is left unshaded; the query itself is outlined.
"""
from __future__ import annotations

import html

import numpy as np

from ..masks import REASONS, trace_reasons
from ..trace import Trace
from .cells import Shown
from .figures import _check_index, _layer_position, token_labels, visible_token

SHADE = (37, 99, 235)          # the colour of attention: a token at the row's largest weight is this, opaque
QUERY_OUTLINE = "#ff2d95"      # the query's outline: the app's focus colour
# What every token shares, once for the text rather than in each span's style (a third of a long text's bytes).
# Inline blocks: a line breaks between any two tokens, never inside one (a text with no spaces ran past its view).
TOKEN_CSS = ("<style>.xattn-token{display:inline-block;padding:1px 2px;margin:1px;border-radius:3px}"
             ".xattn-token[data-q]{cursor:pointer}</style>")


def display_label(label: str) -> str:
    """A token as it reads on screen: `visible_token` (a space as ␣, a newline as ↵), an empty label as ∅."""
    return visible_token(label) if label else "∅"


def query_weights(trace: Trace, layer: int, query: int, head: int | None = None, batch: int = 0) -> np.ndarray:
    """The `attn` row of one query over the key columns: one head's, or the mean over heads (None); NaN where
    the query cannot see the key."""
    _check_index("query", query, trace.visible.shape[1], "queries")
    row = trace.drawable("attn", _layer_position(trace, layer), query=query)[batch].double().cpu().numpy()
    if head is None:
        return row.mean(axis=0)
    _check_index("head", head, row.shape[0], "heads")
    return row[head]


def token_html(trace: Trace, layer: int, query: int, *, head: int | None = None, shown: Shown | None = None,
               batch: int = 0) -> str:
    """The tokens as text, shaded by the attention `query` pays them in `layer` (head `head`, or the mean over
    heads). Every token is a span with `data-q`, its query position, to click; the extra key columns (sink,
    zero key, memory key/values) come first, as chips without one."""
    weights = np.abs(query_weights(trace, layer, query, head, batch))
    shown = shown or Shown()
    keys = len(trace.key_extras)
    hidden, sinks = np.zeros(weights.shape, dtype=bool), shown.sink_columns(trace)
    hidden[sinks] = True
    hidden |= weights < shown.threshold
    drawn = np.where(hidden, np.nan, weights)
    top = float(np.nanmax(drawn)) if np.isfinite(drawn).any() else 0.0
    reasons = trace_reasons(trace)[batch, query].cpu().numpy()
    labels = [_readable(label) for label in token_labels(trace, batch)]
    tokens = [display_label(str(t)) for t in (trace.labels[batch] if trace.labels else trace.tokens[batch].tolist())]
    names = [*trace.key_extras, *labels]
    texts = [*trace.key_extras, *labels[:trace.memory_tokens], *tokens]
    spans = []
    for column, name in enumerate(names):
        text = html.escape(str(texts[column]))
        weight = weights[column]
        if np.isnan(weight):
            tip = f"{name}: masked ({REASONS[reasons[column]]})"
            style = "color:#9a9a9a;text-decoration:underline dotted"
        elif hidden[column]:
            tip = f"{name}: {weight:.4g}, hidden ({'the sink' if column in sinks else 'below the threshold'})"
            style = "color:#555"
        else:
            alpha = weight / top if top > 0 else 0.0
            tip = f"{name}: {weight:.4g}"
            style = f"background:rgba({SHADE[0]},{SHADE[1]},{SHADE[2]},{alpha:.3f})" + \
                (";color:white" if alpha > 0.55 else "")
        position = column - keys
        if position == query:
            style += f";outline:2px solid {QUERY_OUTLINE};outline-offset:1px"
            tip += " · the query"
        if column < keys or position < trace.memory_tokens:
            style += ";font-style:italic;border:1px dashed #aaa"
        click = f' data-q="{position}"' if position >= 0 else ""
        spans.append(f'<span class="xattn-token"{click} title="{html.escape(tip, quote=True)}" style="{style}">'
                     f"{text}</span>")
    whose = f"head {head}" if head is not None else f"the mean of {trace.shape[2]} heads"
    caption = (f"Attention from <b>{html.escape(labels[query])}</b> · "
               f"layer {layer} · {whose} · darkest = {top:.3g}" + (f" · {shown.note()}" if shown.note() else ""))
    return (f'<div class="xattn-tokens" data-query="{query}" style="font:15px/2.1 ui-monospace,monospace">{TOKEN_CSS}'
            f'<div style="font:12px sans-serif;color:#555;margin-bottom:4px">{caption}</div>'
            f'{"".join(spans)}</div>')


def predictions_table(pairs: list[tuple[str, float]] | None, heading: str = "next token") -> str:
    """Markdown: a table of (token, probability) pairs (`xattn.predictions.next_tokens`), or, for None, that the
    model has no logits."""
    if pairs is None:
        return f"*{heading}: this model returns embeddings (return_only_embed), not logits: no predictions.*"
    rows = [f"| {_code(display_label(token))} | {p:.1%} |" for token, p in pairs]
    return "\n".join([f"| {heading} | probability |", "|---|---:|", *rows])


def _code(text: str) -> str:
    """`text` as a markdown code span inside a table cell (pipes escaped, a backtick fenced by two)."""
    span = f"`` {text} ``" if "`" in text else f"`{text}`"
    return span.replace("|", "\\|")


def _readable(label: str) -> str:
    """An axis label 'token·position' with the token as it reads on screen (memory tokens' 'mem m' as they are)."""
    token, dot, position = label.rpartition("·")
    return f"{display_label(token)}·{position}" if dot else label
