"""Train a small decoder on a synthetic task on CPU and write a checkpoint with its model card.

    python -m xattn.train --task variables --variant selective --steps 3000 --seed 0 --out assets/models

writes NAME.safetensors (+ NAME.json config), NAME.card.json and NAME.md into --out (NAME defaults to
TASK-VARIANT) and refreshes the README.md table of every card there. Same arguments, same weights.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import random
import shlex
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from .io import save
from .layers import Decoder
from .registry import card_markdown, index_markdown
from .tasks import TASKS, Sample, Task, get_task
from .tokenizer import CharTokenizer
from .wrapper import TransformerWrapper

IGNORE = -100

VARIANTS: dict[str, dict[str, bool]] = {
    "baseline": {},
    "residual": {"residual_attn": True},
    "selective": {"attn_selective": True},
    "both": {"residual_attn": True, "attn_selective": True},
    # Options whose stages a figure shows side by side: T5 bias, pre-softmax talking heads, soft-capping, a sink.
    "showcase": {"rel_pos_bias": True, "attn_pre_talking_heads": True, "attn_softclamp_logits": True,
                 "attn_logit_softclamp_value": 10.0, "attn_head_learned_sink": True, "use_rmsnorm": True},
}
# The variants bundled for every task and compared in the README (the showcase is trained only for a figure).
COMPARED_VARIANTS = ("baseline", "residual", "selective", "both")


@dataclass
class TrainConfig:
    """Everything a run depends on; the card records it and `command()` replays it."""

    task: str = "variables"
    variant: str = "baseline"
    steps: int = 3000
    seed: int = 0
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    dim: int = 64
    depth: int = 3
    heads: int = 4
    dim_head: int = 16
    eval_size: int = 4000
    eval_seed: int = 1_000_003
    threads: int = 2
    out: str = "assets/models"
    name: str = ""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if self.eval_seed == self.seed:
            raise ValueError("the evaluation seed must differ from the training seed")
        self.name = self.name or f"{self.task}-{self.variant}"

    def command(self) -> str:
        """The command line that reproduces this run."""
        args = [f"--{key.replace('_', '-')}={value}" for key, value in asdict(self).items()]
        return shlex.join(["python", "-m", "xattn.train", *args])


def build_model(config: TrainConfig, task: Task) -> TransformerWrapper:
    """A fresh decoder sized by `config`, with the attention options of its variant."""
    return TransformerWrapper(
        num_tokens=task.tokenizer.vocab_size, max_seq_len=task.max_len + 1,
        attn_layers=Decoder(dim=config.dim, depth=config.depth, heads=config.heads, attn_dim_head=config.dim_head,
                            **VARIANTS[config.variant]))


def make_batch(samples: Sequence[Sample], tokenizer: CharTokenizer) -> tuple[Tensor, Tensor]:
    """(inputs [b, n], targets [b, n]): inputs are BOS + text without its last character, right-padded;
    targets hold the next token at answer positions and IGNORE elsewhere. Padding sits after every real
    token, so a causal model never sees it."""
    encoded = [tokenizer.encode(s.text) for s in samples]
    n = max(len(ids) for ids in encoded) - 1
    inputs = torch.full((len(samples), n), tokenizer.pad_id, dtype=torch.long)
    targets = torch.full((len(samples), n), IGNORE, dtype=torch.long)
    for row, (sample, ids) in enumerate(zip(samples, encoded, strict=True)):
        inputs[row, :len(ids) - 1] = torch.tensor(ids[:-1])
        start = len(sample.prompt)      # the position that reads the prompt's last character
        targets[row, start:len(ids) - 1] = torch.tensor(ids[start + 1:])
    return inputs, targets


@torch.no_grad()
def evaluate(model: TransformerWrapper, task: Task, n: int, seed: int, batch_size: int = 500) -> float:
    """Percentage of answer characters predicted right (argmax, teacher-forced) on `n` samples drawn with `seed`."""
    model.eval()
    samples = task.samples(n, seed)
    right = total = 0
    for i in range(0, n, batch_size):
        inputs, targets = make_batch(samples[i:i + batch_size], task.tokenizer)
        scored = targets != IGNORE
        right += int((model(inputs).argmax(-1) == targets)[scored].sum())
        total += int(scored.sum())
    return 100.0 * right / total


NOTABLE_SAMPLES, NOTABLE_SEED = 200, 7


def notable_heads(model: TransformerWrapper, task: Task, top: int = 2) -> list[dict[str, Any]]:
    """The `top` (layer, head) pairs that put the most attention where the task predicts (`task.attention_targets`),
    with their mean attention weight on the predicted key over NOTABLE_SAMPLES samples drawn with NOTABLE_SEED."""
    samples = task.samples(NOTABLE_SAMPLES, NOTABLE_SEED)
    inputs, _ = make_batch(samples, task.tokenizer)
    _, trace = model.run_with_trace(inputs, stages=["attn"])
    attn = trace["attn"]                                             # [layers, b, heads, i, j]
    pairs = [(row, q, k) for row, s in enumerate(samples) for q, k in task.attention_targets(s)]
    rows, queries, keys = (torch.tensor(x) for x in zip(*pairs, strict=True))
    queries, keys = queries + trace.memory_tokens, keys + trace.memory_tokens    # memory tokens come first
    score = attn[:, rows, :, queries, keys].mean(dim=0).flatten()    # [layers × heads]
    heads = attn.shape[2]
    return [{"layer": i // heads, "head": i % heads, "attention_on_predicted_key": round(float(score[i]), 3),
             "pattern": task.pattern, "samples": NOTABLE_SAMPLES, "seed": NOTABLE_SEED}
            for i in score.argsort(descending=True)[:top].tolist()]


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warmup, then cosine decay to a tenth."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


@contextmanager
def num_threads(n: int) -> Iterator[None]:
    """Run the block on `n` CPU threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fit(config: TrainConfig, task: Task, progress: bool = True) -> tuple[TransformerWrapper, list[float], float]:
    """A model trained as `config` says: (model, loss per step, seconds). Same config, same weights."""
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    model = build_model(config, task)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(config.steps), desc=config.name, disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        inputs, targets = make_batch([task.sample(rng) for _ in range(config.batch_size)], task.tokenizer)
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval(), losses, time.perf_counter() - start


