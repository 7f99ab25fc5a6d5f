"""Cross-attention in the app: a fresh or uploaded encoder–decoder (xattn.XTransformer) through the /cross
endpoint, whose figures must carry the library's own `run_with_trace(src, tgt)` numbers; the refusals (models
without cross-attention, encoder–decoders in the single-text views, bad forms); and the size checks of an
EncDecConfig."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("gradio")
import gradio as gr  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

import xattn  # noqa: E402
from app import cross, limits, models, views  # noqa: E402
from xattn import viz  # noqa: E402
from xattn.tokenizer import CharTokenizer  # noqa: E402

from conftest import form_options, tiny_config  # noqa: E402
from test_app import array, exact, panels, same, same_within, traces  # noqa: E402

SOURCE, TARGET = cross.SOURCE_EXAMPLE, "a=5;"
NO_COUNTS = [0] * len(models.form_numbers())          # memory tokens, window, memory key/values: off


def fresh_args(depth: int = 2, heads: int = 2, dim: int = 32, options: list[str] | None = None, seed: int = 0,
               max_len: int = 64, counts: list[float] | None = None, encoder_decoder: bool = True) -> tuple:
    """/fresh_model's inputs in order: sizes, ticked options, seed, max_seq_len, the counts, the encoder–decoder box."""
    options = form_options(residual=True) if options is None else options
    return depth, heads, dim, options, seed, max_len, *(NO_COUNTS if counts is None else counts), encoder_decoder


def fresh(**changes: Any) -> models.Loaded:
    """The model /fresh_model builds from fresh_args(**changes), built here (same seed, same weights)."""
    *head, encoder_decoder = fresh_args(**changes)
    return models.fresh(*head, encoder_decoder=encoder_decoder)


def direct(loaded: models.Loaded, source: str, target: str) -> xattn.Trace:
    """The library's own trace of a source–target pair (BOS first in both, as the app reads them)."""
    src, tgt = loaded.tokenizer.encode(source), loaded.tokenizer.encode(target)
    labels = {"src_labels": [loaded.tokenizer.labels(src)], "tgt_labels": [loaded.tokenizer.labels(tgt)]}
    return loaded.model.run_with_trace(torch.tensor([src]), torch.tensor([tgt]), **labels)[1]


