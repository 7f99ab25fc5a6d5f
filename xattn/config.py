"""The typed model config and the declared table of options.

Every constructor option is one dataclass field whose name is x-transformers' keyword (without its
`attn_` / `ff_` prefix inside `AttentionConfig` / `FeedForwardConfig`) and whose default is named here
once. Its metadata says what the option is for people and the code: where it acts in the pipeline,
the trace stages it feeds, the weights it adds, whether the app's fresh-model form offers it. Conversion,
refusals, `describe`, the form and the README's options table are all generated from `OPTIONS`.

x-transformers' keyword arguments stay the constructor surface: `LayersConfig.from_kwargs(kind, **kwargs)`
routes `attn_` / `ff_` prefixed keywords to their sub-configs, and `to_dict()` writes them back (only
values that differ from the defaults, so a config file says what is special about the model).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .stages import STAGES

KINDS = ("Encoder", "Decoder", "AttentionLayers")
# The LayersConfig options of the cross-attention layers (all attn_ options reach them too).
CROSS_OPTIONS = frozenset({"cross_attend", "only_cross", "cross_residual_attn"})
# Where in the computation an option acts, in pipeline order (the README's options table follows it).
PLACES = ("embedding", "block", "norm", "queries and keys", "scores", "position bias", "mask", "softmax",
          "values", "output")


@dataclass(frozen=True)
class Option:
    """What one option is: a short `label` and a longer `help` for people, where it `acts` (one of PLACES),
    the trace `stages` it feeds, the state-dict `weights` it adds (`*` for a layer-list index) and whether
    the app's fresh-model form offers it."""

    label: str
    acts: str
    help: str = ""
    stages: tuple[str, ...] = ()
    weights: tuple[str, ...] = ()
    form: bool = False


def option(default: Any, label: str, acts: str, help: str = "", *, stages: tuple[str, ...] = (),
           weights: tuple[str, ...] = (), form: bool = False) -> Any:
    """A dataclass field that is also a row of the options table."""
    if acts not in PLACES or not set(stages) <= set(STAGES):
        raise ValueError(f"option {label!r}: unknown place {acts!r} or stage in {stages}")
    return field(default=default, metadata={"option": Option(label, acts, help, stages, weights, form)})


def check_whole(name: str, value: Any, low: int = 1) -> None:
    """Raise ValueError naming `name` unless `value` is a whole number ≥ low (bools and 2.5 are refused)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be a whole number ≥ {low}; got {value!r}")


def check_number(name: str, value: Any, low: float, high: float) -> None:
    """Raise ValueError naming `name` unless `value` is a finite number in [low, high]."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ValueError(f"{name} must be a number from {low} to {high}; got {value!r}")


