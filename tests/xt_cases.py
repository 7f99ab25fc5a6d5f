"""Small x-transformers configurations, one per option (and a few combinations), for parity tests and benches.

Every case is declarative: the `attn_layers` class and kwargs, the `TransformerWrapper` kwargs, and
`options`, the x-transformers option names (spelled as x-transformers 2.31.10 spells its kwargs) that the
case exercises; a refusal by `xattn.from_x_transformers` must name at least one of them.
Defaults: num_tokens=20, max_seq_len=16, dim=32, depth=2, heads=4, attn_dim_head=8.

Every case constructs and runs a forward in x-transformers 2.31.10 itself (eval mode), with and without a
padding mask. Options of the brief that x-transformers rejects or lacks, and so have no case:
  - `attn_selective` on an Encoder: Attend asserts 'selective attention is designed for autoregressive'.
  - `rotary_xpos` on an Encoder: 'rotary xpos is not compatible with bidirectional attention'.
  - `attn_use_cope` on an Encoder: 'CoPE was designed for causal attention'.
  - `rotary_emb_dim=2`: ZeroDivisionError in RotaryEmbedding (`base_rescale_factor ** (dim / (dim - 2))`),
    so the partial-rotary case uses 6 (the default, dim_head // 2 = 4, is itself partial).
  - `attn_head_learned_sink` with `residual_attn`: the sink column makes layer 2's logits one key wider (RuntimeError).
  (All listed options exist in 2.31.10; `attn_gate_values` is a bias-less, zero-initialised linear gate
  on the layer input, a different thing from `attn_gate_value_heads`.)

Helpers at the bottom build the reference model, make inputs, and call either library; the xattn calls
(`xattn_logits`) state the contract the tests assume for cross-attention models.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

NUM_TOKENS = 20
MAX_SEQ_LEN = 16
DIM, DEPTH, HEADS, DIM_HEAD = 32, 2, 4, 8
CONTEXT_LEN = 6          # cross attention: length of the context sequence


@dataclass
class Case:
    id: str
    group: str
    layers: str                                    # "Decoder" | "Encoder"; "XTransformer" for an encoder-decoder
    layer_kwargs: dict[str, Any] = field(default_factory=dict)
    wrapper_kwargs: dict[str, Any] = field(default_factory=dict)
    options: tuple[str, ...] = ()
    normalized: bool = True                        # post-softmax rows sum to 1 (not for sigmoid / cog-signed)
    note: str = ""

    @property
    def cross(self) -> bool:
        return self.layers == "XTransformer" or bool(self.layer_kwargs.get("cross_attend"))


def case(id: str, group: str, layers: str = "Decoder", options: tuple[str, ...] | None = None,
         wrapper: dict[str, Any] | None = None, normalized: bool = True, note: str = "", **layer_kwargs) -> Case:
    """A case whose options default to the layer and wrapper kwargs it sets."""
    wrapper = wrapper or {}
    if options is None:
        options = tuple(layer_kwargs) + tuple(wrapper)
    return Case(id, group, layers, layer_kwargs, wrapper, tuple(options), normalized, note)


RES_SEL = dict(residual_attn=True, attn_selective=True)

CASES: list[Case] = [
    # --- already supported today: keep as regression -------------------------------------------------
    case("plain_decoder", "supported", options=()),
    case("plain_encoder", "supported", "Encoder", options=()),
    case("rotary", "supported", rotary_pos_emb=True),
    case("alibi", "supported", alibi_pos_bias=True),
    case("alibi_encoder", "supported", "Encoder", alibi_pos_bias=True),
    case("ff_glu", "supported", ff_glu=True),
    case("ff_swish", "supported", ff_swish=True),
    case("ff_glu_swish", "supported", ff_glu=True, ff_swish=True),
    case("ff_no_bias", "supported", ff_no_bias=True),
    case("residual_attn", "supported", residual_attn=True),
    case("selective", "supported", attn_selective=True),
    case("residual_selective", "supported", **RES_SEL),
    case("no_abs_pos_emb", "supported", wrapper=dict(use_abs_pos_emb=False)),
    case("tie_embedding", "supported", wrapper=dict(tie_embedding=True)),

    # --- blocks and norms -----------------------------------------------------------------------------
    case("rmsnorm", "blocks", use_rmsnorm=True),
    case("scalenorm", "blocks", use_scalenorm=True),
    case("simple_rmsnorm", "blocks", use_simple_rmsnorm=True),
    case("post_norm", "blocks", pre_norm=False),
    case("sandwich_norm", "blocks", sandwich_norm=True),
    case("ff_post_act_ln", "blocks", ff_post_act_ln=True),
    case("scale_residual", "blocks", scale_residual=True),
    case("gate_residual", "blocks", gate_residual=True),
    case("macaron", "blocks", macaron=True),
    case("custom_layers", "blocks", options=("custom_layers",), custom_layers=("a", "a", "f", "a", "f", "f")),
    case("par_ratio", "blocks", options=("par_ratio",), depth=4, par_ratio=4,
         note="layer types a f f a f f f f"),
    case("shift_tokens", "blocks", shift_tokens=1),
    case("shift_tokens_encoder", "blocks", "Encoder", shift_tokens=1),
    case("value_residual", "blocks", add_value_residual=True),
    case("value_residual_fixed_mix", "blocks", options=("add_value_residual", "learned_value_residual_mix"),
         add_value_residual=True, learned_value_residual_mix=False),
    case("attn_gate_values", "blocks", attn_gate_values=True),
    case("attn_head_scale", "blocks", attn_head_scale=True),
    case("attn_on_attn", "blocks", attn_on_attn=True),

    # --- embedding / wrapper --------------------------------------------------------------------------
    case("memory_tokens", "embedding", wrapper=dict(num_memory_tokens=2)),
    case("memory_tokens_encoder", "embedding", "Encoder", wrapper=dict(num_memory_tokens=2)),
    case("l2norm_embed", "embedding", wrapper=dict(l2norm_embed=True)),
    case("emb_dim", "embedding", wrapper=dict(emb_dim=16)),
    case("post_emb_norm", "embedding", wrapper=dict(post_emb_norm=True)),

    # --- attention-score pipeline ---------------------------------------------------------------------
    case("rel_pos_bias", "scores", rel_pos_bias=True),
    case("rel_pos_bias_encoder", "scores", "Encoder", rel_pos_bias=True),
    case("dynamic_pos_bias", "scores", dynamic_pos_bias=True),
    case("dynamic_pos_bias_log", "scores", dynamic_pos_bias=True, dynamic_pos_bias_log_distance=True),
    case("dynamic_pos_bias_encoder", "scores", "Encoder", dynamic_pos_bias=True),
    case("data_dependent_alibi", "scores", attn_data_dependent_alibi=True),
    case("data_dependent_alibi_encoder", "scores", "Encoder", attn_data_dependent_alibi=True),
    case("rotary_xpos", "scores", rotary_xpos=True),
    case("rotary_interpolation", "scores", options=("rotary_interpolation_factor",),
         rotary_pos_emb=True, rotary_interpolation_factor=2.0),
    case("rotary_base_rescale", "scores", options=("rotary_base_rescale_factor",),
         rotary_pos_emb=True, rotary_base_rescale_factor=2.0),
    case("rotary_partial", "scores", options=("rotary_emb_dim",), rotary_pos_emb=True, rotary_emb_dim=6,
         note="the default rotary_emb_dim is dim_head // 2 = 4, itself partial; rotary_emb_dim=2 is rejected "
              "by x-transformers: ZeroDivisionError in RotaryEmbedding (base_rescale_factor ** (dim / (dim - 2)))"),
    case("rotary_full", "scores", options=("rotary_emb_dim",), rotary_pos_emb=True, rotary_emb_dim=8),
    case("qk_norm", "scores", attn_qk_norm=True),
    case("qk_norm_groups", "scores", options=("attn_qk_norm_groups",), attn_qk_norm=True, attn_qk_norm_groups=2),
    case("qk_norm_dim_scale", "scores", options=("attn_qk_norm_dim_scale",), attn_qk_norm=True,
         attn_qk_norm_dim_scale=True),
    case("l2_distance", "scores", attn_l2_distance=True),
    case("kv_heads", "scores", attn_kv_heads=2),
    case("one_kv_head", "scores", attn_one_kv_head=True),
    case("num_mem_kv", "scores", attn_num_mem_kv=2),
    case("num_mem_kv_encoder", "scores", "Encoder", attn_num_mem_kv=2),
    case("add_zero_kv", "scores", attn_add_zero_kv=True),
    case("head_learned_sink", "scores", attn_head_learned_sink=True),
    case("pre_talking_heads", "scores", attn_pre_talking_heads=True),
    case("post_talking_heads", "scores", attn_post_talking_heads=True),
    case("pre_scale_post_talking_heads", "scores", attn_pre_scale_post_talking_heads=True),
    case("softclamp_logits", "scores", options=("attn_softclamp_logits",), attn_softclamp_logits=True,
         attn_logit_softclamp_value=1.0, note="value 1.0 (default 50) so the tanh bends the logits"),
    case("cope", "scores", attn_use_cope=True),
    case("max_attend_past", "scores", attn_max_attend_past=3),
    case("sparse_topk", "scores", attn_sparse_topk=3),
    case("sigmoid", "scores", attn_sigmoid=True, normalized=False),
    case("cog_signed", "scores", attn_cog_signed=True, normalized=False),

    # --- combinations with residual attention + selective attention (Decoder) -------------------------
    case("res_sel_rmsnorm", "combos", options=("use_rmsnorm",), use_rmsnorm=True, **RES_SEL),
    case("res_sel_rel_pos_bias", "combos", options=("rel_pos_bias",), rel_pos_bias=True, **RES_SEL),
    case("res_sel_qk_norm", "combos", options=("attn_qk_norm",), attn_qk_norm=True, **RES_SEL),
    case("res_sel_kv_heads", "combos", options=("attn_kv_heads",), attn_kv_heads=2, **RES_SEL),
    case("res_sel_sandwich_norm", "combos", options=("sandwich_norm",), sandwich_norm=True, **RES_SEL),

    # --- cross attention --------------------------------------------------------------------------------
    case("cross_decoder", "cross", cross_attend=True),
    Case("xtransformer", "cross", "XTransformer", options=("XTransformer", "cross_attend")),
]

CASES_BY_ID = {c.id: c for c in CASES}
assert len(CASES_BY_ID) == len(CASES), "case ids must be unique"
GROUPS = tuple(dict.fromkeys(c.group for c in CASES))


# --- building and running ---------------------------------------------------------------------------------

def build_reference(case: Case, *, dim: int = DIM, depth: int = DEPTH, heads: int = HEADS,
                    dim_head: int = DIM_HEAD, num_tokens: int = NUM_TOKENS, max_seq_len: int = MAX_SEQ_LEN):
    """The x-transformers model of a case (train mode, as constructed); dims overridable for benches.

    A case's own `depth` (par_ratio) wins over the argument; custom_layers takes no depth.
    """
    import x_transformers

    if case.layers == "XTransformer":
        sizes = dict(num_tokens=num_tokens, max_seq_len=max_seq_len, depth=depth, heads=heads, attn_dim_head=dim_head)
        kwargs = {f"{side}_{k}": v for side in ("enc", "dec") for k, v in sizes.items()}
        return x_transformers.XTransformer(dim=dim, **kwargs, **case.layer_kwargs)
    layer_kwargs = dict(dim=dim, heads=heads, attn_dim_head=dim_head)
    if "custom_layers" not in case.layer_kwargs:
        layer_kwargs["depth"] = depth
    layer_kwargs.update(case.layer_kwargs)
    layers = getattr(x_transformers, case.layers)(**layer_kwargs)
    wrapper = dict(num_tokens=num_tokens, max_seq_len=max_seq_len, **case.wrapper_kwargs)
    return x_transformers.TransformerWrapper(attn_layers=layers, **wrapper)


def model_dim(model) -> int:
    return model.encoder.attn_layers.dim if hasattr(model, "encoder") else model.attn_layers.dim


def make_inputs(case: Case, model, *, batch: int = 2, n: int = 10, padded: bool = False, pad: int = 3,
                seed: int = 0, num_tokens: int = NUM_TOKENS) -> dict[str, torch.Tensor | None]:
    """Inputs for either library. `padded`: the second row's last `pad` positions are padding.

    Keys: tokens, mask (the padding mask, None unpadded) and `valid` [b, n] (logit positions to compare);
    cross decoders also get context [b, CONTEXT_LEN, dim] and context_mask (same padding rule);
    XTransformer gets src (= tokens, padded by mask) and tgt, and `valid` covers every tgt position.
    """
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, num_tokens, (batch, n), generator=g)
    mask = None
    if padded:
        mask = torch.ones(batch, n, dtype=torch.bool)
        mask[min(1, batch - 1), n - pad:] = False
    inputs: dict[str, torch.Tensor | None] = dict(tokens=tokens, mask=mask)
    valid = torch.ones(batch, n, dtype=torch.bool) if mask is None else mask.clone()
    if case.layers == "XTransformer":
        inputs["tgt"] = torch.randint(0, num_tokens, (batch, n), generator=g)
        valid = torch.ones(batch, n, dtype=torch.bool)
    elif case.cross:
        inputs["context"] = torch.randn(batch, CONTEXT_LEN, model_dim(model), generator=g)
        context_mask = None
        if padded:
            context_mask = torch.ones(batch, CONTEXT_LEN, dtype=torch.bool)
            context_mask[min(1, batch - 1), CONTEXT_LEN - 2:] = False
        inputs["context_mask"] = context_mask
    inputs["valid"] = valid
    return inputs


def reference_logits(model, case: Case, inputs: dict, return_intermediates: bool = False):
    """x-transformers' logits [b, n, num_tokens] (and its LayerIntermediates when asked)."""
    if case.layers == "XTransformer":
        enc = model.encoder(inputs["tokens"], mask=inputs["mask"], return_embeddings=True)
        return model.decoder.net(inputs["tgt"], context=enc, context_mask=inputs["mask"],
                                 return_intermediates=return_intermediates)
    extra = {}
    if case.cross:
        extra = dict(context=inputs["context"], context_mask=inputs["context_mask"])
    return model(inputs["tokens"], mask=inputs["mask"], return_intermediates=return_intermediates, **extra)


def xattn_logits(model, case: Case, inputs: dict, trace: bool = False):
    """xattn's logits (or `(logits, trace)` from run_with_trace). Assumed contract:

    TransformerWrapper: model(tokens, mask=mask); a cross-attending decoder additionally takes
    context=, context_mask=; an encoder-decoder (from an XTransformer) is called model(src, tgt, mask=src_mask).
    """
    fn = model.run_with_trace if trace else model
    if case.layers == "XTransformer":
        return fn(inputs["tokens"], inputs["tgt"], mask=inputs["mask"])
    extra = {}
    if case.cross:
        extra = dict(context=inputs["context"], context_mask=inputs["context_mask"])
    return fn(inputs["tokens"], mask=inputs["mask"], **extra)


@torch.no_grad()
def randomize_(model, scale: float = 0.1, seed: int = 0) -> None:
    """Add scale·N(0,1) to every parameter, so zero / identity inits cannot hide a wrong mapping."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def scaled(case: Case, **layer_overrides: Any) -> Case:
    """The case with some layer kwargs replaced (for benches)."""
    return replace(case, layer_kwargs={**case.layer_kwargs, **layer_overrides})