def check_figures(figures: tuple, trace: xattn.Trace, stage: str, layer: int, head: int) -> None:
    """/cross's grid, focused head and encoder grid against `trace` (codes to half a level, hover values exactly)."""
    cross_grid, focused, encoder_grid, _ = figures
    same(exact(traces(focused)[0]), trace.cross.drawable(stage)[layer, 0, head])
    for grid, part in ((cross_grid, trace.cross), (encoder_grid, trace.encoder)):
        cells = panels(grid)
        count, part_heads = part.shape[0], part.shape[2]
        assert len(cells) == count * part_heads
        z = json.loads(grid["plot"])["data"][0]
        scale = viz.Scale(z["meta"]["lo"], z["meta"]["hi"])
        for k, cell in enumerate(cells):
            same_within(scale.decode(array(cell["z"])), part.drawable(stage)[k // part_heads, 0, k % part_heads],
                        scale.step / 2)


# The endpoint on a fresh encoder–decoder


def test_cross_endpoint_carries_the_library_trace(client: Client) -> None:
    dropdown, *_ = client.predict(*fresh_args(), api_name="/fresh_model")
    loaded = fresh()
    assert dropdown["value"] == loaded.name and loaded.encdec and "encoder–decoder" in loaded.name
    trace = direct(loaded, SOURCE, TARGET)
    n_src, n_tgt = len(SOURCE) + 1, len(TARGET) + 1
    assert trace.cross["attn"].shape == (2, 1, 2, n_tgt, n_src)       # [cross layers, b, h, decoder, source]
    for stage, layer, head in (("attn", 1, 1), ("pre_softmax", 0, 1), ("scores_residual", 1, 0)):
        figures = client.predict(loaded.name, SOURCE, TARGET, stage, layer, head, api_name="/cross")
        check_figures(figures, trace, stage, layer, head)
    focused = traces(figures[1])[0]
    assert focused["y"] == viz.token_labels(trace.cross) and focused["x"] == viz.key_labels(trace.cross)
    assert focused["x"][0] == "<bos>·0" and focused["x"][-1] == f"a·{n_src - 1}"     # the source, across
    info = figures[3]
    assert f"Source (encoder input): **{n_src} tokens**" in info
    assert f"Target (decoder input): **{n_tgt} tokens**" in info
    assert "Cross-attention layer 1, head 0" in info


def test_fresh_encoder_decoder_sides_and_sliders(client: Client) -> None:
    """Options go to each side that takes them (value residual: the encoder only); the layer sliders range over
    the decoder's cross-attention layers."""
    options = form_options(residual=True, position="rotary") + ["add_value_residual"]
    counts = [2 if "window" in label else 1 if "memory key" in label else 0 for label, _ in models.form_numbers()]
    loaded = fresh(depth=3, heads=4, options=options, counts=counts)
    encoder, decoder = loaded.model.config.encoder, loaded.model.config.decoder
    assert encoder.attn_layers.add_value_residual and not decoder.attn_layers.add_value_residual
    for side in (encoder, decoder):
        assert side.attn_layers.residual_attn and side.attn_layers.rotary_pos_emb and not side.use_abs_pos_emb
        assert side.attn_layers.attn.max_attend_past == 2 and side.attn_layers.attn.num_mem_kv == 1
    assert decoder.attn_layers.causal and decoder.attn_layers.cross_attend and not encoder.attn_layers.causal
    assert (loaded.depth, loaded.heads, loaded.max_seq_len) == (3, 4, 64)
    assert "value residual (ResFormer) (encoder only)" in loaded.name
    args = fresh_args(depth=3, heads=4, options=options, counts=counts)
    dropdown, *_ = client.predict(*args, api_name="/fresh_model")
    card, example, _, *sliders = client.predict(dropdown["value"], api_name="/model_info")
    assert "encoder–decoder — encoder: bidirectional" in card and example == models.FRESH_EXAMPLE
    cross_layer, cross_head = sliders[-2:]          # the Cross-attention tab's, the last on the page
    assert (cross_layer["maximum"], cross_head["maximum"]) == (2, 3)
    trace = direct(loaded, SOURCE, TARGET)
    assert trace.cross.key_extras == ["mem kv 0"]
    check_figures(client.predict(dropdown["value"], SOURCE, TARGET, "masked", 2, 3, api_name="/cross"),
                  trace, "masked", 2, 3)


# Refusals


def test_a_model_without_cross_attention_is_refused(client: Client, default: models.Loaded) -> None:
    with pytest.raises(AppError, match=f"{default.name} has no cross-attention: build a fresh encoder–decoder, "
                                       "or upload one."):
        client.predict(default.name, SOURCE, default.example, "attn", 0, 0, api_name="/cross")
    lone = models.Loaded("lone decoder", xattn.build(tiny_config(cross_attend=True)), CharTokenizer("abc"), "abc")
    session = {lone.name: lone}
    with pytest.raises(Exception, match="has cross-attention layers but no encoder to read a source"):
        cross.cross(session, lone.name, "ab", "ba", "attn", 0, 0, progress=None)
    with pytest.raises(Exception, match="cross-attends, but has no encoder to give it a context"):
        models.single_stack(lone)


def test_loading_an_encoder_decoder_leaves_explore_as_it_is() -> None:
    """After a model is built the page explores it; an encoder–decoder is skipped, not answered with an error."""
    loaded = fresh()
    session = {loaded.name: loaded}
    skipped = views.explore_loaded(session, loaded.name, "a=1;?a", "attn", 0, 0, 0)
    assert len(skipped) == 7 and all(isinstance(output, type(gr.skip())) for output in skipped)


def test_the_single_text_views_refuse_an_encoder_decoder(client: Client) -> None:
    dropdown, *_ = client.predict(*fresh_args(seed=5), api_name="/fresh_model")
    name = dropdown["value"]
    calls = {"/explore": (name, "abc", "attn", 0, 0, 0), "/realformer": (name, "abc", 0, 0, "same weights, "
                                                                         "residual attention flipped"),
             "/selective": (name, "abc", 0, 0, 0), "/masking": (name, "abc", "none", 4, "", 0, "right", 0, 0),
             "/compare": (models.default_name(), name, "abc", "attn", 0, 0)}
    for api, args in calls.items():
        with pytest.raises(AppError, match="is an encoder–decoder: it reads a source and a target, so the "
                                           "Cross-attention tab shows it"):
            client.predict(*args, api_name=api)


@pytest.mark.parametrize("args, message", [
    ((SOURCE, TARGET, "attn", 2, 0), "Cross-attention layer 2 does not exist: .* layers 0 to 1"),
    (("  ", TARGET, "attn", 0, 0), r"Source \(the encoder's input\): The text is empty"),
    (("a=§", TARGET, "attn", 0, 0), r"Source \(the encoder's input\): The model .* cannot read this text"),
    ((SOURCE, "", "attn", 0, 0), "The text is empty"),
])
def test_bad_cross_input_gets_a_sentence(client: Client, args: tuple, message: str) -> None:
    dropdown, *_ = client.predict(*fresh_args(seed=1), api_name="/fresh_model")
    with pytest.raises(AppError, match=message):
        client.predict(dropdown["value"], *args, api_name="/cross")


@pytest.mark.parametrize("args, message", [
    ((SOURCE, TARGET, "attn", 2, 0), r"Cross-attention layer 2 does not exist: .* has cross-attention layers 0 to 1"),
    ((SOURCE, TARGET, "attn", 0, 2), "Head 2 does not exist"),
    ((SOURCE, TARGET, "nothing", 0, 0), "Unknown stage 'nothing'"),
])
def test_the_view_checks_its_picks_itself(args: tuple, message: str) -> None:
    """What a client past the page's own checks (sliders, the stage dropdown) would be told."""
    loaded = fresh(seed=1)
    with pytest.raises(Exception, match=message):
        cross.cross({loaded.name: loaded}, loaded.name, *args, progress=None)


def test_long_source_and_target_are_cut_with_notes(client: Client) -> None:
    dropdown, *_ = client.predict(*fresh_args(max_len=16), api_name="/fresh_model")
    source, target = "abcdefghij" * 3, "0123456789" * 2
    *figures, info = client.predict(dropdown["value"], source, target, "attn", 1, 0, api_name="/cross")
    assert "Source: The text is 31 tokens long" in info and "Target: The text is 21 tokens long" in info
    loaded = fresh(max_len=16)
    assert exact(traces(figures[1])[0]).shape == (16, 16)
    same(exact(traces(figures[1])[0]), direct(loaded, source[:15], target[:15]).cross.drawable("attn")[1, 0, 0])


@pytest.mark.parametrize("changes, message", [
    ({"options": form_options(residual=True, selective=True)},
     r"An encoder–decoder cannot take selective attention \(attn_selective\)"),
    ({"counts": [3 if name == "num_memory_tokens" else 0 for _, name in models.form_numbers()]},
     r"An encoder–decoder \(x-transformers' XTransformer\) takes no num_memory_tokens"),
    ({"options": form_options() + ["l2norm_embed"]}, "takes no l2norm_embed"),
    ({"depth": 12, "heads": 16, "dim": 256, "max_len": 2048},
     r"A trace of 2048 source and 2048 target tokens would take [\d,]+ MiB \(encoder [\d,]+, decoder [\d,]+, "
     r"cross-attention [\d,]+\); the limit here is 2,048 MiB"),
])
def test_bad_encoder_decoder_forms_are_refused(client: Client, changes: dict, message: str) -> None:
    with pytest.raises(AppError, match=message):
        client.predict(*fresh_args(**changes), api_name="/fresh_model")


def test_fresh_encoder_decoder_size_is_checked_before_it_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(**_: Any) -> None:
        raise AssertionError("an XTransformer was built over the budget")
    monkeypatch.setattr(xattn, "XTransformer", never)
    with pytest.raises(xattn.limits.TooLarge, match="source and 2048 target tokens"):
        fresh(depth=12, heads=16, dim=256, max_len=2048)


# Uploads


def encoder_decoder(**changes: Any) -> xattn.XTransformer:
    """A small XTransformer whose sides differ (depth, heads, max_seq_len), sharing a tied token embedding."""
    torch.manual_seed(0)
    keywords = dict(dim=32, tie_token_emb=True, enc_num_tokens=12, enc_depth=1, enc_heads=2, enc_max_seq_len=24,
                    dec_num_tokens=12, dec_depth=3, dec_heads=4, dec_max_seq_len=16, dec_cross_residual_attn=True)
    return xattn.XTransformer(**{**keywords, **changes}).eval()


def test_uploaded_xtransformer_checkpoint(client: Client, tmp_path: Path) -> None:
    model, tokenizer = encoder_decoder(), CharTokenizer("abcdefghij")
    xattn.save(model, tmp_path / "ed.safetensors", tokenizer=tokenizer)
    loaded = models.uploaded(str(tmp_path / "ed.safetensors"))
    assert loaded.encdec and loaded.tokenizer == tokenizer
    assert (loaded.depth, loaded.heads, loaded.max_seq_len, loaded.max_source_len) == (3, 4, 16, 24)
    dropdown, *_ = client.predict(handle_file(str(tmp_path / "ed.safetensors")), None, "", api_name="/upload_model")
    *_, cross_layer, cross_head = client.predict(dropdown["value"], api_name="/model_info")
    assert (cross_layer["maximum"], cross_head["maximum"]) == (2, 3)
    source, target = "abcabcjihg", "jjab"
    trace = direct(loaded, source, target)
    expected = model.run_with_trace(torch.tensor([tokenizer.encode(source)]), torch.tensor([tokenizer.encode(target)]))
    assert torch.equal(trace.cross["attn"], expected[1].cross["attn"])      # the upload holds the saved weights
    for stage, layer, head in (("attn", 2, 3), ("residual", 1, 2)):          # cross_residual_attn: layer 1 inherits
        figures = client.predict(dropdown["value"], source, target, stage, layer, head, api_name="/cross")
        check_figures(figures, trace, stage, layer, head)
    assert len(panels(figures[2])) == 1 * 2                                  # the encoder: 1 layer × 2 heads
    long_source = "abcdefghij" * 3                                           # cut at the encoder's 24, not 16
    *_, info = client.predict(dropdown["value"], long_source, target, "attn", 0, 0, api_name="/cross")
    assert "Source: The text is 31 tokens long" in info and "only the first 24 are shown" in info


def test_uploaded_x_transformers_encoder_decoder(client: Client, tmp_path: Path) -> None:
    x_transformers = pytest.importorskip("x_transformers")
    config = dict(dim=32, enc_num_tokens=12, enc_depth=1, enc_heads=2, enc_max_seq_len=16, dec_num_tokens=12,
                  dec_depth=2, dec_heads=2, dec_max_seq_len=16)
    torch.manual_seed(0)
    xt = x_transformers.XTransformer(**config)
    torch.save(xt.state_dict(), tmp_path / "xt.pt")
    (tmp_path / "xt.json").write_text(json.dumps(config))
    dropdown, *_ = client.predict(handle_file(str(tmp_path / "xt.pt")), handle_file(str(tmp_path / "xt.json")),
                                  "abcdefghij", api_name="/upload_model")
    ours = models.uploaded(str(tmp_path / "xt.pt"), str(tmp_path / "xt.json"), "abcdefghij")
    figures = client.predict(dropdown["value"], "abcde", "edc", "attn", 1, 1, api_name="/cross")
    check_figures(figures, direct(ours, "abcde", "edc"), "attn", 1, 1)


# Sizes of an EncDecConfig


def test_encdec_estimates_match_the_real_model() -> None:
    config = encoder_decoder(enc_attn_num_mem_kv=2, dec_attn_add_zero_kv=True).config
    model = xattn.XTransformer(config=config)
    assert xattn.limits.parameter_count(config) == sum(p.numel() for p in model.parameters())   # tied once
    src, tgt = torch.randint(0, 12, (2, 9)), torch.randint(0, 12, (2, 7))
    _, trace = model.run_with_trace(src, tgt)
    held = {part: sum(t.numel() * t.element_size() for t in traced.stages.values())
            for part, traced in (("encoder", trace.encoder), ("decoder", trace), ("cross-attention", trace.cross))}
    assert xattn.limits.encdec_trace_bytes(config, 2, 9, 7) == held


def test_limits_refuse_an_oversized_encdec_config_with_the_numbers() -> None:
    keywords = dict(dim=64, enc_num_tokens=100, enc_depth=6, enc_heads=8, enc_max_seq_len=1024, dec_num_tokens=100,
                    dec_depth=4, dec_heads=4, dec_max_seq_len=512)
    config = xattn.EncDecConfig.from_dict(keywords)
    stages, mib = len(xattn.STAGES), 2**20
    encoder, decoder = stages * 6 * 8 * 1024 * 1024 * 4, stages * 4 * 4 * 512 * 512 * 4
    crossed = stages * 4 * 4 * 512 * 1024 * 4
    total = encoder + decoder + crossed
    assert total > limits.MAX_TRACE_BYTES
    with pytest.raises(xattn.limits.TooLarge) as err:
        limits.check(config)
    assert str(err.value) == (
        f"a trace of 1024 source and 512 target tokens would take {total / mib:,.0f} MiB (encoder "
        f"{encoder / mib:,.0f}, decoder {decoder / mib:,.0f}, cross-attention {crossed / mib:,.0f}); the limit here "
        f"is {limits.MAX_TRACE_BYTES / mib:,.0f} MiB — use fewer layers, heads or tokens")
    limits.check(config, n=16, n_src=16)                                  # a short pair of texts fits
    limits.check(keywords, n=16, n_src=16)                                # so does the JSON form
    big = xattn.EncDecConfig.from_dict({**keywords, "dim": 1024, "enc_depth": 12, "dec_depth": 12})
    with pytest.raises(xattn.limits.TooLarge, match=f"this model would have {xattn.limits.parameter_count(big):,} "
                                                    "parameters; the limit here is 50,000,000"):
        limits.check(big)


def test_grid_of_a_cross_trace_is_pooled_by_its_longer_side() -> None:
    model = encoder_decoder(enc_max_seq_len=64)
    _, trace = model.run_with_trace(torch.randint(0, 12, (1, 40)), torch.randint(0, 12, (1, 6)))
    fig = viz.grid(trace.cross, "attn", max_cells=12 * 4 * 4 * 10)
    cells = sum(np.asarray(t.z).size for t in fig.data if t.type == "heatmap")
    assert cells <= 12 * 4 * 4 * 10 and "3 cross-attention layers × 4 heads" in fig.layout.title.text
    assert list(fig.layout.yaxis.ticktext) == ["cross layer 0", "cross layer 1", "cross layer 2"]   # the rows