@dataclass(frozen=True)
class AttentionConfig:
    """Options of each attention module (`attn_` prefix)."""

    dim_head: int = option(64, "features per head", "queries and keys")
    selective: bool = option(False, "selective attention", "scores",
                             "Leviathan et al. 2024: head 0's positive scores, summed down the sequence, are "
                             "subtracted from every head's logits", stages=("selection", "pre_softmax"), form=True)
    dropout: float = option(0.0, "attention dropout", "softmax", "on the attention pattern, training only")
    data_dependent_alibi: bool = option(False, "data-dependent ALiBi", "position bias",
                                        "Forgetting Transformer: each token's learned forget gates, summed between "
                                        "key and query, are a per-layer, input-dependent distance penalty",
                                        stages=("position_bias", "biased"),
                                        weights=("layers.*.branch.data_dependent_alibi.to_gates.*",))
    qk_norm: bool = option(False, "qk-norm", "queries and keys",
                           "queries and keys are l2-normalised, so scores are cosine similarities times a scale "
                           "(attn_qk_norm_scale) instead of dim_head ** -0.5", stages=("scores",), form=True)
    qk_norm_groups: int = option(1, "qk-norm groups", "queries and keys",
                                 "normalise each of this many equal slices of a head's features separately",
                                 stages=("scores",))
    qk_norm_scale: float = option(10, "qk-norm scale", "queries and keys",
                                  "the fixed scale of qk-norm's cosine similarities", stages=("scores",))
    qk_norm_dim_scale: bool = option(False, "qk-norm learned scales", "queries and keys",
                                     "learned per-feature scales on the normalised queries and keys, and the "
                                     "usual dim_head ** -0.5", stages=("scores",),
                                     weights=("layers.*.branch.q_scale", "layers.*.branch.k_scale"))
    l2_distance: bool = option(False, "L2-distance attention", "queries and keys",
                               "the similarity is the negative squared distance −‖q − k‖² instead of q·k",
                               stages=("scores",))
    kv_heads: int | None = option(None, "key/value heads (GQA)", "queries and keys",
                                  "grouped-query attention: fewer key/value heads, query head h uses kv head "
                                  "h mod kv_heads", stages=("scores",))
    one_kv_head: bool = option(False, "one key/value head (MQA)", "queries and keys",
                               "multi-query attention: every head shares one key and one value", stages=("scores",),
                               form=True)
    softclamp_logits: bool = option(False, "logit soft-capping", "scores",
                                    "logits become v·tanh(logit / v), so none exceeds ±v (attn_logit_softclamp_value)",
                                    stages=("softclamped",), form=True)
    logit_softclamp_value: float = option(50.0, "soft-cap value", "scores", "the v of logit soft-capping",
                                          stages=("softclamped",))
    cog_signed: bool = option(False, "signed attention (Cog)", "scores",
                              "softmax over the logits' absolute values, then the signs come back: attention "
                              "weights may be negative", stages=("magnitude", "attn"))
    max_attend_past: int | None = option(None, "attention window", "mask",
                                         "keys more than this many positions before a query are masked",
                                         stages=("masked",), form=True)
    sparse_topk: int | None = option(None, "sparse top-k", "softmax",
                                     "only each query's k largest logits enter the softmax", stages=("topk",))
    sigmoid: bool = option(False, "sigmoid attention", "softmax",
                           "each weight is sigmoid(logit) on its own instead of a softmax: rows need not sum to 1",
                           stages=("attn",))
    head_scale: bool = option(False, "head scale", "output",
                              "each head's output is multiplied by a learned scale before the heads are merged "
                              "(NormFormer); no score stage: it changes what the heads output, not this layer's scores",
                              weights=("layers.*.branch.head_scale",), form=True)
    gate_values: bool = option(False, "gated values", "values",
                               "the merged heads' output is multiplied by sigmoid(W x) of the layer input before the "
                               "output projection; no score stage: it changes what the heads output, not this "
                               "layer's scores",
                               weights=("layers.*.branch.to_v_gate.weight",), form=True)
    on_attn: bool = option(False, "attention on attention", "output",
                           "the output projection is doubled and gates itself (a GLU); no score stage: it changes "
                           "what the heads output, not this layer's scores", weights=("layers.*.branch.to_out.weight",),
                           form=True)
    num_mem_kv: int = option(0, "memory key/values", "queries and keys",
                             "learned key/value pairs per head in front of every layer's keys and values, "
                             "visible to every query", stages=("scores",),
                             weights=("layers.*.branch.mem_k", "layers.*.branch.mem_v"), form=True)
    add_zero_kv: bool = option(False, "zero key/value", "queries and keys",
                               "an all-zero key and value in front: a query may put weight on nothing (its score is 0)",
                               stages=("scores",), form=True)
    head_learned_sink: bool = option(False, "learned attention sink", "softmax",
                                     "a learned logit per head joins the softmax as a column in front, taking weight "
                                     "without adding a value", stages=("pre_softmax",),
                                     weights=("layers.*.branch.sink",), form=True)
    pre_talking_heads: bool = option(False, "pre-softmax talking heads", "scores",
                                     "adds a learned mix of all heads' scores to each head's scores",
                                     stages=("talking_heads_pre",), weights=("layers.*.branch.pre_talking_heads",),
                                     form=True)
    post_talking_heads: bool = option(False, "post-softmax talking heads", "softmax",
                                      "each head's pattern is a learned mix of all heads' softmax",
                                      stages=("post_softmax", "attn"), weights=("layers.*.branch.post_talking_heads",),
                                      form=True)
    pre_scale_post_talking_heads: bool = option(False, "pre-scale-post talking heads", "softmax",
                                                "the pattern is multiplied by a learned head mix of the scores "
                                                "(before bias and masks)", stages=("post_softmax", "attn"),
                                                weights=("layers.*.branch.pre_scale_post_talking_heads",), form=True)
    use_cope: bool = option(False, "CoPE", "position bias",
                            "contextual positions (Golovneva et al. 2024): a key's position counts the gated keys "
                            "from it to the query, and q · its position embedding is added after masking",
                            stages=("cope",), weights=("layers.*.branch.cope.pos_emb",), form=True)
    cope_max_pos: int = option(16, "CoPE positions", "position bias", "CoPE's positions stop at this count minus one")
    cope_talking_heads: bool = option(False, "CoPE talking heads", "position bias",
                                      "CoPE counts positions on a learned head mix of the masked logits",
                                      weights=("layers.*.branch.cope.talking_heads",))

    def __post_init__(self) -> None:
        check_whole("attn_dim_head", self.dim_head)
        check_number("attn_dropout", self.dropout, 0.0, 1.0)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, needs in (("qk_norm_groups", "qk_norm"), ("qk_norm_scale", "qk_norm"),
                            ("qk_norm_dim_scale", "qk_norm"), ("logit_softclamp_value", "softclamp_logits"),
                            ("cope_max_pos", "use_cope"), ("cope_talking_heads", "use_cope")):
            if getattr(self, name) != defaults[name] and not getattr(self, needs):
                raise ValueError(f"attn_{name} has no effect without attn_{needs}=True")
        check_whole("attn_qk_norm_groups", self.qk_norm_groups)
        if self.qk_norm and (self.dim_head % self.qk_norm_groups or self.dim_head // self.qk_norm_groups <= 2):
            raise ValueError(f"attn_qk_norm needs attn_qk_norm_groups ({self.qk_norm_groups}) to divide "
                             f"attn_dim_head ({self.dim_head}) into slices of more than 2 features")
        check_number("attn_qk_norm_scale", self.qk_norm_scale, 1e-6, 1e6)
        if self.qk_norm_dim_scale and self.qk_norm_scale != defaults["qk_norm_scale"]:
            raise ValueError("attn_qk_norm_scale has no effect with attn_qk_norm_dim_scale=True "
                             "(its learned scales replace it)")
        check_number("attn_logit_softclamp_value", self.logit_softclamp_value, 1e-6, 1e6)
        if self.kv_heads is not None:
            check_whole("attn_kv_heads", self.kv_heads)
            if self.one_kv_head:
                raise ValueError("choose attn_kv_heads or attn_one_kv_head, not both")
        if self.max_attend_past is not None:
            check_whole("attn_max_attend_past", self.max_attend_past, low=0)
        if self.sparse_topk is not None:
            check_whole("attn_sparse_topk", self.sparse_topk)
        functions = [f"attn_{n}" for n in ("l2_distance", "sigmoid") if getattr(self, n)]
        functions += ["attn_sparse_topk"] * (self.sparse_topk is not None)
        if len(functions) > 1:
            raise ValueError(f"choose at most one of attn_l2_distance, attn_sigmoid and attn_sparse_topk "
                             f"(as x-transformers); got {' and '.join(functions)}")
        check_whole("attn_num_mem_kv", self.num_mem_kv, low=0)
        check_whole("attn_cope_max_pos", self.cope_max_pos)

    def key_value_heads(self, heads: int) -> int:
        """How many key/value heads a layer of `heads` query heads has (grouped- or multi-query attention)."""
        return 1 if self.one_kv_head else self.kv_heads or heads

    @property
    def scale(self) -> float:
        """The factor on q·kᵀ: qk-norm's fixed scale, else dim_head ** -0.5."""
        return self.qk_norm_scale if self.qk_norm and not self.qk_norm_dim_scale else self.dim_head ** -0.5

    @property
    def key_extras(self) -> list[str]:
        """Names of the key columns each attention layer puts in front of the tokens, in x-transformers'
        order: the learned sink, the zero key, the memory keys."""
        return (["sink"] * self.head_learned_sink + ["zero"] * self.add_zero_kv
                + [f"mem kv {k}" for k in range(self.num_mem_kv)])


@dataclass(frozen=True)
class FeedForwardConfig:
    """Options of each feed-forward module (`ff_` prefix)."""

    mult: float = option(4, "feed-forward width", "block", "inner width as a multiple of dim")
    glu: bool = option(False, "GLU feed-forward", "block", "the inner projection is doubled and gates itself",
                       weights=("layers.*.branch.proj_in.weight",))
    swish: bool = option(False, "SiLU activation", "block", "instead of GELU")
    no_bias: bool = option(False, "no feed-forward biases", "block")
    post_act_ln: bool = option(False, "norm after the activation", "block", "a LayerNorm over the inner width",
                               weights=("layers.*.branch.norm.weight",))
    dropout: float = option(0.0, "feed-forward dropout", "block", "before the output projection, training only")

    def __post_init__(self) -> None:
        check_number("ff_mult", self.mult, 1e-3, 64)
        check_number("ff_dropout", self.dropout, 0.0, 1.0)


@dataclass(frozen=True)
class LayersConfig:
    """The attention stack (`Encoder`, `Decoder` or `AttentionLayers` keywords)."""

    kind: str
    dim: int
    depth: int
    heads: int = 8
    causal: bool = option(False, "causal", "mask", "a token sees only itself and earlier tokens",
                          stages=("masked",), form=True)
    residual_attn: bool = option(False, "residual attention (RealFormer)", "scores",
                                 "each layer adds the previous layer's pre-softmax logits to its scores",
                                 stages=("residual", "scores_residual"), form=True)
    rotary_pos_emb: bool = option(False, "rotary positions", "queries and keys",
                                  "queries and keys are rotated by their position", form=True)
    rotary_emb_dim: int | None = option(None, "rotary features", "queries and keys",
                                        "features per head that rotary rotates (default dim_head / 2)")
    rotary_xpos: bool = option(False, "xPos", "queries and keys",
                               "rotary whose rotated features decay with distance: queries × s^t, keys ÷ s^t, "
                               "s < 1 per feature pair (causal only; implies rotary)")
    rotary_xpos_scale_base: float = option(512, "xPos scale base", "queries and keys",
                                           "positions are divided by it before the power: larger, slower decay")
    rotary_interpolation_factor: float = option(1.0, "rotary interpolation", "queries and keys",
                                                "rotary positions are divided by it (position interpolation)")
    rotary_base_rescale_factor: float = option(1.0, "rotary base rescale", "queries and keys",
                                               "rotary's base 10000 × factor^(r / (r − 2)) (NTK-aware scaling)")
    alibi_pos_bias: bool = option(False, "ALiBi", "position bias", "a linear distance penalty per head",
                                  stages=("position_bias", "biased"), form=True)
    alibi_num_heads: int | None = option(None, "ALiBi heads", "position bias", "heads that get the bias (default all)")
    rel_pos_bias: bool = option(False, "T5 relative position bias", "position bias",
                                "a learned bias per head and distance bucket (exact near, logarithmic far), shared "
                                "by all layers", stages=("position_bias", "biased"),
                                weights=("rel_pos.buckets.weight",), form=True)
    rel_pos_num_buckets: int = option(32, "T5 buckets", "position bias",
                                      "distance buckets (an Encoder gives half to future keys)")
    rel_pos_max_distance: int = option(128, "T5 max distance", "position bias",
                                       "distances from it on share the last bucket")
    dynamic_pos_bias: bool = option(False, "dynamic position bias", "position bias",
                                    "a small MLP maps each query − key distance to a bias per head, shared by all "
                                    "layers", stages=("position_bias", "biased"),
                                    weights=("rel_pos.hidden.*", "rel_pos.out.*"), form=True)
    dynamic_pos_bias_log_distance: bool = option(False, "dynamic bias on log distance", "position bias",
                                                 "the MLP sees sign(d)·log(|d| + 1) instead of d")
    dynamic_pos_bias_mlp_depth: int = option(2, "dynamic bias MLP depth", "position bias",
                                             "hidden layers of the MLP (width dim / 4)")
    dynamic_pos_bias_norm: bool = option(False, "dynamic bias MLP norm", "position bias",
                                         "a LayerNorm after each hidden layer of the MLP", weights=("rel_pos.norms.*",))
    use_rmsnorm: bool = option(False, "RMSNorm", "norm", "instead of LayerNorm", weights=("layers.*.norm.g",),
                               form=True)
    use_scalenorm: bool = option(False, "ScaleNorm", "norm", "one learned gain per norm, instead of LayerNorm",
                                 weights=("layers.*.norm.g",), form=True)
    use_simple_rmsnorm: bool = option(False, "simple RMSNorm", "norm", "RMSNorm without a learned gain", form=True)
    pre_norm: bool = option(True, "pre-norm", "norm", "normalise each branch's input; False: post-norm, normalise "
                            "after the residual sum as the original Transformer", weights=("layers.*.post_norm.*",),
                            form=True)
    sandwich_norm: bool = option(False, "sandwich norm", "norm", "also normalise each branch's output",
                                 weights=("layers.*.branch_norm.*",), form=True)
    scale_residual: bool = option(False, "scaled residual", "block", "a learned per-feature scale on the residual",
                                  weights=("layers.*.residual.scale",))
    gate_residual: bool = option(False, "gated residual", "block",
                                 "a GRU cell combines branch output and residual instead of a sum",
                                 weights=("layers.*.residual.gru.*",))
    macaron: bool = option(False, "Macaron", "block", "blocks of ½ feed-forward, attention, ½ feed-forward",
                           form=True)
    custom_layers: tuple[str, ...] | None = option(None, "custom layer pattern", "block",
                                                   "an explicit list of 'a' (attention) and 'f' (feed-forward), "
                                                   "and 'c' (cross-attention) with cross_attend")
    par_ratio: int | None = option(None, "PAR pattern", "block",
                                   "attention only in the first two thirds, feed-forwards after (PAR transformer)")
    shift_tokens: int | tuple[int, ...] = option(
        0, "token shift", "block", "each branch's input is split into feature chunks that move 0, 1 … s positions "
        "along the sequence (also −1 … −s in an Encoder) before the branch; one number, or one per layer")
    add_value_residual: bool = option(False, "value residual (ResFormer)", "values",
                                      "every attention layer after the first mixes the first layer's values into its "
                                      "own; no score stage: it changes what the heads output, not this layer's scores",
                                      weights=("layers.*.branch.to_value_residual_mix.*",), form=True)
    learned_value_residual_mix: bool = option(True, "learned value-residual mix", "values",
                                              "the value-residual mix is sigmoid(W x) per token and head; "
                                              "False: an even ½ mix")
    cross_attend: bool = option(False, "cross-attention", "scores",
                                "a cross-attention layer after each self-attention layer: queries from the stream, "
                                "keys and values from a context sequence (an encoder's output), its padding masked; "
                                "traced apart, as cross_layers", stages=("scores", "masked", "attn"),
                                weights=("layers.*.branch.to_q.weight", "layers.*.branch.to_k.weight",
                                         "layers.*.branch.to_v.weight", "layers.*.branch.to_out.weight"))
    only_cross: bool = option(False, "cross-attention only", "block",
                              "with cross_attend: blocks of cross-attention and feed-forward, no self-attention")
    cross_residual_attn: bool = option(False, "residual cross-attention", "scores",
                                       "each cross-attention layer adds the previous one's pre-softmax logits",
                                       stages=("residual", "scores_residual"))
    attn: AttentionConfig = field(default_factory=AttentionConfig)
    ff: FeedForwardConfig = field(default_factory=FeedForwardConfig)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown attention layers kind {self.kind!r}; expected one of {list(KINDS)}")
        for name in ("dim", "depth", "heads"):
            check_whole(name, getattr(self, name))
        if self.kind == "Encoder" and self.causal or self.kind == "Decoder" and not self.causal:
            raise ValueError(f"a {self.kind} is {'never' if self.causal else 'always'} causal; "
                             f"use {'Decoder' if self.causal else 'Encoder'} instead")
        if self.attn.selective and not self.causal:
            raise ValueError("Selective attention (attn_selective) needs a causal model (a Decoder): it lets a token "
                             "stop later tokens from attending to earlier ones, which has no meaning without an order")
        self.check_cross()
        if self.rotary_dim is not None and self.alibi_pos_bias:
            rotary = "rotary_xpos" if self.rotary_xpos else "rotary_pos_emb"
            raise ValueError(f"choose one relative position scheme: {rotary} or alibi_pos_bias, not both")
        self.check_sub_options()
        rotary = self.rotary_dim
        if rotary is not None and not (2 <= rotary <= self.attn.dim_head and rotary % 2 == 0):
            raise ValueError(f"rotary_emb_dim must be even and at most attn_dim_head ({self.attn.dim_head}), "
                             f"got {rotary}")
        if self.heads % self.attn.key_value_heads(self.heads):
            raise ValueError(f"attn_kv_heads ({self.attn.kv_heads}) must divide heads ({self.heads})")
        if self.alibi_pos_bias and not 1 <= self.alibi_heads <= self.heads:
            raise ValueError(f"alibi_num_heads must be between 1 and heads ({self.heads}), got {self.alibi_heads}")
        self.check_positions()
        norms = [n for n in ("use_rmsnorm", "use_scalenorm", "use_simple_rmsnorm") if getattr(self, n)]
        if len(norms) > 1:
            raise ValueError(f"choose one norm: {' or '.join(norms)}")
        if self.sandwich_norm and not self.pre_norm:
            raise ValueError("sandwich_norm needs pre_norm=True")
        if self.custom_layers is not None and self.par_ratio is not None:
            raise ValueError("choose custom_layers or par_ratio, not both")
        if self.custom_layers is not None:
            kinds = ("a", "c", "f") if self.cross_attend else ("a", "f")
            if not self.custom_layers or any(t not in kinds for t in self.custom_layers):
                raise ValueError("custom_layers must be a sequence of 'a' (attention), 'f' (feed-forward) and, with "
                                 f"cross_attend=True, 'c' (cross-attention); got {self.custom_layers!r}")
            object.__setattr__(self, "custom_layers", tuple(self.custom_layers))
        if self.par_ratio is not None:
            check_whole("par_ratio", self.par_ratio, low=2)
            layers = self.depth * len(self.default_block)
            if self.par_ratio > layers:
                raise ValueError(f"par_ratio must be at most the number of layers ({layers}); got {self.par_ratio}")
        if "a" not in self.layer_types and "c" not in self.layer_types:
            raise ValueError("the layer pattern has no attention layer")
        if self.cross_attend and "c" not in self.layer_types:
            raise ValueError("cross_attend=True, but the layer pattern (custom_layers) has no 'c' layer")

        self.check_shift_tokens()
        if not self.learned_value_residual_mix and not self.add_value_residual:
            raise ValueError("learned_value_residual_mix=False has no effect without add_value_residual=True")

    def check_shift_tokens(self) -> None:
        """shift_tokens is a whole number ≥ 0, or one per layer; each layer's chunks must fit in dim."""
        shifts = self.shift_tokens
        if isinstance(shifts, (list, tuple)):
            shifts = tuple(shifts)
            object.__setattr__(self, "shift_tokens", shifts)
            if len(shifts) != len(self.layer_types):
                raise ValueError(f"shift_tokens as a list needs one entry per layer ({len(self.layer_types)}: "
                                 f"{''.join(self.layer_types)}); got {len(shifts)}")
        for shift in shifts if isinstance(shifts, tuple) else (shifts,):
            check_whole("shift_tokens", shift, low=0)
        widest = max((len(s) for s in self.layer_shifts), default=0)
        if widest > self.dim:
            raise ValueError(f"shift_tokens makes {widest} feature chunks, more than dim ({self.dim})")

    # Position sub-options and the scheme each needs: set without it, they are refused naming both.
    SUB_OPTIONS = (("rotary_emb_dim", "rotary_pos_emb"), ("rotary_interpolation_factor", "rotary_pos_emb"),
                   ("rotary_base_rescale_factor", "rotary_pos_emb"), ("rotary_xpos_scale_base", "rotary_xpos"),
                   ("alibi_num_heads", "alibi_pos_bias"), ("rel_pos_num_buckets", "rel_pos_bias"),
                   ("rel_pos_max_distance", "rel_pos_bias"), ("dynamic_pos_bias_log_distance", "dynamic_pos_bias"),
                   ("dynamic_pos_bias_mlp_depth", "dynamic_pos_bias"), ("dynamic_pos_bias_norm", "dynamic_pos_bias"))

    def check_sub_options(self) -> None:
        """Refuse a position sub-option changed from its default without its scheme (rotary_xpos is rotary)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, needs in self.SUB_OPTIONS:
            on = self.rotary_dim is not None if needs == "rotary_pos_emb" else getattr(self, needs)
            if getattr(self, name) != defaults[name] and not on:
                raise ValueError(f"{name} has no effect without {needs}=True")

    def check_positions(self) -> None:
        """Validate the position schemes: one position bias at most, and each scheme's numbers."""
        biases = [name for name, on in (("alibi_pos_bias", self.alibi_pos_bias), ("rel_pos_bias", self.rel_pos_bias),
                                        ("dynamic_pos_bias", self.dynamic_pos_bias),
                                        ("attn_data_dependent_alibi", self.attn.data_dependent_alibi)) if on]
        if len(biases) > 1:
            raise ValueError(f"choose one position bias: {' or '.join(biases)}, not both")
        if self.rotary_xpos and not self.causal:
            raise ValueError("rotary_xpos needs a causal model (a Decoder): its decay assumes keys come before queries")
        check_number("rotary_interpolation_factor", self.rotary_interpolation_factor, 1.0, 1e6)
        check_number("rotary_base_rescale_factor", self.rotary_base_rescale_factor, 1e-6, 1e6)
        check_number("rotary_xpos_scale_base", self.rotary_xpos_scale_base, 1e-6, 1e9)
        if self.rotary_base_rescale_factor != 1 and self.rotary_dim == 2:
            raise ValueError("rotary_base_rescale_factor needs rotary_emb_dim > 2 (its exponent is r / (r − 2))")
        if self.rel_pos_bias:
            check_whole("rel_pos_num_buckets", self.rel_pos_num_buckets, low=2 if self.causal else 4)
            check_whole("rel_pos_max_distance", self.rel_pos_max_distance)
            if self.rel_pos_max_distance < self.rel_pos_num_buckets:
                raise ValueError(f"rel_pos_max_distance ({self.rel_pos_max_distance}) must be at least "
                                 f"rel_pos_num_buckets ({self.rel_pos_num_buckets})")
        if self.dynamic_pos_bias:
            check_whole("dynamic_pos_bias_mlp_depth", self.dynamic_pos_bias_mlp_depth)
            if self.dim < 4:
                raise ValueError(f"dynamic_pos_bias needs dim ≥ 4 (its MLP is dim / 4 wide); got dim {self.dim}")

    def check_cross(self) -> None:
        """Cross-attention's combinations: its own options need cross_attend, selective attention refuses it."""
        for name in ("only_cross", "cross_residual_attn"):
            if getattr(self, name) and not self.cross_attend:
                raise ValueError(f"{name} has no effect without cross_attend=True")
        if self.cross_attend and self.add_value_residual:
            raise ValueError("add_value_residual cannot be combined with cross_attend yet: the cross-attention layers "
                             "would need the first cross layer's values")
        if self.cross_attend and self.attn.selective:
            raise ValueError("attn_selective cannot be combined with cross_attend: every attn_ option also reaches "
                             "the cross-attention layers, and selective attention needs causal attention")
        if self.attn.use_cope and (self.cross_attend or not self.causal):
            raise ValueError("CoPE (attn_use_cope) needs causal attention (a Decoder without cross_attend: every attn_ "
                             "option also reaches the cross-attention layers): it counts positions back from the "
                             "query over the keys before it")
        if self.attn.head_learned_sink and (self.residual_attn or self.cross_residual_attn):
            raise ValueError("attn_head_learned_sink cannot be combined with residual_attn or cross_residual_attn: the "
                             "sink column makes each layer's pre-softmax logits one key wider than the next layer's "
                             "scores (x-transformers fails the same way)")

    # derived facts, asked for everywhere instead of being re-read from keywords

    @property
    def selective(self) -> bool:
        return self.attn.selective

    @property
    def rotary_dim(self) -> int | None:
        """Features per head rotary rotates, or None without rotary."""
        return (self.rotary_emb_dim or self.attn.dim_head // 2) if self.rotary_pos_emb or self.rotary_xpos else None

    @property
    def rotary_base(self) -> float:
        """Rotary's frequency base: 10000, times factor^(r / (r − 2)) with rotary_base_rescale_factor."""
        factor, r = self.rotary_base_rescale_factor, self.rotary_dim
        return 10000.0 * factor ** (r / (r - 2)) if factor != 1 and r is not None else 10000.0

    @property
    def alibi_heads(self) -> int | None:
        return (self.alibi_num_heads or self.heads) if self.alibi_pos_bias else None

    @property
    def norm(self) -> str:
        """The norm every block uses: layernorm, rmsnorm, scalenorm or simple_rmsnorm."""
        for name in ("rmsnorm", "scalenorm", "simple_rmsnorm"):
            if getattr(self, f"use_{name}"):
                return name
        return "layernorm"

    def stages_in_use(self, cross: bool = False) -> tuple[str, ...]:
        """The stages this model's options make differ from the stage before, in pipeline order: what a
        stage strip shows. `scores`, `masked` (padding is always possible) and `attn` are always in use.
        cross: of the cross-attention layers, which take the attn_ options and the cross ones only."""
        fed = {"scores", "masked", "attn"}
        for config in (self, self.attn) if cross else (self, self.attn, self.ff):
            rows = {f.name: f.metadata.get("option") for f in dataclasses.fields(config)}
            for name, value in changed_fields(config).items():
                if config is self and (name in CROSS_OPTIONS) != cross:
                    continue
                if rows[name] is not None and value not in (None, False):
                    fed.update(rows[name].stages)
        return tuple(s for s in STAGES if s in fed)

    @property
    def default_block(self) -> tuple[str, ...]:
        """One block of the layer list: 'a' attention, 'c' cross-attention, 'f' feed-forward."""
        block = ("c", "f") if self.only_cross else ("a", "c", "f") if self.cross_attend else ("a", "f")
        return ("f", *block) if self.macaron else block

    @property
    def layer_types(self) -> tuple[str, ...]:
        """The layer list as x-transformers builds it: 'a' attention, 'c' cross-attention, 'f' feed-forward."""
        block = self.default_block
        if self.custom_layers is not None:
            return self.custom_layers
        if self.par_ratio is not None:
            par_depth = self.depth * len(block)
            attn_only = tuple(t for t in block if t != "f")
            par_attn = par_depth // self.par_ratio
            depth_cut = par_depth * 2 // 3
            par_width = (depth_cut + depth_cut // par_attn) // par_attn
            if par_width < len(attn_only):   # checked at construction, as __post_init__ reads layer_types
                raise ValueError(f"par_ratio {self.par_ratio} is too large for blocks of {len(attn_only)} attention "
                                 "layers (cross_attend)")
            par_block = attn_only + ("f",) * (par_width - len(attn_only))
            head = par_block * par_attn
            return head + ("f",) * (par_depth - len(head))
        return block * self.depth

    @property
    def layer_shifts(self) -> tuple[tuple[int, ...], ...]:
        """Per layer, the token shift of each feature chunk (x-transformers' `ShiftTokens.shifts`): 0 … s for a
        causal model, −s … s otherwise; () for a layer without token shift."""
        shifts = self.shift_tokens
        per_layer = shifts if isinstance(shifts, tuple) else (shifts,) * len(self.layer_types)
        return tuple(tuple(range(0 if self.causal else -s, s + 1)) if s else () for s in per_layer)

    @property
    def num_attn_layers(self) -> int:
        """How many attention layers the stack has: the layers a trace records."""
        return self.layer_types.count("a")

    @property
    def num_cross_layers(self) -> int:
        """How many cross-attention layers the stack has: the layers `trace.cross` records."""
        return self.layer_types.count("c")

    # keyword surface

    @classmethod
    def from_kwargs(cls, kind: str = "AttentionLayers", **kwargs: Any) -> LayersConfig:
        """From x-transformers-style keywords; a TypeError names every keyword no option accepts."""
        nested = {"attn_": AttentionConfig, "ff_": FeedForwardConfig}
        parts: dict[str, dict[str, Any]] = {prefix: {} for prefix in nested}
        own = {f.name for f in dataclasses.fields(cls)} - {"attn", "ff", "kind"}
        top: dict[str, Any] = {}
        unknown = []
        for key, value in kwargs.items():
            prefix = next((p for p in nested if key.startswith(p)), None)
            if prefix and key[len(prefix):] in {f.name for f in dataclasses.fields(nested[prefix])}:
                parts[prefix][key[len(prefix):]] = value
            elif key in own:
                top[key] = value
            else:
                unknown.append(key)
        if unknown:
            known = sorted(name for name, _, _ in OPTIONS)
            raise TypeError(f"unexpected keyword argument(s) {', '.join(sorted(unknown))} for {kind}; "
                            f"options are {', '.join(known)} (README: supported options)")
        if kind in ("Encoder", "Decoder"):
            if "causal" in top:
                raise TypeError(f"a {kind} is {'always' if kind == 'Decoder' else 'never'} causal: "
                                f"use {'Encoder' if kind == 'Decoder' else 'Decoder'} for the other")
            top["causal"] = kind == "Decoder"
        for name in ("dim", "depth"):
            if name not in top:
                raise TypeError(f"{kind} needs {name}")
        return cls(kind=kind, attn=AttentionConfig(**parts["attn_"]), ff=FeedForwardConfig(**parts["ff_"]), **top)

    def to_kwargs(self) -> dict[str, Any]:
        """x-transformers keywords (with `kind`) for this config, defaults left out."""
        kwargs: dict[str, Any] = {"kind": self.kind, "dim": self.dim, "depth": self.depth, "heads": self.heads}
        kwargs.update(changed_fields(self, skip={"kind", "dim", "depth", "heads", "attn", "ff", "causal"}))
        if self.kind == "AttentionLayers" and self.causal:
            kwargs["causal"] = True
        kwargs.update({f"attn_{k}": v for k, v in changed_fields(self.attn).items()})
        kwargs.update({f"ff_{k}": v for k, v in changed_fields(self.ff).items()})
        return kwargs

    def replace(self, **kwargs: Any) -> LayersConfig:
        """A copy with some keywords changed (prefixed keywords reach the sub-configs)."""
        return LayersConfig.from_kwargs(**{**self.to_kwargs(), **kwargs})


@dataclass(frozen=True)
class ModelConfig:
    """A `TransformerWrapper`: embeddings, the attention stack, logits."""

    num_tokens: int
    max_seq_len: int
    attn_layers: LayersConfig
    use_abs_pos_emb: bool = option(True, "absolute positions", "embedding",
                                   "a learned position embedding (off by itself with rotary or T5 bias)",
                                   weights=("pos_emb.weight",), form=True)
    emb_dropout: float = option(0.0, "embedding dropout", "embedding", "training only")
    tie_embedding: bool = option(False, "tied embedding", "output", "logits by the token embedding's transpose")
    l2norm_embed: bool = option(False, "l2-normalised embeddings", "embedding",
                                "token and position embeddings are each scaled to unit length before they are added",
                                form=True)
    emb_dim: int | None = option(None, "embedding width", "embedding",
                                 "token and position embeddings at this width, projected to dim by a linear layer "
                                 "(default dim: no projection)", weights=("project_emb.weight", "project_emb.bias"))
    post_emb_norm: bool = option(False, "norm after the embedding", "embedding",
                                 "a LayerNorm on token + position embedding", weights=("post_emb_norm.weight",),
                                 form=True)
    num_memory_tokens: int = option(0, "memory tokens", "embedding",
                                    "learned tokens put in front of the sequence: extra query and key positions "
                                    "(labelled mem 0, mem 1 … in a trace) that every token can attend to; they "
                                    "count as positions for rotary and ALiBi, not for the absolute position "
                                    "embedding, and get no logits", weights=("memory_tokens",), form=True)
    return_only_embed: bool = option(False, "embeddings only", "output",
                                     "no logits: the model returns its final embeddings (an encoder–decoder's encoder)")

    def __post_init__(self) -> None:
        check_whole("num_tokens", self.num_tokens)
        check_whole("max_seq_len", self.max_seq_len)
        check_number("emb_dropout", self.emb_dropout, 0.0, 1.0)
        if self.num_memory_tokens is None:        # x-transformers' default, meaning none
            object.__setattr__(self, "num_memory_tokens", 0)
        check_whole("num_memory_tokens", self.num_memory_tokens, low=0)
        if self.emb_dim == self.attn_layers.dim:   # the same model: no projection
            object.__setattr__(self, "emb_dim", None)
        if self.emb_dim is not None:
            check_whole("emb_dim", self.emb_dim)
            if self.tie_embedding and self.emb_dim != self.attn_layers.dim:
                raise ValueError(f"tie_embedding needs emb_dim = dim ({self.attn_layers.dim}); got emb_dim "
                                 f"{self.emb_dim}: the logits come from the dim-wide output")

    @property
    def embedding_dim(self) -> int:
        """The width of the token and position embeddings (emb_dim, by default dim)."""
        return self.emb_dim or self.attn_layers.dim
        if self.tie_embedding and self.return_only_embed:
            raise ValueError("tie_embedding has no effect with return_only_embed=True (no logits)")

    @property
    def layers(self) -> LayersConfig:
        return self.attn_layers

    @property
    def absolute_positions(self) -> bool:
        """Whether a learned absolute position embedding is added (rotary and T5's bias switch it off, as
        x-transformers; ALiBi and the other biases keep it)."""
        layers = self.attn_layers
        return self.use_abs_pos_emb and layers.rotary_dim is None and not layers.rel_pos_bias

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: x-transformers' TransformerWrapper keywords, `attn_layers` as keywords with `kind`."""
        return {"num_tokens": self.num_tokens, "max_seq_len": self.max_seq_len,
                **changed_fields(self, skip={"num_tokens", "max_seq_len", "attn_layers"}),
                "attn_layers": self.attn_layers.to_kwargs()}

    @classmethod
    def from_dict(cls, data: Any) -> ModelConfig:
        """From the JSON form; a ValueError names what is missing or wrong."""
        if not isinstance(data, dict) or not isinstance(data.get("attn_layers"), dict):
            raise ValueError("the config must be a JSON object with num_tokens, max_seq_len and attn_layers")
        data = dict(data)
        layer_kwargs = dict(data.pop("attn_layers"))
        kind = layer_kwargs.pop("kind", "AttentionLayers")
        if kind not in KINDS:
            raise ValueError(f"unknown attention layers kind {kind!r}; expected one of {list(KINDS)}")
        if "custom_layers" in layer_kwargs and isinstance(layer_kwargs["custom_layers"], list):
            layer_kwargs["custom_layers"] = tuple(layer_kwargs["custom_layers"])
        for name in ("num_tokens", "max_seq_len"):
            if name not in data:
                raise ValueError(f"the config has no {name}")
        top = {f.name for f in dataclasses.fields(cls)} - {"attn_layers"}
        unknown = sorted(set(data) - top)
        if unknown:
            raise ValueError(f"unknown TransformerWrapper option(s) {', '.join(unknown)}")
        try:
            layers = LayersConfig.from_kwargs(kind, **layer_kwargs)
        except TypeError as err:
            raise ValueError(str(err)) from None
        return cls(attn_layers=layers, **data)

    def replace(self, **layer_changes: Any) -> ModelConfig:
        """A copy with some attention-layer keywords changed (e.g. residual_attn=False)."""
        return dataclasses.replace(self, attn_layers=self.attn_layers.replace(**layer_changes))


# The enc_ / dec_ keywords x-transformers' XTransformer hands to its two TransformerWrappers; the rest reach the layers.
XTRANSFORMER_WRAPPER_KWARGS = ("num_tokens", "max_seq_len", "emb_dropout", "use_abs_pos_emb")


@dataclass(frozen=True)
class EncDecConfig:
    """x-transformers' `XTransformer`: an Encoder wrapper that returns its embeddings (`return_only_embed`) and a
    cross-attending Decoder wrapper that reads them as context. Its keywords are XTransformer's: `dim`,
    `tie_token_emb` and `enc_` / `dec_` prefixed keywords for either side."""

    encoder: ModelConfig
    decoder: ModelConfig
    tie_token_emb: bool = option(False, "tied encoder–decoder embedding", "embedding",
                                 "an encoder–decoder's encoder and decoder share one token embedding")

    def __post_init__(self) -> None:
        enc, dec = self.encoder, self.decoder
        if enc.attn_layers.kind != "Encoder" or not enc.return_only_embed or enc.attn_layers.cross_attend:
            raise ValueError("an encoder–decoder's encoder is an Encoder without cross_attend, with return_only_embed")
        if dec.attn_layers.kind != "Decoder" or not dec.attn_layers.cross_attend:
            raise ValueError("an encoder–decoder's decoder is a Decoder with cross_attend=True")
        if enc.attn_layers.dim != dec.attn_layers.dim:
            raise ValueError(f"encoder and decoder need one dim; got {enc.attn_layers.dim} and {dec.attn_layers.dim}")
        for side, config in (("enc", enc), ("dec", dec)):
            extra = changed_fields(config, skip={"attn_layers", "return_only_embed", *XTRANSFORMER_WRAPPER_KWARGS})
            if extra:
                raise ValueError(f"an XTransformer takes no {', '.join(f'{side}_{k}' for k in extra)}: only "
                                 f"{', '.join(XTRANSFORMER_WRAPPER_KWARGS)} reach its TransformerWrappers")
        if self.tie_token_emb and enc.num_tokens != dec.num_tokens:
            raise ValueError(f"tie_token_emb needs enc_num_tokens == dec_num_tokens; got {enc.num_tokens} and "
                             f"{dec.num_tokens}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: XTransformer's constructor keywords, defaults left out."""
        data: dict[str, Any] = {"dim": self.encoder.attn_layers.dim,
                                **changed_fields(self, skip={"encoder", "decoder"})}
        for side, config in (("enc_", self.encoder), ("dec_", self.decoder)):
            wrapper = config.to_dict()
            layers = {k: v for k, v in wrapper.pop("attn_layers").items() if k not in ("kind", "dim", "cross_attend")}
            wrapper.pop("return_only_embed", None)
            data.update({side + k: v for k, v in {**wrapper, **layers}.items()})
        return data

    @classmethod
    def from_dict(cls, data: Any) -> EncDecConfig:
        """From XTransformer's keywords (the JSON form); a ValueError names what is missing or wrong."""
        if not isinstance(data, dict) or "dim" not in data:
            raise ValueError("an XTransformer config must be a JSON object with dim and enc_ / dec_ keywords")
        sides: dict[str, dict[str, Any]] = {"enc_": {}, "dec_": {}}
        for key, value in data.items():
            if key[:4] in sides:
                sides[key[:4]][key[4:]] = value
            elif key not in ("dim", "tie_token_emb"):
                raise ValueError(f"unknown XTransformer option {key}: its keywords are dim, tie_token_emb and enc_ / "
                                 "dec_ prefixed ones")

        def side(prefix: str, kind: str, wrapper: dict[str, Any], layers: dict[str, Any]) -> ModelConfig:
            own = dict(sides[prefix])
            missing = [prefix + name for name in ("num_tokens", "max_seq_len", "depth") if name not in own]
            if missing:
                raise ValueError(f"an XTransformer needs {', '.join(missing)}")
            wrapper = {**wrapper, **{k: own.pop(k) for k in XTRANSFORMER_WRAPPER_KWARGS if k in own}}
            layers = {"kind": kind, "dim": data["dim"], **layers, **own}
            return ModelConfig.from_dict({**wrapper, "attn_layers": layers})

        return cls(encoder=side("enc_", "Encoder", {"return_only_embed": True}, {}),
                   decoder=side("dec_", "Decoder", {}, {"cross_attend": True}),
                   tie_token_emb=data.get("tie_token_emb", False))


def config_from_dict(data: Any) -> ModelConfig | EncDecConfig:
    """A TransformerWrapper's config (with `attn_layers`) or an XTransformer's (with `dim` and enc_ / dec_ keywords)."""
    if isinstance(data, dict) and "attn_layers" not in data and "dim" in data:
        return EncDecConfig.from_dict(data)
    return ModelConfig.from_dict(data)


def changed_fields(config: Any, skip: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """{name: value} of the fields of `config` that differ from their defaults."""
    out = {}
    for f in dataclasses.fields(config):
        if f.name in skip:
            continue
        value = getattr(config, f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if value != default:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _rows() -> Iterator[tuple[str, Any, Option]]:
    for cls, prefix in ((ModelConfig, ""), (LayersConfig, ""), (AttentionConfig, "attn_"), (FeedForwardConfig, "ff_"),
                        (EncDecConfig, "")):
        for f in dataclasses.fields(cls):
            if "option" in f.metadata:
                yield prefix + f.name, f.default, f.metadata["option"]


# The options table: (x-transformers keyword, default, Option), in declaration order.
OPTIONS: tuple[tuple[str, Any, Option], ...] = tuple(_rows())
