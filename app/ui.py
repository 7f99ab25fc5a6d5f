"""The Gradio Blocks layout: a model and text shared by five tabs, one per view, each a named API endpoint.

Custom models (uploaded or fresh) live in a per-session `gr.State`; the model dropdowns list the bundled
models plus this session's own.
"""
from __future__ import annotations

import json
import re
from typing import Any

import gradio as gr

import xattn
from xattn import masks, registry

from . import cross, generate, limits, models, texts, views
from . import heads as heads_app  # `heads` is the fresh-model form's field below
from .heatmap import plotly_view
from .models import Loaded, Session

# Static slider ceilings: API clients are checked against these (the views check the real range);
# the page narrows every slider to the chosen model as soon as it loads.
CEILING = {"layer": 63, "head": 63, "query": 4095}
PLOT_HEIGHT = 420
TEXT_ROW_PX = 300       # Explore's text view and predictions: room for the table, so the views below do not jump
PAIR_WIDTH = 480      # the least width of a plot in a row of two: a narrower window stacks them
# Page CSS (passed to launch): gr.HTML drops min_width, so the pairs' least width is set here, for both kinds; and
# it drops min_height while a request is on its way, so the text view's is too (the views below would jump).
CSS = (f".pair {{ min-width: min({PAIR_WIDTH}px, 100%) !important; }}\n"
       f"#token-text .html-container {{ min-height: {TEXT_ROW_PX}px !important; }}\n"
       "#screen, #model-keys { display: none !important; }")
# How the views show a request on its way: its time and progress bar (gr.Progress) over each, without Gradio's
# spinner, whose animation runs script every frame for each view: at 512 tokens the page and the server share two
# cores, and with it a Run's views took 0.2 s longer to make (bench/bench_browser.py).
PROGRESS = "minimal"
# The fresh-model form starts on a causal RealFormer with selective attention, pre-norm and absolute positions.
FRESH_OPTIONS = ("causal", "residual_attn", "attn_selective", "pre_norm", "use_abs_pos_emb")


def model_card(loaded: Loaded) -> str:
    return registry.card_markdown(loaded.card) if loaded.card else loaded.describe()


class Controls:
    """Every layer, head and query slider on the page, so a model change can re-range them all."""

    def __init__(self, opening: Loaded) -> None:
        self.sliders: list[tuple[str, gr.Slider]] = []
        self.opening = opening

    def slider(self, what: str, label: str | None = None) -> gr.Slider:
        # Sliders start where the page's first model puts them: on the head its opening Explore views show (they
        # come with the page: `opening`, computed in `build`).
        slider = gr.Slider(0, CEILING[what], value=self.start(self.opening)[what], step=1, label=label or what)
        self.sliders.append((what, slider))
        return slider

    @staticmethod
    def top(loaded: Loaded) -> dict[str, int]:
        return {"layer": loaded.depth - 1, "head": loaded.heads - 1, "query": loaded.max_seq_len - 1}

    def start(self, loaded: Loaded, text: str | None = None) -> dict[str, int]:
        """Where a model opens: the layer and head its card names first among its notable heads (else the last
        layer, head 0), and the last token of `text` (default its example)."""
        notable = (loaded.card.get("notable_heads") or [{}])[0]
        last = len(loaded.tokenizer.encode(text or loaded.example)) - 1
        return {"layer": notable.get("layer", loaded.depth - 1), "head": notable.get("head", 0),
                "query": min(last, self.top(loaded)["query"])}

    def ranges(self, loaded: Loaded) -> list[dict[str, Any]]:
        """Updates that range the layer and head sliders to `loaded` and move nothing (the query sliders follow the
        text: `fit_text`)."""
        top = self.top(loaded)
        return [gr.update(maximum=max(top[what], 1), interactive=top[what] > 0) if what != "query" else gr.update()
                for what, _ in self.sliders]

    def fit(self, loaded: Loaded, text: str | None = None) -> list[dict[str, Any]]:
        """Updates that range each slider to `loaded`, the query slider landing on the last token of `text`."""
        top, start = self.top(loaded), self.start(loaded, text)
        # A slider needs maximum > minimum: a one-layer (or one-head) model gets a locked 0–1 slider.
        return [gr.update(maximum=max(top[what], 1), value=start[what], interactive=top[what] > 0)
                for what, _ in self.sliders]

    def queries(self) -> list[gr.Slider]:
        return [slider for what, slider in self.sliders if what == "query"]

    def fit_text(self, n: int | None, *, move: bool = True) -> list[dict[str, Any]]:
        """Updates that range each query slider to a text of `n` tokens, on its last token (with `move`; no change
        when `n` is None): a value left past the new maximum would be refused by the slider before any view ran."""
        moved = {"value": n - 1} if move and n is not None else {}
        return [gr.update() if n is None else gr.update(maximum=max(n - 1, 1), interactive=n > 1, **moved)
                for _ in self.queries()]


