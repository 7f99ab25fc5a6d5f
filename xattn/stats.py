"""Head statistics over a whole dataset: what each layer's heads do on average, and which matter.

    stats = head_stats(model, TaskData("variables", n=2000, seed=0))
    stats.values["previous"]          # [layers, heads]: mean attention on the previous token
    stats.to_frame()                  # layer, head, stat, value (pandas)

Every statistic is a running sum and a count, so batches (and Ray workers, `backend="ray"`) add partial
sums that are combined at the end: memory stays flat in the dataset's size. All read the `attn` stage,
the pattern that weights the values; README "Head statistics" gives each formula.

Queries: every non-padded token after the first (the first token of a causal model can only see itself),
not the memory tokens' rows, not a query with no visible key. Keys: the tokens (BOS is token 0); the extra
key columns (sink, zero key, memory key/values) and memory tokens count only for entropy and max weight,
which describe the whole distribution softmax made.
"""
from __future__ import annotations

import math
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor
from tqdm import tqdm

from .attention import PRUNE_AT
from .tasks import Sample, Task, get_task
from .tokenizer import CharTokenizer
from .trace import Trace, build_trace, recording
from .train import IGNORE, make_batch
from .wrapper import TransformerWrapper, build, load_state

if TYPE_CHECKING:
    import pandas

SELECTIVE = ("selection", "pruned")
STATS: dict[str, str] = {
    "entropy": "mean attention entropy per query, nats: −Σⱼ aᵢⱼ ln aᵢⱼ over every key column",
    "max_weight": "mean of each query's largest attention weight",
    "bos": "mean attention on BOS (token 0)",
    "distance": "mean attended distance Σⱼ aᵢⱼ (i − j) over the tokens",
    "previous": "previous-token score: mean attention on token i − 1",
    "diagonal": "diagonal score: mean attention of a token on itself",
    "selection": "selective attention: mean F over each query's visible tokens",
    "pruned": f"selective attention: fraction of each query's visible tokens with F ≥ ln 100 ({PRUNE_AT:.2f})",
    "target": "mean attention on the key the task predicts (Task.attention_targets), per answer character",
    "importance": "head importance (Michel et al. 2019): mean over sequences of |∂loss/∂ξₕ|, ξₕ = 1 gating the "
                  "head's output",
}
Progress = bool | Callable[[int, int | None], None]


# Data sources: each turns row ids (or its own batches) into a `Batch` the same way in every engine.

@dataclass
class Batch:
    """Encoded sequences: tokens and mask [b, n], next-token targets [b, n] (IGNORE where unscored), the
    sequences' ids [b], (row, query, key) target pairs [p, 3] for task data, and counted input problems."""

    tokens: Tensor
    mask: Tensor
    targets: Tensor
    ids: Tensor
    pairs: Tensor | None = None
    issues: Counter = field(default_factory=Counter)


def next_token_targets(tokens: Tensor, mask: Tensor) -> Tensor:
    """targets[t] = tokens[t + 1] where both are real tokens, else IGNORE."""
    scored = mask[:, :-1] & mask[:, 1:]
    targets = torch.full_like(tokens, IGNORE)
    targets[:, :-1] = tokens[:, 1:].masked_fill(~scored, IGNORE)
    return targets


@dataclass(frozen=True)
class TaskData:
    """`n` samples of a task (a `Task` or its name). Sample i is drawn from its own seeded generator, so any
    engine can build any sample alone; scored on the answer characters, as in training."""

    task: Task | str
    n: int
    seed: int = 0

    @property
    def source(self) -> Task:
        return get_task(self.task) if isinstance(self.task, str) else self.task

    @property
    def tokenizer(self) -> CharTokenizer:
        return self.source.tokenizer

    def __len__(self) -> int:
        return self.n

    def sample(self, i: int) -> Sample:
        return self.source.sample(random.Random(f"{self.seed}/{i}"))

    def text(self, i: int) -> str:
        """Sequence i as the model reads it (the answer's last character is predicted, not read)."""
        return self.sample(i).text[:-1]

    def check(self, model: TransformerWrapper) -> None:
        if self.n < 0:
            raise ValueError(f"n must be a count of samples, got {self.n}")
        if self.source.max_len > model.max_seq_len:
            raise ValueError(f"the {self.source.name} task draws up to {self.source.max_len} tokens; this model "
                             f"takes at most {model.max_seq_len}")

    def take(self, ids: Sequence[int]) -> Batch:
        task = self.source
        samples = [self.sample(int(i)) for i in ids]
        tokens, targets = make_batch(samples, task.tokenizer)
        pairs = [(row, q, k) for row, s in enumerate(samples) for q, k in task.attention_targets(s)]
        return Batch(tokens, tokens != task.tokenizer.pad_id, targets, torch.as_tensor(ids, dtype=torch.long),
                     torch.tensor(pairs, dtype=torch.long).reshape(-1, 3))


