"""Generation step by step: the tokens a decoder picks, what it weighed, and where each new token looked.

`generate(model, prompt, steps)` (also `model.generate(...)`) returns a `Generation`: the tokens, each chosen
token's probability and the top candidates, and per step the new query's row of every recorded attention stage
[layers, batch, heads, 1, keys] — step s is the query at position prompt + s − 1, whose output picked token
prompt + s, so a step's record costs O(keys). With a KV cache each step runs only that token through the layers
(through the same hook points, so hooks see rows with i = 1).

Context pruning (Leviathan et al. 2024, `Prune`): selective attention's F only grows, so a key whose F is large
will stay ignored; dropping it from the context saves memory. Each layer prunes by its own F (each layer's head 0
selects for that layer), keeping its own set of keys. A model without `attn_selective` is pruned by the same
sum of head 0's positive logits, which it never subtracts: a control.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from .cache import KVCache, uncached_options
from .stages import check_stages
from .trace import recording

if TYPE_CHECKING:
    from .wrapper import TransformerWrapper

CANDIDATES = 5      # top candidates recorded per step


@dataclass(frozen=True)
class Prune:
    """A context-pruning policy: drop a key from a layer's context once its F passes `threshold`, or keep each
    layer's `budget` cached keys with the lowest F (ties: the later key stays). BOS and the newest token are
    never dropped; a dropped key stays dropped. Give exactly one of the two."""

    threshold: float | None = None
    budget: int | None = None

    def __post_init__(self) -> None:
        if (self.threshold is None) == (self.budget is None):
            raise ValueError("Prune takes exactly one of threshold= (drop keys whose F passes it) or budget= "
                             "(keys kept per layer)")
        if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise ValueError(f"Prune threshold must be a finite number ≥ 0, got {self.threshold}")
        if self.budget is not None and self.budget < 2:
            raise ValueError(f"Prune budget must be ≥ 2 (BOS and the newest token are always kept), got {self.budget}")

    def apply(self, cache: KVCache) -> None:
        """Mark, in each layer of `cache`, the keys later queries may no longer see."""
        for layer in cache.layers:
            f, alive = layer.selected, ~layer.dropped
            candidates = alive.clone()
            candidates[:, 0] = candidates[:, -1] = False           # BOS and the newest token stay
            if self.threshold is not None:
                layer.dropped |= candidates & (f > self.threshold)
                continue
            excess = (alive.sum(-1) - self.budget).clamp(min=0)
            score = f.masked_fill(~candidates, -math.inf)          # the largest F goes first, earliest on ties
            rank = score.sort(dim=-1, descending=True, stable=True).indices.argsort(dim=-1)   # each key's place
            layer.dropped |= candidates & (rank < excess[:, None])

    def __str__(self) -> str:
        return f"F > {self.threshold:g}" if self.threshold is not None else f"budget {self.budget}"


@dataclass
class Generation:
    """What `generate` produced. b = batch, steps = tokens generated (fewer than asked when every row hit eos).

    rows[s][stage] [layers, b, heads, 1, keys]: step s's query (token position prompt_length + s − 1) at each
    recorded stage; its keys are the layers' extra key columns (`key_extras`: sink, zero, memory kv), then the
    `memory_tokens` learned memory tokens, then the prompt_length + s tokens.
    dropped[s] [layers, b, prompt_length + s]: tokens pruned from each layer's context before step s's query.
    """

    tokens: Tensor                 # [b, prompt_length + steps], prompt included; after eos, eos repeated
    prompt_length: int
    probs: Tensor                  # [b, steps] the model's probability (softmax of its logits) of each chosen token
    top_ids: Tensor                # [b, steps, k] the k most probable next tokens at each step, most probable first
    top_probs: Tensor              # [b, steps, k] their probabilities
    finished: Tensor               # [b, steps] True where the row had emitted eos before this step (token = padding)
    rows: list[dict[str, Tensor]]
    dropped: list[Tensor]
    key_extras: list[str]
    memory_tokens: int             # learned memory tokens in front of the tokens on the rows' key axis
    cached: bool                   # whether steps ran through the KV cache (else the whole sequence each step)
    note: str                      # how it ran: cache or why not, and what pruning used

    @property
    def steps(self) -> int:
        return self.probs.shape[1]

    @property
    def new_tokens(self) -> Tensor:
        """[b, steps] the generated tokens alone."""
        return self.tokens[:, self.prompt_length:]

    def row(self, step: int, stage: str = "attn", layer: int = 0, head: int = 0, batch: int = 0) -> Tensor:
        """[keys] one head's row at one step: where step `step`'s query looked (extra key columns first)."""
        if stage not in self.rows[step]:
            raise KeyError(f"stage {stage!r} was not recorded; recorded: {list(self.rows[step])}")
        return self.rows[step][stage][layer, batch, head, 0]

    @property
    def kv_held(self) -> Tensor:
        """[b, steps] key/value pairs each step's query read, summed over layers (pruned keys not counted)."""
        return torch.stack([(~d).sum(dim=(0, 2)) for d in self.dropped], dim=1)

    @property
    def kv_unpruned(self) -> Tensor:
        """[steps] key/value pairs an unpruned run reads at each step: layers × keys."""
        return torch.tensor([d.shape[0] * d.shape[2] for d in self.dropped])

    def nbytes(self) -> int:
        """Bytes of the per-step records (rows and pruning masks)."""
        return sum(t.nbytes for step in self.rows for t in step.values()) + sum(d.nbytes for d in self.dropped)