def element_id(label: str) -> str:
    """An element id made from a label (e.g. `focused-head`), for browser tests."""
    return re.sub(r"\W+", "-", label).strip("-")


def plot(label: str, pair: bool = False) -> gr.HTML:
    """A figure slot: our Plotly view without clicks, for its hover (token labels, values, which mask hides a
    cell, which keys F prunes: app/heatmap.js); API clients get what a gr.Plot sends. One of a `pair` in a row
    is at least PAIR_WIDTH wide, else it wraps below the other."""
    return view(label, "plot", pair=pair)


def pickable(label: str, pair: bool = False) -> gr.HTML:
    """A figure slot of a tab other than Explore that answers clicks (views.on_pick): a tile or a cell of a
    layer-similarity matrix focuses its layer and head, a cell picks its query where the tab has a query slider;
    the tab's query × key views mark the clicked query row and key column (a bar: its key) until they redraw."""
    return view(label, "pick", pair=pair)


def view(label: str, role: str, pair: bool = False, value: Any = None, server: list[Any] | None = None) -> gr.HTML:
    """A figure slot that answers clicks (and, for a focused head, zooms), drawing `value` as the page opens: see
    app/heatmap.py. `server`: the functions its page code calls, views.hover_cell (its figures' exact values stay
    on the server until the hover asks, heatmap.on_demand) and views.focus_views (a click's views, straight)."""
    return plotly_view(label, role=role, elem_id=element_id(label), elem_classes=["pair"] if pair else None,
                       value=value, server=server)


def filter_controls() -> tuple[gr.Slider, gr.Checkbox, gr.Checkbox]:
    """Explore's display controls: the attention threshold and the sink switch (for the heatmaps and the text
    view: xattn.viz.cells.Shown), and whether the text view averages the heads."""
    threshold = gr.Slider(0, 1, value=0, step=0.01, label="hide attention below",
                          info="cells whose attention weight is lower are drawn white; rows are not renormalised")
    hide_sink = gr.Checkbox(False, label="hide the BOS / sink column",
                            info="the first token's column (and a learned sink's); the colours then span the rest")
    averaged = gr.Checkbox(False, label="text: mean over heads", info="shade the text by the mean of the layer's "
                           "heads instead of the focused head", elem_id="text-averaged")
    return threshold, hide_sink, averaged


def token_text_view(value: str = "") -> gr.HTML:
    """The text view (xattn.viz.token_html): a click on a token sends `pick` with its query position and what
    the page's Plotly views show (app/heatmap.js keeps that in window.xattnViews), as their clicks do."""
    return gr.HTML(value, label="the text, shaded by where the query looks (click a token to make it the query)",
                   show_label=True, container=True, padding=True, scale=3, min_height=TEXT_ROW_PX, elem_id="token-text",
                   css_template=".xattn-tokens { padding-top: 1.8em; }", js_on_load=TOKEN_CLICKS)


# The page's pixels across a head in the focused head and a stage-strip panel (app/heatmap.js measures them as it
# draws), as this hidden component's value: an input of Explore's page requests (views.Screen).
SCREEN = """
const X = window.xattnViews || (window.xattnViews = {});
X.bus = X.bus || new EventTarget();
const tell = () => { if (X.pixels && X.pixels.head && X.pixels.strip) props.value = JSON.stringify(X.pixels); };
X.bus.addEventListener('pixels', tell);
tell();
"""


def screen_component() -> gr.HTML:
    """Hidden: its value is what `SCREEN` measures ("" until the views are drawn: the server's defaults)."""
    return gr.HTML("", elem_id="screen", js_on_load=SCREEN, container=False, padding=False)


