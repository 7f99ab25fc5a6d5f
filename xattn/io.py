"""Saving and loading xattn models: safetensors weights with the JSON config in the header. Never unpickles."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from .wrapper import TransformerWrapper, build

CONFIG_KEY = "xattn_config"


def config_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def save(model: TransformerWrapper, path: str | os.PathLike) -> None:
    """Weights to `path` (config in the safetensors header) and the config again as `path.json`, for people."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = json.dumps(model.config, sort_keys=True)
    save_file(state, str(path), metadata={CONFIG_KEY: config})
    config_path(path).write_text(json.dumps(model.config, indent=2, sort_keys=True) + "\n")


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The model config stored in a checkpoint's header, else in its JSON sidecar."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{Path(path).name} is not a readable safetensors file ({err})") from None
    if CONFIG_KEY in metadata:
        return json.loads(metadata[CONFIG_KEY])
    sidecar = config_path(path)
    if sidecar.exists():
        return json.loads(sidecar.read_text())
    raise ValueError(f"{Path(path).name} carries no xattn config and has no {sidecar.name} beside it")


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> TransformerWrapper:
    """A model from a checkpoint written by `save` (or `model.save`)."""
    model = build(read_config(path))
    state = load_file(str(path), device=str(map_location))
    load_state(model, state)
    return model.to(map_location).eval()


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strictly load `state`, naming every missing, unexpected or wrongly shaped tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    not_float = [k for k in expected if k in state and not state[k].is_floating_point()]
    problems = [(missing, "missing"), (unexpected, "unexpected"), (wrong, "wrong shape"), (not_float, "not floating point")]
    message = "; ".join(f"{what}: {', '.join(items[:6])}{' …' if len(items) > 6 else ''}" for items, what in problems if items)
    if message:
        raise ValueError(f"the checkpoint does not fit the model — {message}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def checkpoint_config(path: str | os.PathLike, config_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The config `load_checkpoint` would build from, read without building the model (to check sizes first)."""
    path = Path(path)
    if config_path is None and path.suffix == ".safetensors":
        try:
            config = read_config(path)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"the config in {path.name} is not readable JSON ({err})") from None
    elif config_path is None:
        raise ValueError(f"{path.name} is an x-transformers checkpoint: give its JSON config too")
    else:
        try:
            config = json.loads(Path(config_path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise ValueError(f"the config {Path(config_path).name} is not readable JSON ({err})") from None
    if not isinstance(config, dict) or "attn_layers" not in config:
        raise ValueError("the config must be a JSON object with num_tokens, max_seq_len and attn_layers")
    return config


def load_checkpoint(path: str | os.PathLike, config_path: str | os.PathLike | None = None) -> TransformerWrapper:
    """An xattn checkpoint, or an x-transformers state dict plus its JSON constructor config.

    x-transformers weights may be safetensors or a torch file, which is read with
    `torch.load(weights_only=True)`: tensors only, never arbitrary pickled objects.
    """
    from .convert import from_x_transformers_state_dict

    path = Path(path)
    is_safetensors = path.suffix == ".safetensors"
    if config_path is None and is_safetensors:
        return load(path)
    config = checkpoint_config(path, config_path)
    try:
        state = load_file(str(path)) if is_safetensors else torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path.name} is not a readable checkpoint: it holds pickled Python objects besides "
                         "tensors, which are never unpickled here") from None
    except Exception as err:  # safetensors, zip and unpickling errors all mean: not a checkpoint we can read
        raise ValueError(f"{path.name} is not a readable checkpoint ({type(err).__name__}: {str(err)[:200]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path.name} does not hold a state dict of tensors")
    return from_x_transformers_state_dict(state, config)
