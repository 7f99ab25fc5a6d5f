"""Generation: greedy equals x-transformers, the KV cache equals recomputing, pruning hides what it drops."""
from __future__ import annotations

import pytest
import torch

import xattn
from xattn.cache import KVCache

from conftest import reference_model, tiny_config

x_transformers = pytest.importorskip("x_transformers")


def reference(**options) -> torch.nn.Module:
    """An x-transformers decoder (3 layers, 4 heads, vocabulary 23, 16 positions), parameters moved off init."""
    return reference_model(tiny_config("Decoder", **options))


def model_with(**options) -> xattn.TransformerWrapper:
    torch.manual_seed(0)
    return xattn.from_x_transformers(reference(**options))


PROMPT = torch.randint(2, 23, (2, 5), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("options", [{}, {"rotary_pos_emb": True}, {"residual_attn": True, "attn_selective": True}],
                         ids=["plain", "rotary", "residual-selective"])
def test_greedy_equals_x_transformers(options):
    torch.manual_seed(0)
    ref = reference(**options)
    ours = xattn.from_x_transformers(ref)
    theirs = x_transformers.AutoregressiveWrapper(ref).generate(PROMPT, 10, temperature=0.0)
    generation = ours.generate(PROMPT, 10)
    assert generation.tokens.shape == (2, 15)
    assert torch.equal(generation.tokens[:, :5], PROMPT)
    assert torch.equal(generation.new_tokens, theirs)
    # each chosen token's probability is the model's softmax at that position, read off a plain forward
    full = ours(generation.tokens[:, :-1]).softmax(-1)[:, 4:]
    torch.testing.assert_close(generation.probs, full.gather(-1, theirs[..., None])[..., 0])
    torch.testing.assert_close(generation.top_probs[..., 0], full.max(-1).values)


CACHE_CASES = [
    {}, {"rotary_pos_emb": True}, {"alibi_pos_bias": True, "attn_selective": True},
    {"residual_attn": True, "attn_selective": True}, {"rel_pos_bias": True, "residual_attn": True},
    {"attn_num_mem_kv": 2, "attn_add_zero_kv": True, "attn_selective": True},
    {"attn_head_learned_sink": True, "attn_pre_talking_heads": True, "attn_post_talking_heads": True},
    {"attn_kv_heads": 2, "add_value_residual": True, "attn_qk_norm": True},
    {"attn_use_cope": True, "attn_max_attend_past": 3, "attn_sparse_topk": 3},
]


def assert_same_run(a: xattn.Generation, b: xattn.Generation) -> None:
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.probs, b.probs)
    torch.testing.assert_close(a.top_probs, b.top_probs)
    assert [set(r) for r in a.rows] == [set(r) for r in b.rows]
    for step_a, step_b in zip(a.rows, b.rows, strict=True):
        for stage in step_a:
            torch.testing.assert_close(step_a[stage], step_b[stage], msg=stage)


@pytest.mark.parametrize("options", CACHE_CASES, ids=["-".join(o) or "plain" for o in CACHE_CASES])
def test_cache_equals_recompute(options):
    model = model_with(**options)
    cached, recomputed = model.generate(PROMPT, 9), model.generate(PROMPT, 9, cache=False)
    assert cached.cached and not recomputed.cached
    assert_same_run(cached, recomputed)
    assert cached.rows[3]["attn"].shape == (3, 2, 4, 1, len(model.attn_layers.key_extras) + 8)
    # the step's rows are the last query rows of a full trace of the tokens so far
    _, trace = model.run_with_trace(cached.tokens[:, :8])
    for stage, row in cached.rows[3].items():
        torch.testing.assert_close(row, trace[stage][..., -1:, :], msg=stage)