@dataclass(frozen=True)
class TextData:
    """One sequence per line, BOS first. Characters outside the tokenizer's alphabet are skipped and lines
    longer than the model takes are cut; both are counted in `HeadStats.issues`."""

    lines: Sequence[str]
    tokenizer: CharTokenizer
    max_len: int | None = None        # tokens per sequence, BOS included; the model's max_seq_len by default

    @classmethod
    def from_file(cls, path: str | os.PathLike, tokenizer: CharTokenizer) -> TextData:
        return cls(Path(path).read_text(encoding="utf-8").splitlines(), tokenizer)

    def __len__(self) -> int:
        return len(self.lines)

    def clean(self, i: int) -> tuple[str, Counter]:
        """Line i as read: characters outside the alphabet dropped, cut to fit; and what was done."""
        line = self.lines[i].rstrip("\r\n")
        kept = "".join(c for c in line if c in self.tokenizer.alphabet)
        issues = Counter(skipped_characters=len(line) - len(kept))
        if self.max_len is not None and len(kept) + 1 > self.max_len:
            kept, issues["cut_lines"] = kept[:self.max_len - 1], 1
        issues["empty_lines"] = int(not kept)
        return kept, issues

    def text(self, i: int) -> str:
        return self.clean(i)[0]

    def check(self, model: TransformerWrapper) -> None:
        if self.tokenizer.vocab_size > model.num_tokens:
            raise ValueError(f"the tokenizer has {self.tokenizer.vocab_size} ids; this model knows {model.num_tokens}")

    def take(self, ids: Sequence[int]) -> Batch:
        cleaned = [self.clean(int(i)) for i in ids]
        encoded = [self.tokenizer.encode(text) for text, _ in cleaned]
        n = max(len(e) for e in encoded)
        tokens = torch.full((len(encoded), n), self.tokenizer.pad_id, dtype=torch.long)
        for row, e in enumerate(encoded):
            tokens[row, :len(e)] = torch.tensor(e)
        mask = torch.arange(n) < torch.tensor([len(e) for e in encoded])[:, None]
        return Batch(tokens, mask, next_token_targets(tokens, mask), torch.as_tensor(ids, dtype=torch.long),
                     issues=sum((issues for _, issues in cleaned), Counter()))


def check_tokens(tokens: Any, mask: Any, model: TransformerWrapper, what: str) -> None:
    """Refuse, naming `what` (a batch, the table), tokens that are not a [b, n] tensor of ids `model` knows,
    longer sequences than it takes, or a mask (None: every token real) that is not bool of the tokens' shape."""
    if (not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype == torch.bool
            or tokens.dtype.is_floating_point or tokens.dtype.is_complex):
        got = f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"{what}: tokens must be an integer tensor [batch, tokens]; got {got}")
    if mask is not None and (not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != tokens.shape):
        got = f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"{what}: the mask must be None or a bool tensor of the tokens' shape "
                         f"{tuple(tokens.shape)}; got {got}")
    if tokens.shape[1] > model.max_seq_len:
        raise ValueError(f"{what}: sequences of {tokens.shape[1]} tokens; this model takes at most {model.max_seq_len}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= model.num_tokens):
        raise ValueError(f"{what}: token ids run from {int(tokens.min())} to {int(tokens.max())}; this model knows "
                         f"0 to {model.num_tokens - 1}")


@dataclass
class TokenBatches:
    """The caller's own (tokens [b, n], mask [b, n] or None) batches, streamed as they come; scored on next
    tokens. Ray needs random access, so `collect` gathers them (padded to one length) on the driver."""

    batches: Iterable[tuple[Tensor, Tensor | None]]

    def check(self, model: TransformerWrapper) -> None:
        """Only that the batches can be iterated: they are streamed, so `stream` checks each as it comes."""
        if isinstance(self.batches, Tensor | str | bytes) or not isinstance(self.batches, Iterable):
            raise ValueError("data must be texts, a TaskData or TextData, or an iterable of (tokens [b, n], mask "
                             f"[b, n] or None) batches; got {type(self.batches).__name__}")

    def stream(self, model: TransformerWrapper) -> Iterator[Batch]:
        """The batches as they come, each checked against `model` (check_tokens)."""
        seen = 0
        for k, pair in enumerate(self.batches):
            if not (isinstance(pair, tuple | list) and len(pair) == 2):
                raise ValueError(f"batch {k}: expected a (tokens, mask) pair; got {type(pair).__name__}")
            tokens, mask = pair
            check_tokens(tokens, mask, model, f"batch {k}")
            mask = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask
            yield Batch(tokens, mask, next_token_targets(tokens, mask), torch.arange(seen, seen + len(tokens)))
            seen += len(tokens)

    def collect(self, model: TransformerWrapper) -> TokenTable:
        parts = list(self.stream(model))
        if not parts:
            return TokenTable(torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.bool))
        n = max(p.tokens.shape[1] for p in parts)
        return TokenTable(torch.cat([F.pad(p.tokens, (0, n - p.tokens.shape[1])) for p in parts]),
                          torch.cat([F.pad(p.mask, (0, n - p.mask.shape[1])) for p in parts]))


