"""Words for people, generated from the options table: one line per model, the README's options table.

`python -m xattn.describe` prints the README's table of options (with x-transformers installed, also the
x-transformers options xattn does not run yet, read off its constructors' signatures);
`python -m xattn.describe --readme README.md` rewrites the table in place.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
from pathlib import Path
from typing import Any

from .config import OPTIONS, PLACES, EncDecConfig, LayersConfig, ModelConfig, changed_fields
from .convert import HARMLESS_KWARGS
from .stages import DESCRIPTIONS, STAGES, X_TRANSFORMERS_FIELDS

LABELS = {name: opt.label for name, _, opt in OPTIONS}
# Options every line already states (kind, sizes) or that change nothing in eval mode.
UNSAID = {"causal", "attn_dim_head", "attn_dropout", "ff_dropout", "emb_dropout"}


def switched_on(config: ModelConfig) -> dict[str, Any]:
    """{x-transformers keyword: value} of the options set away from their defaults."""
    layers = config.attn_layers.to_kwargs()
    wrapper = changed_fields(config, skip={"num_tokens", "max_seq_len", "attn_layers"})
    return {k: v for k, v in {**wrapper, **layers}.items() if k in LABELS and k not in UNSAID}


def option_phrase(name: str, value: Any) -> str:
    label = LABELS[name]
    if value is True:
        return label
    if value is False:
        return f"no {label}"
    if isinstance(value, (list, tuple)):   # a layer pattern 'aaf…', or one number per layer (shift_tokens)
        value = "".join(map(str, value)) if all(isinstance(v, str) for v in value) else "/".join(map(str, value))
    return f"{label} {value}"


def describe(config: ModelConfig | EncDecConfig) -> str:
    """One line: kind, sizes and every option set away from its default, e.g.
    `causal, 3 layers × 4 heads, dim 64, up to 36 tokens; residual attention (RealFormer), selective attention`;
    for an encoder–decoder, `encoder–decoder — encoder: … · decoder: …` (its layers × heads: self-attention)."""
    if isinstance(config, EncDecConfig):
        encoder = dataclasses.replace(config.encoder, return_only_embed=False)    # every encoder returns embeddings
        tied = " · tied encoder–decoder embedding" if config.tie_token_emb else ""
        return f"encoder–decoder — encoder: {describe(encoder)} · decoder: {describe(config.decoder)}{tied}"
    layers: LayersConfig = config.attn_layers
    count, heads = layers.num_attn_layers, layers.heads
    kind = "causal" if layers.causal else "bidirectional"
    phrases = [option_phrase(k, v) for k, v in switched_on(config).items()]
    return (f"{kind}, {count} layer{'s' * (count != 1)} × {heads} head{'s' * (heads != 1)}, dim {layers.dim}, "
            f"up to {config.max_seq_len} tokens; {', '.join(phrases) or 'plain attention'}")


def options_table() -> str:
    """The README's table: every option xattn runs, in pipeline order, with where it acts and which stages show it."""
    rows = ["| option (x-transformers keyword) | default | what it does | acts on | trace stages |",
            "|---|---|---|---|---|"]
    for name, default, opt in sorted(OPTIONS, key=lambda row: PLACES.index(row[2].acts)):
        what = f"{opt.label}: {opt.help}" if opt.help else opt.label
        stages = ", ".join(f"`{s}`" for s in opt.stages) or "—"
        rows.append(f"| `{name}` | `{default!r}` | {what} | {opt.acts} | {stages} |")
    return "\n".join(rows)


def stages_table() -> str:
    """The README's table of the trace's stages, in the order they are computed, with the options that feed each."""
    fed_by: dict[str, list[str]] = {stage: [] for stage in STAGES}
    for name, _, opt in OPTIONS:
        for stage in opt.stages:
            fed_by[stage].append(f"`{name}`")
    rows = ["| stage | what it holds | fed by | x-transformers field |", "|---|---|---|---|"]
    for stage in STAGES:
        field = X_TRANSFORMERS_FIELDS.get(stage)
        rows.append(f"| `{stage}` | {DESCRIPTIONS[stage]} | {', '.join(fed_by[stage]) or '—'} | "
                    f"{f'`{field}`' if field else '—'} |")
    return "\n".join(rows)


def x_transformers_unsupported() -> list[str]:
    """x-transformers' constructor keywords (TransformerWrapper, AttentionLayers, attn_*, ff_*) that xattn does
    not run, read off the installed x-transformers' signatures."""
    import x_transformers.x_transformers as xt  # optional: only this function needs it

    def keywords(cls: type, prefix: str = "") -> set[str]:
        params = inspect.signature(cls.__init__).parameters.values()
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {prefix + p.name for p in params if p.kind in named and p.name not in ("self", "dim")}

    offered = (keywords(xt.TransformerWrapper) | keywords(xt.AttentionLayers) | keywords(xt.Attention, "attn_")
               | keywords(xt.FeedForward, "ff_"))
    supported = {name for name, _, _ in OPTIONS} | HARMLESS_KWARGS | {"depth", "heads", "num_tokens", "max_seq_len",
                                                                       "attn_layers", "attn_heads", "attn_causal"}
    return sorted(offered - supported)


# The README's generated tables, by the name in their `<!-- NAME:start -->` … `<!-- NAME:end -->` markers.
README_TABLES = {"options": options_table, "stages": stages_table}


def write_readme(path: Path) -> None:
    """Replace each generated table in the README between its markers."""
    text = path.read_text()
    for name, table in README_TABLES.items():
        start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
        if start not in text or end not in text:
            raise ValueError(f"{path} has no {start.strip()} … {end} markers")
        head, rest = text.split(start, 1)
        text = head + start + table() + "\n" + end + rest.split(end, 1)[1]
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xattn.describe", description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, help="rewrite the options table in this README instead of printing")
    args = parser.parse_args(argv)
    if args.readme:
        write_readme(args.readme)
        return
    print(options_table())
    try:
        missing = x_transformers_unsupported()
    except ImportError:
        return
    print(f"\nNot run yet ({len(missing)} x-transformers keywords; a model using one is refused by name): "
          + ", ".join(f"`{k}`" for k in missing))


if __name__ == "__main__":
    main()
