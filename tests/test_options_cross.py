"""Cross-attention (cross_attend, only_cross, cross_residual_attn) and the encoder–decoder XTransformer:
parity with x-transformers, cross scores by hand, hook points, traces, config round trips, refusals, figure."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
import xt_cases as X

import xattn
from xattn import viz
from xattn.config import EncDecConfig, LayersConfig, config_from_dict
from xattn.limits import parameter_count

x_transformers = pytest.importorskip("x_transformers")

ATOL, RTOL = 1e-5, 1e-4
FILL = -torch.finfo(torch.float32).max


def reference_decoder(**layer_kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = dict(dim=X.DIM, heads=X.HEADS, attn_dim_head=X.DIM_HEAD, cross_attend=True, **layer_kwargs)
    if "custom_layers" not in layer_kwargs:
        kwargs.setdefault("depth", X.DEPTH)
    layers = x_transformers.Decoder(**kwargs)
    model = x_transformers.TransformerWrapper(num_tokens=X.NUM_TOKENS, max_seq_len=X.MAX_SEQ_LEN,
                                              attn_layers=layers).eval()
    X.randomize_(model)
    return model


def reference_xtransformer(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    sizes = dict(num_tokens=X.NUM_TOKENS, max_seq_len=X.MAX_SEQ_LEN, depth=X.DEPTH, heads=X.HEADS,
                 attn_dim_head=X.DIM_HEAD)
    model = x_transformers.XTransformer(dim=X.DIM, **{f"{s}_{k}": v for s in ("enc", "dec") for k, v in sizes.items()},
                                        **kwargs).eval()
    X.randomize_(model)
    return model


def padded_inputs(n: int = 7, m: int = 6, batch: int = 3) -> dict[str, torch.Tensor]:
    """Tokens padded in row 1; a context padded in rows 1 and 2, row 2 entirely (no visible context key)."""
    g = torch.Generator().manual_seed(3)
    mask = torch.ones(batch, n, dtype=torch.bool)
    mask[1, n - 2:] = False
    context_mask = torch.ones(batch, m, dtype=torch.bool)
    context_mask[1, m - 3:] = False
    context_mask[2] = False
    return dict(tokens=torch.randint(0, X.NUM_TOKENS, (batch, n), generator=g), mask=mask,
                context=torch.randn(batch, m, X.DIM, generator=g), context_mask=context_mask)


def assert_stages_match(ours: torch.Tensor, refs: list, theirs: str, what: str) -> None:
    ref = torch.stack([getattr(i, theirs) for i in refs])
    assert ours.shape == ref.shape, f"{what}: {tuple(ours.shape)} vs {tuple(ref.shape)}"
    filled = ref <= FILL / 2
    assert torch.equal(filled, ours <= FILL / 2), f"{what}: masked cells differ"
    torch.testing.assert_close(ours[~filled], ref[~filled], atol=ATOL, rtol=RTOL)


def by_type(inter, layer_type: str) -> list:
    return [i for i in inter.attn_intermediates if i.layer_type == layer_type]


# --- parity with x-transformers ------------------------------------------------------------------------------

@pytest.mark.parametrize("layer_kwargs", [
    {}, dict(only_cross=True), dict(cross_residual_attn=True), dict(cross_residual_attn=True, residual_attn=True),
    dict(macaron=True), dict(custom_layers=("a", "c", "c", "f", "a", "f")), dict(depth=3, par_ratio=3),
    dict(rotary_pos_emb=True), dict(alibi_pos_bias=True), dict(use_rmsnorm=True, sandwich_norm=True),
], ids=["plain", "only_cross", "cross_residual", "both_residuals", "macaron", "custom_layers", "par_ratio",
        "rotary", "alibi", "rmsnorm_sandwich"])
def test_cross_decoder_matches_x_transformers(layer_kwargs):
    reference = reference_decoder(**layer_kwargs)
    model = xattn.from_x_transformers(reference)
    assert model.attn_layers.config.layer_types == tuple(reference.attn_layers.layer_types)
    inputs = padded_inputs()
    with torch.no_grad():
        ref, inter = reference(inputs["tokens"], mask=inputs["mask"], context=inputs["context"],
                               context_mask=inputs["context_mask"], return_intermediates=True)
    logits, trace = model.run_with_trace(inputs["tokens"], mask=inputs["mask"], context=inputs["context"],
                                         context_mask=inputs["context_mask"])
    valid = inputs["mask"]
    torch.testing.assert_close(logits[valid], ref[valid], atol=ATOL, rtol=RTOL)
    assert (logits[valid] - ref[valid]).abs().max() <= 1e-5
    for stage, theirs in (("attn", "post_softmax_attn"), ("pre_softmax", "pre_softmax_attn")):
        assert_stages_match(trace.cross[stage], by_type(inter, "c"), theirs, f"cross {stage}")
        if by_type(inter, "a"):
            assert_stages_match(trace[stage], by_type(inter, "a"), theirs, f"self {stage}")


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tie_token_emb"])
def test_xtransformer_matches_x_transformers(tie):
    reference = reference_xtransformer(tie_token_emb=tie)
    model = xattn.from_x_transformers(reference)
    assert isinstance(model, xattn.XTransformer) and model.config.tie_token_emb == tie
    assert (model.decoder.token_emb is model.encoder.token_emb) == tie
    inputs = padded_inputs()
    src, src_mask = inputs["tokens"], inputs["mask"]
    tgt = torch.randint(0, X.NUM_TOKENS, (3, 5), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        enc, enc_inter = reference.encoder(src, mask=src_mask, return_embeddings=True, return_intermediates=True)
        ref, inter = reference.decoder.net(tgt, context=enc, context_mask=src_mask, return_intermediates=True)
        torch.testing.assert_close(model(src, tgt, mask=src_mask), ref, atol=ATOL, rtol=RTOL)
    logits, trace = model.run_with_trace(src, tgt, mask=src_mask)
    torch.testing.assert_close(logits, ref, atol=ATOL, rtol=RTOL)
    for stage, theirs in (("attn", "post_softmax_attn"), ("pre_softmax", "pre_softmax_attn")):
        assert_stages_match(trace[stage], by_type(inter, "a"), theirs, f"decoder self {stage}")
        assert_stages_match(trace.cross[stage], by_type(inter, "c"), theirs, f"decoder cross {stage}")
        assert_stages_match(trace.encoder[stage], by_type(enc_inter, "a"), theirs, f"encoder {stage}")
    assert trace.cross.key_labels == [[str(t) for t in row] for row in src.tolist()]
    assert torch.equal(trace.cross.visible, src_mask[:, None].expand(3, 5, src.shape[1]))


def test_xtransformer_state_dict_and_keywords_load():
    """An x-transformers XTransformer's state dict with its constructor keywords (the JSON-config route)."""
    reference = reference_xtransformer(tie_token_emb=True, enc_attn_flash=False, ignore_index=0)
    keywords = dict(dim=X.DIM, tie_token_emb=True, enc_num_tokens=X.NUM_TOKENS, enc_max_seq_len=X.MAX_SEQ_LEN,
                    enc_depth=X.DEPTH, enc_heads=X.HEADS, enc_attn_dim_head=X.DIM_HEAD, enc_attn_flash=False,
                    dec_num_tokens=X.NUM_TOKENS, dec_max_seq_len=X.MAX_SEQ_LEN, dec_depth=X.DEPTH,
                    dec_heads=X.HEADS, dec_attn_dim_head=X.DIM_HEAD, ignore_index=0)
    model = xattn.from_x_transformers_state_dict(reference.state_dict(), keywords)
    src, tgt = torch.randint(0, X.NUM_TOKENS, (2, 6)), torch.randint(0, X.NUM_TOKENS, (2, 4))
    with torch.no_grad():
        enc = reference.encoder(src, return_embeddings=True)
        torch.testing.assert_close(model(src, tgt), reference.decoder.net(tgt, context=enc), atol=ATOL, rtol=RTOL)
    with pytest.raises(ValueError, match="dec_attn_laser"):
        xattn.from_x_transformers_state_dict(reference.state_dict(), dict(keywords, dec_attn_laser=True))


