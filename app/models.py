"""Where the app's models come from.

Bundled checkpoints are loaded once and shared read-only between sessions; uploaded checkpoints and fresh
models from the config form live in one browser session's state (`Session`), so no request ever changes a
model that another session is using.
"""
from __future__ import annotations

import dataclasses
import math
import os
import secrets
import threading
import unicodedata
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch

import xattn
from xattn import registry
from xattn.config import XTRANSFORMER_WRAPPER_KWARGS
from xattn.describe import describe, option_phrase, switched_on
from xattn.tokenizer import SPECIALS, CharTokenizer

from . import limits

# Printable ASCII: the alphabet of fresh models, and of uploads unless the upload form names one.
ASCII = "".join(chr(c) for c in range(32, 127))
FRESH_EXAMPLE = "a=3; b=a; a=5; print(b)"
LIMITS = limits.FORM
WRAPPER_OPTIONS = {f.name for f in dataclasses.fields(xattn.ModelConfig)}
# torch's random generator is one per process and every model build draws from it: builds take turns, or a
# session building a seeded fresh model while another builds anything would get other weights than its seed's.
BUILDING = threading.Lock()


@dataclass(frozen=True)
class Loaded:
    """A model ready to trace, with the tokenizer that reads text for it and an example input.

    An encoder–decoder (`xattn.XTransformer`, `encdec`) reads a source and a target with the one tokenizer; its
    `depth`, `heads` and `max_seq_len` are its decoder's as the Cross-attention tab addresses it: `depth` counts
    the decoder's cross-attention layers (what the layer sliders pick while it is chosen), `max_seq_len` is the
    target's; `max_source_len` is the encoder's. Only the Cross-attention tab traces it (see `single_stack`)."""

    name: str
    model: xattn.TransformerWrapper | xattn.XTransformer
    tokenizer: CharTokenizer
    example: str
    card: dict[str, Any] = field(default_factory=dict)
    # a name of its own, unguessable, by which its session's page asks for it outside a request (share)
    key: str = field(init=False, repr=False, compare=False, default_factory=lambda: secrets.token_urlsafe(16))

    @property
    def encdec(self) -> bool:
        return isinstance(self.model, xattn.XTransformer)

    @property
    def decoder(self) -> xattn.TransformerWrapper:
        """The stack whose layers the sliders address: an encoder–decoder's decoder, else the model itself."""
        return self.model.decoder if self.encdec else self.model

    @property
    def depth(self) -> int:
        layers = self.decoder.attn_layers
        return layers.config.num_cross_layers if self.encdec else layers.num_attn_layers

    @property
    def heads(self) -> int:
        return self.decoder.attn_layers.heads

    @property
    def max_seq_len(self) -> int:
        return self.decoder.max_seq_len

    @property
    def max_source_len(self) -> int:
        """The longest source an encoder–decoder's encoder reads (for any other model, its max_seq_len)."""
        return self.model.encoder.max_seq_len if self.encdec else self.max_seq_len

    def describe(self) -> str:
        """One markdown line: what the model is."""
        summary = self.card.get("summary") or self.card.get("description") or ""
        return f"**{self.name}** — {describe(self.model.config)}. {summary}".strip()


# Custom models of one browser session, by name.
Session = dict[str, Loaded]
# The same models by their `key`, for what answers a session's page outside its requests (a Gradio server function
# gets no gr.State: views.run_views); the page knows its own models' keys (ui.added). Held weakly: a model is found
# here while its session's state keeps it, and no longer.
SHARED: weakref.WeakValueDictionary[str, Loaded] = weakref.WeakValueDictionary()


def share(loaded: Loaded) -> str:
    """Make `loaded`, a model of one browser session, reachable by its key (`shared`), which only that session's
    page is told."""
    SHARED[loaded.key] = loaded
    return loaded.key


def shared(key: Any, name: str) -> Loaded | None:
    """The model `name` as a page that knows `key` finds it (as `resolve` finds it in the session's state): the
    session's own model of that key and name, else a bundled one; None for neither."""
    own = SHARED.get(key) if isinstance(key, str) else None
    if own is not None and own.name == name:
        return own
    return bundled(name) if name in bundled_names() else None


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


