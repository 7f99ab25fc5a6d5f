"""TransformerWrapper: token + position embedding → attention layers → logits, with tracing."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from einops import repeat
from torch import Tensor, nn

from .cache import KVCache, uncached_options
from .config import ModelConfig
from .cross import context_visible
from .generate import Generation, Prune, generate
from .hooks import HookFn, HookPoint, NameFilter, attached, hook_points
from .layers import AttentionLayers
from .norms import LayerNorm
from .trace import Trace, build_trace, recording


class TransformerWrapper(nn.Module):
    """x-transformers' TransformerWrapper for the options xattn supports.

    Absolute position embedding (scaled by emb_dim ** -0.5) unless the layers use rotary embeddings, T5 bias or
    `use_abs_pos_emb=False`; optionally both l2-normalised (`l2norm_embed`), normed (`post_emb_norm`) and
    projected from `emb_dim` to dim; learned memory tokens in front (`num_memory_tokens`); logits by a
    bias-less projection, or tied to the token embedding, or none (`return_only_embed`: the final embeddings
    are the output).
    """

    def __init__(self, *, num_tokens: int, max_seq_len: int, attn_layers: AttentionLayers,
                 use_abs_pos_emb: bool = True, emb_dropout: float = 0.0, tie_embedding: bool = False,
                 l2norm_embed: bool = False, emb_dim: int | None = None, post_emb_norm: bool = False,
                 num_memory_tokens: int = 0, return_only_embed: bool = False) -> None:
        super().__init__()
        if not isinstance(attn_layers, AttentionLayers):
            raise TypeError("attn_layers must be an xattn Encoder, Decoder or AttentionLayers")
        self.config = config = ModelConfig(num_tokens=num_tokens, max_seq_len=max_seq_len,
                                           attn_layers=attn_layers.config, use_abs_pos_emb=use_abs_pos_emb,
                                           emb_dropout=emb_dropout, tie_embedding=tie_embedding,
                                           l2norm_embed=l2norm_embed, emb_dim=emb_dim, post_emb_norm=post_emb_norm,
                                           num_memory_tokens=num_memory_tokens, return_only_embed=return_only_embed)
        dim, emb_dim = attn_layers.dim, config.embedding_dim
        self.num_tokens, self.max_seq_len = num_tokens, max_seq_len
        self.token_emb = nn.Embedding(num_tokens, emb_dim)
        nn.init.kaiming_normal_(self.token_emb.weight)
        self.pos_emb = nn.Embedding(max_seq_len, emb_dim) if config.absolute_positions else None
        self.pos_scale = emb_dim ** -0.5
        self.l2norm_embed = l2norm_embed
        self.post_emb_norm = LayerNorm(emb_dim) if post_emb_norm else None
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.project_emb = nn.Linear(emb_dim, dim) if emb_dim != dim else None
        self.num_memory_tokens = config.num_memory_tokens
        self.memory_tokens = nn.Parameter(torch.randn(self.num_memory_tokens, dim)) if self.num_memory_tokens else None
        self.attn_layers = attn_layers
        self.tie_embedding, self.return_only_embed = tie_embedding, return_only_embed
        self.tie_scale = dim ** -0.5
        self.to_logits = None if tie_embedding or return_only_embed else nn.Linear(dim, num_tokens, bias=False)

    def check_input(self, tokens: Tensor, cached: int = 0) -> None:
        """Refuse what the model cannot read: not [batch, seq] integers, empty, unknown ids, or with the `cached`
        tokens before it longer than max_seq_len."""
        if tokens.ndim != 2 or tokens.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"tokens must be an integer tensor [batch, seq], got {tokens.dtype} {tuple(tokens.shape)}")
        if tokens.shape[1] == 0:
            raise ValueError("the input is empty: give at least one token")
        if cached + tokens.shape[1] > self.max_seq_len:
            after = f" after {cached} cached ones" if cached else ""
            raise ValueError(f"the input has {tokens.shape[1]} tokens{after}; this model takes at most "
                             f"{self.max_seq_len}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.num_tokens):
            raise ValueError(f"token ids must lie in [0, {self.num_tokens}); "
                             f"got {int(tokens.min())}..{int(tokens.max())}")

    def embed(self, tokens: Tensor, offset: int = 0) -> Tensor:
        """tokens [b, n] → the sequence the layers see [b, M + n, dim]: token + position embedding, [l2-normalised
        each], [normed], [projected to dim], after the M memory tokens. offset: the tokens' first position."""
        x = self.token_emb(tokens)
        if self.l2norm_embed:
            x = F.normalize(x, dim=-1)
        if self.pos_emb is not None:
            pos = self.pos_emb(torch.arange(offset, offset + tokens.shape[1], device=tokens.device))
            x = x + (F.normalize(pos, dim=-1) if self.l2norm_embed else pos * self.pos_scale)
        if self.post_emb_norm is not None:
            x = self.post_emb_norm(x)
        x = self.emb_dropout(x)
        if self.project_emb is not None:
            x = self.project_emb(x)
        if self.memory_tokens is not None:
            x = torch.cat((repeat(self.memory_tokens, "m d -> b m d", b=x.shape[0]), x), dim=1)
        return x

    def layer_masks(self, mask: Tensor | None, attn_mask: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """The padding mask [b, n] and custom mask [(b,) n, n] over the layers' sequence: with memory tokens both
        grow by M in front, memory tokens being real tokens that the custom mask lets see and be seen by all."""
        m = self.num_memory_tokens
        if not m:
            return mask, attn_mask
        if mask is not None:
            mask = F.pad(mask, (m, 0), value=True)
        if attn_mask is not None:
            attn_mask = F.pad(attn_mask, (m, 0, m, 0), value=True)
        return mask, attn_mask

    def forward(self, tokens: Tensor, mask: Tensor | None = None, attn_mask: Tensor | None = None,
                context: Tensor | None = None, context_mask: Tensor | None = None,
                cache: KVCache | None = None) -> Tensor:
        """tokens [b, n] → logits [b, n, num_tokens] (none for memory tokens; with return_only_embed the final
        embeddings [b, n, dim]). context [b, m, dim] and its padding context_mask [b, m]: what a cross-attending
        model reads. cache (`xattn.cache.KVCache`): tokens are the next n after the cached ones, which the
        layers read from the cache and extend it with (a decoder without the options `uncached_options` lists)."""
        offset = 0
        if cache is not None:
            unsupported = uncached_options(self.config)
            if unsupported:
                raise ValueError(f"no cached path for {', '.join(unsupported)}: run the whole sequence instead")
            offset = cache.length
        self.check_input(tokens, offset)
        x = self.attn_layers(self.embed(tokens, offset), *self.layer_masks(mask, attn_mask), context=context,
                             context_mask=context_mask, cache=cache)
        if self.memory_tokens is not None:
            x = x[:, self.num_memory_tokens:]
        if self.return_only_embed:
            return x
        return x @ self.token_emb.weight.t() * self.tie_scale if self.tie_embedding else self.to_logits(x)

    # hooks and traces

    def hook_points(self) -> dict[str, HookPoint]:
        """Every hook point by name, e.g. `layers.3.attn.hook_pre_softmax`, `cross_layers.0.attn.hook_attn`."""
        return hook_points(self.attn_layers)

    def hooks(self, hooks: Iterable[tuple[NameFilter, HookFn]]) -> AbstractContextManager[None]:
        """Context manager attaching `(name or predicate, fn(tensor, hook))` pairs; removed on exit,
        also on an exception. A fn returning a tensor replaces the stage; returning None only reads."""
        return attached(self.attn_layers, hooks)

    @torch.no_grad()
    def run_with_trace(self, tokens: Tensor, mask: Tensor | None = None, attn_mask: Tensor | None = None,
                       stages: Sequence[str] | None = None, layers: Sequence[int] | None = None,
                       labels: list[list[str]] | None = None, context: Tensor | None = None,
                       context_mask: Tensor | None = None,
                       context_labels: list[list[str]] | None = None) -> tuple[Tensor, Trace]:
        """Forward pass that records the chosen stages (default all) of the chosen layers (default all).
        A cross-attending model's cross-attention layers (all of them) go to `trace.cross`, whose keys are
        the context's positions, labelled by `context_labels`."""
        if layers is not None:
            count = self.attn_layers.num_attn_layers
            bad = [layer for layer in layers if not 0 <= layer < count]
            if bad:
                raise ValueError(f"layer(s) {bad} out of range: the model has attention layers 0..{count - 1}")
        with recording(self.attn_layers, stages, layers) as kept, \
                recording(self.attn_layers, stages, cross=True) as kept_cross:
            logits = self(tokens, mask=mask, attn_mask=attn_mask, context=context, context_mask=context_mask)
        b, n = tokens.shape[0], tokens.shape[1] + self.num_memory_tokens
        layer_mask, layer_attn_mask = self.layer_masks(mask, attn_mask)
        visible = self.attn_layers.visible_mask(b, n, layer_mask, layer_attn_mask, tokens.device)
        visible = torch.ones(b, n, n, dtype=torch.bool, device=tokens.device) if visible is None \
            else visible[:, 0].expand(b, n, n).contiguous()       # padding alone gives [b, 1, 1, j]
        extras = self.attn_layers.key_extras
        cross = None if context is None else build_trace(
            kept_cross, with_extra_keys(context_visible(n, context, context_mask), extras), tokens, self.config,
            labels, is_cross=True, key_labels=context_labels, key_extras=extras)
        return logits, build_trace(kept, with_extra_keys(visible, extras), tokens, self.config, labels, cross=cross,
                                   key_extras=extras, mask=layer_mask, attn_mask=layer_attn_mask)

    def generate(self, prompt: Tensor, steps: int, temperature: float = 0.0, top_k: int | None = None,
                 eos: int | None = None, seed: int | None = None, cache: bool = True, prune: Prune | None = None,
                 stages: Sequence[str] | None = None) -> Generation:
        """Generate `steps` tokens after `prompt` step by step, recording each new query's attention row
        (`xattn.generate.generate` says how)."""
        return generate(self, prompt, steps, temperature=temperature, top_k=top_k, eos=eos, seed=seed, cache=cache,
                        prune=prune, stages=stages)

    def with_config(self, **layer_changes: Any) -> TransformerWrapper:
        """A new model with the same weights under changed attention-layer options
        (e.g. `residual_attn=False` to see what RealFormer contributes). `self` is untouched."""
        twin = build(self.config.replace(**layer_changes)).to(self.device)
        twin.load_state_dict(self.state_dict())
        return twin.train(self.training)

    @property
    def device(self) -> torch.device:
        return self.token_emb.weight.device


def with_extra_keys(visible: Tensor, extras: list[str]) -> Tensor:
    """visible [b, i, j] with the attention layers' extra key columns in front: visible to every query."""
    return F.pad(visible, (len(extras), 0), value=True) if extras else visible


def build(config: ModelConfig | dict[str, Any]) -> TransformerWrapper:
    """A fresh model from a `ModelConfig` or its JSON form (`ModelConfig.to_dict()`)."""
    config = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
    return TransformerWrapper(num_tokens=config.num_tokens, max_seq_len=config.max_seq_len,
                              attn_layers=AttentionLayers.from_config(config.attn_layers),
                              use_abs_pos_emb=config.use_abs_pos_emb, emb_dropout=config.emb_dropout,
                              tie_embedding=config.tie_embedding, l2norm_embed=config.l2norm_embed,
                              emb_dim=config.emb_dim, post_emb_norm=config.post_emb_norm,
                              num_memory_tokens=config.num_memory_tokens, return_only_embed=config.return_only_embed)


def load_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Strictly load `state`, naming every missing, unexpected or wrongly shaped tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    not_float = [k for k in expected if k in state and not state[k].is_floating_point()]
    problems = [(missing, "missing"), (unexpected, "unexpected"), (wrong, "wrong shape"),
                (not_float, "not floating point")]
    message = "; ".join(f"{what}: {', '.join(items[:6])}{' …' if len(items) > 6 else ''}"
                        for items, what in problems if items)
    if message:
        raise ValueError(f"the checkpoint does not fit the model — {message}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
