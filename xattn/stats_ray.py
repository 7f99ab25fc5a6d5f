"""head_stats on Ray: Ray Data `map_batches` over sequence ids, an actor pool whose actors each build the model
once (from its state dict and JSON config, never a pickled module) and return one batch's partial sums, which
the driver adds up as they arrive. Connects to the cluster at RAY_ADDRESS when set, else starts a local Ray
runtime for the call and shuts it down after. Ray is optional: `pip install "xattn[ray]"`.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .stats import Accumulator, Progress, Source, TokenBatches, accumulate, progress_bar, rebuild
from .wrapper import TransformerWrapper

RAY_MISSING = ("backend='ray' needs Ray Data, which is not installed: pip install \"xattn[ray]\" "
               "(or pip install \"ray[data]>=2.9\")")


class StatsWorker:
    """A Ray actor: the model, built once, and the data source; each call turns a batch of ids into partial sums."""

    def __init__(self, state: dict[str, Tensor], config: dict[str, Any], source: Source, stats: list[str]) -> None:
        torch.set_num_threads(1)
        self.model, self.source, self.stats = rebuild(state, config), source, stats

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        acc = Accumulator(self.stats, self.model.attn_layers.num_attn_layers, self.model.config.attn_layers.heads)
        accumulate(acc, self.model, self.source.take(batch["id"].tolist()))
        return acc.to_arrays()


def run_ray(model: TransformerWrapper, source: Source, stats: list[str], batch_size: int, progress: Progress,
            workers: int) -> Accumulator:
    try:
        import ray
        import ray.data
    except ImportError:
        raise ImportError(RAY_MISSING) from None
    if isinstance(source, TokenBatches):
        source = source.collect(model)
    acc = Accumulator(stats, model.attn_layers.num_attn_layers, model.config.attn_layers.heads)
    if not len(source):
        return acc
    started = not ray.is_initialized()
    if started:    # ray.init reads RAY_ADDRESS itself; a local runtime gets a CPU per actor and one to read the ids
        ray.init(**({} if os.environ.get("RAY_ADDRESS") else {"num_cpus": workers + 1}), include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        partials = ray.data.range(len(source)).map_batches(
            StatsWorker, fn_constructor_kwargs={"state": state, "config": model.config.to_dict(), "source": source,
                                                "stats": stats},
            batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1)
        with progress_bar(progress, len(source)) as step:
            for row in partials.iter_rows():
                part = Accumulator.from_row(row, stats)
                acc.merge(part)
                step(part.sequences)
    finally:
        if started:
            ray.shutdown()
    return acc
