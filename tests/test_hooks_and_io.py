"""Hook points, keyword routing, saving and loading."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

import xattn

from conftest import tiny_config


def test_hook_points_are_named_by_place(tiny_decoder):
    names = tiny_decoder.hook_points()
    assert len(names) == 3 * len(xattn.STAGES)
    assert "layers.2.attn.hook_pre_softmax" in names and "layers.0.attn.hook_scores" in names


def test_hook_replaces_a_stage_and_is_removed(tiny_decoder, tokens):
    _, before = tiny_decoder.run_with_trace(tokens)

    def flatten(logits, hook):      # equal logits over the visible keys → uniform attention there
        return torch.where(logits > -1e30, torch.zeros_like(logits), logits)

    with tiny_decoder.hooks([("layers.1.attn.hook_pre_softmax", flatten)]):
        _, after = tiny_decoder.run_with_trace(tokens)
    n = tokens.shape[1]
    uniform = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    torch.testing.assert_close(after["attn"][1], uniform.expand_as(after["attn"][1]))
    assert torch.equal(after["attn"][0], before["attn"][0])
    assert not torch.equal(after["attn"][2], before["attn"][2])          # the change flows downstream
    assert all(not p.fns for p in tiny_decoder.hook_points().values())
    _, again = tiny_decoder.run_with_trace(tokens)
    assert torch.equal(again["attn"], before["attn"])


def test_hooks_removed_on_exception(tiny_decoder, tokens):
    def boom(tensor, hook):
        raise RuntimeError("inside a hook")

    with pytest.raises(RuntimeError, match="inside a hook"):
        with tiny_decoder.hooks([(lambda name: name.endswith("hook_attn"), boom)]):
            tiny_decoder(tokens)
    assert all(not p.fns for p in tiny_decoder.hook_points().values())


def test_hook_reads_see_every_layer_and_bad_names_fail(tiny_decoder, tokens):
    seen = []
    with tiny_decoder.hooks([(lambda name: name.endswith("hook_masked"), lambda t, h: seen.append(h.name))]):
        tiny_decoder(tokens)
    assert seen == [f"layers.{i}.attn.hook_masked" for i in range(3)]
    with pytest.raises(KeyError, match="no hook point"):
        with tiny_decoder.hooks([("layers.9.attn.hook_attn", lambda t, h: None)]):
            pass


def test_hook_with_wrong_shape_is_refused(tiny_decoder, tokens):
    with pytest.raises(ValueError, match="returned shape"):
        with tiny_decoder.hooks([("layers.0.attn.hook_scores", lambda t, h: t[..., :1])]):
            tiny_decoder(tokens)


def test_prefixed_kwargs_reach_inner_modules():
    layers = xattn.Decoder(dim=32, depth=2, heads=2, attn_dim_head=12, ff_mult=2, ff_glu=True)
    attn, ff = layers.layers[0].branch, layers.layers[1].branch
    assert attn.dim_head == 12 and attn.to_q.out_features == 24
    assert ff.proj_in.out_features == 2 * 64 and ff.glu


@pytest.mark.parametrize("kwargs,named", [
    ({"attn_dim_heads": 8}, "attn_dim_heads"), ({"ff_multiplier": 2}, "ff_multiplier"),
    ({"residual": True}, "residual"),
])
def test_unknown_kwargs_raise_type_error_naming_them(kwargs, named):
    with pytest.raises(TypeError, match=named):
        xattn.Decoder(dim=32, depth=2, **kwargs)


def test_nonsense_combinations_are_refused():
    with pytest.raises(ValueError, match="causal"):
        xattn.Encoder(dim=32, depth=2, attn_selective=True)
    with pytest.raises(ValueError, match="rotary_pos_emb or alibi_pos_bias"):
        xattn.Decoder(dim=32, depth=2, rotary_pos_emb=True, alibi_pos_bias=True)
    with pytest.raises(ValueError, match="depth"):
        xattn.Decoder(dim=32, depth=0)
    with pytest.raises(ValueError, match="alibi_num_heads has no effect without alibi_pos_bias"):
        xattn.Decoder(dim=32, depth=2, alibi_num_heads=4)
    with pytest.raises(ValueError, match="rotary_emb_dim has no effect without rotary_pos_emb"):
        xattn.Encoder(dim=32, depth=2, rotary_emb_dim=16)


def test_bad_inputs_are_refused(tiny_decoder):
    with pytest.raises(ValueError, match="at most 16"):
        tiny_decoder(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        tiny_decoder(torch.full((1, 4), 99))
    with pytest.raises(ValueError, match="mask"):
        tiny_decoder(torch.zeros(1, 4, dtype=torch.long), mask=torch.ones(1, 5, dtype=torch.bool))


def test_save_and_load_round_trip(tmp_path, tiny_decoder, tokens):
    path = tmp_path / "model.safetensors"
    xattn.save(tiny_decoder, path)
    with safe_open(str(path), framework="pt") as f:        # plain safetensors, config in the header
        assert "xattn_config" in f.metadata()
    assert (tmp_path / "model.json").exists()
    loaded = xattn.load(path)
    assert loaded.config == tiny_decoder.config
    assert torch.equal(loaded(tokens), tiny_decoder(tokens))


def test_load_refuses_a_mismatched_checkpoint(tmp_path, tiny_decoder):
    other = xattn.build(tiny_config("Decoder", dim=48))
    path = tmp_path / "other.safetensors"
    xattn.save(other, path)
    from safetensors.torch import load_file

    from xattn.wrapper import load_state
    with pytest.raises(ValueError, match="wrong shape"):
        load_state(tiny_decoder, load_file(str(path)))
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        xattn.load(tmp_path / "junk.safetensors")


def test_mask_presets():
    assert torch.equal(xattn.masks.sliding_window(4, 1).int(),
                       torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]]))
    assert torch.equal(xattn.masks.block_diagonal(4, 2).int(),
                       torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]))
    text = "1000\n1100\n0110\n0011"
    assert xattn.masks.format_mask(xattn.masks.parse_mask(text, 4)) == text
    with pytest.raises(ValueError, match="row 2"):
        xattn.masks.parse_mask("1000\n11x0\n0110\n0011", 4)


def test_hooks_of_one_thread_do_not_reach_another(tiny_decoder, tokens):
    """Concurrent traces on one shared model: each thread records only its own forward pass."""
    import threading

    other = torch.randint(0, 23, (2, 10), generator=torch.Generator().manual_seed(99))
    _, expected_other = tiny_decoder.run_with_trace(other)
    started, release = threading.Event(), threading.Event()
    seen_in_thread = []

    def slow_reader(tensor, hook):   # holds thread A inside its traced forward while thread B runs
        started.set()
        release.wait(5)

    def thread_a():
        with tiny_decoder.hooks([("layers.0.attn.hook_scores", slow_reader)]):
            tiny_decoder(tokens)

    a = threading.Thread(target=thread_a)
    a.start()
    assert started.wait(5)
    _, trace_b = tiny_decoder.run_with_trace(other)          # runs while A's hook is attached
    seen_in_thread.append(tiny_decoder.hook_points()["layers.0.attn.hook_scores"].active)
    release.set()
    a.join(5)
    assert seen_in_thread == [False]
    assert torch.equal(trace_b["attn"], expected_other["attn"])
