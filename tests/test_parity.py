"""xattn equals x-transformers on the same weights: logits and the stages x-transformers exposes."""
from __future__ import annotations

import pytest
import torch

import xattn

from conftest import reference_model, tiny_config

x_transformers = pytest.importorskip("x_transformers")

MATCHING = xattn.stages.X_TRANSFORMERS_FIELDS

CASES = [
    ("Encoder", {}), ("Encoder", {"residual_attn": True}), ("Encoder", {"rotary_pos_emb": True}),
    ("Encoder", {"alibi_pos_bias": True, "residual_attn": True}), ("Encoder", {"ff_glu": True, "ff_swish": True}),
    ("Decoder", {}), ("Decoder", {"residual_attn": True}), ("Decoder", {"attn_selective": True}),
    ("Decoder", {"residual_attn": True, "attn_selective": True}),
    ("Decoder", {"rotary_pos_emb": True, "residual_attn": True, "attn_selective": True}),
    ("Decoder", {"alibi_pos_bias": True, "attn_selective": True}),
    # blocks and norms
    ("Decoder", {"use_rmsnorm": True}), ("Encoder", {"use_scalenorm": True}), ("Decoder", {"use_simple_rmsnorm": True}),
    ("Decoder", {"pre_norm": False}), ("Encoder", {"sandwich_norm": True, "use_rmsnorm": True}),
    ("Decoder", {"ff_post_act_ln": True}), ("Decoder", {"ff_post_act_ln": True, "ff_glu": True}),
    ("Decoder", {"scale_residual": True}), ("Encoder", {"gate_residual": True}), ("Decoder", {"macaron": True}),
    ("Decoder", {"custom_layers": ("a", "a", "f", "a", "f")}), ("Decoder", {"par_ratio": 2}),
    ("Decoder", {"norm_add_unit_offset": False, "use_rmsnorm": True}),
    ("Decoder", {"residual_attn": True, "attn_selective": True, "use_rmsnorm": True, "sandwich_norm": True,
                 "macaron": True, "scale_residual": True}),
]


def inputs(padded: bool):
    tokens = torch.randint(0, 23, (3, 12), generator=torch.Generator().manual_seed(7))
    if not padded:
        return tokens, None
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 8:] = False      # right padding
    mask[2, :3] = False      # left padding
    return tokens, mask


def max_visible_difference(ours: torch.Tensor, theirs: torch.Tensor, visible: torch.Tensor) -> float:
    visible = visible[None, :, None].expand_as(ours)
    return (ours - theirs)[visible].abs().max().item()


def compare(model: xattn.TransformerWrapper, reference: torch.nn.Module, tokens, mask,
            attn_mask=None) -> dict[str, float]:
    with torch.no_grad():
        ref_logits, inter = reference(tokens, mask=mask, attn_mask=attn_mask, return_intermediates=True)
        logits, trace = model.run_with_trace(tokens, mask=mask, attn_mask=attn_mask)
    real = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask
    errors = {"logits": (logits - ref_logits)[real].abs().max().item()}
    for ours, theirs in MATCHING.items():
        ref = torch.stack([getattr(i, theirs) for i in inter.attn_intermediates])
        errors[ours] = max_visible_difference(trace[ours], ref, trace.visible)
    return errors


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("kind,options", CASES, ids=[f"{k}-{'-'.join(o) or 'plain'}" for k, o in CASES])
def test_parity_with_x_transformers(kind, options, padded):
    torch.manual_seed(0)
    reference = reference_model(tiny_config(kind, **options))
    model = xattn.from_x_transformers(reference)
    errors = compare(model, reference, *inputs(padded))
    assert max(errors.values()) <= 1e-5, errors