@dataclass(frozen=True)
class TokenTable:
    """Token sequences [N, n] with their mask, by row: the random-access form of `TokenBatches`."""

    tokens: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return len(self.tokens)

    def check(self, model: TransformerWrapper) -> None:
        check_tokens(self.tokens, self.mask, model, "the token table")

    def take(self, ids: Sequence[int]) -> Batch:
        index = torch.as_tensor(ids, dtype=torch.long)
        mask = self.mask[index]
        n = int(mask.any(0).nonzero().max()) + 1 if mask.any() else 1      # drop columns that are all padding
        tokens, mask = self.tokens[index, :n], mask[:, :n]
        return Batch(tokens, mask, next_token_targets(tokens, mask), index)


Source = TaskData | TextData | TokenBatches | TokenTable


def as_source(data: Any, tokenizer: CharTokenizer | None, model: TransformerWrapper) -> Source:
    """The data source `head_stats` reads: a TaskData or TextData as given, a list of strings with `tokenizer=`,
    else an iterable of (tokens, mask) batches."""
    if isinstance(data, TextData) and data.max_len is None:
        data = TextData(data.lines, data.tokenizer, model.max_seq_len)
    if isinstance(data, TaskData | TextData | TokenBatches | TokenTable):
        return data
    if isinstance(data, str) or (isinstance(data, Sequence) and data and all(isinstance(x, str) for x in data)):
        if tokenizer is None:
            raise ValueError("texts need a tokenizer: head_stats(model, texts, tokenizer=...)")
        return TextData([data] if isinstance(data, str) else list(data), tokenizer, model.max_seq_len)
    if isinstance(data, Sequence) and not data:
        raise ValueError("the dataset is empty: give at least one sequence")
    return TokenBatches(data)


def batches(source: Source, batch_size: int, model: TransformerWrapper) -> Iterator[Batch]:
    """The local engine's batches: a stream as it comes (checked against `model`), random-access sources in
    order of id."""
    if isinstance(source, TokenBatches):
        yield from source.stream(model)
        return
    for start in range(0, len(source), batch_size):
        yield source.take(range(start, min(start + batch_size, len(source))))


# Running sums.

ISSUE_NOTES = {
    "skipped_characters": "{} character(s) outside the model's alphabet were skipped",
    "cut_lines": "{} line(s) longer than the model takes were cut",
    "empty_lines": "{} line(s) held no character of the alphabet and only their BOS was read",
}