# The keys of the session's own models (models.share), kept where the Run's page code finds them (app/heatmap.js)
MODEL_KEYS = """
const X = window.xattnViews || (window.xattnViews = {});
const keep = () => { X.modelKeys = JSON.parse(props.value || '{}'); };
watch('value', keep);
keep();
"""


def model_keys_component() -> gr.HTML:
    """Hidden: its value is JSON {name: key} of the session's own models (`MODEL_KEYS`)."""
    return gr.HTML("", elem_id="model-keys", html_template="<div></div>", js_on_load=MODEL_KEYS, container=False,
                   padding=False)


TOKEN_CLICKS = """
const X = window.xattnViews || (window.xattnViews = {});     // shared with the plot views (app/heatmap.js)
X.bus = X.bus || new EventTarget();
const tab = element.closest('[role="tabpanel"]') || document.body;
element.addEventListener('click', ev => {
  const token = ev.target.closest('[data-q]');
  if (!token) return;
  const focus = X.focus;
  trigger('pick', {query: parseInt(token.dataset.q, 10), shown: focus ? {grid: focus.grid, head: focus.key} : {}});
});
let shown = null;                 // a click's text, drawn here until Gradio's own value replaces it
watch('value', () => { shown = null; });
X.bus.addEventListener('views', ev => {                      // a click's views (views.focus_views) bring this too
  const text = ev.detail.tab === tab && ev.detail.views.text;
  if (!text) return;
  // Drawn at once, and given to Gradio (which keeps the slot's value) once the page is idle: Gradio morphs a value
  // into the page attribute by attribute, 40-60 ms for 2,048 tokens, which the click need not wait for.
  element.innerHTML = shown = text;
  X.idle(() => { if (shown === text) props.value = text; });      // X.idle: app/heatmap.js, which sent the views
});
"""


# Explore's Run on the page (its button's click, gr.on's `js`, run with the request's input values before it is sent):
# the page asks views.run_views for the views and draws them (app/heatmap.js `X.run`), then the request goes on,
# told so in its screen, for the predictions and summary. Past Gradio's queue, its status updates and seven outputs:
# a bundled Run's views reach the page about 0.1 s sooner. The names are the page request's inputs, in order.
RUN_INPUTS = ["session", "model", "text", "stage", "layer", "head", "query", "threshold", "hide_sink", "averaged",
              "screen"]
RUN_FIRST = (f"async (...args) => {{ const inputs = args.slice(0, {len(RUN_INPUTS)}); const X = window.xattnViews; "
             f"return X && X.run ? X.run({json.dumps(RUN_INPUTS)}, inputs) : inputs; }}")


def markdown(text: str) -> gr.Markdown:
    """Markdown with $inline$ and $$display$$ maths."""
    return gr.Markdown(text, latex_delimiters=[{"left": "$$", "right": "$$", "display": True},
                                               {"left": "$", "right": "$", "display": False}])


def stage_choices(stages: tuple[str, ...] = xattn.STAGES) -> list[tuple[str, str]]:
    return [(f"{s} — {xattn.DESCRIPTIONS[s]}", s) for s in stages]


def stage_dropdown(value: str = "attn") -> gr.Dropdown:
    """Every stage (what API callers may ask for); the page narrows it to the chosen model's (`stage_updates`)."""
    return gr.Dropdown(stage_choices(), value=value, label="stage")


def stage_updates(loaded: Loaded, current: tuple[str, ...]) -> list[dict[str, Any]]:
    """The Explore, Compare and Cross-attention stage dropdowns narrowed to the stages `loaded` has, each keeping
    its stage where the model has it, else showing attn."""
    own = [models.stages(loaded)] * 2 + [models.stages(loaded, cross=True) if loaded.encdec else xattn.STAGES]
    return [gr.update(choices=stage_choices(stages), value=value if value in stages else "attn")
            for stages, value in zip(own, current, strict=True)]


def model_dropdown(label: str, value: str) -> gr.Dropdown:
    return gr.Dropdown(models.bundled_names(), value=value, label=label, allow_custom_value=True)


def opening(loaded: Loaded, controls: Controls) -> list[Any]:
    """Explore's inputs (after the session) as the page opens on `loaded`: model, text, stage, layer, head, query,
    threshold, hide_sink, averaged (its example, on the head `Controls.start` names, nothing hidden)."""
    start = controls.start(loaded)
    return [loaded.name, loaded.example, "attn", start["layer"], start["head"], start["query"], 0, False, False]


