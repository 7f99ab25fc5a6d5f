"""Where the app's models come from.

Bundled checkpoints are loaded once and shared read-only between sessions; uploaded checkpoints and fresh
models from the config form live in one browser session's state (`Session`), so no request ever changes a
model that another session is using.
"""
from __future__ import annotations

import math
import os
import threading
import unicodedata
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch

import xattn
from xattn import registry
from xattn.tokenizer import SPECIALS, CharTokenizer
from xattn.wrapper import changed_config

from . import limits

# Printable ASCII: the alphabet of fresh models, and of uploads unless the upload form names one.
ASCII = "".join(chr(c) for c in range(32, 127))
FRESH_EXAMPLE = "a=3; b=a; a=5; print(b)"
LIMITS = limits.FORM
POSITIONS = ("absolute", "rotary", "ALiBi")
# torch's random generator is one per process and every model build draws from it: builds take turns, or a
# session building a seeded fresh model while another builds anything would get other weights than its seed's.
BUILDING = threading.Lock()


@dataclass(frozen=True)
class Loaded:
    """A model ready to trace, with the tokenizer that reads text for it and an example input."""

    name: str
    model: xattn.TransformerWrapper
    tokenizer: CharTokenizer
    example: str
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return self.model.attn_layers.depth

    @property
    def heads(self) -> int:
        return self.model.attn_layers.heads

    @property
    def max_seq_len(self) -> int:
        return self.model.max_seq_len

    def describe(self) -> str:
        """One markdown line: what the model is."""
        layers = self.model.config["attn_layers"]
        flags = [k for k in ("residual_attn", "attn_selective", "rotary_pos_emb", "alibi_pos_bias") if layers.get(k)]
        kind = "causal" if self.model.attn_layers.causal else "bidirectional"
        summary = self.card.get("summary") or self.card.get("description") or ""
        return (f"**{self.name}** — {kind}, {self.depth} layers × {self.heads} heads, dim {layers['dim']}, "
                f"up to {self.max_seq_len} tokens; {', '.join(flags) or 'plain attention'}. {summary}").strip()


# Custom models of one browser session, by name.
Session = dict[str, Loaded]


def bundled_names() -> list[str]:
    return list(registry.available())


def default_name() -> str:
    """The model the app opens on: the registry's default, else the first bundled model."""
    names = bundled_names()
    if not names:
        raise RuntimeError(f"no bundled models in {registry.MODELS_DIR}: train them with `python -m xattn.train`")
    return registry.DEFAULT if registry.DEFAULT in names else names[0]


@cache
def bundled(name: str) -> Loaded:
    """A bundled checkpoint, loaded once and shared read-only (eval mode, traced under no_grad)."""
    with BUILDING:
        p = registry.pretrained(name)
    return Loaded(name=name, model=p.model.eval(), tokenizer=p.tokenizer, example=p.example, card=dict(p.card))


def resolve(name: str | None, session: Session | None) -> Loaded:
    """The model called `name`: one of this session's own models, else a bundled one."""
    session = session or {}
    if name in session:
        return session[name]
    if name in bundled_names():
        return bundled(name)
    known = ", ".join(bundled_names() + list(session))
    raise ValueError(f"There is no model called {name!r} in this session. Choose one of: {known}.")


def check_range(value: float, what: str) -> int:
    """`value` as a whole number inside LIMITS[what]."""
    low, high = LIMITS[what]
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
            or int(value) != value or not low <= value <= high):
        raise ValueError(f"{what} must be a whole number from {low:,} to {high:,}; got {value!r}.")
    return int(value)