class Accumulator:
    """Per statistic: a float64 sum and a count over every query (or pair, or sequence) seen, and the sequence
    where the head shows the statistic most (its per-sequence mean at its largest). Size: fixed by the model."""

    def __init__(self, stats: Sequence[str], layers: int, heads: int) -> None:
        self.stats = list(stats)
        self.sums = {s: torch.zeros(layers, heads, dtype=torch.float64) for s in stats}
        self.counts = {s: 0 for s in stats}
        self.best = {s: torch.full((layers, heads), -math.inf, dtype=torch.float64) for s in stats}
        self.best_id = {s: torch.full((layers, heads), -1, dtype=torch.long) for s in stats}
        self.sequences = 0
        self.issues: Counter = Counter()

    def add(self, stat: str, sums: Tensor, counts: Tensor, ids: Tensor) -> None:
        """Per-sequence sums [b, layers, heads] over `counts` [b] queries (or pairs) each."""
        sums = sums.double()
        self.sums[stat] += sums.sum(0)
        self.counts[stat] += int(counts.sum())
        means = (sums / counts.clamp_min(1)[:, None, None]).masked_fill(counts[:, None, None] == 0, -math.inf)
        value, row = means.max(0)
        self.take_best(stat, value, ids[row])

    def take_best(self, stat: str, value: Tensor, ids: Tensor) -> None:
        better = (value > self.best[stat]) | ((value == self.best[stat]) & (ids < self.best_id[stat]) & (ids >= 0))
        self.best[stat] = torch.where(better, value, self.best[stat])
        self.best_id[stat] = torch.where(better, ids, self.best_id[stat])

    def merge(self, other: Accumulator) -> None:
        for s in self.stats:
            self.sums[s] += other.sums[s]
            self.counts[s] += other.counts[s]
            self.take_best(s, other.best[s], other.best_id[s])
        self.sequences += other.sequences
        self.issues.update(other.issues)

    def nbytes(self) -> int:
        return sum(t.nbytes for d in (self.sums, self.best, self.best_id) for t in d.values())

    def to_arrays(self) -> dict[str, np.ndarray]:
        """One row of numpy arrays (leading axis 1): what a Ray worker returns for a batch."""
        out = {"sequences": np.array([self.sequences])}
        out.update({f"issue.{k}": np.array([self.issues[k]]) for k in ISSUE_NOTES})
        for s in self.stats:
            out[f"{s}.sum"], out[f"{s}.best"] = self.sums[s].numpy()[None], self.best[s].numpy()[None]
            out[f"{s}.best_id"], out[f"{s}.count"] = self.best_id[s].numpy()[None], np.array([self.counts[s]])
        return out

    @classmethod
    def from_row(cls, row: dict[str, Any], stats: Sequence[str]) -> Accumulator:
        layers, heads = np.asarray(row[f"{stats[0]}.sum"]).shape
        acc = cls(stats, layers, heads)
        for s in stats:
            acc.sums[s] = torch.tensor(np.asarray(row[f"{s}.sum"]), dtype=torch.float64)
            acc.best[s] = torch.tensor(np.asarray(row[f"{s}.best"]), dtype=torch.float64)
            acc.best_id[s] = torch.tensor(np.asarray(row[f"{s}.best_id"]), dtype=torch.long)
            acc.counts[s] = int(row[f"{s}.count"])
        acc.sequences = int(row["sequences"])
        acc.issues = Counter({k: int(row[f"issue.{k}"]) for k in ISSUE_NOTES})
        return acc


# One batch.

def traced_batch(model: TransformerWrapper, batch: Batch, stages: list[str],
                 importance: bool) -> tuple[Trace, Tensor | None]:
    """Run the batch, recording `stages`; with `importance`, each sequence's own gate ξ [b, layers, heads] = 1
    multiplies every head's pattern (so its output), and the result holds ∂loss_s/∂ξ per sequence s, where
    loss_s is sequence s's mean next-token cross-entropy: sequences do not mix, so one backward pass gives all."""
    layers, heads = model.attn_layers.num_attn_layers, model.config.attn_layers.heads
    gate = torch.ones(len(batch.tokens), layers, heads, requires_grad=importance)

    def gated(attn: Tensor, hook: Any) -> Tensor:
        return attn * rearrange(gate[:, hook.layer], "b h -> b h 1 1")

    is_attn = [(lambda name: name.startswith("layers.") and name.endswith(".hook_attn"), gated)] if importance else []
    with torch.set_grad_enabled(importance), recording(model.attn_layers, stages) as kept, model.hooks(is_attn):
        logits = model(batch.tokens, mask=batch.mask)
        grad = None
        if importance:
            losses = F.cross_entropy(rearrange(logits, "b n v -> b v n"), batch.targets, ignore_index=IGNORE,
                                     reduction="none")
            scored = (batch.targets != IGNORE).sum(1)
            total = (losses.sum(1) / scored.clamp_min(1)).sum()
            grad = torch.autograd.grad(total, gate)[0] if total.requires_grad else torch.zeros_like(gate)
    trace = build_trace(kept, model.trace_visible(batch.tokens, batch.mask), batch.tokens, model.config,
                        key_extras=model.attn_layers.key_extras)
    return trace, grad