# --- stages by hand -------------------------------------------------------------------------------------------

def only_cross_model() -> xattn.TransformerWrapper:
    torch.manual_seed(0)
    config = dict(num_tokens=X.NUM_TOKENS, max_seq_len=X.MAX_SEQ_LEN,
                  attn_layers=dict(kind="Decoder", dim=X.DIM, depth=2, heads=X.HEADS, attn_dim_head=X.DIM_HEAD,
                                   cross_attend=True, only_cross=True, cross_residual_attn=True))
    return xattn.build(config).eval()


def test_cross_scores_masks_and_pattern_by_hand():
    """Layer 0 of an only-cross decoder reads the embeddings: q from the normed stream, k from the raw context."""
    model, inputs = only_cross_model(), padded_inputs()
    tokens, context, context_mask = inputs["tokens"], inputs["context"], inputs["context_mask"]
    _, trace = model.run_with_trace(tokens, context=context, context_mask=context_mask)
    x = model.token_emb.weight[tokens] + model.pos_emb.weight[: tokens.shape[1]] * X.DIM ** -0.5
    normed = F.layer_norm(x, (X.DIM,)) * model.attn_layers.layers[0].norm.weight
    attn = model.attn_layers.cross_attention[0]
    q = (normed @ attn.to_q.weight.T).unflatten(-1, (X.HEADS, X.DIM_HEAD))      # b i h d
    k = (context @ attn.to_k.weight.T).unflatten(-1, (X.HEADS, X.DIM_HEAD))     # b j h d
    scores = torch.zeros(3, X.HEADS, tokens.shape[1], context.shape[1])
    for i in range(tokens.shape[1]):
        for j in range(context.shape[1]):
            scores[:, :, i, j] = (q[:, i] * k[:, j]).sum(-1) / math.sqrt(X.DIM_HEAD)
    torch.testing.assert_close(trace.cross["scores"][0], scores, atol=1e-5, rtol=1e-5)
    hidden = ~context_mask[:, None, None, :].expand_as(scores)
    masked = scores.masked_fill(hidden, FILL)
    torch.testing.assert_close(trace.cross["masked"][0], masked, atol=1e-5, rtol=1e-5)
    pattern = masked.softmax(-1)
    torch.testing.assert_close(trace.cross["attn"][0], pattern, atol=1e-6, rtol=1e-5)
    assert trace.cross["attn"][:, 1, :, :, 3:].abs().max() == 0          # padded context positions get nothing
    assert torch.equal(trace.cross.fully_masked, ~context_mask.any(-1)[:, None].expand(3, tokens.shape[1]))
    # cross_residual_attn: layer 1 adds layer 0's pre-softmax logits; layer 0 adds nothing
    assert not trace.cross["residual"][0].any()
    assert torch.equal(trace.cross["residual"][1], trace.cross["pre_softmax"][0])
    assert trace.stages == {} and trace.layers == []                        # no self-attention layer to trace