def check_request(model: TransformerWrapper, prompt: Tensor, steps: int, temperature: float, top_k: int | None,
                  eos: int | None, cache: bool, prune: Prune | None) -> Tensor:
    """The prompt as [b, n], or a ValueError naming what cannot be generated."""
    config = model.config
    layers = config.attn_layers
    if not layers.causal:
        raise ValueError("generate needs a causal model (a Decoder): this model's attention layers are not causal")
    if layers.cross_attend or config.return_only_embed:
        option = "cross_attend" if layers.cross_attend else "return_only_embed"
        raise ValueError(f"generate does not support {option}: it reads no context and needs logits")
    if not isinstance(prompt, Tensor) or prompt.ndim not in (1, 2) or prompt.is_floating_point():
        raise ValueError("prompt must be an integer token tensor [batch, n] or [n] (BOS first)")
    prompt = prompt[None] if prompt.ndim == 1 else prompt
    if prompt.shape[-1] == 0:
        raise ValueError("prompt is empty: give at least one token (the tokenizer's BOS)")
    model.check_input(prompt)
    if steps < 0:
        raise ValueError(f"steps must be ≥ 0, got {steps}")
    fit = model.max_seq_len - prompt.shape[1]
    if steps > fit:
        raise ValueError(f"steps={steps} would pass max_seq_len ({model.max_seq_len}): after a prompt of "
                         f"{prompt.shape[1]} tokens, {fit} fit")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be ≥ 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be ≥ 1 (or None for no filter), got {top_k}")
    if eos is not None and not 0 <= eos < model.num_tokens:
        raise ValueError(f"eos must be a token id in [0, {model.num_tokens}), got {eos}")
    if prune is not None:
        if not isinstance(prune, Prune):
            raise ValueError("prune must be an xattn.Prune(threshold=…) or Prune(budget=…)")
        unsupported = uncached_options(config)
        if not cache or unsupported:
            why = "cache=False" if not cache else f"{', '.join(unsupported)} (no cached path)"
            raise ValueError(f"prune needs the KV cache, which this run does not use: {why}")
    return prompt