def test_hooks_fire_in_cached_steps():
    """A hook that silences head 1 of layer 1 changes generation alike with and without the cache."""
    model = model_with(residual_attn=True, attn_selective=True)

    def silence(attn, hook):
        attn = attn.clone()
        attn[:, 1] = 0
        return attn

    seen = []
    hooks = [("layers.1.attn.hook_attn", silence), ("layers.0.attn.hook_scores", lambda t, h: seen.append(t.shape))]
    with model.hooks(hooks):
        cached = model.generate(PROMPT, 6)
        recomputed = model.generate(PROMPT, 6, cache=False)
    assert_same_run(cached, recomputed)
    assert (cached.rows[2]["attn"][1, :, 1] == 0).all()
    assert (model.generate(PROMPT, 6).rows[2]["attn"][1, :, 1] != 0).any()      # hooks are gone after the block
    assert seen[:3] == [(2, 4, 5, 5), (2, 4, 1, 6), (2, 4, 1, 7)]      # the prompt, then one query a step


def test_uncached_options_fall_back_and_say_so():
    model = model_with(rotary_pos_emb=True, rotary_xpos=True)
    generation = model.generate(PROMPT, 4)
    assert not generation.cached and "rotary_xpos" in generation.note
    assert_same_run(generation, model.generate(PROMPT, 4, cache=False))
    with pytest.raises(ValueError, match="rotary_xpos"):
        model(PROMPT, cache=KVCache.empty(3))


def test_sampling_is_reproducible_and_top_1_is_greedy():
    model = model_with(rotary_pos_emb=True)
    a, b = (model.generate(PROMPT, 10, temperature=1.5, seed=4) for _ in range(2))
    assert torch.equal(a.tokens, b.tokens)
    others = [model.generate(PROMPT, 10, temperature=1.5, seed=s).tokens for s in range(5, 8)]
    assert any(not torch.equal(a.tokens, t) for t in others)
    assert torch.equal(model.generate(PROMPT, 10, temperature=2.0, top_k=1, seed=1).tokens,
                       model.generate(PROMPT, 10).tokens)


def test_eos_finishes_a_row_and_pads_with_eos():
    model = model_with()
    free = model.generate(PROMPT[:1], 8)
    eos = int(free.new_tokens[0, 2])
    first = int((free.new_tokens[0] == eos).nonzero()[0])
    generation = model.generate(PROMPT[:1], 8, eos=eos)
    assert generation.steps == first + 1                       # one row: stops when it finishes
    assert torch.equal(generation.new_tokens[0], free.new_tokens[0, :first + 1])
    batch = model.generate(PROMPT, 8, eos=eos)
    assert torch.equal(batch.new_tokens[0, :first + 1], free.new_tokens[0, :first + 1])
    assert (batch.new_tokens[0, first:] == eos).all()
    assert batch.finished[0].tolist() == [False] * (first + 1) + [True] * (batch.steps - first - 1)


# pruning

def test_threshold_pruning_drops_exactly_the_keys_whose_f_passed_it():
    model = model_with(residual_attn=True, attn_selective=True)
    prompt = torch.randint(2, 23, (2, 6), generator=torch.Generator().manual_seed(5))
    threshold = 0.5
    generation = model.generate(prompt, 9, prune=xattn.Prune(threshold=threshold))
    total = sum(int(d.sum()) for d in generation.dropped)
    assert total > 0, "the threshold should drop something on this model"
    for step, dropped in enumerate(generation.dropped):
        assert not dropped[..., 0].any() and not dropped[..., -1].any()     # never BOS, never the query itself
        if step:
            assert (dropped[..., :-1] >= generation.dropped[step - 1]).all()  # once dropped, always dropped
        # the F row this query sees (its `selection` stage) is what pruning compared with the threshold
        # pruning compared the F row this query sees (its `selection` stage) with the threshold; a dropped key's F
        # stops growing (it is masked) but stays above it
        f = generation.rows[step]["selection"][:, :, 0, 0]                  # [layers, b, keys]
        expected = f > threshold
        expected[..., 0] = expected[..., -2:] = False       # BOS; the newest cached token and the query itself
        assert torch.equal(dropped, expected)
        attn = generation.rows[step]["attn"][:, :, :, 0]                    # [layers, b, heads, keys]
        assert (attn[dropped[:, :, None].expand_as(attn)] == 0).all()
    assert (generation.kv_held < generation.kv_unpruned).any()


