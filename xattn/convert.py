"""From x-transformers to xattn: the same weights and config, or an error listing what xattn lacks.

x-transformers is optional: only `from_x_transformers` imports it, and only to recognise its modules.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from .config import OPTIONS, XTRANSFORMER_WRAPPER_KWARGS, EncDecConfig, ModelConfig
from .encdec import XTransformer
from .layers import Block
from .norms import LayerNorm
from .wrapper import TransformerWrapper, build, load_state

# Keyword arguments that change how x-transformers runs, not what it computes in eval mode.
HARMLESS_KWARGS = {"attn_flash", "verbose", "attn_onnxable", "layer_dropout", "attn_sublayer_dropout",
                   "ff_sublayer_dropout", "norm_add_unit_offset"}
# XTransformer's own keywords that only matter in training (its loss and cross-attention token dropout).
XTRANSFORMER_HARMLESS = {"ignore_index", "pad_value", "cross_attn_tokens_dropout"}
NORM_GAINS = ("gamma", "g")   # x-transformers' names for a norm's learned gain
SIDES = ("enc_", "dec_")      # XTransformer's keyword prefixes


def x_transformers_config(data: Any) -> ModelConfig | EncDecConfig:
    """The xattn config of x-transformers constructor keywords: `TransformerWrapper`'s, with `attn_layers`
    holding the layers' keywords and `kind`, or `XTransformer`'s (`dim`, `enc_` / `dec_` keywords); a
    ValueError names every option xattn cannot run."""
    known = {name for name, _, _ in OPTIONS} | {"kind", "dim", "depth", "heads", "num_tokens", "max_seq_len"}
    if isinstance(data, dict) and "attn_layers" not in data and "dim" in data:
        kwargs = {k: v for k, v in data.items()
                  if k not in XTRANSFORMER_HARMLESS and not (k[:4] in SIDES and k[4:] in HARMLESS_KWARGS)}
        refuse_unknown([k for k in kwargs if k[:4] in SIDES and k[4:] not in known])
        return EncDecConfig.from_dict(kwargs)
    if not isinstance(data, dict) or not isinstance(data.get("attn_layers"), dict):
        raise ValueError("the config must be a JSON object with num_tokens, max_seq_len and attn_layers")
    layers = {k: v for k, v in data["attn_layers"].items() if k not in HARMLESS_KWARGS}
    refuse_unknown(sorted(k for k in [*layers, *data] if k not in known and k != "attn_layers"))
    return ModelConfig.from_dict(dict(data, attn_layers=layers))


def refuse_unknown(unsupported: list[str]) -> None:
    if unsupported:
        raise ValueError(f"This x-transformers config uses options xattn does not support: {', '.join(unsupported)} "
                         "(README: supported options)")


def stated_unit_offset(data: dict[str, Any]) -> bool:
    """x-transformers' `norm_add_unit_offset` (default True) as constructor keywords state it (either shape)."""
    stated = {v for k, v in {**data, **data.get("attn_layers", {})}.items() if k.endswith("norm_add_unit_offset")}
    if len(stated) > 1:
        raise ValueError("enc_norm_add_unit_offset and dec_norm_add_unit_offset differ; xattn takes one for both")
    return stated.pop() if stated else True


def from_x_transformers_state_dict(state_dict: dict[str, Tensor], config: dict[str, Any] | ModelConfig | EncDecConfig,
                                   unit_offset: bool | None = None) -> TransformerWrapper | XTransformer:
    """Build xattn from an x-transformers TransformerWrapper's or XTransformer's constructor keywords and its
    state dict.

    config: {"num_tokens", "max_seq_len", ..., "attn_layers": {"kind": "Decoder", "dim", "depth", ...}}, or
    {"dim", "enc_num_tokens", ..., "dec_depth", ...} for an XTransformer.
    unit_offset: whether x-transformers stored norm gains minus one (its `norm_add_unit_offset`, default
    True); read from the config's keywords when not given.
    """
    if unit_offset is None:
        unit_offset = not isinstance(config, dict) or stated_unit_offset(config)
    config = config if isinstance(config, (ModelConfig, EncDecConfig)) else x_transformers_config(config)
    if isinstance(config, EncDecConfig):
        model = XTransformer(config=config)
        mapped = map_encdec_state_dict(state_dict, model, unit_offset)
    else:
        model = build(config)
        mapped = map_state_dict(state_dict, model, unit_offset)
    load_state(model, mapped)
    return model.eval()


