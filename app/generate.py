"""The Generate view: a decoder generates token by token (`xattn.generate`), optionally pruning its context; a
step scrubber shows, for each step, where the new token's query looked, the text so far with pruned tokens struck
through, the top candidates and the KV memory held. The figures are `xattn.viz`'s generation figures.

Generating runs the model once; the Generation is kept among the recent runs (`views.recall` / `views.remember`)
under the request the page holds, so scrubbing, playing and changing the layer, head or stage only redraw.
Tokenising and refusals are the other views' (`views.tokens`, `views.index`, `views.friendly`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
import torch

import xattn
from xattn import viz
from xattn.attention import PRUNE_AT

from . import limits, models, texts, views
from .models import Loaded, Session
from .views import Figure

PRUNING = ("none", "threshold", "budget")
DEFAULT_STEPS = 8
DEFAULT_THRESHOLD = round(PRUNE_AT, 1)   # F past ln 100: weight cut below 1 %
DEFAULT_BUDGET = 8
PLAY_SECONDS = 0.8            # one step per tick while playing
PLAY, PAUSE = "▶ Play", "⏸ Pause"


@dataclass(frozen=True)
class Request:
    """What a Generate run was asked, checked; the page keeps it to redraw the steps of that run."""

    model: str
    text: str
    steps: int
    temperature: float
    top_k: int | None
    pruning: str
    threshold: float | None
    budget: int | None
    seed: int

    @property
    def prune(self) -> xattn.Prune | None:
        if self.pruning == "none":
            return None
        return xattn.Prune(threshold=self.threshold) if self.pruning == "threshold" else xattn.Prune(budget=self.budget)


@dataclass
class GenRun:
    """One generation: the model, the prompt's token ids, the Generation, a label per token id, notes."""

    loaded: Loaded
    ids: list[int]
    gen: xattn.Generation
    vocab: list[str]
    notes: list[str]


def decoder(session: Session | None, name: str) -> Loaded:
    """The model called `name`, refused with a sentence unless it is a decoder that reads one text."""
    loaded = models.resolve(name, session)
    if loaded.encdec:
        raise ValueError(f"{loaded.name} is an encoder–decoder: Generate works on decoders (causal models that read "
                         "one text and predict its next token). The Cross-attention tab shows this model.")
    models.single_stack(loaded)
    if not loaded.model.config.attn_layers.causal:
        raise ValueError(f"{loaded.name} is an encoder (its attention is not causal): Generate works on decoders, "
                         "which predict each token from the ones before it. Build a fresh model with causal ticked.")
    return loaded


def request_of(model: str, text: str, steps: float, temperature: float | None, top_k: float | None, pruning: str,
               threshold: float | None, budget: float | None, seed: float) -> Request:
    """The form's values checked, each refusal a sentence naming its field (max_seq_len is the library's)."""
    steps = models.check_range(steps, "steps")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not math.isfinite(temperature):
        raise ValueError(f"Temperature must be a number ≥ 0 (0 = greedy); got {temperature!r}.")
    top_k = None if top_k in (None, "") else models.check_range(top_k, "top-k", "Top-k (0 = every token)") or None
    if pruning not in PRUNING:
        raise ValueError(f"Unknown pruning {pruning!r}; choose one of {', '.join(PRUNING)}.")
    if pruning == "threshold" and not isinstance(threshold, (int, float)):
        raise ValueError(f"The pruning threshold must be a number ≥ 0; got {threshold!r}.")
    budget = models.check_range(budget, "budget", "budget (keys kept per layer)") if pruning == "budget" else None
    return Request(model, text or "", steps, float(temperature), top_k, pruning,
                   float(threshold) if pruning == "threshold" else None, budget, models.check_range(seed, "seed"))


def vocabulary(loaded: Loaded) -> list[str]:
    """A label per token id of the model: the tokenizer's, then `<id>` for ids past its alphabet."""
    known = min(loaded.tokenizer.vocab_size, loaded.model.num_tokens)
    return loaded.tokenizer.labels(range(known)) + [f"<{i}>" for i in range(known, loaded.model.num_tokens)]


