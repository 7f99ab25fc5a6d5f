"""From x-transformers to xattn: the same weights and config, or an error listing what xattn lacks.

x-transformers is optional: only `from_x_transformers` imports it, and only to recognise its modules.
"""
from __future__ import annotations

import re
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from .io import load_state
from .wrapper import TransformerWrapper, build

# Keyword arguments that change how x-transformers runs, not what it computes in eval mode.
HARMLESS_KWARGS = {"attn_flash", "verbose", "attn_onnxable", "layer_dropout", "attn_sublayer_dropout",
                   "ff_sublayer_dropout", "norm_add_unit_offset"}


def from_x_transformers_state_dict(state_dict: dict[str, Tensor], config: dict[str, Any]) -> TransformerWrapper:
    """Build xattn from an x-transformers TransformerWrapper's constructor kwargs and its state dict.

    config: {"num_tokens", "max_seq_len", ..., "attn_layers": {"kind": "Decoder", "dim", "depth", ...}}.
    """
    config = dict(config)
    layers = dict(config["attn_layers"])
    unit_offset = layers.get("norm_add_unit_offset", True)
    layers = {k: v for k, v in layers.items() if k not in HARMLESS_KWARGS}
    config["attn_layers"] = layers
    try:
        model = build(config)
    except TypeError as err:
        raise ValueError(f"xattn cannot represent this x-transformers config: {err}") from None
    load_state(model, map_state_dict(state_dict, model, unit_offset))
    return model.eval()


def map_state_dict(state_dict: dict[str, Tensor], model: TransformerWrapper, unit_offset: bool = True) -> dict[str, Tensor]:
    """Rename x-transformers keys to xattn keys. Its layer list alternates attention (even) and feed-forward (odd)."""
    gain = 1.0 if unit_offset else 0.0
    mapped: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("rotary_pos_emb.inv_freq"):
            continue  # recomputed from the config
        if key in ("token_emb.emb.weight", "pos_emb.emb.weight"):
            mapped[key.replace(".emb.", ".")] = value
        elif key == "to_logits.weight":
            mapped[key] = value
        elif key == "attn_layers.final_norm.gamma":
            mapped["attn_layers.final_norm.weight"] = value + gain
        elif m := re.fullmatch(r"attn_layers\.layers\.(\d+)\.(.*)", key):
            index, rest = int(m[1]), m[2]
            layer, is_ff = divmod(index, 2)
            prefix = f"attn_layers.layers.{layer}."
            if rest == "0.0.gamma":
                mapped[prefix + ("ff_norm" if is_ff else "attn_norm") + ".weight"] = value + gain
            elif not is_ff and (a := re.fullmatch(r"1\.(to_[qkvo]\w*)\.weight", rest)):
                mapped[prefix + f"attn.{a[1]}.weight"] = value
            elif is_ff and (f := re.fullmatch(r"1\.ff\.(0\.0|0\.proj|2)\.(weight|bias)", rest)):
                mapped[prefix + ("ff.proj_out." if f[1] == "2" else "ff.proj_in.") + f[2]] = value
            else:
                raise ValueError(f"x-transformers weight {key} has no counterpart in xattn")
        else:
            raise ValueError(f"x-transformers weight {key} has no counterpart in xattn")
    for layer, block in enumerate(model.attn_layers.layers):  # heads == 1 with dim_head == dim: no out projection
        key = f"attn_layers.layers.{layer}.attn.to_out.weight"
        if key not in mapped and key.replace("to_out", "to_q") in mapped:
            mapped[key] = torch.eye(block.attn.to_out.weight.shape[0], dtype=block.attn.to_out.weight.dtype)
    return mapped


def from_x_transformers(model: nn.Module) -> TransformerWrapper:
    """An xattn model equal to an `x_transformers.TransformerWrapper` (Encoder or Decoder layers)."""
    config, unsupported = x_transformers_config(model)
    if unsupported:
        raise ValueError("xattn does not support these x-transformers options: " + "; ".join(unsupported))
    return from_x_transformers_state_dict(model.state_dict(), config)