def map_encdec_state_dict(state_dict: dict[str, Tensor], model: XTransformer,
                          unit_offset: bool = True) -> dict[str, Tensor]:
    """An XTransformer's keys: `encoder.*` and `decoder.net.*` (inside its AutoregressiveWrapper) are each a
    TransformerWrapper's, mapped by `map_state_dict` to xattn's `encoder.*` and `decoder.*`."""
    parts = (("encoder.", "encoder.", model.encoder), ("decoder.net.", "decoder.", model.decoder))
    stray = [k for k in state_dict if not k.startswith(tuple(theirs for theirs, _, _ in parts))]
    if stray:
        raise ValueError(f"x-transformers weight {stray[0]} has no counterpart in xattn")
    mapped: dict[str, Tensor] = {}
    for theirs, ours, part in parts:
        own = {k[len(theirs):]: v for k, v in state_dict.items() if k.startswith(theirs)}
        mapped.update({ours + k: v for k, v in map_state_dict(own, part, unit_offset).items()})
    return mapped


def map_state_dict(state_dict: dict[str, Tensor], model: TransformerWrapper,
                   unit_offset: bool = True) -> dict[str, Tensor]:
    """Rename x-transformers keys to xattn keys. Both keep one entry per layer of the layer list: x-transformers
    as (norms, branch, residual), xattn as a `Block`. Norm gains gain the unit offset x-transformers leaves out."""
    gain = 1.0 if unit_offset else 0.0
    blocks = model.attn_layers.layers
    mapped: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("rotary_pos_emb.inv_freq"):
            continue  # recomputed from the config
        if key in ("token_emb.emb.weight", "pos_emb.emb.weight"):
            mapped[key.replace(".emb.", ".")] = value
        elif key == "to_logits.weight":
            mapped[key] = value
        elif m := re.fullmatch(rf"attn_layers\.final_norm\.({'|'.join(NORM_GAINS)})", key):
            mapped[f"attn_layers.final_norm.{norm_gain_name(model.attn_layers.final_norm)}"] = value + gain
        elif (m := re.fullmatch(r"attn_layers\.layers\.(\d+)\.(.*)", key)) and int(m[1]) < len(blocks):
            mapped.update(map_block_key(f"attn_layers.layers.{m[1]}.", m[2], value, blocks[int(m[1])], gain))
        else:
            raise ValueError(f"x-transformers weight {key} has no counterpart in xattn")
    for index, block in enumerate(blocks):   # heads == 1 with dim_head == dim: no out projection
        key = f"attn_layers.layers.{index}.branch.to_out.weight"
        if block.is_attention and key not in mapped and key.replace("to_out", "to_q") in mapped:
            mapped[key] = torch.eye(block.branch.to_out.weight.shape[0], dtype=block.branch.to_out.weight.dtype)
    return mapped


def norm_gain_name(norm: nn.Module) -> str:
    return "weight" if isinstance(norm, LayerNorm) else "g"