def choose(logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> Tensor:
    """[b] the next token: argmax at temperature 0, else a sample of softmax(logits / temperature) over the
    top_k most likely tokens (all if None)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    scaled = logits.float() / temperature
    if top_k is not None:
        kth = scaled.topk(min(top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, -math.inf)
    return torch.multinomial(scaled.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def dropped_row(kv: KVCache | None, layers: int, batch: int, keys: int, device: torch.device) -> Tensor:
    """[layers, b, keys] the keys each layer hides from the next query (none without a cache)."""
    if kv is None or kv.length == 0:
        return torch.zeros(layers, batch, keys, dtype=torch.bool, device=device)
    return torch.stack([F.pad(layer.dropped, (0, keys - kv.length), value=False) for layer in kv.layers])


@torch.no_grad()
def generate(model: TransformerWrapper, prompt: Tensor, steps: int, temperature: float = 0.0,
             top_k: int | None = None, eos: int | None = None, seed: int | None = None, cache: bool = True,
             prune: Prune | None = None, stages: Sequence[str] | None = None) -> Generation:
    """Generate `steps` tokens after `prompt` [b, n] or [n] (BOS first: the tokenizer's job), in eval mode.

    temperature 0 picks the argmax (x-transformers' greedy `generate`); above 0 it samples softmax(logits / T),
    from the `top_k` most likely tokens if given, reproducibly with `seed` (a torch.Generator). `eos`: a row that
    emits it is finished, and its later tokens are eos again (`Generation.finished` marks them); generation stops
    when every row has finished. prompt + steps must fit max_seq_len.

    cache: run each step through a KV cache. Memory tokens, shift_tokens, data-dependent ALiBi and xPos have no
    cached path: such a model recomputes the whole sequence every step (`Generation.cached` is False and `note`
    says why); the numbers are the same either way. `prune` (needs the cache) hides keys from later queries by
    F (`Prune`); the prompt is then fed one token at a time so pruning acts on every query, as in a decoder
    whose context buffer is pruned as it reads. stages: the stages each step records (default: those the
    model's options use; () records none).
    """
    prompt = check_request(model, prompt, steps, temperature, top_k, eos, cache, prune)
    chosen = model.config.attn_layers.stages_in_use() if stages is None else check_stages(stages)
    unsupported = uncached_options(model.config)
    cached = cache and not unsupported
    note = "KV cache" if cached else ("recomputed each step (cache=False)" if not cache else
                                      f"recomputed each step: no cached path for {', '.join(unsupported)}")
    if prune is not None:
        by = "selective attention's F" if model.config.attn_layers.selective else \
            "head 0's positive logits summed as F would be (the model has no attn_selective: a control)"
        note += f"; pruned per layer ({prune}) by {by}"
    num_layers, (batch, n) = model.attn_layers.num_attn_layers, prompt.shape
    kv = KVCache.empty(num_layers, track_selection=prune is not None) if cached else None
    generator = None if seed is None else torch.Generator(device=model.device).manual_seed(seed)
    tokens, done = prompt, torch.zeros(batch, dtype=torch.bool, device=prompt.device)
    rows, dropped, probs, top_ids, top_probs, finished = [], [], [], [], [], []
    was_training = model.training
    model.eval()
    try:
        with recording(model.attn_layers, chosen) as kept:     # each forward overwrites the records
            for step in range(steps):
                if kv is None:
                    new = tokens
                elif step > 0:
                    new = tokens[:, -1:]
                elif prune is None:
                    new = prompt
                else:                       # feed the prompt token by token, pruning after each
                    for position in range(n - 1):
                        model(prompt[:, position:position + 1], cache=kv)
                        prune.apply(kv)
                    new = prompt[:, -1:]
                dropped.append(dropped_row(kv, num_layers, batch, tokens.shape[1], prompt.device))
                logits = model(new, cache=kv)[:, -1]
                rows.append({stage: torch.stack([kept[stage][layer][..., -1:, :] for layer in sorted(kept[stage])])
                             for stage in chosen})
                if prune is not None:
                    prune.apply(kv)
                distribution = logits.float().softmax(dim=-1)
                top = distribution.topk(min(CANDIDATES, distribution.shape[-1]), dim=-1)
                token = choose(logits, temperature, top_k, generator)
                if eos is not None:
                    token = token.masked_fill(done, eos)
                probs.append(distribution.gather(-1, token[:, None])[:, 0])
                top_ids.append(top.indices)
                top_probs.append(top.values)
                finished.append(done.clone())
                tokens = torch.cat((tokens, token[:, None]), dim=1)
                if eos is not None:
                    done = done | (token == eos)
                    if done.all():
                        break
    finally:
        model.train(was_training)

    k = min(CANDIDATES, model.num_tokens)

    def stacked(parts: list[Tensor], dtype: torch.dtype, *shape: int) -> Tensor:
        return torch.stack(parts, dim=1) if parts else torch.zeros(batch, 0, *shape, dtype=dtype, device=model.device)

    return Generation(tokens=tokens, prompt_length=n, probs=stacked(probs, torch.float), rows=rows, dropped=dropped,
                      top_ids=stacked(top_ids, torch.long, k), top_probs=stacked(top_probs, torch.float, k),
                      finished=stacked(finished, torch.bool), key_extras=model.attn_layers.key_extras,
                      memory_tokens=model.num_memory_tokens, cached=cached,
                      note=note)


__all__ = ["Generation", "Prune", "generate"]