def unknown_characters(loaded: Loaded, text: str) -> list[str]:
    """The characters of `text` outside the model's alphabet, sorted."""
    return sorted(set(text) - set(loaded.tokenizer.alphabet))


def unreadable(loaded: Loaded, text: str | None) -> str | None:
    """Why `loaded` cannot read `text` as typed (empty, characters outside its alphabet, or more tokens than its
    max_seq_len), or None when it can: a model switch keeps such a text."""
    if not text or not text.strip():
        return "the text is empty"
    unknown = unknown_characters(loaded, text)
    if unknown:
        return f"{loaded.name} cannot read {len(unknown)} of the text's characters ({''.join(unknown[:12])!r})"
    count = len(loaded.tokenizer.encode(text))
    if count > loaded.max_seq_len:
        return f"the text is {count} tokens (<bos> included) and {loaded.name} reads at most {loaded.max_seq_len}"
    return None


def stages(loaded: Loaded, cross: bool = False) -> tuple[str, ...]:
    """The stages the model's options make worth looking at (`LayersConfig.stages_in_use`): of its
    cross-attention layers with `cross`, else of its self-attention (an encoder–decoder's decoder)."""
    return loaded.decoder.attn_layers.config.stages_in_use(cross=cross)


def single_stack(loaded: Loaded) -> Loaded:
    """`loaded`, if the views that trace one token sequence can: an encoder–decoder, or a decoder that
    cross-attends without an encoder, is refused with a sentence (the Cross-attention tab shows the first)."""
    if loaded.encdec:
        raise ValueError(f"{loaded.name} is an encoder–decoder: it reads a source and a target, so the "
                         "Cross-attention tab shows it (its encoder, and its decoder's cross-attention); this view "
                         "traces models that read one text.")
    if loaded.model.config.attn_layers.cross_attend:
        raise ValueError(f"{loaded.name} cross-attends, but has no encoder to give it a context: upload it as the "
                         "decoder of an encoder–decoder (XTransformer).")
    return loaded


def stacks(model: xattn.TransformerWrapper | xattn.XTransformer) -> list[xattn.TransformerWrapper]:
    """The token-reading stacks of a model: an encoder–decoder's encoder and decoder, else the model."""
    return [model.encoder, model.decoder] if isinstance(model, xattn.XTransformer) else [model]


def whole(value: float | None, field: str, low: int, high: int | None = None, past: str = "") -> int:
    """`value` as a whole number from `low` (to `high`), else a sentence naming the form's `field` (a blank box
    comes as None, a fraction is refused rather than rounded); `past`: what to do instead, above `high`."""
    top = "" if high is None else f" to {high:,}"
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{field} is empty: type a whole number from {low:,}{top}.")
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or int(value) != value or value < low or (high is not None and value > high)):
        above = past if past and isinstance(value, (int, float)) and high is not None and value > high else ""
        raise ValueError(f"{field} must be a whole number from {low:,}{top}; got {value!r}. {above}".rstrip())
    return int(value)


def check_range(value: float, what: str, name: str | None = None) -> int:
    """`value` as a whole number inside LIMITS[what]; the refusal names the field (`name`, default `what`)."""
    return whole(value, name or what, *LIMITS[what])


def form_options() -> list[tuple[str, str]]:
    """(label, keyword) of every on/off option the options table offers on the fresh-model form."""
    return [(opt.label, name) for name, default, opt in xattn.OPTIONS if opt.form and isinstance(default, bool)]


def form_numbers() -> list[tuple[str, str]]:
    """(label, keyword) of every count the options table offers on the fresh-model form (0 there means off)."""
    return [(opt.label, name) for name, default, opt in xattn.OPTIONS if opt.form and not isinstance(default, bool)]