def x_transformers_config(model: nn.Module) -> tuple[dict[str, Any], list[str]]:
    """(constructor config read off an x-transformers model, the options in it xattn cannot run)."""
    import x_transformers.x_transformers as xt

    unsupported: list[str] = []

    def need(condition: bool, what: str) -> None:
        if not condition:
            unsupported.append(what)

    need(isinstance(model, xt.TransformerWrapper), f"a {type(model).__name__} (xattn takes a TransformerWrapper)")
    if unsupported:
        return {}, unsupported
    layers = model.attn_layers
    kind = type(layers).__name__
    need(kind in ("Encoder", "Decoder"), f"{kind} layers (xattn takes Encoder or Decoder)")
    need(isinstance(model.pos_emb, (xt.AbsolutePositionalEmbedding, xt.always)), "scaled_sinu_pos_emb")
    need(not model.l2norm_embed, "l2norm_embed")
    for name in ("post_emb_norm", "project_emb"):
        need(isinstance(getattr(model, name), (nn.Identity, xt.Identity)), name)
    for name in ("num_memory_tokens", "max_mem_len", "shift_mem_down"):
        need(not getattr(model, name, 0), name)
    for name in ("cls_token", "attn_pool", "embeds", "ff_deep_embed", "recycled_proj", "to_mixture"):
        need(getattr(model, name, None) is None, name)
    for name in ("average_pool_embed", "sigsoftmax_logits", "add_continuous_pred_head", "has_multiple_heads", "looped"):
        need(not getattr(model, name, False), name)
    need(model.emb_frac_gradient == 1.0, "emb_frac_gradient")
    tied = not isinstance(model.to_logits, nn.Module)
    dim = layers.dim
    if tied:
        need(abs(model.tie_embedding_scale - dim ** -0.5) < 1e-12, "tie_embedding_scale")

    types = tuple(layers.layer_types)
    depth = types.count("a")
    need(types == ("a", "f") * depth, f"layer pattern {''.join(types)} (xattn runs attention, feed-forward, repeated)")
    need(tuple(layers.layers_execute_order) == tuple(range(len(types))), "layers_execute_order / weight_tie_layers")
    need(layers.pre_norm and not layers.sandwich_norm and not layers.pre_and_post_norm, "post-norm or sandwich norm")
    need(not layers.cross_attend, "cross_attend")
    need(layers.num_residual_streams == 1, "num_residual_streams")
    need(not layers.need_condition, "adaptive norms")
    need(not layers.softclamp_output, "softclamp_output")
    need(not layers.reinject_input, "reinject_input")
    need(not layers.add_value_residual, "add_value_residual")
    need(not layers.unet_skips, "unet_skips")
    need(layers.polar_pos_emb is None, "polar_pos_emb")
    need(all(m is None for m in layers.layer_integrators), "integrate_layers / attn_aggregated_residuals")
    rel_pos = layers.rel_pos
    need(rel_pos is None or type(rel_pos) is xt.AlibiPositionalBias, f"{type(rel_pos).__name__}")
    alibi = rel_pos if type(rel_pos) is xt.AlibiPositionalBias else None
    rotary = layers.rotary_pos_emb
    rotary_dim = None
    if rotary is not None:
        rotary_dim = rotary.inv_freq.numel() * 2
        expected = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))
        need(rotary.scale is None, "rotary_xpos")
        need(rotary.interpolation_factor == 1.0 and torch.allclose(rotary.inv_freq.cpu(), expected),
             "rotary_interpolation_factor / rotary_base_rescale_factor")

    unit_offsets = set()
    attn_cfg: dict[str, Any] = {}
    ff_cfg: dict[str, Any] = {}
    for index, (norms, block, residual) in enumerate(layers.layers):
        pre, post_branch, post_main = norms
        need(type(pre) is xt.LayerNorm, f"{type(pre).__name__} (xattn uses LayerNorm)")
        unit_offsets.add(getattr(pre, "unit_offset", True))
        need(type(residual) is xt.Residual and residual.residual_scale is None
             and residual.scale_residual_constant == 1, "residual scaling / gating")
        if isinstance(block, xt.Attention):
            attn_cfg = attention_config(block, layers.attn_heads, need)
        elif isinstance(block, xt.FeedForward):
            ff_cfg = feedforward_config(block, dim, need)
        else:
            unsupported.append(f"layer {index}: {type(block).__name__} (macaron, layer scale, shift tokens)")
    need(len(unit_offsets) <= 1 and type(layers.final_norm) is xt.LayerNorm, "mixed norms")

    layer_config = dict(kind=kind, dim=dim, depth=depth, heads=layers.attn_heads,
                        residual_attn=layers.residual_attn, rotary_pos_emb=rotary is not None,
                        rotary_emb_dim=rotary_dim, alibi_pos_bias=alibi is not None,
                        alibi_num_heads=alibi.heads if alibi is not None else None,
                        norm_add_unit_offset=unit_offsets.pop() if unit_offsets else True,
                        **{f"attn_{k}": v for k, v in attn_cfg.items()}, **{f"ff_{k}": v for k, v in ff_cfg.items()})
    config = dict(num_tokens=model.num_tokens, max_seq_len=model.max_seq_len,
                  use_abs_pos_emb=isinstance(model.pos_emb, xt.AbsolutePositionalEmbedding),
                  tie_embedding=tied, attn_layers=layer_config)
    return config, unsupported