def map_block_key(prefix: str, rest: str, value: Tensor, block: Block, gain: float) -> dict[str, Tensor]:
    """One x-transformers key inside layer-list entry `prefix` → {xattn key: tensor}."""
    norms = {"0": ("norm", block.norm), "1": ("branch_norm", block.branch_norm), "2": ("post_norm", block.post_norm)}
    if (m := re.fullmatch(rf"0\.([012])\.({'|'.join(NORM_GAINS)})", rest)) and norms[m[1]][1] is not None:
        name, norm = norms[m[1]]
        return {f"{prefix}{name}.{norm_gain_name(norm)}": value + gain}
    if m := re.fullmatch(r"2\.(residual_scale|gru\.\w+)", rest):
        return {prefix + "residual." + m[1].replace("residual_scale", "scale"): value}
    rest = re.sub(r"^1\.fn\.", "1.", rest)       # Macaron wraps its feed-forwards in Scale(0.5, …)
    if block.is_attention and (a := re.fullmatch(r"1\.(to_[qkvo]\w*)\.weight", rest)):
        return {f"{prefix}branch.{a[1]}.weight": value}
    if not block.is_attention and (f := re.fullmatch(r"1\.ff\.(\d)\.(?:0\.|proj\.)?(weight|bias|gamma)", rest)):
        position, what = int(f[1]), f[2]
        if position == 0:
            return {f"{prefix}branch.proj_in.{what}": value}
        if what == "gamma" and block.branch.norm is not None:
            return {f"{prefix}branch.norm.weight": value}
        return {f"{prefix}branch.proj_out.{what}": value}
    raise ValueError(f"x-transformers weight {prefix}{rest} has no counterpart in xattn")


def from_x_transformers(model: nn.Module) -> TransformerWrapper | XTransformer:
    """An xattn model equal to an `x_transformers.TransformerWrapper` (Encoder or Decoder layers, cross-attending
    or not) or `XTransformer`; a ValueError names every option of it that xattn cannot run."""
    config, unit_offset, unsupported = read_x_transformers(model)
    if unsupported:
        named = "; ".join(dict.fromkeys(unsupported))     # each once, though every layer reports it
        raise ValueError(f"xattn does not support these x-transformers options: {named}")
    try:
        return from_x_transformers_state_dict(model.state_dict(), config, unit_offset)
    except (TypeError, ValueError) as err:
        raise ValueError(f"xattn cannot represent this x-transformers model: {err}") from None