def test_fully_masked_context_row_gets_zero_cross_output():
    model, inputs = only_cross_model(), padded_inputs()
    outputs = []
    with model.hooks([("cross_layers.0.attn.hook_attn", lambda t, h: None)]):   # hooks attach to cross points
        for context in (inputs["context"], torch.randn_like(inputs["context"])):
            outputs.append(model(inputs["tokens"], context=context, context_mask=inputs["context_mask"]))
    torch.testing.assert_close(outputs[0][2], outputs[1][2])                 # row 2 sees no context: same logits
    assert not torch.allclose(outputs[0][0], outputs[1][0])


# --- hook points, stages, traces ------------------------------------------------------------------------------

def test_cross_hook_points_are_named_apart_and_replace():
    reference = reference_decoder()
    model = xattn.from_x_transformers(reference)
    names = model.hook_points()
    assert len(names) == 2 * 2 * len(xattn.STAGES)
    assert "cross_layers.1.attn.hook_pre_softmax" in names and "layers.1.attn.hook_pre_softmax" in names
    assert names["cross_layers.0.attn.hook_attn"].cross and not names["layers.0.attn.hook_attn"].cross
    inputs = padded_inputs()
    kwargs = dict(context=inputs["context"], context_mask=inputs["context_mask"])
    _, before = model.run_with_trace(inputs["tokens"], **kwargs)

    def flatten(logits, hook):
        return torch.where(logits > FILL / 2, torch.zeros_like(logits), logits)

    with model.hooks([("cross_layers.0.attn.hook_pre_softmax", flatten)]):
        _, after = model.run_with_trace(inputs["tokens"], **kwargs)
    visible = inputs["context_mask"][0]
    torch.testing.assert_close(after.cross["attn"][0, 0, :, :, visible], torch.full((4, 7, 6), 1 / 6))
    assert torch.equal(after["attn"][0], before["attn"][0])                 # self layer 0 runs before cross 0
    assert not torch.equal(after["attn"][1], before["attn"][1])
    _, chosen = model.run_with_trace(inputs["tokens"], stages=["attn"], layers=[1], **kwargs)
    assert list(chosen.stages) == ["attn"] and chosen.layers == [1] and chosen.cross.layers == [0, 1]