def fresh(depth: int, heads: int, dim: int, options: Sequence[str], seed: int, max_seq_len: int = 512,
          *counts: float, encoder_decoder: bool = False) -> Loaded:
    """A randomly initialised model (reproducible from `seed`) reading printable ASCII, with the on/off options
    in `options` switched on and the others off, and the counts of `form_numbers()` in order (0 or missing
    means off). Its size and the size of its longest trace are checked against `limits` before any weight is
    allocated. With `encoder_decoder`, an `xattn.XTransformer` of these sizes on both sides (see `encdec_config`)."""
    depth, heads, dim = check_range(depth, "depth"), check_range(heads, "heads"), check_range(dim, "dim")
    max_seq_len, seed = check_range(max_seq_len, "max_seq_len"), check_range(seed, "seed")
    if dim % heads:
        raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads}): each head gets dim / heads features.")
    offered = [name for _, name in form_options()]
    unknown = sorted(set(options or []) - set(offered))
    if unknown:
        raise ValueError(f"Unknown option(s) {', '.join(unknown)}; the form offers {', '.join(offered)}.")
    flags: dict[str, Any] = {name: name in (options or []) for name in offered}
    for (label, name), count in zip(form_numbers(), counts, strict=False):
        if count not in (0, None):
            flags[name] = check_range(count, "count", f"{label} ({name}; 0 means off)")
    causal = flags.pop("causal")
    wrapper = {name: flags.pop(name) for name in list(flags) if name in WRAPPER_OPTIONS}
    tokenizer = CharTokenizer(ASCII)
    if encoder_decoder:
        return fresh_encdec(depth, heads, dim, seed, max_seq_len, tokenizer, wrapper, flags)
    layers = dict(kind="Decoder" if causal else "Encoder", dim=dim, depth=depth, heads=heads,
                  attn_dim_head=dim // heads, **flags)
    config = xattn.ModelConfig.from_dict(dict(num_tokens=tokenizer.vocab_size, max_seq_len=max_seq_len,
                                              attn_layers=layers, **wrapper))
    limits.check(config)
    with BUILDING, torch.random.fork_rng():
        torch.manual_seed(seed)
        model = xattn.build(config)
    name = f"fresh {depth}×{heads} dim {dim} seed {seed}: {describe(config)}"
    return Loaded(name=name, model=model.eval(), tokenizer=tokenizer, example=FRESH_EXAMPLE)


def encdec_config(depth: int, heads: int, dim: int, max_seq_len: int, num_tokens: int, wrapper: dict[str, Any],
                  flags: dict[str, Any]) -> xattn.EncDecConfig:
    """An encoder–decoder of the form's sizes on both sides: an Encoder and a causal, cross-attending Decoder,
    each with the form's layer options that it can take (the form's `causal` does not apply: the encoder is
    never causal, the decoder always). Refused with a sentence: an option neither side can take, or one of the
    embedding options x-transformers' XTransformer does not pass to its sides."""
    refused = [name for name, value in wrapper.items() if value and name not in XTRANSFORMER_WRAPPER_KWARGS]
    if refused:
        raise ValueError(f"An encoder–decoder (x-transformers' XTransformer) takes no {', '.join(refused)}: only "
                         f"{', '.join(XTRANSFORMER_WRAPPER_KWARGS)} reach its encoder and decoder. Untick "
                         f"{'them' if len(refused) > 1 else 'it'} (or set it to 0), or untick encoder–decoder.")
    kept = {name: value for name, value in wrapper.items() if name in XTRANSFORMER_WRAPPER_KWARGS}

    def side(kind: str, options: dict[str, Any]) -> xattn.ModelConfig:
        layers = dict(kind=kind, dim=dim, depth=depth, heads=heads, attn_dim_head=dim // heads, **options)
        if kind == "Decoder":
            layers["cross_attend"] = True
        return xattn.ModelConfig.from_dict(dict(num_tokens=num_tokens, max_seq_len=max_seq_len, attn_layers=layers,
                                                return_only_embed=kind == "Encoder", **kept))

    def takes(kind: str, name: str) -> str | None:
        """None if a `kind` side takes the option `name` as set, else the reason it cannot."""
        try:
            side(kind, {name: flags[name]})
        except ValueError as err:
            return str(err)
        return None

    sides: dict[str, dict[str, Any]] = {"Encoder": {}, "Decoder": {}}
    labels = {name: label for label, name in form_options() + form_numbers()}
    for name, value in flags.items():
        reasons = {kind: takes(kind, name) for kind in sides}
        if all(reasons.values()):
            raise ValueError(f"An encoder–decoder cannot take {labels.get(name, name)} ({name}): "
                             f"{reasons['Decoder']}. Untick it, or untick encoder–decoder.")
        for kind, reason in reasons.items():
            if reason is None:
                sides[kind][name] = value
    return xattn.EncDecConfig(encoder=side("Encoder", sides["Encoder"]), decoder=side("Decoder", sides["Decoder"]))


def fresh_encdec(depth: int, heads: int, dim: int, seed: int, max_seq_len: int, tokenizer: CharTokenizer,
                 wrapper: dict[str, Any], flags: dict[str, Any]) -> Loaded:
    """`fresh` for an encoder–decoder (`encdec_config`), checked against `limits` before any weight exists."""
    config = encdec_config(depth, heads, dim, max_seq_len, tokenizer.vocab_size, wrapper, flags)
    limits.check(config)
    with BUILDING, torch.random.fork_rng():
        torch.manual_seed(seed)
        model = xattn.XTransformer(config=config)
    name = f"fresh encoder–decoder {depth}×{heads} dim {dim} seed {seed}: {encdec_options(config)}"
    return Loaded(name=name, model=model.eval(), tokenizer=tokenizer, example=FRESH_EXAMPLE)


def encdec_options(config: xattn.EncDecConfig) -> str:
    """The options of an encoder–decoder in one short phrase, those of one side only marked as such."""
    encoder = switched_on(dataclasses.replace(config.encoder, return_only_embed=False))
    decoder = {k: v for k, v in switched_on(config.decoder).items() if k != "cross_attend"}
    both = [option_phrase(k, v) for k, v in decoder.items() if k in encoder and encoder[k] == v]
    own = [f"{option_phrase(k, v)} (encoder only)" for k, v in encoder.items() if k not in decoder or decoder[k] != v]
    own += [f"{option_phrase(k, v)} (decoder only)" for k, v in decoder.items() if k not in encoder or encoder[k] != v]
    return ", ".join(both + own) or "plain attention"


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
    """An uploaded xattn or x-transformers checkpoint. Text is read with `alphabet` if given, else with the
    tokenizer an xattn checkpoint carries, else as printable ASCII. File sizes, the config's sizes and its trace
    are checked before the model is built; weights are never unpickled (see `xattn.io.load_checkpoint`)."""
    check_file(path, "checkpoint")
    if config_path:
        check_file(config_path, "config")
    check_alphabet(alphabet or "")
    limits.check(xattn.io.checkpoint_config(path, config_path))
    with BUILDING:
        model = xattn.io.load_checkpoint(path, config_path).eval()
    saved = xattn.read_tokenizer(path) if Path(path).suffix == ".safetensors" and not config_path else None
    # An encoder–decoder reads source and target with one tokenizer: it must fit both sides' token ids.
    num_tokens = min(stack.num_tokens for stack in stacks(model))
    tokenizer = CharTokenizer(alphabet) if alphabet else saved or CharTokenizer(ASCII[: num_tokens - len(SPECIALS)])
    if tokenizer.vocab_size > num_tokens:
        raise ValueError(f"The alphabet has {len(tokenizer.alphabet)} characters but the checkpoint only has "
                         f"{num_tokens} token ids (two are the BOS and padding tokens).")
    example = tokenizer.alphabet[: min(24, min(stack.max_seq_len for stack in stacks(model)) - 1)]
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
    wanted = loaded.model.config.replace(**changes)
    for name in bundled_names():
        other = bundled(name)
        if other.model.config == wanted and other.tokenizer == loaded.tokenizer and other.name != loaded.name:
            return other
    label = ", ".join(f"{k}={v}" for k, v in changes.items())
    raise ValueError(f"No bundled model was trained like {loaded.name} with {label}. "
                     "Compare against the same weights instead.")