def read_x_transformers(model: nn.Module) -> tuple[dict[str, Any], bool, list[str]]:
    """(constructor keywords read off an x-transformers model, whether its norms store gain − 1, the options
    in it xattn cannot run)."""
    import x_transformers.x_transformers as xt

    if isinstance(model, xt.XTransformer):
        return read_xtransformer(model)
    unsupported: list[str] = []

    def need(condition: bool, what: str) -> None:
        if not condition:
            unsupported.append(what)

    need(isinstance(model, xt.TransformerWrapper),
         f"a {type(model).__name__} (xattn takes a TransformerWrapper or an XTransformer)")
    if unsupported:
        return {}, True, unsupported
    layers = model.attn_layers
    kind = type(layers).__name__
    need(kind in ("Encoder", "Decoder"), f"{kind} layers (xattn takes Encoder or Decoder)")
    need(isinstance(model.pos_emb, (xt.AbsolutePositionalEmbedding, xt.always)), "scaled_sinu_pos_emb")
    need(model.emb_dim == layers.dim, "emb_dim (≠ dim)")
    need(not model.l2norm_embed, "l2norm_embed")
    need(isinstance(model.post_emb_norm, (nn.Identity, xt.Identity)), "post_emb_norm")
    for name in ("num_memory_tokens", "max_mem_len", "shift_mem_down"):
        need(not getattr(model, name, 0), name)
    for name in ("cls_token", "attn_pool", "embeds", "ff_deep_embed", "recycled_proj", "to_mixture"):
        need(getattr(model, name, None) is None, name)
    for name in ("average_pool_embed", "sigsoftmax_logits", "add_continuous_pred_head", "has_multiple_heads", "looped"):
        need(not getattr(model, name, False), name)
    need(model.emb_frac_gradient == 1.0, "emb_frac_gradient")
    only_embed = model.to_logits is None
    tied = not only_embed and not isinstance(model.to_logits, nn.Module)
    dim = layers.dim
    if tied:
        need(abs(model.tie_embedding_scale - dim ** -0.5) < 1e-12, "tie_embedding_scale")

    need(tuple(layers.layers_execute_order) == tuple(range(len(layers.layer_types))),
         "layers_execute_order / weight_tie_layers")
    need(not layers.pre_and_post_norm, "pre_and_post_norm")
    need(layers.num_residual_streams == 1, "num_residual_streams")
    need(not layers.need_condition, "adaptive norms")
    need(not layers.softclamp_output, "softclamp_output")
    need(not layers.reinject_input, "reinject_input")
    need(not layers.add_value_residual, "add_value_residual")
    need(not layers.unet_skips, "unet_skips")
    need(layers.polar_pos_emb is None, "polar_pos_emb")
    need(all(m is None for m in layers.layer_integrators), "integrate_layers / attn_aggregated_residuals")
    rel_pos = layers.rel_pos
    need(type(rel_pos) is not xt.RelativePositionBias, "rel_pos_bias")
    need(type(rel_pos) is not xt.DynamicPositionBias, "dynamic_pos_bias")
    need(rel_pos is None or type(rel_pos) in (xt.AlibiPositionalBias, xt.RelativePositionBias, xt.DynamicPositionBias),
         f"a {type(rel_pos).__name__} position bias")
    alibi = rel_pos if type(rel_pos) is xt.AlibiPositionalBias else None
    rotary = layers.rotary_pos_emb
    rotary_dim = None
    if rotary is not None:
        rotary_dim = rotary.inv_freq.numel() * 2
        expected = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))
        need(rotary.scale is None, "rotary_xpos")
        need(rotary.interpolation_factor == 1.0 and torch.allclose(rotary.inv_freq.cpu(), expected),
             "rotary_interpolation_factor / rotary_base_rescale_factor")

    norm_types = {xt.LayerNorm: "layernorm", xt.RMSNorm: "rmsnorm", xt.ScaleNorm: "scalenorm",
                  xt.SimpleRMSNorm: "simple_rmsnorm"}
    norms_seen, unit_offsets, macaron = set(), set(), False
    residual_kinds: set[tuple[str, bool]] = set()
    attn_cfg: dict[str, Any] = {}
    cross_cfgs: list[dict[str, Any]] = []
    ff_cfg: dict[str, Any] = {}
    for layer_type, (norms, branch, residual) in zip(layers.layer_types, layers.layers, strict=True):
        for norm in [*norms, layers.final_norm]:
            if norm is None or isinstance(norm, (nn.Identity, xt.Identity)):
                continue
            need(type(norm) in norm_types, f"{type(norm).__name__} norm")
            norms_seen.add(norm_types.get(type(norm)))
            unit_offsets.add(bool(getattr(norm, "unit_offset", True)))
        need(type(residual) in (xt.Residual, xt.GRUGating) and getattr(residual, "scale_residual_constant", 1) == 1,
             f"{type(residual).__name__} residual (scale_residual_constant, hyper-connections …)")
        residual_kinds.add((type(residual).__name__, residual.residual_scale is not None))
        if isinstance(branch, xt.Scale):
            need(branch.scale == 0.5 and isinstance(branch.fn, xt.FeedForward), "a scaled branch other than Macaron's")
            macaron, branch = True, branch.fn
        if isinstance(branch, xt.Attention) and layer_type == "c":
            cross_cfgs.append(attention_config(branch, layers.attn_heads, need))
            need(branch.to_k.in_features == dim, "cross_attn_dim_context (a context of another width than dim)")
        elif isinstance(branch, xt.Attention):
            attn_cfg = attention_config(branch, layers.attn_heads, need)
        elif isinstance(branch, xt.FeedForward):
            ff_cfg = feedforward_config(branch, dim, need)
        elif isinstance(branch, xt.ShiftTokens):
            unsupported.append("shift_tokens")
        else:
            unsupported.append(f"a {type(branch).__name__} layer (use_layerscale, …)")
    attn_cfg = attn_cfg or (cross_cfgs[0] if cross_cfgs else {})
    need(all(c == attn_cfg for c in cross_cfgs), "cross_attn_* options (cross-attention set unlike self-attention)")
    need(len(norms_seen) <= 1 and len(unit_offsets) <= 1, "mixed norms")
    need(len(residual_kinds) <= 1, "mixed residuals")
    norm = norms_seen.pop() if norms_seen else "layernorm"
    (residual_kind, scaled), = residual_kinds or {("Residual", False)}

    types = tuple(layers.layer_types)
    only_cross = layers.cross_attend and "a" not in types
    attention = ("c",) if only_cross else ("a", "c") if layers.cross_attend else ("a",)
    default_block = ("f",) * macaron + attention + ("f",)
    repeats = len(types) // len(default_block)
    pattern = dict(depth=repeats, only_cross=only_cross) if types == default_block * repeats \
        else dict(depth=max(types.count("a"), 1), custom_layers=types)
    layer_kwargs = dict(kind=kind, dim=dim, heads=layers.attn_heads, **pattern,
                        residual_attn=layers.residual_attn, rotary_pos_emb=rotary is not None,
                        rotary_emb_dim=rotary_dim, alibi_pos_bias=alibi is not None,
                        alibi_num_heads=alibi.heads if alibi is not None else None,
                        **({f"use_{norm}": True} if norm != "layernorm" else {}),
                        pre_norm=layers.pre_norm, sandwich_norm=layers.sandwich_norm,
                        scale_residual=scaled, gate_residual=residual_kind == "GRUGating", macaron=macaron,
                        cross_attend=layers.cross_attend, cross_residual_attn=layers.cross_residual_attn,
                        **{f"attn_{k}": v for k, v in attn_cfg.items()}, **{f"ff_{k}": v for k, v in ff_cfg.items()})
    config = dict(num_tokens=model.num_tokens, max_seq_len=model.max_seq_len,
                  use_abs_pos_emb=isinstance(model.pos_emb, xt.AbsolutePositionalEmbedding),
                  tie_embedding=tied, return_only_embed=only_embed, attn_layers=layer_kwargs)
    return config, (unit_offsets.pop() if unit_offsets else True), unsupported


