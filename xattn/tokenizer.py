"""A character-level tokenizer with BOS and PAD: id 0 is BOS, id 1 is PAD, then one id per character.

The alphabet is part of every bundled model's card, so any model can encode a user's text.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

BOS, PAD = "<bos>", "<pad>"
SPECIALS = (BOS, PAD)


@dataclass(frozen=True)
class CharTokenizer:
    """Maps each character of `alphabet` to an id; `encode` puts BOS first."""

    alphabet: str

    def __post_init__(self) -> None:
        if not self.alphabet:
            raise ValueError("the alphabet is empty")
        repeated = sorted({c for c in self.alphabet if self.alphabet.count(c) > 1})
        if repeated:
            raise ValueError(f"the alphabet repeats {''.join(repeated)!r}")

    @property
    def bos_id(self) -> int:
        return SPECIALS.index(BOS)

    @property
    def pad_id(self) -> int:
        return SPECIALS.index(PAD)

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + len(self.alphabet)

    def encode(self, text: str) -> list[int]:
        """BOS followed by one id per character; a ValueError names every character outside the alphabet."""
        unknown = sorted(set(text) - set(self.alphabet))
        if unknown:
            raise ValueError(f"{''.join(unknown)!r} not in this model's alphabet {self.alphabet!r}")
        offset = len(SPECIALS)
        return [self.bos_id] + [self.alphabet.index(c) + offset for c in text]

    def labels(self, ids: Sequence[int]) -> list[str]:
        """One display string per id (`<bos>`, `<pad>` or the character), for figure axes."""
        return [SPECIALS[i] if i < len(SPECIALS) else self.alphabet[i - len(SPECIALS)] for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`, without BOS and PAD."""
        return "".join(label for label in self.labels(ids) if label not in SPECIALS)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "char", "alphabet": self.alphabet, "specials": list(SPECIALS)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharTokenizer:
        if data.get("kind") != "char" or list(data.get("specials", [])) != list(SPECIALS):
            raise ValueError(f"not a character tokenizer with specials {list(SPECIALS)}: {data}")
        return cls(data["alphabet"])