def test_budget_keeps_a_fixed_memory():
    model = model_with(attn_selective=True)
    generation = model.generate(PROMPT, 10, prune=xattn.Prune(budget=4))
    for step, dropped in enumerate(generation.dropped):
        keys = PROMPT.shape[1] + step
        held = (~dropped).sum(-1)                                   # [layers, b]
        assert (held == min(keys, 5)).all()                         # 4 cached keys + the query's own
        assert not dropped[..., 0].any()
    assert (generation.kv_held[:, -1] == 3 * 5).all() and generation.kv_unpruned[-1] == 3 * 14


def test_pruned_keys_do_not_influence_later_steps():
    """Replace the keys and values of pruned positions in the cache by noise: the next step is unchanged."""
    model = model_with(residual_attn=True, attn_selective=True).eval()
    prune = xattn.Prune(budget=4)
    tokens = torch.randint(2, 23, (2, 10), generator=torch.Generator().manual_seed(9))

    def step_after_noise(noise: bool) -> torch.Tensor:
        cache = KVCache.empty(3)
        with torch.no_grad():
            for position in range(9):
                model(tokens[:, position:position + 1], cache=cache)
                prune.apply(cache)
            if noise:
                for layer in cache.layers:
                    hidden = layer.dropped[:, None, :, None].expand_as(layer.keys)
                    layer.keys = layer.keys.masked_fill(hidden, 7.0)
                    layer.values = layer.values.masked_scatter(hidden, torch.randn(int(hidden.sum())) * 100)
            assert all(layer.dropped.any() for layer in cache.layers)
            return model(tokens[:, 9:], cache=cache)

    torch.testing.assert_close(step_after_noise(True), step_after_noise(False), rtol=0, atol=1e-6)


def test_pruning_without_selective_attention_uses_head_0_as_a_control():
    model = model_with()
    generation = model.generate(PROMPT, 6, prune=xattn.Prune(budget=3))
    assert "no attn_selective" in generation.note and "control" in generation.note
    assert (generation.kv_held[:, -1] == 3 * 4).all()
    assert "selection" not in generation.rows[0]          # nothing is subtracted: no selection stage


def test_unpruned_rows_match_with_and_without_token_by_token_prompt():
    """A threshold no F reaches prunes nothing: the run equals the plain cached run."""
    model = model_with(residual_attn=True, attn_selective=True)
    assert_same_run(model.generate(PROMPT, 5, prune=xattn.Prune(threshold=1e9)), model.generate(PROMPT, 5))


@pytest.mark.parametrize("kwargs,match", [
    ({"steps": 12}, r"steps=12 would pass max_seq_len \(16\).*11 fit"),
    ({"steps": -1}, "steps must be"),
    ({"temperature": -0.5}, "temperature must be"),
    ({"top_k": 0}, "top_k must be"),
    ({"eos": 99}, "eos must be"),
    ({"prune": xattn.Prune(budget=3), "cache": False}, "prune needs the KV cache"),
    ({"prompt": torch.zeros(1, 0, dtype=torch.long)}, "prompt is empty"),
    ({"prompt": torch.zeros(1, 3)}, "prompt must be an integer"),
])
def test_refusals(kwargs, match):
    model = model_with(attn_selective=True)
    call = {"prompt": PROMPT, "steps": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        model.generate(call.pop("prompt"), call.pop("steps"), **call)


def test_refusals_of_models_and_policies():
    torch.manual_seed(0)
    encoder = xattn.build(tiny_config("Encoder"))
    with pytest.raises(ValueError, match="causal"):
        encoder.generate(PROMPT, 2)
    memory = xattn.build({**tiny_config("Decoder", attn_selective=True), "num_memory_tokens": 2})
    with pytest.raises(ValueError, match="num_memory_tokens"):
        memory.generate(PROMPT, 2, prune=xattn.Prune(threshold=1.0))
    for bad, match in [({}, "exactly one"), ({"threshold": 1.0, "budget": 4}, "exactly one"),
                       ({"budget": 1}, "budget must be"), ({"threshold": -1.0}, "threshold must be")]:
        with pytest.raises(ValueError, match=match):
            xattn.Prune(**bad)