def test_cross_stages_in_use():
    layers = LayersConfig.from_kwargs("Decoder", dim=32, depth=2, cross_attend=True, cross_residual_attn=True)
    assert layers.stages_in_use() == ("scores", "masked", "attn")
    assert layers.stages_in_use(cross=True) == ("scores", "residual", "scores_residual", "masked", "attn")
    both = layers.replace(residual_attn=True, alibi_pos_bias=True)
    assert "biased" in both.stages_in_use() and "biased" not in both.stages_in_use(cross=True)


@pytest.mark.parametrize("kwargs,expected", [
    (dict(depth=2), ("a", "c", "f", "a", "c", "f")),
    (dict(depth=2, only_cross=True), ("c", "f", "c", "f")),
    (dict(depth=1, macaron=True), ("f", "a", "c", "f")),
    (dict(depth=1, only_cross=True, macaron=True), ("f", "c", "f")),
    (dict(depth=2, custom_layers=("c", "a", "f")), ("c", "a", "f")),
])
def test_cross_layer_types_follow_x_transformers(kwargs, expected):
    ours = LayersConfig.from_kwargs("Decoder", dim=32, cross_attend=True, **kwargs)
    theirs = x_transformers.Decoder(dim=32, cross_attend=True, **kwargs)
    assert ours.layer_types == tuple(theirs.layer_types) == expected
    assert ours.num_cross_layers == expected.count("c")


@pytest.mark.parametrize("kwargs,named", [
    (dict(only_cross=True), "only_cross"),
    (dict(cross_residual_attn=True), "cross_residual_attn"),
    (dict(custom_layers=("a", "c", "f")), "cross_attend"),
    (dict(cross_attend=True, custom_layers=("a", "f")), "cross_attend"),
    (dict(cross_attend=True, attn_selective=True), "attn_selective"),
    (dict(cross_attend=True, depth=4, par_ratio=2), "par_ratio"),
])
def test_bad_cross_combinations_are_refused(kwargs, named):
    with pytest.raises(ValueError, match=named):
        LayersConfig.from_kwargs("Decoder", dim=32, **{"depth": 2, **kwargs})


def test_context_is_checked():
    model, inputs = only_cross_model(), padded_inputs()
    tokens, context = inputs["tokens"], inputs["context"]
    with pytest.raises(ValueError, match="cross_attend=True"):
        model(tokens)
    with pytest.raises(ValueError, match="context must be"):
        model(tokens, context=context[:, :, :8])
    with pytest.raises(ValueError, match="context_mask must be"):
        model(tokens, context=context, context_mask=inputs["context_mask"][:, :2])
    torch.manual_seed(0)
    plain = xattn.build(dict(num_tokens=20, max_seq_len=16, attn_layers=dict(kind="Decoder", dim=32, depth=1)))
    with pytest.raises(ValueError, match="does not cross-attend"):
        plain(tokens, context=context)


# --- configs, saving, building ----------------------------------------------------------------------------------

