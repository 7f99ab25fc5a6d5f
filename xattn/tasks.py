"""Seeded synthetic tasks whose right attention pattern a person can predict.

Each task draws `Sample(prompt, answer)`: a model reads `prompt + answer` (after BOS) and is scored on
predicting the answer's characters. `attention_targets` says, per answer character, which earlier token
a head that solved the task the obvious way would attend to.
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import ClassVar

from .tokenizer import CharTokenizer


@dataclass(frozen=True)
class Sample:
    prompt: str
    answer: str

    @property
    def text(self) -> str:
        return self.prompt + self.answer


class Task:
    """A generator of samples over a fixed alphabet. Subclasses define `sample` and `attention_targets`."""

    name: ClassVar[str]
    alphabet: ClassVar[str]
    description: ClassVar[str]
    pattern: ClassVar[str]      # the attention pattern `attention_targets` describes, in words
    example: ClassVar[str]      # a prompt for the app

    @property
    def tokenizer(self) -> CharTokenizer:
        return CharTokenizer(self.alphabet)

    @property
    def max_len(self) -> int:
        """The longest `prompt + answer` this task draws, in characters (BOS not counted)."""
        raise NotImplementedError

    def sample(self, rng: random.Random) -> Sample:
        raise NotImplementedError

    def attention_targets(self, sample: Sample) -> list[tuple[int, int]]:
        """(query, key) token positions, BOS at 0, one per answer character: query is the position whose
        output predicts that character, key the earlier token the task says it should look at."""
        raise NotImplementedError

    def samples(self, n: int, seed: int) -> list[Sample]:
        """`n` samples, the same for the same seed."""
        rng = random.Random(seed)
        return [self.sample(rng) for _ in range(n)]


class VariableTracking(Task):
    """`a=3;b=5;a=7;c=1;?a` → `7`: the latest value of the queried variable.

    The queried variable is always assigned at least twice and its latest value differs from all its
    earlier ones, so attending to a stale assignment always gives a wrong answer.
    """

    name = "variables"
    alphabet = "abcdefgh0123456789=;?"
    description = ("variable tracking: a run of single-digit assignments over a few of the variables a-h, "
                   "then `?x`; the answer is x's latest value (the queried variable is reassigned at least "
                   "once, to a value it never had before)")
    pattern = "the query `?x` attends to the value of x's latest assignment"
    example = "a=3;b=5;a=7;c=1;b=2;?a"

    def __init__(self, num_vars: int = 3, min_assignments: int = 4, max_assignments: int = 8) -> None:
        self.num_vars, self.min_assignments, self.max_assignments = num_vars, min_assignments, max_assignments

    @property
    def max_len(self) -> int:
        return 4 * self.max_assignments + 3

    def sample(self, rng: random.Random) -> Sample:
        letters, digits = self.alphabet[:8], self.alphabet[8:18]
        names = rng.sample(letters, self.num_vars)
        while True:
            order = [rng.choice(names) for _ in range(rng.randint(self.min_assignments, self.max_assignments))]
            reassigned = sorted({v for v in order if order.count(v) >= 2})
            if reassigned:
                break
        query = rng.choice(reassigned)
        last = max(i for i, v in enumerate(order) if v == query)
        values = [rng.choice(digits) for _ in order]
        stale = {values[i] for i, v in enumerate(order[:last]) if v == query}
        values[last] = rng.choice([d for d in digits if d not in stale])
        prompt = "".join(f"{v}={x};" for v, x in zip(order, values, strict=True)) + f"?{query}"
        return Sample(prompt, values[last])

    def attention_targets(self, sample: Sample) -> list[tuple[int, int]]:
        query = sample.prompt[-1]
        value_at = sample.prompt.rindex(f"{query}=") + 2     # character index of the latest value
        return [(len(sample.prompt), value_at + 1)]


class Induction(Task):
    """`qzkfw|qzkfw`: a random string, a separator, then the string again, to be predicted."""

    name = "induction"
    alphabet = string.ascii_lowercase + "|"
    description = ("induction / copy: a random lowercase string, `|`, then the same string again; every "
                   "character of the repeat is scored")
    pattern = "each query attends one step past its earlier copy: the character it is about to predict"
    example = "thequickbrownfox|thequickbr"

    def __init__(self, min_string: int = 8, max_string: int = 24) -> None:
        self.min_string, self.max_string = min_string, max_string

    @property
    def max_len(self) -> int:
        return 2 * self.max_string + 1

    def sample(self, rng: random.Random) -> Sample:
        letters = self.alphabet[:-1]
        s = "".join(rng.choice(letters) for _ in range(rng.randint(self.min_string, self.max_string)))
        return Sample(s + "|", s)

    def attention_targets(self, sample: Sample) -> list[tuple[int, int]]:
        n = len(sample.answer)
        return [(n + 1 + k, 1 + k) for k in range(n)]


class Brackets(Task):
    """`([]{(` → `)`: the closer of the innermost bracket still open."""

    name = "brackets"
    alphabet = "()[]{}<>"
    description = ("bracket matching: a random prefix of a nested bracket string over four kinds of "
                   "bracket; the answer closes the innermost bracket still open")
    pattern = "the last token attends to the innermost unmatched open bracket, skipping closed pairs"
    example = "([]{()}<[]>"

    def __init__(self, min_string: int = 8, max_string: int = 40) -> None:
        self.min_string, self.max_string = min_string, max_string

    @property
    def max_len(self) -> int:
        return self.max_string + 2

    @staticmethod
    def open_brackets(prompt: str) -> list[int]:
        """Character indices of the brackets `prompt` leaves open, outermost first."""
        stack: list[int] = []
        for i, c in enumerate(prompt):
            if c in "([{<":
                stack.append(i)
            else:
                stack.pop()
        return stack

    def sample(self, rng: random.Random) -> Sample:
        opens, closes = self.alphabet[0::2], self.alphabet[1::2]
        chars: list[str] = []
        stack: list[str] = []
        length = rng.randint(self.min_string, self.max_string)
        while len(chars) < length or not stack:     # never end with everything closed
            if stack and rng.random() < 0.5:
                chars.append(closes[opens.index(stack.pop())])
            else:
                stack.append(rng.choice(opens))
                chars.append(stack[-1])
        return Sample("".join(chars), closes[opens.index(stack[-1])])

    def attention_targets(self, sample: Sample) -> list[tuple[int, int]]:
        return [(len(sample.prompt), self.open_brackets(sample.prompt)[-1] + 1)]


TASKS: dict[str, type[Task]] = {task.name: task for task in (VariableTracking, Induction, Brackets)}


def get_task(name: str) -> Task:
    """The task called `name`, with its default settings."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]()