def per_query(trace: Trace, selective: bool) -> dict[str, Tensor]:
    """{stat: [layers, b, heads, query]} for every token query (memory tokens' rows dropped)."""
    m, e = trace.memory_tokens, len(trace.key_extras)
    rows = trace["attn"][..., m:, :].double()                  # [l, b, h, i, all keys]
    tokens = rows[..., e + m:]                                 # [l, b, h, i, j] the keys proper
    n = tokens.shape[-1]
    pos = torch.arange(n)
    weights = rows.abs()                                       # Cog signed attention: entropy of |a|
    values = {
        "entropy": -torch.special.xlogy(weights, weights).sum(-1),
        "max_weight": rows.amax(-1),
        "bos": tokens[..., 0],
        "distance": einsum(tokens, (pos[:, None] - pos[None, :]).double(), "l b h i j, i j -> l b h i"),
        "previous": F.pad(tokens.diagonal(offset=-1, dim1=-2, dim2=-1), (1, 0)),
        "diagonal": tokens.diagonal(dim1=-2, dim2=-1),
    }
    if selective:
        penalty = trace["selection"][..., m:, e + m:].double().expand_as(tokens)
        visible = trace.visible[:, None, m:, e + m:]           # [b, 1, i, j]
        seen = visible.sum(-1).clamp_min(1)
        values["selection"] = (penalty * visible).sum(-1) / seen
        values["pruned"] = ((penalty >= PRUNE_AT) & visible).sum(-1).double() / seen
    return values


def accumulate(acc: Accumulator, model: TransformerWrapper, batch: Batch) -> None:
    """Add one batch's sums to `acc`."""
    selective = any(s in acc.stats for s in SELECTIVE)
    trace, grad = traced_batch(model, batch, ["attn", "selection"] if selective else ["attn"],
                               "importance" in acc.stats)
    m = trace.memory_tokens
    queries = batch.mask & ~trace.fully_masked[:, m:]
    queries[:, 0] = False                                      # the first token sees only itself
    weight = queries.double()
    for stat, values in per_query(trace, selective).items():
        if stat in acc.stats:
            acc.add(stat, einsum(values, weight, "l b h i, b i -> b l h"), weight.sum(-1).long(), batch.ids)
    if "target" in acc.stats:
        row, q, k = batch.pairs.unbind(-1)
        hit = trace["attn"][:, row, :, m + q, len(trace.key_extras) + m + k].double()   # [p, l, h]: indexed first
        sums = torch.zeros(len(batch.ids), *hit.shape[1:], dtype=torch.float64).index_add_(0, row, hit)
        acc.add("target", sums, torch.bincount(row, minlength=len(batch.ids)), batch.ids)
    if grad is not None:
        acc.add("importance", grad.abs(), (batch.targets != IGNORE).any(1).long(), batch.ids)
    acc.sequences += len(batch.ids)
    acc.issues.update(batch.issues)


# Result and engines.