def test_encdec_config_round_trips_and_checks():
    config = EncDecConfig.from_dict(dict(dim=32, tie_token_emb=True, enc_num_tokens=20, enc_max_seq_len=16,
                                         enc_depth=1, enc_heads=2, enc_use_rmsnorm=True, dec_num_tokens=20,
                                         dec_max_seq_len=12, dec_depth=2, dec_cross_residual_attn=True))
    assert config.encoder.return_only_embed and config.decoder.attn_layers.cross_attend
    data = config.to_dict()
    assert data["enc_use_rmsnorm"] and data["dec_cross_residual_attn"] and "dec_cross_attend" not in data
    assert config_from_dict(json.loads(json.dumps(data))) == config
    with pytest.raises(ValueError, match="tie_token_emb"):
        EncDecConfig.from_dict(dict(data, dec_num_tokens=21))
    with pytest.raises(ValueError, match="unknown XTransformer option"):
        EncDecConfig.from_dict(dict(data, depth=2))
    with pytest.raises(ValueError, match="cross_attend"):
        EncDecConfig.from_dict(dict(data, dec_cross_attend=False))
    with pytest.raises(ValueError, match="needs dec_depth"):
        EncDecConfig.from_dict({k: v for k, v in data.items() if k != "dec_depth"})


def test_xtransformer_saves_loads_and_builds_on_meta(tmp_path):
    torch.manual_seed(0)
    model = xattn.XTransformer(dim=32, tie_token_emb=True, enc_num_tokens=20, enc_max_seq_len=16, enc_depth=1,
                               dec_num_tokens=20, dec_max_seq_len=16, dec_depth=1).eval()
    path = tmp_path / "encdec.safetensors"
    xattn.save(model, path)
    loaded = xattn.load(path)
    assert isinstance(loaded, xattn.XTransformer) and loaded.config == model.config
    assert loaded.decoder.token_emb is loaded.encoder.token_emb
    src, tgt = torch.randint(0, 20, (2, 5)), torch.randint(0, 20, (2, 4))
    torch.testing.assert_close(loaded(src, tgt), model(src, tgt))
    assert isinstance(xattn.build_any(model.config.to_dict()), xattn.XTransformer)
    assert isinstance(xattn.build_any(model.config.decoder.to_dict()), xattn.TransformerWrapper)
    assert parameter_count(model.config.decoder) < sum(p.numel() for p in model.parameters())
    with torch.device("meta"):
        on_meta = xattn.build_any(model.config)
    assert sum(p.numel() for p in on_meta.parameters()) == sum(p.numel() for p in model.parameters())


# --- the figure ---------------------------------------------------------------------------------------------------

def test_cross_heatmap_has_decoder_rows_and_context_columns():
    model = xattn.from_x_transformers(reference_xtransformer())
    src, tgt = torch.randint(0, X.NUM_TOKENS, (1, 6)), torch.randint(0, X.NUM_TOKENS, (1, 4))
    src_labels, tgt_labels = [list("abcdef")], [list("wxyz")]
    _, trace = model.run_with_trace(src, tgt, src_labels=src_labels, tgt_labels=tgt_labels)
    fig = viz.heatmap(trace.cross, layer=1, head=2)
    assert fig.layout.xaxis.title.text == "context (encoder) token"
    assert fig.layout.yaxis.title.text == "decoder token"
    assert "cross-attention layer 1" in fig.layout.title.text
    panel = fig.data[0]
    assert list(panel.x) == [f"{t}·{j}" for j, t in enumerate("abcdef")]
    assert list(panel.y) == [f"{t}·{i}" for i, t in enumerate("wxyz")]
    assert panel.customdata.shape == (4, 6)
    torch.testing.assert_close(torch.from_numpy(panel.customdata), trace.cross["attn"][1, 0, 2])
    strip = viz.stages(trace.cross, layer=0, head=1)
    assert strip.layout.xaxis.title.text == "context (encoder) token" and list(strip.data[0].x) == list(panel.x)
    subtitle = strip.layout.annotations[1].text.replace("<br>", " ")          # subtitles wrap to fit a panel
    assert "(residual attention off)" in subtitle                                # cross_residual_attn is off
    assert list(viz.query_row(trace.cross, layer=0, query=3).data[0].x) == list(panel.x)
    self_fig = viz.heatmap(trace, layer=0, head=0)
    assert self_fig.layout.xaxis.title.text == "key" and list(self_fig.data[0].x) == list(self_fig.data[0].y)
