"""The Generate tab (app/generate.py) and its figures (xattn.viz.generation): what it draws is the library's own
`model.generate(...)` — each bar a `Generation.row` value, each struck token a `dropped` key, the KV line
`kv_held` — checked against hand computations where they are simple (a plain forward's softmax, layers × keys);
scrubbing redraws without running the model; every bad input gets a sentence; /generate over HTTP."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

pytest.importorskip("gradio")
import gradio as gr  # noqa: E402
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

import xattn  # noqa: E402
from app import generate, models  # noqa: E402
from xattn import viz  # noqa: E402

from conftest import form_options  # noqa: E402
from test_app import array, same, traces  # noqa: E402

SELECTIVE = "variables-both"          # residual + selective attention: pruning by its own F
PLAIN = "variables-baseline"          # no selective attention: pruning is the control


def form(model: str, text: str, steps: float = 6, temperature: float = 0, top_k: float | None = 0,
         pruning: str = "none", threshold: float = 1.0, budget: float = 6, seed: float = 0, stage: str = "attn",
         layer: float = 1, head: float = 0) -> tuple:
    """/generate's inputs in order."""
    return model, text, steps, temperature, top_k, pruning, threshold, budget, seed, stage, layer, head


def direct(loaded: models.Loaded, text: str, steps: int, **kwargs) -> xattn.Generation:
    """The library's own generation of the same request (BOS alone for an empty text)."""
    return loaded.model.generate(torch.tensor(loaded.tokenizer.encode(text)), steps, **kwargs)


def struck(html: str) -> list[int]:
    """The positions the text view strikes through."""
    return [int(p) for p in re.findall(r'data-position="(\d+)" data-role="\w+" data-pruned="1"', html)]


def figure(value) -> dict:
    """A handler's go.Figure as gradio_client gets it: {"type": "plotly", "plot": <JSON>}."""
    return {"type": "plotly", "plot": value.to_json()}


# The views against the library's numbers


@pytest.mark.parametrize("name, pruning, word", [(SELECTIVE, "budget", "selective attention's F"),
                                                 (PLAIN, "threshold", "a control")])
def test_views_carry_the_generation(name: str, pruning: str, word: str) -> None:
    loaded = models.bundled(name)
    text, steps, layer, head = loaded.example[:12], 6, 1, 2
    slider, row, html, candidates, memory, summary, request = generate.generate(
        None, *form(name, text, steps, pruning=pruning, layer=layer, head=head))
    prune = xattn.Prune(budget=6) if pruning == "budget" else xattn.Prune(threshold=1.0)
    gen = direct(loaded, text, steps, prune=prune)
    assert (slider["value"], slider["maximum"]) == (steps - 1, steps - 1) and request.prune == prune
    last, prompt = steps - 1, len(text) + 1
    dropped = gen.dropped[last][layer, 0]
    assert dropped.any(), "the test needs a pruned key"

    # the bars: Generation.row, with no bar where the layer pruned the key (its weight is 0 there)
    bars = traces(figure(row), "bar")[0]
    expected = gen.row(last, "attn", layer, head).double().numpy()
    expected[dropped.numpy()] = np.nan
    same(array(bars["y"]), expected)
    query = loaded.tokenizer.labels([int(gen.tokens[0, prompt + last - 1])])[0]
    assert len(bars["x"]) == prompt + last and bars["x"][-1] == f"{query}·{prompt + last - 1}"
    assert float(gen.row(last, "attn", layer, head)[dropped].abs().max()) == 0.0
    marked = traces(figure(row), "scatter")[0]["x"]
    assert marked == [bars["x"][k] for k in dropped.nonzero().flatten().tolist()]

    # the text: exactly the dropped tokens struck; the step's whole context and the picked token shown
    assert struck(html) == dropped.nonzero().flatten().tolist()
    assert html.count("data-position=") == prompt + last + 1

    # the candidates: top_probs, which a plain forward's softmax gives too (pruning off: no key hidden)
    bar = traces(figure(candidates), "bar")[0]
    same(array(bar["x"]), gen.top_probs[0, last])
    unpruned = direct(loaded, text, steps)
    plain = loaded.model(unpruned.tokens[:, :prompt + last]).softmax(-1)[0, -1]
    torch.testing.assert_close(unpruned.top_probs[0, last], plain.topk(5).values)

    # the KV line: held = kv_held; unpruned = layers × keys, by hand
    unpruned_line, held_line = traces(figure(memory), "scatter")
    same(array(held_line["y"]), gen.kv_held[0])
    same(array(unpruned_line["y"]), [loaded.depth * (prompt + s) for s in range(steps)])
    held, total = int(gen.kv_held.sum()), sum(loaded.depth * (prompt + s) for s in range(steps))
    assert f"{held:,} of {total:,}" in summary and f"{1 - held / total:.0%} saved" in summary
    assert word in summary and loaded.tokenizer.decode(gen.new_tokens[0].tolist()) in summary


