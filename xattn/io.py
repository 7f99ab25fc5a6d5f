"""Saving and loading xattn models (TransformerWrapper or XTransformer): safetensors weights with the JSON config
in the header. Never unpickles."""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .config import EncDecConfig, ModelConfig, config_from_dict
from .convert import from_x_transformers_state_dict, x_transformers_config
from .encdec import XTransformer, build_any
from .tokenizer import CharTokenizer
from .wrapper import TransformerWrapper, load_state

CONFIG_KEY = "xattn_config"
TOKENIZER_KEY = "xattn_tokenizer"


def config_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def tied_keys(model: nn.Module) -> dict[str, str]:
    """{state-dict key: the key of the same tensor met first} for tied weights (XTransformer's tie_token_emb):
    safetensors stores a tensor once, so these are left out on save and filled in on load."""
    first: dict[int, str] = {}
    tied = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            tied[name] = first[id(p)]
        else:
            first[id(p)] = name
    return tied


def save(model: TransformerWrapper | XTransformer, path: str | os.PathLike,
         tokenizer: CharTokenizer | None = None) -> None:
    """Weights to `path` with the config (and the tokenizer, if given) in the safetensors header; the config
    again as `path.json`, for people."""
    tied = tied_keys(model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in tied}
    config = model.config.to_dict()
    metadata = {CONFIG_KEY: json.dumps(config, sort_keys=True)}
    if tokenizer is not None:
        metadata[TOKENIZER_KEY] = json.dumps(tokenizer.to_dict(), sort_keys=True)
    save_file(state, str(path), metadata=metadata)
    config_path(path).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def header(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file's header."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{Path(path).name} is not a readable safetensors file ({err})") from None


def read_config(path: str | os.PathLike) -> ModelConfig | EncDecConfig:
    """The model config stored in a checkpoint's header, else in its JSON sidecar."""
    metadata = header(path)
    try:
        if CONFIG_KEY in metadata:
            return config_from_dict(json.loads(metadata[CONFIG_KEY]))
        sidecar = config_path(path)
        if sidecar.exists():
            return config_from_dict(json.loads(sidecar.read_text()))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"the config in {Path(path).name} is not readable JSON ({err})") from None
    raise ValueError(f"{Path(path).name} carries no xattn config and has no {config_path(path).name} beside it")


def read_tokenizer(path: str | os.PathLike) -> CharTokenizer | None:
    """The tokenizer saved in a checkpoint's header, or None if it has none."""
    metadata = header(path)
    if TOKENIZER_KEY not in metadata:
        return None
    try:
        return CharTokenizer.from_dict(json.loads(metadata[TOKENIZER_KEY]))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"the tokenizer in {Path(path).name} is not readable ({err})") from None


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> TransformerWrapper | XTransformer:
    """A model (either kind) from a checkpoint written by `save`."""
    model = build_any(read_config(path))
    state = load_file(str(path), device=str(map_location))
    state.update({key: state[first] for key, first in tied_keys(model).items() if first in state})
    load_state(model, state)
    return model.to(map_location).eval()


def checkpoint_config(path: str | os.PathLike,
                      config_path: str | os.PathLike | None = None) -> ModelConfig | EncDecConfig:
    """The config `load_checkpoint` would build from, read without building the model (to check sizes first).
    An x-transformers config is checked for options xattn lacks here, before any weight is read."""
    path = Path(path)
    if config_path is None and path.suffix == ".safetensors":
        return read_config(path)
    if config_path is None:
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path.name} is not a checkpoint: neither safetensors nor a file written by torch.save")
        raise ValueError(f"{path.name} is not an xattn checkpoint (those are .safetensors): a torch file is read as an "
                         "x-transformers state dict, which needs its JSON config too")
    try:
        data = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"the config {Path(config_path).name} is not readable JSON ({err})") from None
    return x_transformers_config(data)


def load_checkpoint(path: str | os.PathLike,
                    config_path: str | os.PathLike | None = None) -> TransformerWrapper | XTransformer:
    """An xattn checkpoint, or an x-transformers state dict plus its JSON constructor config.

    x-transformers weights may be safetensors or a torch file, which is read with
    `torch.load(weights_only=True)`: tensors only, never arbitrary pickled objects.
    """
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
