"""Words shown in the app: the explanations written for a student, and the labels of choices."""
from __future__ import annotations

import xattn

SAME_WEIGHTS = "same weights, residual attention flipped"
TRAINED_TWIN = "the bundled model trained the other way"

INTRO = """# xattn — see every stage of attention
Pick a model, type text, and look at what each layer and head computes, from the raw scores
*QK*ᵀ/√*d* to the softmax. Every view is also an API endpoint (see *Use via API* at the bottom)."""

EXPLORE = ("*Click* a tile of the grid to focus that layer and head, a cell of the focused head (or of the stage "
           "strip) to pick that query and key, a bar to mark a key; *drag or scroll* on the focused head to zoom — a "
           "long input then comes back at full resolution for the part you see; *click a token* of the text to make "
           "it the query. Hover shows tokens and values, and says which mask hides a grey cell and which keys "
           "selective attention's F prunes. *Hide attention below* and *hide the BOS / sink column* only stop "
           "drawing cells (white): the values shown are the model's own, rows are not renormalised, and the colours "
           "then span the cells still shown.")

STAGES = "\n".join(f"- **{stage}** — {xattn.DESCRIPTIONS[stage]}" for stage in xattn.STAGES)

REALFORMER = """### Residual attention (RealFormer, He et al. 2020)
In a plain transformer every layer starts its attention from scratch. With **residual attention** each layer
adds the previous layer's pre-softmax logits to its own scores before the softmax:

$$S_\\ell = \\frac{Q_\\ell K_\\ell^\\top}{\\sqrt{d}} + S'_{\\ell-1}, \\qquad A_\\ell = \\mathrm{softmax}(S'_\\ell)$$

where $S'_{\\ell-1}$ is what entered the softmax one layer down (after masks and any selective penalty).
So a pattern found low in the stack is *carried up* and refined rather than rediscovered: the strip shows
this layer's own **scores**, the **residual** it inherited and their **sum**; move the layer slider to watch
it accumulate. The difference plot shows how the final attention changes when the residual is switched off,
and the layer-similarity matrices show how alike the layers' patterns are: residual attention usually makes
neighbouring layers look more alike."""

SELECTIVE = """### Selective attention (Leviathan et al. 2024)
A token can decide that an earlier token is **no longer needed** by anyone after it. Head 0 acts as the
gate: its positive logits are summed down the queries into a penalty $F$,

$$F_{i,j} = \\sum_{k < i} \\mathrm{ReLU}\\big(S^{(0)}_{k,j}\\big) \\;(j \\neq k,\\ j \\neq 0), \\qquad
\\tilde S_{i,j} = S_{i,j} - F_{i,j}\\ \\text{for every head,}$$

so once query $k$ prunes key $j$, every later query sees $j$ with its logit lowered. The first token and a
token's own key are never pruned.

**The paper's example — tracking a variable.** In `a=3;b=5;a=7;?a` the answer is the *latest* value of `a`.
When the model reads the second `a=`, the old assignment `a=3` is stale: selective attention lets that token
prune it, so `?a` no longer has to tell the two assignments apart — it simply cannot see the old one.

**Across layers.** Every layer computes its own $F$ from its own gate head (head 0): the last plot shows
each layer's $F$ as that layer computes it, not a running total. $F$ is the same for every head, so the
chosen query's row of $F$ is one bar per key. With residual attention on, a layer's logits *after* $F$ are
carried into the next layer, so a key pruned low in the stack enters the next layer already lowered, and that
layer's own $F$ comes on top: the pruning compounds in the logits (see the strip's pre-softmax panel), while
each layer's $F$ can be smaller than the first's."""

MASKING = """### Masks
A query may look at a key only if **every** mask allows it: **padding** hides pad tokens, the **custom**
mask is yours (a preset, or type rows of 0/1 — one row per token, row = query, column = key), and
**causal** hides the future in a decoder. A row left with no visible key has nothing to average: its
attention output is set to zero, and it is flagged below. The difference plot is attention with your
custom mask minus attention without it."""

CROSS = """### Cross-attention (encoder–decoders)
An encoder–decoder reads two texts. The **encoder** reads the *source* (the box below) with ordinary
self-attention and hands on one vector per source token. The **decoder** reads the *target* (the text box at
the top), causally, and after each of its self-attention layers has a **cross-attention** layer: its queries
come from the decoder's tokens, its keys and values from the encoder's output,

$$A = \\mathrm{softmax}\\Big(\\frac{Q_{\\text{decoder}} K_{\\text{encoder}}^\\top}{\\sqrt{d}}\\Big),$$

so each decoder token decides which source tokens to read. In the heatmaps **rows are decoder (target)
tokens and columns are source tokens**; there is no causal mask across (every decoder token may see the whole
source), so the pattern is a rectangle, not a triangle. The layer slider picks a **cross-attention layer**
(a decoder has one after each self-attention layer); the last plot is the encoder's own self-attention.
Build a fresh encoder–decoder (tick *encoder–decoder* in *Load another model*) or upload one saved with
`xattn.save`; the other tabs trace models that read one text."""

GENERATE = """### Generate, step by step
A decoder writes one token at a time: at each **step** the newest token's query reads every earlier token (its
keys), and the output picks the next token. Press **Generate** (the text box above is the prompt; empty means
BOS alone), then move the **step** slider or press **Play**: the bars are where that step's query looked (the
chosen layer, head and stage), the text shows what it had read with the tokens this layer **pruned** struck
through, and the candidates are its five most probable next tokens.

**Context pruning** (Leviathan et al. 2024): selective attention's penalty *F* only grows, so a key whose *F* is
large stays ignored, and dropping it from the cache saves memory. *threshold* drops a key once its *F > t*;
*budget* keeps each layer's *k* keys with the lowest *F*. A model without selective attention is pruned by the
same sum of head 0's positive logits, which it never subtracts: a control. The last plot is the key/value
memory each step read against an unpruned run's."""