@dataclass
class HeadStats:
    """values[stat]: [layers, heads] means; counts[stat]: the queries (target: answer characters; importance:
    sequences) averaged over; examples[stat]: [layers, heads] id of the sequence where the head's own mean of
    the statistic is largest (`data.text(id)` gives it back); issues: input problems counted; notes: sentences."""

    values: dict[str, Tensor]
    counts: dict[str, int]
    examples: dict[str, Tensor]
    sequences: int
    issues: dict[str, int]
    notes: list[str]

    def to_frame(self) -> pandas.DataFrame:
        """One row per layer, head and statistic: columns layer, head, stat, value."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("HeadStats.to_frame needs pandas: pip install pandas") from None
        return pd.DataFrame([{"layer": layer, "head": head, "stat": stat, "value": float(v[layer, head])}
                             for stat, v in self.values.items()
                             for layer in range(v.shape[0]) for head in range(v.shape[1])])


def finish(acc: Accumulator) -> HeadStats:
    if not acc.sequences:
        raise ValueError("the dataset is empty: give at least one sequence")
    empty = [s for s in acc.stats if not acc.counts[s]]
    if empty:
        raise ValueError(f"nothing to average {', '.join(empty)} over in {acc.sequences} sequence(s): a query needs "
                         "a sequence of two tokens or more (BOS and one character), importance a scored next token")
    issues = {k: v for k, v in acc.issues.items() if v}
    return HeadStats({s: acc.sums[s] / acc.counts[s] for s in acc.stats}, dict(acc.counts),
                     dict(acc.best_id), acc.sequences, issues,
                     [ISSUE_NOTES[k].format(v) for k, v in issues.items()])


def applicable(model: TransformerWrapper, source: Source) -> list[str]:
    """The statistics that mean something for this model and data (selective ones need attn_selective,
    target needs task data)."""
    selective = model.config.attn_layers.attn.selective
    return [s for s in STATS if (s not in SELECTIVE or selective) and (s != "target" or isinstance(source, TaskData))]


def check_stats(stats: Sequence[str] | None, allowed: list[str]) -> list[str]:
    if stats is None:
        return allowed
    unknown = [s for s in stats if s not in STATS]
    if unknown:
        raise ValueError(f"unknown statistic(s) {unknown}; choose from {', '.join(STATS)}")
    unfit = [s for s in stats if s not in allowed]
    if unfit:
        raise ValueError(f"statistic(s) {unfit} do not apply here: selection and pruned need a selective model "
                         "(attn_selective=True), target needs task data (TaskData)")
    if not stats:
        raise ValueError("stats is empty: name at least one statistic")
    return list(dict.fromkeys(stats))


@contextmanager
def progress_bar(progress: Progress, total: int | None) -> Iterator[Callable[[int], None]]:
    """A callback taking sequences just done: a tqdm bar (progress=True, closed on exit), the caller's
    fn(done, total), or nothing."""
    if progress is True:
        with tqdm(total=total, desc="head stats", unit="seq") as bar:
            yield bar.update
        return
    done = [0]

    def step(k: int) -> None:
        done[0] += k
        if progress:
            progress(done[0], total)
    yield step


def head_stats(model: TransformerWrapper, data: Any, stats: Sequence[str] | None = None, *,
               tokenizer: CharTokenizer | None = None, batch_size: int = 64, backend: str = "local",
               progress: Progress = True, workers: int = 2) -> HeadStats:
    """Head statistics of `model` over `data`: a `TaskData`, a `TextData`, a list of texts with `tokenizer=`, or an
    iterable of (tokens [b, n], mask [b, n] or None) batches. `stats` (default: every one that applies, see
    `STATS`) are summed batch by batch. backend: "local" (in this process) or "ray" (`workers` actors of a Ray
    Data pool; RAY_ADDRESS selects a cluster). progress: a tqdm bar, False, or fn(sequences done, total)."""
    if not isinstance(model, TransformerWrapper):
        raise ValueError("head_stats takes a TransformerWrapper (a decoder or encoder, not an encoder–decoder)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    source = as_source(data, tokenizer, model)
    source.check(model)
    chosen = check_stats(stats, applicable(model, source))
    if backend == "local":
        acc = run_local(model, source, chosen, batch_size, progress)
    elif backend == "ray":
        from .stats_ray import run_ray
        acc = run_ray(model, source, chosen, batch_size, progress, workers)
    else:
        raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
    return finish(acc)


def run_local(model: TransformerWrapper, source: Source, stats: list[str], batch_size: int,
              progress: Progress) -> Accumulator:
    """Stream the batches through the model in this process, keeping only the running sums."""
    acc = Accumulator(stats, model.attn_layers.num_attn_layers, model.config.attn_layers.heads)
    was_training = model.training
    model.eval()
    try:
        with progress_bar(progress, None if isinstance(source, TokenBatches) else len(source)) as step:
            for batch in batches(source, batch_size, model):
                accumulate(acc, model, batch)
                step(len(batch.ids))
    finally:
        model.train(was_training)
    return acc


def rebuild(state: dict[str, Tensor], config: dict[str, Any]) -> TransformerWrapper:
    """A model from its state dict and JSON config: how a worker gets the model without unpickling a module."""
    model = build(config)
    load_state(model, state)
    return model.eval()


__all__ = ["head_stats", "HeadStats", "TaskData", "TextData", "TokenBatches", "STATS", "Accumulator"]