def run(session: Session | None, request: Request, progress: gr.Progress | None = None) -> GenRun:
    """The Generation `request` asks for: a kept one if there is one for this very model, else generated now
    (and kept). An empty prompt is BOS alone."""
    loaded = decoder(session, request.model)
    key = ("generation", id(loaded.model), request)
    kept = views.recall(key)
    if kept is not None and kept.loaded.model is loaded.model:      # the same model, not one reusing its id
        return kept
    ids, notes = ([loaded.tokenizer.bos_id], []) if request.text == "" else views.tokens(loaded, request.text)
    if progress is not None:
        progress(0.2, desc=f"Generating {request.steps} tokens after {len(ids)}")
    gen = loaded.model.generate(torch.tensor([ids]), request.steps, temperature=request.temperature,
                                top_k=request.top_k, seed=request.seed, prune=request.prune)
    result = GenRun(loaded, ids, gen, vocabulary(loaded), notes)
    views.remember(key, result, gen.nbytes(), limits.RECENT_GENERATIONS)
    return result


def summary(result: GenRun, request: Request) -> str:
    """Markdown: the model, the prompt and what it generated, how it ran, how it chose, and the KV saving."""
    gen, vocab = result.gen, result.vocab
    tokens = [vocab[t] for t in gen.tokens[0].tolist()]
    prompt, new = "".join(tokens[: gen.prompt_length]), "".join(tokens[gen.prompt_length:])
    if request.temperature == 0:
        chose = "greedy: the most probable token each step (temperature 0)"
    else:
        among = "every token" if request.top_k is None else f"the {request.top_k} most probable tokens"
        chose = f"sampled at temperature {request.temperature:g} from {among}, seed {request.seed}"
    held, unpruned = int(gen.kv_held[0].sum()), int(gen.kv_unpruned.sum())
    saving = ("no pruning: every step reads every key" if request.pruning == "none" else
              f"the steps read **{held:,} of {unpruned:,}** key/value pairs (all layers, summed over the steps): "
              f"**{1 - held / unpruned:.0%} saved**; the last step holds {int(gen.kv_held[0, -1])} of "
              f"{int(gen.kv_unpruned[-1])}")
    lines = [result.loaded.describe(),
             f"Generated **{gen.steps} tokens** after a prompt of {gen.prompt_length}: `{prompt}` → `{new}`",
             f"**How it ran:** {gen.note}.", f"**Choice:** {chose}.", f"**KV memory:** {saving}."]
    return "\n\n".join(lines + [f"**Note:** {note}" for note in result.notes])


def draw(result: GenRun, step: float, stage: str, layer: float, head: float) -> tuple[Figure, str, Figure, Figure]:
    """One step of a generation: the new query's row, the text so far, the candidates, the KV memory line."""
    gen, loaded, vocab = result.gen, result.loaded, result.vocab
    step = views.index(step, gen.steps, "step", f"this generation of {gen.steps} steps")
    layer = views.index(layer, loaded.depth, "layer", loaded.name)
    head = views.index(head, loaded.heads, "head", loaded.name)
    stage = views.check_stage(stage)
    return (viz.generation_row(gen, step, layer, head, stage, vocab=vocab), viz.generation_text(gen, step, layer,
            vocab=vocab), viz.generation_candidates(gen, step, vocab=vocab), viz.generation_memory(gen, step))