def read_xtransformer(model: nn.Module) -> tuple[dict[str, Any], bool, list[str]]:
    """`read_x_transformers` of an XTransformer: its keywords (`dim`, `tie_token_emb`, `enc_` / `dec_` ones) read
    off its two TransformerWrappers (the decoder's inside its AutoregressiveWrapper)."""
    (enc, enc_offset, unsupported), (dec, dec_offset, dec_unsupported) = (
        read_x_transformers(model.encoder), read_x_transformers(model.decoder.net))
    unsupported += dec_unsupported
    if enc_offset != dec_offset:
        unsupported.append("norm_add_unit_offset (differs between encoder and decoder)")
    if unsupported:
        return {}, True, unsupported
    config = {"dim": model.encoder.attn_layers.dim,
              "tie_token_emb": model.decoder.net.token_emb is model.encoder.token_emb}
    for prefix, wrapper in zip(SIDES, (enc, dec), strict=True):
        config.update({prefix + k: v for k, v in wrapper.items() if k in XTRANSFORMER_WRAPPER_KWARGS})
        config.update({prefix + k: v for k, v in wrapper["attn_layers"].items()
                       if k not in ("kind", "dim", "cross_attend")})
    return config, enc_offset, unsupported


# x-transformers' attribute on Attention (or its Attend) → the keyword that switched it on.
ATTENTION_MODULES = {"to_v_gate": "attn_gate_values", "to_output_gate": "attn_output_gate",
                     "to_v_head_gate": "attn_gate_value_heads", "q_rmsnorm": "attn_qk_rmsnorm",
                     "k_rmsnorm": "attn_k_rmsnorm", "value_rmsnorm": "attn_value_rmsnorm",
                     "data_dependent_alibi": "attn_data_dependent_alibi",
                     "rel_proj_pos_bias": "attn_use_rel_proj_pos_bias",
                     "hybrid_module": "attn_hybrid_module", "max_attend_past": "attn_max_attend_past",
                     "to_latent_q": "attn_dim_latent_q", "to_latent_kv": "attn_dim_latent_kv"}
ATTENTION_FLAGS = {"head_scale": "attn_head_scale", "qk_norm": "attn_qk_norm", "laser": "attn_laser",
                   "orthog_projected_values": "attn_orthog_projected_values",
                   "orthog_projected_values_per_head": "attn_orthog_projected_values_per_head",
                   "qkv_receive_diff_residuals": "qkv_receive_diff_residuals"}