def fresh(depth: int, heads: int, dim: int, residual_attn: bool, attn_selective: bool, causal: bool,
          position: str, seed: int, max_seq_len: int = 512) -> Loaded:
    """A randomly initialised model (reproducible from `seed`) reading printable ASCII. Its size and the size
    of its longest trace are checked against `limits` before any weight is allocated."""
    depth, heads, dim = check_range(depth, "depth"), check_range(heads, "heads"), check_range(dim, "dim")
    max_seq_len, seed = check_range(max_seq_len, "max_seq_len"), check_range(seed, "seed")
    if dim % heads:
        raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads}): each head gets dim / heads features.")
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {', '.join(POSITIONS)}; got {position!r}.")
    if attn_selective and not causal:
        raise ValueError("Selective attention needs a causal model: a token can only prune keys for the tokens "
                         "that come after it. Tick 'causal' or untick 'selective attention'.")
    tokenizer = CharTokenizer(ASCII)
    layers = dict(kind="Decoder" if causal else "Encoder", dim=dim, depth=depth, heads=heads,
                  attn_dim_head=dim // heads, residual_attn=bool(residual_attn), attn_selective=bool(attn_selective),
                  rotary_pos_emb=position == "rotary", alibi_pos_bias=position == "ALiBi")
    config = dict(num_tokens=tokenizer.vocab_size, max_seq_len=max_seq_len, attn_layers=layers)
    limits.check(config)
    with BUILDING, torch.random.fork_rng():
        torch.manual_seed(seed)
        model = xattn.build(config)
    name = (f"fresh {'decoder' if causal else 'encoder'} {depth}×{heads} dim {dim}"
            f"{' residual' if residual_attn else ''}{' selective' if attn_selective else ''} {position} seed {seed}")
    return Loaded(name=name, model=model.eval(), tokenizer=tokenizer, example=FRESH_EXAMPLE)


def check_file(path: str, what: str) -> None:
    """Refuse a missing file or one over the upload limit (the server refuses bigger uploads first)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        raise ValueError(f"The {what} {Path(path).name} could not be read; upload it again.") from None
    if size > limits.MAX_UPLOAD_BYTES:
        raise ValueError(f"The {what} {Path(path).name} is {size / limits.MIB:,.1f} MiB; the limit here is "
                         f"{limits.MAX_UPLOAD_BYTES / limits.MIB:,.0f} MiB.")


def check_alphabet(alphabet: str) -> None:
    """Refuse alphabets with control characters or unpaired surrogates (text that is not valid UTF-8)."""
    for position, char in enumerate(alphabet):
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise ValueError(f"The alphabet has a control character or invalid Unicode {char!r} at position "
                             f"{position}: use printable characters only.")


def uploaded(path: str, config_path: str | None = None, alphabet: str = "") -> Loaded:
    """An uploaded xattn or x-transformers checkpoint; text is read with `alphabet` (default printable ASCII).
    File sizes, the config's sizes and its trace are checked before the model is built; weights are never
    unpickled (see `xattn.io.load_checkpoint`)."""
    check_file(path, "checkpoint")
    if config_path:
        check_file(config_path, "config")
    check_alphabet(alphabet or "")
    limits.check(xattn.io.checkpoint_config(path, config_path))
    try:
        with BUILDING:
            model = xattn.io.load_checkpoint(path, config_path).eval()
    except TypeError as err:                                         # an option xattn does not have
        raise ValueError(f"xattn cannot build a model from this config: {err}") from None
    tokenizer = CharTokenizer(alphabet or ASCII[: model.num_tokens - len(SPECIALS)])
    if tokenizer.vocab_size > model.num_tokens:
        raise ValueError(f"The alphabet has {len(tokenizer.alphabet)} characters but the checkpoint only has "
                         f"{model.num_tokens} token ids (two are <bos> and <pad>).")
    example = tokenizer.alphabet[: min(24, model.max_seq_len - 1)]
    return Loaded(name=f"upload {Path(path).name}", model=model, tokenizer=tokenizer, example=example)


def with_config(loaded: Loaded, **changes: Any) -> Loaded:
    """The same weights under a changed attention-layers config (e.g. residual_attn flipped); never mutates `loaded`."""
    with BUILDING:
        model = loaded.model.with_config(**changes)
    label = ", ".join(f"{k}={v}" for k, v in changes.items())
    return Loaded(name=f"{loaded.name} ({label})", model=model.eval(), tokenizer=loaded.tokenizer,
                  example=loaded.example, card=loaded.card)


def counterpart(loaded: Loaded, **changes: Any) -> Loaded:
    """The bundled model trained with the same config except `changes` (e.g. the residual-off variant)."""
    wanted = changed_config(loaded.model.config, **changes)
    for name in bundled_names():
        other = bundled(name)
        if other.model.config == wanted and other.tokenizer == loaded.tokenizer and other.name != loaded.name:
            return other
    label = ", ".join(f"{k}={v}" for k, v in changes.items())
    raise ValueError(f"No bundled model was trained like {loaded.name} with {label}. "
                     "Compare against the same weights instead.")
