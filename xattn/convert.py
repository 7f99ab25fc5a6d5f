"""From x-transformers to xattn: the same weights and config, or an error listing what xattn lacks.

x-transformers is optional: only `from_x_transformers` imports it, and only to recognise its modules.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
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
        if key.endswith(("rotary_pos_emb.inv_freq", "rotary_pos_emb.scale")):
            continue  # recomputed from the config
        if key.startswith("attn_layers.rel_pos."):
            mapped[map_rel_pos_key(key, model.attn_layers.config.dynamic_pos_bias_mlp_depth)] = value
        elif key in ("token_emb.emb.weight", "pos_emb.emb.weight"):
            mapped[key.replace(".emb.", ".")] = value
        elif key in ("to_logits.weight", "memory_tokens", "project_emb.weight", "project_emb.bias"):
            mapped[key] = value
        elif key == "post_emb_norm.gamma":           # a LayerNorm without unit offset: the gain as stored
            mapped["post_emb_norm.weight"] = value
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


def map_rel_pos_key(key: str, depth: int) -> str:
    """An x-transformers key of the shared position bias → xattn's: T5's bucket table, or the dynamic bias MLP
    (`mlp.{k}.0` hidden linear, `mlp.{k}.1` its norm, `mlp.{depth}` the output linear)."""
    if key == "attn_layers.rel_pos.relative_attention_bias.weight":
        return "attn_layers.rel_pos.buckets.weight"
    if (m := re.fullmatch(r"attn_layers\.rel_pos\.mlp\.(\d+)\.(?:([01])\.)?(weight|bias|gamma)", key)):
        layer, part, what = int(m[1]), m[2], m[3].replace("gamma", "weight")
        if layer == depth and part is None:
            return f"attn_layers.rel_pos.out.{what}"
        if layer < depth and part is not None:
            return f"attn_layers.rel_pos.{'hidden' if part == '0' else 'norms'}.{layer}.{what}"
    raise ValueError(f"x-transformers weight {key} has no counterpart in xattn")


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
    rest = re.sub(r"^1\.(fn\.)+", "1.", rest)    # ShiftTokens(…) and Macaron's Scale(0.5, …) wrap the branch
    if block.is_attention:
        if a := re.fullmatch(r"1\.(to_[qkvo]\w*)(?:\.0)?\.weight", rest):   # to_out.0: attn_on_attn's GLU
            return {f"{prefix}branch.{a[1]}.weight": value}
        if a := re.fullmatch(r"1\.to_value_residual_mix\.0\.(weight|bias)", rest):
            return {f"{prefix}branch.to_value_residual_mix.{a[1]}": value}
        if rest == "1.head_scale_params":
            return {f"{prefix}branch.head_scale": value.flatten()}
        if a := re.fullmatch(r"1\.data_dependent_alibi\.to_forget_gates\.0\.(weight|bias)", rest):
            return {f"{prefix}branch.data_dependent_alibi.to_gates.{a[1]}": value}
        if a := re.fullmatch(r"1\.qk_norm_([qk])_scale", rest):
            return {f"{prefix}branch.{a[1]}_scale": value}
        if rest[2:] in ATTENTION_KEYS:                           # 1×1 Conv2d head mixes become [h, h] matrices
            return {f"{prefix}branch.{ATTENTION_KEYS[rest[2:]]}": value.flatten(1) if value.ndim == 4 else value}
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
    need(isinstance(model.post_emb_norm, (nn.Identity, xt.Identity, xt.LayerNorm)), "post_emb_norm")
    for name in ("max_mem_len", "shift_mem_down", "memory_tokens_interspersed_every"):
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
    need(not layers.unet_skips, "unet_skips")
    need(layers.polar_pos_emb is None, "polar_pos_emb")
    need(all(m is None for m in layers.layer_integrators), "integrate_layers / attn_aggregated_residuals")
    rel_pos = layers.rel_pos
    need(rel_pos is None or type(rel_pos) in (xt.AlibiPositionalBias, xt.RelativePositionBias, xt.DynamicPositionBias),
         f"a {type(rel_pos).__name__} position bias")
    alibi = rel_pos if type(rel_pos) is xt.AlibiPositionalBias else None
    positions = position_config(layers, need)

    norm_types = {xt.LayerNorm: "layernorm", xt.RMSNorm: "rmsnorm", xt.ScaleNorm: "scalenorm",
                  xt.SimpleRMSNorm: "simple_rmsnorm"}
    norms_seen, unit_offsets, macaron = set(), set(), False
    shifts: list[int] = []                        # shift_tokens per layer-list entry
    value_mixes: list[bool] = []                  # per attention layer: a learned value-residual mix
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
        shifts.append(token_shift(branch, layers.causal, need))
        branch = branch.fn if isinstance(branch, xt.ShiftTokens) else branch
        if isinstance(branch, xt.Scale):
            need(branch.scale == 0.5 and isinstance(branch.fn, xt.FeedForward), "a scaled branch other than Macaron's")
            macaron, branch = True, branch.fn
        if isinstance(branch, xt.Attention) and layer_type == "c":
            cross_cfg = attention_config(branch, layers.attn_heads, need)
            cross_cfg.pop("value_mix")                  # cross layers never mix in a value residual here
            cross_cfgs.append(cross_cfg)
            need(branch.to_k.in_features == dim, "cross_attn_dim_context (a context of another width than dim)")
        elif isinstance(branch, xt.Attention):
            attn_cfg = attention_config(branch, layers.attn_heads, need)
            value_mixes.append(attn_cfg.pop("value_mix"))
        elif isinstance(branch, xt.FeedForward):
            ff_cfg = feedforward_config(branch, dim, need)
        else:
            unsupported.append(f"a {type(branch).__name__} layer (use_layerscale, …)")
    attn_cfg = attn_cfg or (cross_cfgs[0] if cross_cfgs else {})
    need(all(c == attn_cfg for c in cross_cfgs), "cross_attn_* options (cross-attention set unlike self-attention)")
    need(len(norms_seen) <= 1 and len(unit_offsets) <= 1, "mixed norms")
    need(len(residual_kinds) <= 1, "mixed residuals")
    need(len(set(value_mixes[1:])) <= 1, "learned_value_residual_mix")     # the first layer never mixes
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
                        residual_attn=layers.residual_attn, alibi_pos_bias=alibi is not None,
                        alibi_num_heads=alibi.heads if alibi is not None else None, **positions,
                        **({f"use_{norm}": True} if norm != "layernorm" else {}),
                        pre_norm=layers.pre_norm, sandwich_norm=layers.sandwich_norm,
                        scale_residual=scaled, gate_residual=residual_kind == "GRUGating", macaron=macaron,
                        shift_tokens=shifts[0] if len(set(shifts)) == 1 else tuple(shifts),
                        add_value_residual=layers.add_value_residual,
                        learned_value_residual_mix=all(value_mixes[1:]) or not layers.add_value_residual,
                        cross_attend=layers.cross_attend, cross_residual_attn=layers.cross_residual_attn,
                        **{f"attn_{k}": v for k, v in attn_cfg.items()}, **{f"ff_{k}": v for k, v in ff_cfg.items()})
    config = dict(num_tokens=model.num_tokens, max_seq_len=model.max_seq_len,
                  use_abs_pos_emb=isinstance(model.pos_emb, xt.AbsolutePositionalEmbedding),
                  tie_embedding=tied, l2norm_embed=model.l2norm_embed, emb_dim=model.emb_dim,
                  post_emb_norm=isinstance(model.post_emb_norm, xt.LayerNorm),
                  num_memory_tokens=model.num_memory_tokens, return_only_embed=only_embed, attn_layers=layer_kwargs)
    return config, (unit_offsets.pop() if unit_offsets else True), unsupported

def token_shift(branch: nn.Module, causal: bool, need: Callable[[bool, str], None]) -> int:
    """shift_tokens of one layer-list entry: s when the branch is wrapped in ShiftTokens(range(±s … s)), else 0."""
    import x_transformers.x_transformers as xt

    if not isinstance(branch, xt.ShiftTokens):
        return 0
    s = max(branch.shifts)
    need(branch.shifts == tuple(range(0 if causal else -s, s + 1)), f"shift_tokens with shifts {branch.shifts}")
    return s

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
ATTENTION_MODULES = {"to_output_gate": "attn_output_gate",
                     "to_v_head_gate": "attn_gate_value_heads", "q_rmsnorm": "attn_qk_rmsnorm",
                     "k_rmsnorm": "attn_k_rmsnorm", "value_rmsnorm": "attn_value_rmsnorm",
                     "rel_proj_pos_bias": "attn_use_rel_proj_pos_bias",
                     "hybrid_module": "attn_hybrid_module",
                     "to_latent_q": "attn_dim_latent_q", "to_latent_kv": "attn_dim_latent_kv"}
ATTENTION_FLAGS = {"laser": "attn_laser",
                   "orthog_projected_values": "attn_orthog_projected_values",
                   "orthog_projected_values_per_head": "attn_orthog_projected_values_per_head",
                   "qkv_receive_diff_residuals": "qkv_receive_diff_residuals"}
ATTEND_FLAGS = {"inverted_attention": "cross_attn_inverted_attention"}
# x-transformers' weights inside an Attention (after `layers.{k}.1.`) → xattn's inside the branch.
ATTENTION_KEYS = {"mem_k": "mem_k", "mem_v": "mem_v", "attend.head_attn_sink": "sink",
                  "attend.pre_softmax_talking_heads.weight": "pre_talking_heads",
                  "attend.post_softmax_talking_heads.weight": "post_talking_heads",
                  "attend.pre_scale_post_talking_heads.weight": "pre_scale_post_talking_heads",
                  "attend.cope.pos_emb": "cope.pos_emb", "attend.cope.talking_heads.weight": "cope.talking_heads"}


def attention_config(attn: nn.Module, heads: int, need: Callable[[bool, str], None]) -> dict[str, Any]:
    """The attn_ keywords of one x-transformers Attention, and under `value_mix` whether it has a learned
    value-residual mix (add_value_residual's layers after the first); `need` collects what xattn cannot run,
    by keyword."""
    from x_transformers.attend import sparse_topk_attn

    attend = attn.attend
    dim_head = attn.to_q.weight.shape[0] // heads
    gate = attn.to_v_gate
    need(gate is None or (isinstance(gate, nn.Linear) and gate.out_features == heads * dim_head
                          and attn.to_v_gate_activation is torch.nn.functional.sigmoid),
         "attn_gate_values_headwise / attn_gate_values_rank / attn_swiglu_values")
    on_attn = isinstance(attn.to_out, nn.Sequential)
    need(not on_attn or (len(attn.to_out) == 2 and isinstance(attn.to_out[1], nn.GLU)), "attn_on_attn")
    qk_norm = bool(attn.qk_norm)
    fixed_qk_scale = qk_norm and not attn.qk_norm_dim_scale     # otherwise the scale is dim_head ** -0.5
    need(abs(attend.scale - dim_head ** -0.5) < 1e-12 or fixed_qk_scale, "a custom scale")
    fn, fn_keywords = attend.attn_fn, {}
    while isinstance(fn, partial):
        fn, fn_keywords = fn.func, {**fn.keywords, **fn_keywords}
    need(fn in (F.softmax, F.sigmoid, sparse_topk_attn),
         "attn_hard / attn_gumbel_softmax / attn_custom_attn_fn (an attention function other than softmax, sigmoid "
         "or sparse top-k)")
    need(not fn_keywords.get("straight_through"), "attn_sparse_topk_straight_through")
    cope = attend.cope
    need(cope is None or not cope.soft_onehot, "attn_cope_soft_onehot_pos (x-transformers 2.31.10 cannot run it)")
    for name, keyword in ATTEND_FLAGS.items():
        need(not getattr(attend, name, False), keyword)
    for name, keyword in ATTENTION_MODULES.items():
        need(getattr(attn, name, None) is None, keyword)
    for name, keyword in ATTENTION_FLAGS.items():
        need(not getattr(attn, name, False), keyword)
    need(attn.rotate_num_heads == heads, "rotate_num_heads")
    dda = attn.data_dependent_alibi
    need(dda is None or type(dda).__name__ == "DataDependentAlibi" and dda.post_log_scale == 1,
         "attn_data_dependent_alibi_per_row / attn_data_dependent_alibi_kwargs")
    options = dict(dim_head=dim_head, selective=bool(attend.selective), dropout=float(attend.dropout),
                   l2_distance=bool(attend.l2_distance), cog_signed=bool(attend.cog_signed),
                   max_attend_past=attn.max_attend_past, sigmoid=fn is F.sigmoid,
                   sparse_topk=fn_keywords["sparse_topk"] if fn is sparse_topk_attn else None,
                   data_dependent_alibi=dda is not None, head_scale=bool(attn.head_scale),
                   gate_values=gate is not None, on_attn=on_attn,
                   value_mix=isinstance(attn.to_value_residual_mix, nn.Sequential),
                   num_mem_kv=attn.num_mem_kv, add_zero_kv=bool(attend.add_zero_kv),
                   head_learned_sink=bool(attend.head_learned_sink),
                   pre_talking_heads=attend.pre_softmax_talking_heads is not None,
                   post_talking_heads=attend.post_softmax_talking_heads is not None,
                   pre_scale_post_talking_heads=attend.pre_scale_post_talking_heads is not None)
    if cope is not None:
        options.update(use_cope=True, cope_max_pos=cope.max_pos, cope_talking_heads=cope.talking_heads is not None)
    if qk_norm:
        options.update(qk_norm=True, qk_norm_groups=attn.qk_norm_groups, qk_norm_dim_scale=bool(attn.qk_norm_dim_scale),
                       **({"qk_norm_scale": attend.scale} if fixed_qk_scale else {}))
    if attend.softclamp_logits:
        options.update(softclamp_logits=True, logit_softclamp_value=float(attend.logit_softclamp_value))
    if attn.kv_heads == 1 < heads:
        options["one_kv_head"] = True
    elif attn.kv_heads != heads:
        options["kv_heads"] = attn.kv_heads
    return options


def position_config(layers: nn.Module, need: Callable[[bool, str], None]) -> dict[str, Any]:
    """The rotary, T5 and dynamic position keywords of x-transformers AttentionLayers (ALiBi is read by the caller).

    Rotary's base rescale factor is not stored: it is read back from `inv_freq` and must reproduce it."""
    import x_transformers.x_transformers as xt

    kwargs: dict[str, Any] = {}
    rotary, rel_pos = layers.rotary_pos_emb, layers.rel_pos
    if rotary is not None:
        r = rotary.inv_freq.numel() * 2
        base = float(rotary.inv_freq[1]) ** (-r / 2) if r > 2 else 10000.0
        factor = float(f"{(base / 10000) ** ((r - 2) / r):.5g}") if r > 2 else 1.0
        kwargs.update(rotary_pos_emb=True, rotary_emb_dim=r, rotary_interpolation_factor=rotary.interpolation_factor,
                      rotary_base_rescale_factor=factor)
        if rotary.scale is not None:
            kwargs.update(rotary_xpos=True, rotary_xpos_scale_base=rotary.scale_base)
        expected = 1.0 / ((10000.0 * factor ** (r / (r - 2)) if factor != 1 else 10000.0)
                          ** (torch.arange(0, r, 2).float() / r))
        need(torch.allclose(rotary.inv_freq.cpu().float(), expected, rtol=1e-5, atol=0),
             "rotary_base_rescale_factor (one that xattn cannot read back from inv_freq)")
    if type(rel_pos) is xt.RelativePositionBias:
        heads, dim_head = layers.attn_heads, layers.attn_dim_head
        need(rel_pos.causal == layers.causal and abs(rel_pos.scale - dim_head ** 0.5) < 1e-12
             and rel_pos.relative_attention_bias.weight.shape[1] == heads, "rel_pos_kwargs (with rel_pos_bias)")
        kwargs.update(rel_pos_bias=True, rel_pos_num_buckets=rel_pos.num_buckets,
                      rel_pos_max_distance=rel_pos.max_distance)
    elif type(rel_pos) is xt.DynamicPositionBias:
        first = list(rel_pos.mlp[0])
        need(first[0].out_features == layers.dim // 4, "rel_pos_kwargs (with dynamic_pos_bias)")
        kwargs.update(dynamic_pos_bias=True, dynamic_pos_bias_log_distance=rel_pos.log_distance,
                      dynamic_pos_bias_mlp_depth=len(rel_pos.mlp) - 1,
                      dynamic_pos_bias_norm=isinstance(first[1], (xt.LayerNorm, nn.LayerNorm)))
    return kwargs


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