ATTEND_MODULES = {"pre_softmax_talking_heads": "attn_pre_talking_heads",
                  "post_softmax_talking_heads": "attn_post_talking_heads",
                  "pre_scale_post_talking_heads": "attn_pre_scale_post_talking_heads", "cope": "attn_use_cope"}
ATTEND_FLAGS = {"l2_distance": "attn_l2_distance", "cog_signed": "attn_cog_signed", "add_zero_kv": "attn_add_zero_kv",
                "head_learned_sink": "attn_head_learned_sink", "softclamp_logits": "attn_softclamp_logits",
                "inverted_attention": "cross_attn_inverted_attention"}


def attention_config(attn: nn.Module, heads: int, need: Callable[[bool, str], None]) -> dict[str, Any]:
    """The attn_ keywords of one x-transformers Attention; `need` collects what xattn cannot run, by keyword."""
    attend = attn.attend
    dim_head = attn.to_q.weight.shape[0] // heads
    need(attn.kv_heads == heads, "attn_kv_heads / attn_one_kv_head")
    need(abs(attend.scale - dim_head ** -0.5) < 1e-12 or attn.qk_norm,
         "attn_qk_norm_scale or a custom scale")
    fn = attend.attn_fn
    while isinstance(fn, partial):
        fn = fn.func
    need(fn is torch.nn.functional.softmax,
         "attn_sparse_topk / attn_sigmoid / attn_hard / attn_gumbel_softmax (a non-softmax attention function)")
    for name, keyword in ATTEND_MODULES.items():
        need(getattr(attend, name, None) is None, keyword)
    for name, keyword in ATTEND_FLAGS.items():
        need(not getattr(attend, name, False), keyword)
    for name, keyword in ATTENTION_MODULES.items():
        need(getattr(attn, name, None) is None, keyword)
    for name, keyword in ATTENTION_FLAGS.items():
        if name == "qk_norm" and getattr(attn, name, False):
            keyword += " (attn_qk_norm_groups, attn_qk_norm_scale, attn_qk_norm_dim_scale)"
        need(not getattr(attn, name, False), keyword)
    need(attn.num_mem_kv == 0, "attn_num_mem_kv")
    need(attn.rotate_num_heads == heads, "rotate_num_heads")
    need(isinstance(attn.to_out, (nn.Linear, nn.Identity)), "attn_on_attn")
    return dict(dim_head=dim_head, selective=bool(attend.selective), dropout=float(attend.dropout))


def feedforward_config(ff: nn.Module, dim: int, need: Callable[[bool, str], None]) -> dict[str, Any]:
    """The ff_ keywords of one x-transformers FeedForward."""
    import x_transformers.x_transformers as xt

    parts = list(ff.ff)
    proj_in, proj_out = parts[0], parts[-1] if isinstance(parts[-1], nn.Linear) else parts[-2]
    post_act_ln = isinstance(parts[1], xt.LayerNorm)
    need(len(parts) == 3 + post_act_ln and isinstance(parts[-2], nn.Dropout) and isinstance(parts[-1], nn.Linear),
         "ff_sublayer_dropout")
    if isinstance(proj_in, xt.GLU):
        act = proj_in.act
        need(isinstance(proj_in.mult_bias, float) and proj_in.up_softclamp_value is None,
             "ff_glu_mult_bias / ff_glu_softclamp")
        linear, glu = proj_in.proj, True
    else:
        linear, act, glu = proj_in[0], proj_in[-1], False
        need(len(proj_in) == 2, "ff_softclamp_value")
    need(type(act) in (nn.GELU, nn.SiLU) and getattr(act, "approximate", "none") == "none",
         f"ff activation {type(act).__name__}")
    inner = proj_out.in_features
    return dict(mult=inner / dim if inner % dim else inner // dim, glu=glu, swish=isinstance(act, nn.SiLU),
                no_bias=linear.bias is None, post_act_ln=post_act_ln, dropout=float(parts[-2].p))