def partner(loaded: Loaded) -> str | None:
    """A default model B for comparisons: another bundled model reading the same alphabet, if any."""
    others = [n for n in models.bundled_names() if n != loaded.name and models.bundled(n).tokenizer == loaded.tokenizer]
    return others[0] if others else None


def build() -> gr.Blocks:
    """The whole app."""
    default = models.bundled(models.default_name())
    controls = Controls(default)
    # The Explore views of the page as it opens, computed once here and shipped as the views' first values in the
    # page's config: the page draws them as soon as it has plotly.js, with no request to wait for.
    opens_on = opening(default, controls)
    *first_views, first_text, first_next, first_info = views.explore_page({}, *opens_on, progress=None)
    views.pin_hovers(first_views)            # every page opens on these: their hover must answer for good
    with gr.Blocks(title="xattn — attention visualizer", analytics_enabled=False,
                   delete_cache=limits.CACHE_CLEANUP) as demo:
        session = gr.State({}, time_to_live=limits.SESSION_TTL_S)
        gr.Markdown(texts.INTRO, latex_delimiters=[])       # no maths on the opening page: KaTeX loads with a tab
        with gr.Row():
            model = model_dropdown("model", default.name)
            text = gr.Textbox(default.example, label="text", scale=3)
        with gr.Accordion("About this model", open=False):
            card = gr.Markdown(model_card(default), label="model card")
        with gr.Accordion("Load another model (kept in this browser session only)", open=False):
            with gr.Tab("Fresh model"):
                with gr.Row():
                    # Ranges are checked by models.fresh, whose refusals name the field and its limits (no
                    # precision=0: that would round 2.5 to 2 instead of refusing it).
                    depth = gr.Number(3, label="depth")
                    heads = gr.Number(4, label="heads")
                    dim = gr.Number(64, label="dim")
                    max_len = gr.Number(512, label="max_seq_len")
                    seed = gr.Number(0, label="seed")
                    encoder_decoder = gr.Checkbox(False, label="encoder–decoder (XTransformer)",
                                                  info="an encoder and a causal decoder that cross-attends to it, "
                                                       "both of these sizes: see the Cross-attention tab")
                options = gr.CheckboxGroup(models.form_options(), value=list(FRESH_OPTIONS),
                                           label="options (README: supported options)")
                with gr.Row():
                    counts = [gr.Number(0, label=f"{label} ({name}, 0 = off)", minimum=0)   # 2.5 is refused, not cut
                              for label, name in models.form_numbers()]
                fresh_button = gr.Button("Build fresh model")
            with gr.Tab("Upload a checkpoint"):
                with gr.Row():
                    checkpoint = gr.File(label="xattn or x-transformers checkpoint (.safetensors, .pt, .pth)",
                                         file_types=[".safetensors", ".pt", ".pth"])
                    config = gr.File(label="x-transformers JSON config (not needed for xattn files)",
                                     file_types=[".json"])
                alphabet = gr.Textbox(label="alphabet: the characters of token ids 2, 3, … (empty = printable ASCII)")
                upload_button = gr.Button("Load checkpoint")

        with gr.Tabs() as tabs:
            with gr.Tab("Explore", id="explore") as explore_tab:
                with gr.Row():
                    stage = stage_dropdown()
                    e_layer, e_head = controls.slider("layer"), controls.slider("head")
                    e_query = controls.slider("query")
                with gr.Row():
                    threshold, hide_sink, averaged = filter_controls()
                explore_button = gr.Button("Run", variant="primary", elem_classes=["run"])
                gr.Markdown(texts.EXPLORE)
                explore_info = gr.Markdown(first_info, label="summary")
                with gr.Row():
                    tokens_view = token_text_view(first_text)
                    next_tokens = gr.Markdown(first_next, label="next token", elem_id="next-tokens", container=True,
                                              min_height=TEXT_ROW_PX)
                with gr.Row():
                    grid = view("layers × heads", "grid", pair=True, value=first_views[0], server=[views.focus_views])
                    heatmap = view("focused head", "head", pair=True, value=first_views[1],
                                   server=[views.hover_cell, views.focus_views, views.run_views])
                strip = view("stage strip", "strip", value=first_views[2], server=[views.hover_cell, views.focus_views])
                query_row = view("where the query looks", "row", value=first_views[3])
                screen = screen_component()
                keys = model_keys_component()
                with gr.Accordion("What the stages mean", open=False):
                    gr.Markdown(texts.STAGES)
            with gr.Tab("RealFormer") as real_tab:
                markdown(texts.REALFORMER)
                with gr.Row():
                    r_layer, r_head = controls.slider("layer"), controls.slider("head")
                    other = gr.Radio([texts.SAME_WEIGHTS, texts.TRAINED_TWIN], value=texts.SAME_WEIGHTS,
                                     label="compare with")
                real_button = gr.Button("Run", variant="primary", elem_classes=["run"])
                real_info = gr.Markdown(label="summary")
                real_strip = pickable("scores + residual = sum")
                real_diff = pickable("attention: residual on − off")
                sim_on, sim_off = pickable("layer similarity, residual on"), pickable("layer similarity, residual off")
            with gr.Tab("Selective attention") as sel_tab:
                markdown(texts.SELECTIVE)
                with gr.Row():
                    s_layer, s_head = controls.slider("layer"), controls.slider("head")
                    s_query = controls.slider("query")
                sel_button = gr.Button("Run", variant="primary", elem_classes=["run"])
                sel_info = gr.Markdown(label="summary")
                sel_fig = pickable("gate head, F and pruned keys")
                sel_strip = pickable("logits before and after F")
                with gr.Row():
                    sel_row = pickable("F for the chosen query", pair=True)
                    sel_grid = pickable("F in every layer (gate head)", pair=True)
            with gr.Tab("Masking debugger") as mask_tab:
                gr.Markdown(texts.MASKING)
                with gr.Row():
                    preset = gr.Dropdown(list(masks.PRESETS), value="sliding window", label="custom mask preset")
                    size = gr.Number(4, label="window / prefix / block size", minimum=0)
                    padding = gr.Number(2, label="pad tokens", minimum=0)
                    pad_side = gr.Radio(list(views.PAD_SIDES), value="left", label="padding side")
                    m_layer, m_head = controls.slider("layer"), controls.slider("head")
                mask_text = gr.Textbox(label="free edit: one row of 0/1 per token (overrides the preset)", lines=3)
                mask_filled = gr.State("")      # what the last run put in mask_text: the box counts once edited
                mask_button = gr.Button("Run", variant="primary", elem_classes=["run"])
                mask_info = gr.Markdown(label="summary")
                with gr.Row():
                    effective = pickable("effective mask", pair=True)
                    parts = pickable("what each mask removes", pair=True)
                mask_diff = pickable("attention with − without the custom mask")
            with gr.Tab("Compare") as cmp_tab:
                gr.Markdown("Model A is the model chosen at the top; pick model B (a bundled model, or one you "
                            "built or uploaded in this session) to see the same head of both, and A − B.")
                with gr.Row():
                    model_b = model_dropdown("model B", partner(default) or default.name)
                    c_stage = stage_dropdown()
                    c_layer, c_head = controls.slider("layer"), controls.slider("head")
                cmp_button = gr.Button("Run", variant="primary", elem_classes=["run"])
                cmp_info = gr.Markdown(label="summary")
                with gr.Row():
                    heat_a, heat_b = pickable("model A", pair=True), pickable("model B", pair=True)
                cmp_diff = pickable("A − B")
            with gr.Tab("Cross-attention") as cross_tab:
                markdown(texts.CROSS)
                source = gr.Textbox(cross.SOURCE_EXAMPLE, label="source (the encoder's input; the text above is the "
                                    "decoder's)")
                with gr.Row():
                    x_stage = stage_dropdown()
                    # Layer sliders range over Loaded.depth: an encoder–decoder's cross-attention layers.
                    x_layer, x_head = controls.slider("layer", "cross-attention layer"), controls.slider("head")
                cross_button = gr.Button("Run", variant="primary", elem_classes=["run"])
                cross_info = gr.Markdown(label="summary")
                with gr.Row():
                    cross_grid = pickable("cross-attention layers × heads", pair=True)
                    cross_head = pickable("focused cross-attention head", pair=True)
                encoder_grid = pickable("encoder self-attention")
            with gr.Tab("Generate", elem_id="generate-tab") as gen_tab:
                gen = generate.tab(controls, plot, stage_dropdown)
            with gr.Tab("Heads", id="heads"):
                heads_view = heads_app.layout(default)

        # Each view: one API endpoint (a refusal is an error), and on the page run by its button, by opening its
        # tab and by its own controls as they change (sliders by drag or arrow keys, numbers as typed; `input`
        # fires for the user only, never for the page re-ranging them), a refusal said in place (views.in_place).
        # (tab None: the caller wires the tab's select event itself.)
        def wire(name: str, fn: Any, tab: gr.Tab | None, button: gr.Button, inputs: list[Any], outputs: list[Any],
                 live: list[Any], page: Any = None, extra: tuple[list[Any], list[Any]] = ([], []),
                 first: str | None = None) -> None:
            gr.on([], fn, [session, *inputs], outputs, api_name=name)
            more_in, more_out = extra         # the page's own inputs and outputs, before the summary
            page_outputs = [*outputs[:-1], *more_out, outputs[-1]]
            run = views.in_place(page or fn, len(page_outputs))
            others = ([tab.select] if tab else []) + [c.input for c in live]
            # `first`: the button's own js (RUN_FIRST), before its request; the controls' requests go as they are
            events = [([button.click], first), (others, None)] if first else [([button.click, *others], None)]
            for triggers, js in events:
                gr.on(triggers, run, [session, *inputs, *more_in], page_outputs, js=js, api_visibility="private",
                      trigger_mode="always_last", show_progress=PROGRESS)

        explore_inputs = [model, text, stage, e_layer, e_head, e_query, threshold, hide_sink]
        explore_outputs = [grid, heatmap, strip, query_row, explore_info]
        text_outputs = [tokens_view, next_tokens]
        # On the page, Explore's views, text view and predictions come in one request (views.explore_page).
        wire("explore", views.explore, None, explore_button, explore_inputs, explore_outputs,
             [stage, e_layer, e_head, e_query, threshold, hide_sink], page=views.explore_page,
             extra=([averaged, screen], text_outputs), first=RUN_FIRST)
        text_inputs = [session, model, text, e_layer, e_head, e_query, averaged, threshold, hide_sink]
        gr.on([], views.explore_text, text_inputs, text_outputs, api_name="explore_text")
        averaged.input(views.in_place(views.explore_text, len(text_outputs)), text_inputs, text_outputs,
                       api_visibility="private", trigger_mode="always_last")
        wire("realformer", views.realformer, real_tab, real_button, [model, text, r_layer, r_head, other],
             [real_strip, real_diff, sim_on, sim_off, real_info], [r_layer, r_head, other])
        wire("selective", views.selective, sel_tab, sel_button, [model, text, s_layer, s_head, s_query],
             [sel_fig, sel_strip, sel_row, sel_grid, sel_info], [s_layer, s_head, s_query])
        wire("masking", views.masking, mask_tab, mask_button,
             [model, text, preset, size, mask_text, padding, pad_side, m_layer, m_head],
             [effective, parts, mask_diff, mask_info], [preset, size, padding, pad_side, m_layer, m_head],
             page=views.masking_page, extra=([mask_filled], [mask_text, mask_filled]))
        wire("compare", views.compare, cmp_tab, cmp_button, [model, model_b, text, c_stage, c_layer, c_head],
             [heat_a, heat_b, cmp_diff, cmp_info], [model_b, c_stage, c_layer, c_head])
        wire("cross", cross.cross, cross_tab, cross_button, [model, source, text, x_stage, x_layer, x_head],
             [cross_grid, cross_head, encoder_grid, cross_info], [x_stage, x_layer, x_head])
        generate.wire(gen, gen_tab, session, model, text)

        # Clicks on the other tabs' views (views.on_pick): `fields` names the sliders a click on `figures` sets
        # (slider → its index among the view's inputs); the sliders follow and the tab redraws in one request. A
        # cell of a tab without a query slider (Compare, Masking, RealFormer's head views, Cross's focused head and
        # encoder) only marks its query row and key column in the page.
        def picks(figures: list[Any], fn: Any, inputs: list[Any], fields: dict[str, int], outputs: list[Any]) -> None:
            moved = [inputs[at] for at in fields.values()]
            for figure in figures:
                figure.pick(views.in_place(views.on_pick(fn, fields, len(outputs)), len(moved) + len(outputs)),
                            inputs, [*moved, *outputs], api_visibility="private", trigger_mode="always_last")

        picks([sim_on, sim_off], views.realformer, [session, model, text, r_layer, r_head, other],
              {"layer": 3, "head": 4}, [real_strip, real_diff, sim_on, sim_off, real_info])
        sel_inputs, sel_outputs = [session, model, text, s_layer, s_head, s_query], [sel_fig, sel_strip, sel_row,
                                                                                     sel_grid, sel_info]
        picks([sel_fig, sel_strip], views.selective, sel_inputs, {"query": 5}, sel_outputs)
        picks([sel_grid], views.selective, sel_inputs, {"layer": 3, "query": 5}, sel_outputs)   # F: every head's
        picks([cross_grid], cross.cross, [session, model, source, text, x_stage, x_layer, x_head],
              {"layer": 5, "head": 6}, [cross_grid, cross_head, encoder_grid, cross_info])

        # Heads runs on its button only (a dataset, not one text); a click on a head opens it in Explore.
        hv = heads_view
        hv.button.click(heads_app.heads, [session, model, hv.dataset, hv.n, hv.seed, hv.file], [hv.figure, hv.summary,
                        hv.run], api_name="heads")
        model.change(heads_app.datasets, [session, model], [hv.dataset, hv.figure, hv.summary, hv.run],
                     api_visibility="private")
        # Selecting the Explore tab runs its views (its select event, as a click on the tab does).
        hv.figure.pick(heads_app.pick, [hv.run], [tabs, text, e_layer, e_head, e_query], api_visibility="private",
                       trigger_mode="always_last")

        # Choosing or loading a model re-ranges the sliders, narrows the stage lists to its stages, shows its
        # card and keeps the text if it can read it (else its example, saying why), then explores it.
        sliders = [s for _, s in controls.sliders]
        stages = [stage, c_stage, x_stage]

        def chosen(session: Session, model: str, text: str | None = None, *current: str) -> list[Any]:
            loaded = views.friendly(models.resolve)(model, session)
            why = None if text is None else models.unreadable(loaded, text)
            if why and text and text.strip():
                gr.Info(f"Showing {loaded.name}'s example instead of your text: {why}.")
            kept = loaded.example if text is None or why else text
            b = partner(loaded)
            updates = stage_updates(loaded, current) if current else []
            return [model_card(loaded), kept, gr.update(value=b) if b else gr.update(), *updates,
                    *controls.fit(loaded, kept)]

        def added(session: Session, loaded: Loaded) -> list[Any]:
            """`session` with `loaded` added (a new dict: the old state is never half-changed), keeping the
            newest MAX_SESSION_MODELS models and saying which one was dropped; the page is told their keys
            (models.share), by which its Run finds them outside a request."""
            session = {k: v for k, v in (session or {}).items() if k != loaded.name}
            while len(session) >= limits.MAX_SESSION_MODELS:
                dropped = next(iter(session))
                del session[dropped]
                gr.Warning(f"A session keeps at most {limits.MAX_SESSION_MODELS} models of its own: "
                           f"{dropped} was let go to make room.")
            session[loaded.name] = loaded
            names = models.bundled_names() + list(session)
            keys = json.dumps({name: models.share(own) for name, own in session.items()})
            return [session, gr.update(choices=names, value=loaded.name), gr.update(choices=names), keys]

        # A click on the Explore views gets its views and text view straight from the server (views.focus_views,
        # called by app/heatmap.js), then this request moves the sliders and brings the predictions (or, where
        # the server no longer keeps the run, everything): no progress shown, as the click's marks move at once.
        # A zoom on the focused head brings the visible region at the detail the screen shows.
        explore_page_inputs = [session, *explore_inputs, averaged, screen]
        explore_page_outputs = [*explore_outputs[:-1], *text_outputs, explore_info]
        for clickable in (grid, heatmap, strip, tokens_view):
            clickable.pick(views.in_place(views.explore_click, 3 + len(explore_page_outputs)),
                           explore_page_inputs, [e_layer, e_head, e_query, *explore_page_outputs],
                           api_visibility="private", trigger_mode="always_last", show_progress="hidden")
        heatmap.zoom(views.explore_zoom, [session, model, text, stage, e_layer, e_head, threshold, hide_sink],
                     [heatmap], api_visibility="private", trigger_mode="always_last", show_progress="hidden")

        gr.on([], chosen, [session, model], [card, text, model_b, *sliders], api_name="model_info")
        open_inputs, open_outputs = [session, model, text, *stages], [card, text, model_b, *stages, *sliders]
        explore_page = views.in_place(views.explore_loaded, len(explore_page_outputs))
        # Selecting the Explore tab redraws its views, except the first time, as the page opens (Gradio fires the
        # select event then): the views drawn from the page's config are current unless something has changed.
        unopened = gr.State(True)
        explore_again = views.in_place(views.explore_page, len(explore_page_outputs))

        def explore_select(first: bool, session: Session, *args: Any) -> list[Any]:
            if first and list(args[:len(opens_on)]) == opens_on:      # the screen (last) aside
                return [False, *(gr.skip() for _ in explore_page_outputs)]
            return [False, *explore_again(session, *args)]

        explore_tab.select(explore_select, [unopened, *explore_page_inputs], [unopened, *explore_page_outputs],
                           api_visibility="private", trigger_mode="always_last", show_progress=PROGRESS)
        model.input(chosen, open_inputs, open_outputs, api_visibility="private").success(
            explore_page, explore_page_inputs, explore_page_outputs, api_visibility="private", show_progress=PROGRESS)
        # The page opens with the default model's card, text, sliders and Explore views already in place: the load
        # only narrows the stage lists and the sliders' ranges (from the static ceilings API callers are checked
        # against), the query sliders' to the text as it is once the load has answered; it moves nothing and writes
        # nothing else (a person may be typing by the time it answers).
        def narrowed(session: Session, model: str, *current: str) -> list[dict[str, Any]]:
            loaded = views.friendly(models.resolve)(model, session)
            return [*stage_updates(loaded, current), *controls.ranges(loaded)]

        def text_ranges(session: Session, model: str, text: str) -> list[dict[str, Any]]:
            return controls.fit_text(views.token_count(session, model, text), move=False)

        demo.load(narrowed, [session, model, *stages], [*stages, *sliders], api_visibility="private").then(
            text_ranges, [session, model, text], controls.queries(), api_visibility="private")

        @views.friendly
        def fresh(session: Session, depth: float, heads: float, dim: float, options: list[str], seed: float,
                  max_seq_len: float, *rest: Any, progress: gr.Progress = gr.Progress()) -> list[Any]:
            *counts, encdec = rest          # the form's counts, then the encoder–decoder box
            progress(0.1, desc="Building the model")
            return added(session, models.fresh(depth, heads, dim, options, seed, max_seq_len, *counts,
                                               encoder_decoder=bool(encdec)))

        @views.friendly
        def upload(session: Session, checkpoint: str | None, config: str | None, alphabet: str,
                   progress: gr.Progress = gr.Progress()) -> list[Any]:
            if not checkpoint:
                raise ValueError("Choose a checkpoint file to upload first.")
            progress(0.1, desc="Loading the checkpoint")
            return added(session, models.uploaded(checkpoint, config, alphabet))

        # Typing re-ranges the query sliders to the text, so a shorter text never leaves one past its end.
        def fit_text(session: Session, model: str, text: str) -> list[dict[str, Any]]:
            return controls.fit_text(views.token_count(session, model, text))

        text.change(fit_text, [session, model, text], controls.queries(), api_visibility="private",
                    trigger_mode="always_last")
        # Enter in the text box runs the view on show (each tab's Run button carries the class `run`), once the
        # query sliders fit the text.
        text.submit(fit_text, [session, model, text], controls.queries(), api_visibility="private").then(
            None, js="() => { const run = [...document.querySelectorAll('button.run')]"
                     ".find(b => b.offsetParent !== null); if (run) run.click(); }")
        load_outputs = [session, model, model_b, keys]
        fresh_inputs = [session, depth, heads, dim, options, seed, max_len, *counts, encoder_decoder]
        for loading in (gr.on([fresh_button.click] + [n.submit for n in (depth, heads, dim, max_len, seed, *counts)],
                              fresh, fresh_inputs, load_outputs, api_name="fresh_model"),
                        upload_button.click(upload, [session, checkpoint, config, alphabet], load_outputs,
                                            api_name="upload_model")):
            loading.success(chosen, open_inputs, open_outputs, api_visibility="private").success(
                explore_page, explore_page_inputs, explore_page_outputs, api_visibility="private",
                show_progress=PROGRESS)
    return demo