def test_parity_with_custom_attention_mask():
    torch.manual_seed(0)
    reference = reference_model(tiny_config("Decoder", residual_attn=True))
    model = xattn.from_x_transformers(reference)
    tokens, mask = inputs(padded=True)
    window = xattn.masks.sliding_window(12, 3)
    errors = compare(model, reference, tokens, mask, attn_mask=window)
    assert max(errors.values()) <= 1e-5, errors


def test_parity_check_can_fail():
    """The comparison is meaningful: one perturbed weight shows up in every compared quantity."""
    torch.manual_seed(0)
    reference = reference_model(tiny_config("Decoder", residual_attn=True))
    model = xattn.from_x_transformers(reference)
    with torch.no_grad():
        model.attn_layers.attention[0].to_k.weight[0, 0] += 0.5
    errors = compare(model, reference, *inputs(padded=False))
    assert min(errors.values()) > 1e-4, errors


def test_state_dict_and_config_route(tmp_path):
    torch.manual_seed(0)
    config = tiny_config("Decoder", residual_attn=True, attn_selective=True, rotary_pos_emb=True)
    reference = reference_model(config)
    model = xattn.from_x_transformers_state_dict(reference.state_dict(), config)
    assert max(compare(model, reference, *inputs(True)).values()) <= 1e-5

    # The same through files: a torch state dict (read with weights_only=True) and its JSON config.
    weights, config_file = tmp_path / "xt.pt", tmp_path / "xt.json"
    torch.save(reference.state_dict(), weights)
    import json
    config_file.write_text(json.dumps(config))
    loaded = xattn.load_checkpoint(weights, config_file)
    assert max(compare(loaded, reference, *inputs(True)).values()) <= 1e-5


@pytest.mark.parametrize("option,named", [
    ({"attn_laser": True}, "attn_laser"), ({"attn_hard": True}, "attn_hard"),
    ({"polar_pos_emb": True}, "polar_pos_emb"),
    ({"attn_use_cope": True, "attn_cope_soft_onehot_pos": True}, "attn_cope_soft_onehot_pos"),
    ({"use_dynamic_tanh": True}, "DynamicTanh"), ({"attn_output_gate": True}, "attn_output_gate"),
])
def test_unsupported_options_are_listed(option, named):
    reference = reference_model(tiny_config("Decoder", **option))
    with pytest.raises(ValueError, match="does not support") as err:
        xattn.from_x_transformers(reference)
    assert named in str(err.value)


def test_several_unsupported_options_listed_together():
    reference = reference_model(tiny_config("Decoder", attn_laser=True, use_dynamic_tanh=True))
    with pytest.raises(ValueError) as err:
        xattn.from_x_transformers(reference)
    assert "attn_laser" in str(err.value) and "DynamicTanh" in str(err.value)


def test_unsupported_config_in_state_dict_route():
    config = tiny_config("Decoder", attn_laser=True)
    reference = reference_model(config)
    with pytest.raises(ValueError, match="attn_laser"):
        xattn.from_x_transformers_state_dict(reference.state_dict(), config)


def test_parity_with_per_batch_attention_mask():
    """xattn reads a 3-D attn_mask as [batch, query, key]; x-transformers takes that as 4-D [batch, 1, query, key]."""
    torch.manual_seed(0)
    reference = reference_model(tiny_config("Encoder", residual_attn=True))
    model = xattn.from_x_transformers(reference)
    tokens, _ = inputs(padded=False)
    per_batch = torch.stack([xattn.masks.sliding_window(12, w) for w in (1, 2, 5)])
    with torch.no_grad():
        ref_logits, inter = reference(tokens, attn_mask=per_batch[:, None], return_intermediates=True)
        logits, trace = model.run_with_trace(tokens, attn_mask=per_batch)
    assert torch.equal(trace.visible, per_batch)
    assert (logits - ref_logits).abs().max() <= 1e-5
    ref = torch.stack([i.post_softmax_attn for i in inter.attn_intermediates])
    assert max_visible_difference(trace["attn"], ref, trace.visible) <= 1e-5