def test_scrubbing_and_playing_redraw_without_running_the_model() -> None:
    loaded = models.bundled(SELECTIVE)
    text, steps = loaded.example[:10], 5
    *_, request = generate.generate(None, *form(SELECTIVE, text, steps, pruning="threshold"))
    gen = direct(loaded, text, steps, prune=xattn.Prune(threshold=1.0))
    calls = []
    hook = loaded.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        for step, stage, layer, head in ((0, "attn", 0, 1), (3, "pre_softmax", 2, 3), (4, "selection", 1, 0)):
            row, html, candidates, memory = generate.scrub(None, request, step, stage, layer, head)
            same(array(traces(figure(row), "bar")[0]["y"]), viz.step_row(gen, step, layer, head, stage))
            assert struck(html) == gen.dropped[step][layer, 0].nonzero().flatten().tolist()
            assert json.loads(figure(memory)["plot"])["layout"]["shapes"][0]["x0"] == step  # marked
        # Play from the last step starts over; each tick moves one step; the last tick stops
        playing, timer, button, slider, *views = generate.toggle(None, request, False, steps - 1, "attn", 1, 0)
        assert playing and timer.active and slider == 0 and "Step 0:" in views[0].layout.title.text
        playing, _, _, slider, *views = generate.tick(None, request, 2, "attn", 1, 0)
        assert playing and slider == 3 and "Step 3:" in views[0].layout.title.text
        playing, timer, button, *_ = generate.tick(None, request, steps - 1, "attn", 1, 0)
        assert not playing and not timer.active and button["value"] == generate.PLAY
    finally:
        hook.remove()
    assert calls == [], "scrubbing ran the model"
    assert generate.scrub(None, None, 0, "attn", 0, 0)[0] is not None      # nothing generated yet: left as is


def test_sampling_is_reproducible_and_stays_in_the_top_k() -> None:
    loaded = models.bundled(SELECTIVE)
    out = generate.generate(None, *form(SELECTIVE, "", 8, temperature=1.5, top_k=3, seed=11))
    gen = direct(loaded, "", 8, temperature=1.5, top_k=3, seed=11)
    assert gen.prompt_length == 1                                           # an empty prompt is BOS alone
    picked = gen.new_tokens[0]
    assert all(int(t) in gen.top_ids[0, s, :3].tolist() for s, t in enumerate(picked))
    labels = "".join(loaded.tokenizer.labels(picked.tolist()))
    assert f"→ `{labels}`" in out[5] and "temperature 1.5 from the 3 most probable tokens, seed 11" in out[5]


def test_a_model_without_a_cached_path_recomputes_and_labels_memory_tokens() -> None:
    loaded = models.fresh(1, 2, 16, form_options(), 0, 64, 2)             # 2 memory tokens: no cached path
    session = {loaded.name: loaded}
    *figures, summary, _ = generate.generate(session, *form(loaded.name, "ab", 3, layer=0, head=1))
    assert "recomputed each step: no cached path for num_memory_tokens" in summary
    gen = direct(loaded, "ab", 3)
    bars = traces(figure(figures[1]), "bar")[0]
    assert bars["x"][:4] == ["mem 0", "mem 1", "<bos>·0", "a·1"]
    same(array(bars["y"]), gen.row(2, "attn", 0, 1))
    with pytest.raises(gr.Error, match="Prune needs the KV cache.*num_memory_tokens"):
        generate.generate(session, *form(loaded.name, "ab", 3, pruning="budget"))


