"""Untrusted files and oversized requests: refused with a sentence, never executed, never allocated."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

import xattn
from xattn import limits

from conftest import tiny_config


class CreatesAFile:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    weights = tmp_path / "evil.pt"
    with open(weights, "wb") as f:
        pickle.dump({"weight": CreatesAFile(str(marker))}, f)
    config = tmp_path / "config.json"
    config.write_text('{"num_tokens": 23, "max_seq_len": 16, '
                      '"attn_layers": {"kind": "Decoder", "dim": 32, "depth": 1}}')
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        xattn.load_checkpoint(weights, config)
    assert not marker.exists()
    # Plain torch.save of the same object: still refused by weights_only, still never run.
    torch.save({"weight": CreatesAFile(str(marker))}, weights)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        xattn.load_checkpoint(weights, config)
    assert not marker.exists()


def test_truncated_and_foreign_checkpoints(tmp_path):
    model = xattn.build(tiny_config())
    path = tmp_path / "m.safetensors"
    xattn.save(model, path)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors"):
        xattn.load(tmp_path / "cut.safetensors")
    os.remove(tmp_path / "m.json")
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match="carries no xattn config"):
        xattn.load(tmp_path / "bare.safetensors")


def test_wrong_dtype_and_missing_keys_are_named(tmp_path):
    model = xattn.build(tiny_config())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["to_logits.weight"] = state["to_logits.weight"].long()
    del state["token_emb.weight"]
    from xattn.io import load_state
    with pytest.raises(ValueError) as err:
        load_state(model, state)
    assert "missing: token_emb.weight" in str(err.value) and "not floating point: to_logits.weight" in str(err.value)


def test_parameter_estimate_matches_real_model():
    for options in ({}, {"ff_glu": True, "ff_mult": 2}, {"rotary_pos_emb": True}):
        config = tiny_config(**options)
        model = xattn.build(config)
        assert limits.parameter_count(config) == sum(p.numel() for p in model.parameters())


def test_trace_estimate_matches_real_trace(tokens):
    model = xattn.build(tiny_config(residual_attn=True, attn_selective=True))
    _, trace = model.run_with_trace(tokens)
    real = sum(t.numel() * t.element_size() for t in trace.stages.values())
    assert limits.trace_bytes(model.config, *tokens.shape) == real


def test_budgets_refuse_with_numbers():
    config = tiny_config(dim=4096, depth=64)
    with pytest.raises(limits.TooLarge, match="parameters; the limit here is 1,000,000"):
        limits.check(config, max_parameters=1_000_000, max_trace_bytes=2**30)
    config = tiny_config()
    config["max_seq_len"] = 4096
    with pytest.raises(limits.TooLarge, match="MiB; the limit here is 64 MiB"):
        limits.check(config, max_parameters=10**9, max_trace_bytes=64 * 2**20)


def test_reuse_freed_memory_applies_on_glibc():
    import platform

    from xattn.memory import reuse_freed_memory
    applied = reuse_freed_memory()
    assert applied is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