@views.friendly
def generate(session: Session | None, model: str, text: str, steps: float, temperature: float, top_k: float | None,
             pruning: str, threshold: float | None, budget: float | None, seed: float, stage: str, layer: float,
             head: float, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
    """Generate `steps` tokens after `text` (empty: BOS alone) and draw the last step: the step slider, where the
    new token looked, the text so far, the top candidates, the KV memory line, and a summary."""
    progress(0.05, desc=f"Loading {model}")
    request = request_of(model, text, steps, temperature, top_k, pruning, threshold, budget, seed)
    result = run(session, request, progress)
    last = result.gen.steps - 1
    progress(0.8, desc="Drawing")
    slider = gr.update(maximum=max(last, 1), value=last, interactive=last > 0)
    return (slider, *draw(result, last, stage, layer, head), summary(result, request), request)


@views.friendly
def scrub(session: Session | None, request: Request | None, step: float, stage: str, layer: float,
          head: float) -> tuple[Any, ...]:
    """Another step, layer, head or stage of the generation the page shows, redrawn from the kept Generation."""
    if request is None:                         # nothing generated yet
        return tuple(gr.skip() for _ in range(4))
    return draw(run(session, request), step, stage, layer, head)


def toggle(session: Session | None, request: Request | None, playing: bool, step: float, stage: str, layer: float,
           head: float) -> tuple[Any, ...]:
    """Play or pause: (playing, timer, button, step slider, the views). Playing from the last step starts over."""
    if playing or request is None:
        return False, gr.Timer(active=False), gr.update(value=PLAY), *(gr.skip() for _ in range(5))
    if step >= request.steps - 1:
        return True, gr.Timer(active=True), gr.update(value=PAUSE), 0, *scrub(session, request, 0, stage, layer, head)
    return True, gr.Timer(active=True), gr.update(value=PAUSE), *(gr.skip() for _ in range(5))


def tick(session: Session | None, request: Request | None, step: float, stage: str, layer: float,
         head: float) -> tuple[Any, ...]:
    """One step on while playing; at the last step, stop. Returns like `toggle`."""
    if request is None or step >= request.steps - 1:
        return False, gr.Timer(active=False), gr.update(value=PLAY), *(gr.skip() for _ in range(5))
    return True, gr.skip(), gr.skip(), step + 1, *scrub(session, request, step + 1, stage, layer, head)


def tab(controls: Any, plot: Callable[[str], gr.Plot], stage_dropdown: Callable[[], gr.Dropdown]) -> dict[str, Any]:
    """The tab's layout, inside the caller's `gr.Tab`; returns its components by name for `wire`."""
    c: dict[str, Any] = {}
    gr.Markdown(texts.GENERATE)
    with gr.Row():
        c["steps"] = gr.Number(DEFAULT_STEPS, label="steps")
        c["temperature"] = gr.Number(0, label="temperature (0 = greedy)")
        c["top_k"] = gr.Number(0, label="top-k (0 = every token)")
        c["seed"] = gr.Number(0, label="seed")
    with gr.Row():
        c["pruning"] = gr.Radio(list(PRUNING), value="none", label="context pruning")
        c["threshold"] = gr.Number(DEFAULT_THRESHOLD, label="threshold t: drop a key once its F > t")
        c["budget"] = gr.Number(DEFAULT_BUDGET, label="budget k: keys kept per layer")
    c["button"] = gr.Button("Generate", variant="primary")
    c["summary"] = gr.Markdown(label="summary")
    with gr.Row(equal_height=True):
        c["step"] = gr.Slider(0, 1, value=0, step=1, label="step", scale=4, elem_id="generate-step")
        c["play"] = gr.Button(PLAY, scale=0, min_width=110, elem_id="generate-play")
    with gr.Row():
        c["stage"] = stage_dropdown()
        c["layer"], c["head"] = controls.slider("layer"), controls.slider("head")
    c["text"] = gr.HTML(label="text so far", elem_id="generated-text")
    with gr.Row():
        with gr.Column(scale=2):
            c["row"] = plot("where the new token looks")
        with gr.Column(scale=1, min_width=300):
            c["candidates"] = plot("top candidates")
    c["memory"] = plot("KV memory held")
    c["timer"] = gr.Timer(PLAY_SECONDS, active=False)
    c["request"], c["playing"] = gr.State(None), gr.State(False)
    return c


def wire(c: dict[str, Any], generate_tab: gr.Tab, session: gr.State, model: gr.Dropdown, text: gr.Textbox) -> None:
    """The `/generate` endpoint (its button and opening the tab), and the page's own scrubbing and playing."""
    views_out = [c["row"], c["text"], c["candidates"], c["memory"]]
    inputs = [c[name] for name in ("steps", "temperature", "top_k", "pruning", "threshold", "budget", "seed",
                                   "stage", "layer", "head")]
    gr.on([c["button"].click, generate_tab.select], generate, [session, model, text, *inputs],
          [c["step"], *views_out, c["summary"], c["request"]], api_name="generate")
    shown = [session, c["request"], c["step"], c["stage"], c["layer"], c["head"]]
    gr.on([c["step"].input, c["stage"].input, c["layer"].release, c["head"].release], scrub, shown, views_out,
          api_visibility="private", trigger_mode="always_last", show_progress="hidden")
    playing = [c["playing"], c["timer"], c["play"], c["step"], *views_out]
    c["play"].click(toggle, [session, c["request"], c["playing"], *shown[2:]], playing, api_visibility="private")
    c["timer"].tick(tick, shown, playing, api_visibility="private", trigger_mode="once", show_progress="hidden")


__all__ = ["generate", "scrub", "tab", "wire", "Request", "GenRun"]
