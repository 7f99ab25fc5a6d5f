"""The bundled models: small decoders trained by `xattn.train` on the tasks in `xattn.tasks`.

    >>> p = pretrained("variables-both")
    >>> logits, trace = p.model.run_with_trace(torch.tensor([p.tokenizer.encode(p.example)]))

Each model NAME in `assets/models/` is NAME.safetensors (+ NAME.json config), NAME.card.json (task,
config, training run, eval accuracy, notable heads, the exact command) and NAME.md for people.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .io import load
from .tokenizer import CharTokenizer
from .wrapper import TransformerWrapper


def models_dir() -> Path:
    """The bundled models: `assets/models` of a source checkout (editable install), else the copy a wheel
    installs under `<prefix>/share/xattn/models`."""
    checkout = Path(__file__).resolve().parent.parent / "assets" / "models"
    installed = Path(sys.prefix) / "share" / "xattn" / "models"
    return checkout if checkout.is_dir() or not installed.is_dir() else installed


MODELS_DIR = models_dir()
DEFAULT = "variables-both"      # the best variable tracker: the app opens on it


@dataclass
class Pretrained:
    """A bundled model in eval mode with the tokenizer it was trained with and its card."""

    name: str
    model: TransformerWrapper
    tokenizer: CharTokenizer
    card: dict[str, Any]
    example: str


class Cards(dict):
    """Model cards by name (a dict), shown as one short line per model instead of every card in full."""

    def __repr__(self) -> str:
        lines = [f"  {name}: {card.get('task', '?')}, {card.get('variant', '?')}"
                 + (f", {card['eval']['accuracy']:.1f}% accurate" if "eval" in card else "")
                 for name, card in self.items()]
        return "\n".join([f"{len(self)} bundled models (xattn.pretrained(name) loads one; [name] is its card):",
                          *lines])

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:   # IPython and Jupyter
        printer.text(repr(self))


def available(directory: str | os.PathLike = MODELS_DIR) -> Cards:
    """Every bundled model's card, by name, in name order."""
    cards = sorted(Path(directory).glob("*.card.json"))
    return Cards((path.name.removesuffix(".card.json"), json.loads(path.read_text())) for path in cards)


def pretrained(name: str = DEFAULT, directory: str | os.PathLike = MODELS_DIR) -> Pretrained:
    """The bundled model called `name`; a ValueError lists the names there are."""
    cards = available(directory)
    if name not in cards:
        names = ", ".join(cards) or f"none (no *.card.json in {directory})"
        raise ValueError(f"no bundled model named {name!r}; available: {names}")
    card = cards[name]
    model = load(Path(directory) / f"{name}.safetensors")
    return Pretrained(name, model, CharTokenizer.from_dict(card["tokenizer"]), card, card["example"])


def card_markdown(card: dict[str, Any]) -> str:
    """A model card for people, from the card dict."""
    layers = card["model_config"]["attn_layers"]
    notable = card["notable_heads"]
    heads = "\n".join(f"- layer {h['layer']}, head {h['head']}: {h['attention_on_predicted_key']:.2f}" for h in notable)
    train = card["train"]
    options = ", ".join(f"`{k}=True`" for k in card["attention_options"]) or "no extra attention options"
    return f"""# {card['name']}

Task: {card['task_description']}.

Variant: **{card['variant']}** ({options}).
Decoder: dim {layers['dim']}, depth {layers['depth']}, {layers['heads']} heads of {layers['attn_dim_head']}; \
{card['parameters']:,} parameters.

Accuracy: **{card['eval']['accuracy']:.2f}%** — {card['eval']['metric']}, on {card['eval']['size']:,} samples \
drawn with seed {card['eval']['seed']} (training used seed {train['seed']}).

Trained {train['steps']:,} steps, batch {train['batch_size']}, lr {train['lr']}, in {train['wall_clock_s']} s on \
{train['threads']} CPU thread{'s' if train['threads'] > 1 else ''}; loss {train['loss_first']} → {train['loss_last']}.

Heads closest to the pattern the task predicts — {notable[0]['pattern']} — with their mean attention on \
the predicted key ({notable[0]['samples']} samples, seed {notable[0]['seed']}):
{heads}

Example input: `{card['example']}`

Reproduce:

```
{card['command']}
```
"""


def index_markdown(directory: str | os.PathLike = MODELS_DIR) -> str:
    """The README of `directory`: accuracy by task and variant, then one row per model."""
    cards = available(directory)
    tasks = sorted({c["task"] for c in cards.values()})
    by_options = sorted(cards.values(), key=lambda c: len(c["attention_options"]))   # baseline first, both last
    variants = list(dict.fromkeys(c["variant"] for c in by_options))
    accuracy = {(c["task"], c["variant"]): f"{c['eval']['accuracy']:.2f}" for c in cards.values()}
    comparison = [f"| {task} | " + " | ".join(accuracy.get((task, v), "—") for v in variants) + " |" for task in tasks]
    rows = [f"| [{name}]({name}.md) | {c['task']} | {c['variant']} | {c['eval']['accuracy']:.2f} | "
            f"{c['eval']['size']:,} (seed {c['eval']['seed']}) | {c['train']['steps']:,} | "
            f"{c['train']['wall_clock_s']:.0f} |"
            for name, c in cards.items()]
    return "\n".join([
        "# Bundled models",
        "",
        "Trained by `xattn.train` on the synthetic tasks in `xattn.tasks`; every card holds the exact command.",
        "Accuracy: % of answer characters predicted right on freshly generated samples.",
        "",
        "| task | " + " | ".join(variants) + " |",
        "|---|" + "---:|" * len(variants),
        *comparison,
        "",
        "| model | task | variant | accuracy % | eval samples | steps | train s |",
        "|---|---|---|---:|---|---:|---:|",
        *rows,
    ]) + "\n"
