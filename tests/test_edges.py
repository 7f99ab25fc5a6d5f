"""Rough edges a new user hit in the app, each pinned down: refusals said in place, a model switch keeping the
text it can read, models opening on their notable head, stage lists per model, the Masking debugger's box and
notes, figures naming what they compare, fields named in refusals. The handlers run as plain functions."""
from __future__ import annotations

import logging

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

pytest.importorskip("gradio")
import gradio as gr  # noqa: E402

import xattn  # noqa: E402
from app import models, texts, ui, views  # noqa: E402
from xattn import viz  # noqa: E402

from conftest import form_options  # noqa: E402


@pytest.fixture(scope="module")
def default() -> models.Loaded:
    return models.bundled(models.default_name())


def unchanged(value: object) -> bool:
    """A gr.update() that changes nothing: what leaves a figure as it is on the page."""
    return isinstance(value, dict) and value == {"__type__": "update"}


def test_a_refusal_keeps_the_figures_and_says_why_in_place(default: models.Loaded,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    page = views.in_place(views.explore, 5)
    with caplog.at_level(logging.INFO, logger="app.views"), pytest.warns(UserWarning, match="cannot read"):
        *figures, summary = page(None, default.name, "a=§", "attn", 0, 0, 0)        # § is not in its alphabet
    assert all(unchanged(f) for f in figures)
    assert summary.startswith("**Not drawn:**") and "cannot read this text" in summary and "'§'" in summary
    refusals = [r for r in caplog.records if r.name == "app.views"]
    assert len(refusals) == 1 and refusals[0].exc_info is None                    # one line, no traceback
    assert refusals[0].getMessage().startswith("refused explore: The model")
    with pytest.raises(gr.Error) as err:                                          # the API still gets an error
        views.explore(None, default.name, "a=§", "attn", 0, 0, 0)
    assert err.value.print_exception is False
    grid, *_, summary = page(None, default.name, default.example, "attn", 0, 0, 0)  # a good input draws
    assert isinstance(grid, go.Figure) and default.name in summary


@pytest.mark.parametrize("text, kept", [
    ("a=1;b=2;?b", True),                       # the same alphabet, short enough
    ("([])", False),                            # brackets are not in the variables alphabet
    ("a=1;" * 40, False),                       # 161 tokens: past max_seq_len
    ("", False),
])
def test_a_model_switch_keeps_text_the_model_can_read(default: models.Loaded, text: str, kept: bool) -> None:
    other = models.bundled("variables-baseline")
    why = models.unreadable(other, text)
    assert (why is None) is kept
    if not kept and text:
        ids = other.tokenizer.encode(text) if set(text) <= set(other.tokenizer.alphabet) else None
        assert ("cannot read" in why) if ids is None else f"{len(ids)} tokens" in why
        assert ids is None or f"reads at most {other.max_seq_len}" in why


def test_bundled_models_open_on_the_head_their_card_names(default: models.Loaded) -> None:
    notable = default.card["notable_heads"][0]
    controls = ui.Controls(default)
    start = controls.start(default)
    assert (start["layer"], start["head"]) == (notable["layer"], notable["head"])
    assert start["query"] == len(default.tokenizer.encode(default.example)) - 1
    assert controls.start(default, "a=1;")["query"] == 4
    fresh = models.fresh(2, 2, 16, form_options(), 0, 32)                           # no card: last layer, head 0
    assert (controls.start(fresh)["layer"], controls.start(fresh)["head"]) == (1, 0)


def test_stage_lists_follow_the_model(default: models.Loaded) -> None:
    assert not default.model.config.attn_layers.alibi_pos_bias
    explore, compare, cross = ui.stage_updates(default, ("biased", "residual", "attn"))
    offered = [stage for _, stage in explore["choices"]]
    assert "biased" not in offered and "position_bias" not in offered and "residual" in offered
    assert explore["value"] == "attn" and compare["value"] == "residual" and cross["value"] == "attn"
    alibi = models.fresh(1, 2, 16, form_options(position="ALiBi"), 0, 32)
    explore, *_ = ui.stage_updates(alibi, ("biased", "attn", "attn"))
    assert explore["value"] == "biased" and "biased" in [stage for _, stage in explore["choices"]]
    # the rule is the config's: what the choices list is what stages_in_use names, in pipeline order
    assert [stage for _, stage in explore["choices"]] == list(alibi.model.config.attn_layers.stages_in_use())


def test_the_mask_box_holds_the_mask_in_use_and_counts_only_once_edited(default: models.Loaded) -> None:
    args = [None, default.name, default.example, "block-diagonal", 3, "", 2, "right", 0, 0]
    *figures, box, filled, summary = views.masking_page(*args, "")
    n = len(default.tokenizer.encode(default.example)) + 2
    assert box["value"] == filled == xattn.masks.format_mask(xattn.masks.block_diagonal(n, 3))
    assert f"{n} rows of {n} digits" in box["label"] and f"for {n - 2} tokens, <bos> first, and 2 pad" in box["label"]
    # The preset changes while the box still holds what the last run put there: the preset wins.
    args[3:5] = ["sliding window", 1]
    *_, box, filled, _ = views.masking_page(*args[:5], filled, *args[6:], filled)
    assert box["value"] == xattn.masks.format_mask(xattn.masks.sliding_window(n, 1))
    # An edit of the box wins over the preset.
    edited = xattn.masks.format_mask(torch.ones(n, n, dtype=torch.bool))
    *_, box, _, summary = views.masking_page(*args[:5], edited, *args[6:], filled)
    assert box["value"] == edited and "**custom** hides 0 of" in summary


def test_prefix_lm_on_a_decoder_says_why_it_changes_nothing(default: models.Loaded) -> None:
    *_, summary = views.masking(None, default.name, default.example, "prefix-LM", 4, "", 0, "right", 0, 0)
    assert "prefix-LM mask changes nothing here" in summary and "custom ∧ causal = causal" in summary
    encoder = models.fresh(1, 2, 16, form_options(causal=False), 0, 32)
    session = {encoder.name: encoder}
    *_, summary = views.masking(session, encoder.name, "a=1;b=2", "prefix-LM", 3, "", 0, "right", 0, 0)
    assert "changes nothing" not in summary


@pytest.mark.parametrize("size, preset, message", [
    (-1, "block-diagonal", "The window / prefix / block size must be a whole number from 1"),
    (2.5, "sliding window", r"The window / prefix / block size must be a whole number from 0; got 2.5"),
    (None, "prefix-LM", "The window / prefix / block size is empty"),
])
def test_mask_size_refusals_name_the_field(default: models.Loaded, size: float, preset: str, message: str) -> None:
    with pytest.raises(gr.Error, match=message):
        views.masking(None, default.name, default.example, preset, size, "", 0, "right", 0, 0)


@pytest.mark.parametrize("changes, message", [
    ({"depth": 2.5}, r"depth must be a whole number from 1 to 12; got 2.5"),
    ({"depth": None}, r"depth is empty: type a whole number from 1 to 12"),
    ({"seed": 0.5}, r"seed must be a whole number from 0"),
])
def test_fractional_or_blank_form_numbers_are_refused_naming_the_field(changes: dict, message: str) -> None:
    args = {"depth": 1, "heads": 2, "dim": 16, "options": form_options(), "seed": 0, "max_seq_len": 32, **changes}
    with pytest.raises(ValueError, match=message):
        models.fresh(**args)


def test_a_file_that_is_no_checkpoint_is_not_called_one(tmp_path) -> None:
    junk = tmp_path / "notes.pt"
    junk.write_text("not a checkpoint at all")
    with pytest.raises(ValueError, match="notes.pt is not a checkpoint: neither safetensors nor") as err:
        models.uploaded(str(junk))
    assert "x-transformers" not in str(err.value)


def test_the_selective_grid_shows_each_layers_own_penalty(default: models.Loaded) -> None:
    ids = default.tokenizer.encode(default.example)
    trace = default.model.run_with_trace(torch.tensor([ids]))[1]
    fig = viz.grid(trace, "selection", heads=[0])
    tops = [panel.meta["hi"] for panel in fig.data if panel.type == "heatmap"][:1]
    own = trace["selection"][:, 0, 0].amax((-2, -1))                 # each layer's F, as that layer computes it
    assert tops[0] == pytest.approx(float(own.max()), rel=1e-5)
    assert not torch.all(own[1:] >= own[:-1])                         # F is no running total: it does not grow
    decoded = np.stack([viz.decode(p) for p in fig.data if p.type == "heatmap"])
    np.testing.assert_allclose(decoded, trace["selection"][:, 0, 0].numpy(), atol=fig.data[0].meta["hi"] / 250 + 1e-6)
    assert "not a running total" in texts.SELECTIVE


def test_realformer_similarities_share_a_range_and_the_difference_names_its_sides(default: models.Loaded) -> None:
    strip, difference, on, off, _ = views.realformer(None, default.name, default.example, 2, 1, texts.SAME_WEIGHTS)
    assert on.layout.coloraxis.cmax == off.layout.coloraxis.cmax
    title = difference.layout.title.text
    assert f"<sup>residual on: {default.name[:20]}" in title and " − off: " in title
    scores, rest = strip.data[0], strip.data[1:3]
    assert scores.coloraxis != rest[0].coloraxis and rest[0].coloraxis == rest[1].coloraxis


def test_compare_names_the_models_in_every_figure(default: models.Loaded) -> None:
    a, b, difference, _ = views.compare(None, default.name, "variables-baseline", default.example, "attn", 0, 0)
    assert f"<sup>A: {default.name} · " in a.layout.title.text
    assert "<sup>B: variables-baseline · " in b.layout.title.text
    assert f"<sup>A: {default.name} − B: variables-baseline" in difference.layout.title.text