# Refusals


def fresh_session(**kwargs) -> dict:
    loaded = models.fresh(1, 2, 16, kwargs.pop("options", form_options()), 0, 32, **kwargs)
    return {loaded.name: loaded}


@pytest.mark.parametrize("changes, message", [
    ({"steps": 20}, re.escape("steps=20 would pass max_seq_len (36): after a prompt of 23 tokens, 13 fit")),
    ({"steps": 2.5}, "Steps must be a whole number from 1 to 1,024; got 2.5"),
    ({"steps": 0}, "Steps must be a whole number from 1"),
    ({"temperature": -0.5}, re.escape("Temperature must be ≥ 0 (0 = greedy)")),
    ({"temperature": None}, "Temperature must be a number"),
    ({"top_k": -1}, re.escape("Top-k (0 = every token) must be a whole number from 0")),
    ({"top_k": 2.5}, "got 2.5"),
    ({"seed": 1.5}, "Seed must be a whole number"),
    ({"pruning": "budget", "budget": 3.5}, re.escape("Budget (keys kept per layer) must be a whole number from 2")),
    ({"pruning": "threshold", "threshold": -1}, "threshold must be a finite number ≥ 0"),
    ({"pruning": "random"}, "Unknown pruning 'random'"),
    ({"stage": "position_bias"}, "Stage 'position_bias' was not recorded"),
    ({"layer": 3}, "Layer 3 does not exist"),
])
def test_bad_input_gets_a_sentence(changes: dict, message: str) -> None:
    loaded = models.bundled(SELECTIVE)
    args = dict(zip(("steps", "temperature", "top_k", "pruning", "threshold", "budget", "seed", "stage", "layer",
                     "head"), form(SELECTIVE, loaded.example)[2:], strict=True))
    with pytest.raises(gr.Error, match=message):
        generate.generate(None, SELECTIVE, loaded.example, **{**args, **changes})


def test_models_that_cannot_generate_and_text_outside_the_alphabet() -> None:
    encoder = fresh_session(options=form_options(causal=False))
    with pytest.raises(gr.Error, match="is an encoder .*Generate works on decoders"):
        generate.generate(encoder, *form(next(iter(encoder)), "ab"))
    encdec = fresh_session(options=form_options(), encoder_decoder=True)
    with pytest.raises(gr.Error, match="is an encoder–decoder: Generate works on decoders"):
        generate.generate(encdec, *form(next(iter(encdec)), "ab"))
    with pytest.raises(gr.Error, match="cannot read this text: 1 character"):
        generate.generate(None, *form(SELECTIVE, "a=3 "))


# Over HTTP


def test_generate_endpoint(client: Client) -> None:
    loaded = models.bundled(SELECTIVE)
    slider, row, html, candidates, memory, summary = client.predict(
        *form(SELECTIVE, loaded.example, 4, pruning="threshold", threshold=2.0, layer=2, head=1),
        api_name="/generate")
    gen = direct(loaded, loaded.example, 4, prune=xattn.Prune(threshold=2.0))
    same(array(traces(row, "bar")[0]["y"]), viz.step_row(gen, 3, 2, 1, "attn"))
    assert struck(html) == gen.dropped[3][2, 0].nonzero().flatten().tolist()
    same(array(traces(memory, "scatter")[1]["y"]), gen.kv_held[0])
    assert slider["value"] == 3 and "F > 2" in summary
    with pytest.raises(AppError, match="13 fit"):
        client.predict(*form(SELECTIVE, loaded.example, 14), api_name="/generate")
    assert math.isclose(array(traces(candidates, "bar")[0]["x"])[0], float(gen.top_probs[0, 3, 0]), rel_tol=1e-6)
