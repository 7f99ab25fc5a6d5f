"""The typed config and the options table: one place for every option, and what is generated from it."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import xattn
from xattn.config import OPTIONS, PLACES, LayersConfig, ModelConfig
from xattn.describe import README_TABLES, describe
from xattn.stages import STAGES, TERMS

from conftest import tiny_config

README = Path(__file__).resolve().parent.parent / "README.md"

# One model per group of options that change which weights exist: the parameter count must follow each.
SHAPES = [
    {}, {"ff_no_bias": True}, {"ff_glu": True, "ff_mult": 2}, {"use_rmsnorm": True}, {"use_scalenorm": True},
    {"use_simple_rmsnorm": True}, {"pre_norm": False}, {"sandwich_norm": True}, {"scale_residual": True},
    {"gate_residual": True}, {"macaron": True}, {"custom_layers": ("a", "f", "a", "a")}, {"par_ratio": 2},
    {"ff_post_act_ln": True}, {"rotary_pos_emb": True}, {"alibi_pos_bias": True},
]


@pytest.mark.parametrize("options", SHAPES, ids=lambda o: "-".join(o) or "plain")
def test_parameter_count_is_what_the_modules_hold(options):
    config = ModelConfig.from_dict(tiny_config("Decoder", **options))
    model = xattn.build(config)
    assert xattn.limits.parameter_count(config) == sum(p.numel() for p in model.parameters())


def test_parameter_count_of_a_plain_model_by_hand():
    """dim 32, 3 layers, 4 heads of 8, ff ×4 with biases, vocabulary 23, 16 positions: counted term by term."""
    dim, inner, ff = 32, 4 * 8, 4 * 32
    per_layer = 4 * dim * inner + (dim * ff + ff) + (ff * dim + dim) + 2 * dim
    expected = 3 * per_layer + dim + 23 * dim * 2 + 16 * dim
    assert xattn.limits.parameter_count(ModelConfig.from_dict(tiny_config("Decoder"))) == expected
    no_bias = ModelConfig.from_dict(tiny_config("Decoder", ff_no_bias=True))
    assert xattn.limits.parameter_count(no_bias) == expected - 3 * (ff + dim)


@pytest.mark.parametrize("options", SHAPES, ids=lambda o: "-".join(o) or "plain")
def test_config_round_trips_through_json(options):
    config = ModelConfig.from_dict(tiny_config("Decoder", residual_attn=True, **options))
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert xattn.build(config).config == config


def test_json_form_states_only_what_differs_from_defaults():
    config = ModelConfig.from_dict(tiny_config("Decoder", residual_attn=True, ff_glu=True))
    assert config.to_dict() == {"num_tokens": 23, "max_seq_len": 16, "attn_layers": {
        "kind": "Decoder", "dim": 32, "depth": 3, "heads": 4, "residual_attn": True, "attn_dim_head": 8,
        "ff_glu": True}}


def test_defaults_are_named_once_and_read_from_the_table():
    layers = LayersConfig.from_kwargs("Decoder", dim=16, depth=1)
    assert (layers.heads, layers.attn.dim_head, layers.ff.mult, layers.pre_norm) == (8, 64, 4, True)
    table = {name: default for name, default, _ in OPTIONS}
    assert table["attn_dim_head"] == 64 and table["ff_mult"] == 4 and table["pre_norm"] is True


def test_every_option_row_is_complete():
    names = [name for name, _, _ in OPTIONS]
    assert len(names) == len(set(names))
    for name, _, opt in OPTIONS:
        assert opt.label and opt.acts in PLACES, name
        assert set(opt.stages) <= set(STAGES), name


def test_stages_in_use_follow_the_options():
    plain = LayersConfig.from_kwargs("Decoder", dim=16, depth=1)
    assert plain.stages_in_use() == ("scores", "masked", "attn")
    both = plain.replace(residual_attn=True, attn_selective=True, alibi_pos_bias=True)
    assert both.stages_in_use() == ("scores", "residual", "scores_residual", "position_bias", "biased", "masked",
                                    "selection", "pre_softmax", "attn")
    assert set(TERMS) <= set(STAGES) and set(TERMS.values()) <= set(STAGES)


def test_unknown_and_conflicting_keywords_name_themselves():
    with pytest.raises(TypeError, match="attn_dim_heads"):
        LayersConfig.from_kwargs("Decoder", dim=16, depth=1, attn_dim_heads=8)
    with pytest.raises(ValueError, match="use_rmsnorm or use_scalenorm"):
        LayersConfig.from_kwargs("Decoder", dim=16, depth=1, use_rmsnorm=True, use_scalenorm=True)
    with pytest.raises(ValueError, match="sandwich_norm needs pre_norm"):
        LayersConfig.from_kwargs("Decoder", dim=16, depth=1, sandwich_norm=True, pre_norm=False)
    with pytest.raises(ValueError, match=r"custom_layers must be a sequence of 'a' \(attention\), 'f'"):
        LayersConfig.from_kwargs("Decoder", dim=16, depth=1, custom_layers=("a", "x"))
    with pytest.raises(ValueError, match="no attention layer"):
        LayersConfig.from_kwargs("Decoder", dim=16, depth=1, custom_layers=("f", "f"))
    with pytest.raises(ValueError, match="depth must be a whole number"):
        LayersConfig.from_kwargs("Decoder", dim=16, depth=2.5)
    with pytest.raises(ValueError, match="This x-transformers config uses options xattn does not support: "
                                         "attn_laser, use_derf"):
        xattn.convert.x_transformers_config(tiny_config("Decoder", use_derf=True, attn_laser=True))


def test_layer_patterns_match_x_transformers():
    xt = pytest.importorskip("x_transformers")
    patterns = ({"macaron": True}, {"par_ratio": 2}, {"par_ratio": 3, "depth": 4}, {"custom_layers": ("a", "f", "a")})
    for options in patterns:
        kwargs = {"dim": 16, "depth": 2, "heads": 2, **options}
        ours = LayersConfig.from_kwargs("Decoder", **kwargs).layer_types
        assert ours == tuple(xt.Decoder(**kwargs).layer_types), options


def test_hooks_fire_in_the_documented_stage_order(tiny_decoder, tokens):
    fired = []
    with tiny_decoder.hooks([(lambda name: True, lambda t, hook: fired.append((hook.layer, hook.stage)))]):
        tiny_decoder(tokens)
    assert fired == [(layer, stage) for layer in range(3) for stage in STAGES]
    points = tiny_decoder.hook_points()
    assert list(points) == [f"layers.{layer}.attn.hook_{stage}" for layer in range(3) for stage in STAGES]


def test_hook_points_are_named_by_attention_layer_whatever_the_pattern():
    model = xattn.build(tiny_config("Decoder", custom_layers=("f", "a", "f", "f", "a")))
    assert [p.layer for p in model.hook_points().values() if p.stage == "attn"] == [0, 1]
    _, trace = model.run_with_trace(torch.randint(0, 23, (1, 5)))
    assert trace["attn"].shape[0] == 2 and trace.layers == [0, 1]


def test_checkpoint_carries_its_tokenizer(tmp_path):
    p = xattn.pretrained("variables-both")
    path = tmp_path / "m.safetensors"
    xattn.save(p.model, path, tokenizer=p.tokenizer)
    assert xattn.read_tokenizer(path) == p.tokenizer
    xattn.save(p.model, tmp_path / "bare.safetensors")
    assert xattn.read_tokenizer(tmp_path / "bare.safetensors") is None


def test_bundled_checkpoints_carry_their_tokenizer():
    for name in xattn.available():
        path = xattn.registry.MODELS_DIR / f"{name}.safetensors"
        assert xattn.read_tokenizer(path) == xattn.pretrained(name).tokenizer, name


def test_describe_says_what_is_special():
    config = ModelConfig.from_dict(tiny_config("Decoder", residual_attn=True, use_rmsnorm=True, pre_norm=False))
    assert describe(config) == ("causal, 3 layers × 4 heads, dim 32, up to 16 tokens; residual attention "
                                "(RealFormer), RMSNorm, no pre-norm")
    one = ModelConfig.from_dict(tiny_config("Encoder", depth=1, heads=1))
    assert describe(one) == "bidirectional, 1 layer × 1 head, dim 32, up to 16 tokens; plain attention"


def test_readme_tables_are_the_generated_ones():
    for name, table in README_TABLES.items():
        assert table() in README.read_text(), f"regenerate {name}: python -m xattn.describe --readme README.md"


def test_memory_tuning_is_reachable_as_the_readme_writes_it():
    assert isinstance(xattn.memory.reuse_freed_memory(), bool)


def test_configs_are_frozen():
    config = ModelConfig.from_dict(tiny_config("Decoder"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.attn_layers.dim = 8