def train(config: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train on `config.threads` threads, evaluate, write the checkpoint, card, card page and folder index;
    return the card."""
    task = get_task(config.task)
    with num_threads(config.threads):
        model, losses, seconds = fit(config, task, progress)
        accuracy = evaluate(model, task, config.eval_size, config.eval_seed)
        heads = notable_heads(model, task)

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save(model, out / f"{config.name}.safetensors", tokenizer=task.tokenizer)
    window = max(1, min(50, len(losses) // 4))
    card = {
        "name": config.name,
        "task": config.task,
        "task_description": task.description,
        "variant": config.variant,
        "attention_options": VARIANTS[config.variant],
        "model_config": model.config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokenizer": task.tokenizer.to_dict(),
        "example": task.example,
        "train": {**asdict(config), "loss_first": round(sum(losses[:window]) / window, 4),
                  "loss_last": round(sum(losses[-window:]) / window, 4), "wall_clock_s": round(seconds, 1),
                  "torch": torch.__version__, "machine": platform.machine()},
        "eval": {"accuracy": round(accuracy, 2),
                 "metric": "% of answer characters predicted right (argmax, teacher-forced)",
                 "size": config.eval_size, "seed": config.eval_seed},
        "notable_heads": heads,
        "command": config.command(),
    }
    (out / f"{config.name}.card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / f"{config.name}.md").write_text(card_markdown(card))
    (out / "README.md").write_text(index_markdown(out))
    return card


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="xattn-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in fields(TrainConfig):
        choices = {"task": list(TASKS), "variant": list(VARIANTS)}.get(field.name)
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default,
                            choices=choices)
    return TrainConfig(**vars(parser.parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> None:
    card = train(parse_args(argv))
    print(f"{card['name']}: {card['eval']['accuracy']:.2f}% on {card['eval']['size']} fresh samples "
          f"(seed {card['eval']['seed']}) after {card['train']['steps']} steps, {card['train']['wall_clock_s']} s")


if __name__ == "__main__":
    main()
