"""Size estimates made before any memory is spent, so a request too large is refused with a number."""
from __future__ import annotations

from typing import Any, Sequence

from .stages import check_stages

BYTES_PER_VALUE = 4  # float32


class TooLarge(ValueError):
    """A model or trace that would not fit the budget it was given."""


def validate(config: Any) -> None:
    """Raise ValueError, naming the field, unless the sizes a config gives are positive whole numbers."""
    if not isinstance(config, dict) or not isinstance(config.get("attn_layers"), dict):
        raise ValueError("the config must be a JSON object with num_tokens, max_seq_len and attn_layers")
    layers = config["attn_layers"]
    sizes = [(config, "num_tokens", None), (config, "max_seq_len", None), (layers, "dim", None),
             (layers, "depth", None), (layers, "heads", 8), (layers, "attn_dim_head", 64)]
    for owner, key, default in sizes:
        value = owner.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            where = key if owner is config else f"attn_layers.{key}"
            raise ValueError(f"{where} must be a positive whole number; got {value!r}")
    ff_mult = layers.get("ff_mult", 4)
    if not isinstance(ff_mult, (int, float)) or isinstance(ff_mult, bool) or not 0 < ff_mult <= 64:
        raise ValueError(f"attn_layers.ff_mult must be a number above 0 (at most 64); got {ff_mult!r}")


def parameter_count(config: dict[str, Any]) -> int:
    """Parameters a `TransformerWrapper` config would allocate (embeddings, attention, feed-forward, norms)."""
    layers = config["attn_layers"]
    dim, depth, heads = layers["dim"], layers["depth"], layers.get("heads", 8)
    inner = heads * layers.get("attn_dim_head", 64)
    ff_inner = int(dim * layers.get("ff_mult", 4))
    ff_in = ff_inner * (2 if layers.get("ff_glu") else 1)
    per_layer = 4 * dim * inner + dim * ff_in + ff_inner * dim + ff_in + dim + 2 * dim
    embeddings = config["num_tokens"] * dim * (1 if config.get("tie_embedding") else 2)
    absolute = config.get("use_abs_pos_emb", True) and not layers.get("rotary_pos_emb")
    positions = config["max_seq_len"] * dim if absolute else 0
    return depth * per_layer + embeddings + positions + dim


def trace_bytes(config: dict[str, Any], batch: int, n: int, stages: Sequence[str] | None = None,
                layers: Sequence[int] | None = None) -> int:
    """Upper bound on the bytes a trace of `n` tokens holds: stages × layers × batch × heads × n²."""
    depth = config["attn_layers"]["depth"] if layers is None else len(layers)
    heads = config["attn_layers"].get("heads", 8)
    return len(check_stages(stages)) * depth * batch * heads * n * n * BYTES_PER_VALUE


def check(config: dict[str, Any], *, max_parameters: int, max_trace_bytes: int, batch: int = 1,
          n: int | None = None, stages: Sequence[str] | None = None) -> None:
    """Raise TooLarge, saying the numbers, if the model or its trace would exceed the budget
    (ValueError first if the config's sizes are not positive whole numbers)."""
    validate(config)
    params = parameter_count(config)
    if params > max_parameters:
        raise TooLarge(f"this model would have {params:,} parameters; the limit here is {max_parameters:,}")
    n = config["max_seq_len"] if n is None else n
    size = trace_bytes(config, batch, n, stages)
    if size > max_trace_bytes:
        raise TooLarge(f"a trace of {n} tokens would take {size / 2**20:,.0f} MiB; the limit here is "
                       f"{max_trace_bytes / 2**20:,.0f} MiB — use fewer layers, heads or tokens")