def attention_config(attn: nn.Module, heads: int, need) -> dict[str, Any]:
    attend = attn.attend
    dim_head = attn.to_q.weight.shape[0] // heads
    need(attn.kv_heads == heads, "attn_kv_heads / attn_one_kv_head")
    need(abs(attend.scale - dim_head ** -0.5) < 1e-12, "attn_qk_norm or a custom scale")
    fn = attend.attn_fn
    while isinstance(fn, partial):
        fn = fn.func
    need(fn is torch.nn.functional.softmax, "a non-softmax attention function (sigmoid, hard, sparse top-k, gumbel)")
    for name in ("pre_softmax_talking_heads", "post_softmax_talking_heads", "pre_scale_post_talking_heads", "cope"):
        need(getattr(attend, name, None) is None, f"attn {name}")
    for name in ("l2_distance", "cog_signed", "add_zero_kv", "head_learned_sink", "softclamp_logits", "inverted_attention"):
        need(not getattr(attend, name, False), f"attn_{name}")
    for name in ("to_v_gate", "to_output_gate", "to_v_head_gate", "q_rmsnorm", "k_rmsnorm", "value_rmsnorm",
                 "data_dependent_alibi", "rel_proj_pos_bias", "hybrid_module", "max_attend_past", "to_latent_q",
                 "to_latent_kv"):
        need(getattr(attn, name, None) is None, f"attn {name}")
    for name in ("head_scale", "qk_norm", "laser", "orthog_projected_values", "orthog_projected_values_per_head",
                 "qkv_receive_diff_residuals"):
        need(not getattr(attn, name, False), f"attn_{name}")
    need(attn.num_mem_kv == 0, "attn_num_mem_kv")
    need(attn.rotate_num_heads == heads, "rotate_num_heads")
    need(isinstance(attn.to_out, (nn.Linear, nn.Identity)), "attn_on_attn")
    return dict(dim_head=dim_head, selective=bool(attend.selective), dropout=float(attend.dropout))


def feedforward_config(ff: nn.Module, dim: int, need) -> dict[str, Any]:
    import x_transformers.x_transformers as xt

    parts = list(ff.ff)
    proj_in, proj_out = parts[0], parts[-1] if isinstance(parts[-1], nn.Linear) else parts[-2]
    need(len(parts) == 3 and isinstance(parts[1], nn.Dropout) and isinstance(parts[2], nn.Linear),
         "ff_post_act_ln / ff_sublayer_dropout")
    if isinstance(proj_in, xt.GLU):
        act = proj_in.act
        need(isinstance(proj_in.mult_bias, float) and proj_in.up_softclamp_value is None, "ff_glu_mult_bias / ff_glu_softclamp")
        linear, glu = proj_in.proj, True
    else:
        linear, act, glu = proj_in[0], proj_in[-1], False
        need(len(proj_in) == 2, "ff_softclamp_value")
    need(type(act) in (nn.GELU, nn.SiLU) and getattr(act, "approximate", "none") == "none",
         f"ff activation {type(act).__name__}")
    inner = proj_out.in_features
    return dict(mult=inner / dim if inner % dim else inner // dim, glu=glu, swish=isinstance(act, nn.SiLU),
                no_bias=linear.bias is None, dropout=float(parts[1].p))
