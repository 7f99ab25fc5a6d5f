"""xattn.stats: every head statistic against loops over single, unpadded traces; Ray against local; flat memory;
importance against finite differences; bad input."""
from __future__ import annotations

import math
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import xattn
from xattn.stats import STATS, TaskData, TextData, TokenBatches, TokenTable, head_stats, run_local
from xattn.tasks import get_task
from xattn.tokenizer import CharTokenizer

TOK = CharTokenizer("abcd")
LINES = ["abcabcda", "dd", "abadcab", "cabbadc", "a", "dcbadcbaab"]    # lengths differ: batches are padded


@pytest.fixture(scope="module")
def model() -> xattn.TransformerWrapper:
    """Selective, one memory token and one memory key/value (extra rows and columns), in float64 for finite
    differences; q and k scaled up so that selective attention prunes some keys."""
    torch.manual_seed(0)
    m = xattn.TransformerWrapper(num_tokens=TOK.vocab_size, max_seq_len=12, num_memory_tokens=1,
                                 attn_layers=xattn.Decoder(dim=16, depth=2, heads=2, attn_dim_head=8,
                                                           attn_selective=True, attn_num_mem_kv=1))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "to_q" in name or "to_k" in name:
                p.mul_(4)
    return m.double().eval()


def direct(model: xattn.TransformerWrapper, texts: list[str]) -> tuple[dict[str, list], dict[str, list]]:
    """Per statistic, [layer][head] lists of per-query values over all sequences, and per-sequence means,
    by loops over one unpadded trace per text."""
    layers, heads = 2, 2
    values = {s: [[[] for _ in range(heads)] for _ in range(layers)] for s in STATS}
    per_seq = {s: [[[] for _ in range(heads)] for _ in range(layers)] for s in STATS}
    for text in texts:
        _, trace = model.run_with_trace(torch.tensor([TOK.encode(text)]))
        m, e = trace.memory_tokens, len(trace.key_extras)
        attn, penalty, n = trace["attn"], trace["selection"], len(text) + 1
        for layer in range(layers):
            for head in range(heads):
                seq = {s: [] for s in STATS}
                for t in range(1, n):
                    row = attn[layer, 0, head, m + t].tolist()
                    tok = row[e + m:]
                    f = [float(penalty[layer, 0, min(head, penalty.shape[2] - 1), m + t, e + m + u])
                         for u in range(t + 1)]
                    seq["entropy"].append(-sum(a * math.log(a) for a in row if a > 0))
                    seq["max_weight"].append(max(row))
                    seq["bos"].append(tok[0])
                    seq["distance"].append(sum(tok[u] * (t - u) for u in range(n)))
                    seq["previous"].append(tok[t - 1])
                    seq["diagonal"].append(tok[t])
                    seq["selection"].append(sum(f) / len(f))
                    seq["pruned"].append(sum(x >= math.log(100) for x in f) / len(f))
                for s, xs in seq.items():
                    values[s][layer][head] += xs
                    if xs:
                        per_seq[s][layer][head].append(sum(xs) / len(xs))
                    else:
                        per_seq[s][layer][head].append(-math.inf)
    return values, per_seq


def test_every_statistic_matches_loops_over_single_traces(model):
    texts = LINES
    stats = head_stats(model, texts, tokenizer=TOK, batch_size=4, progress=False)
    values, per_seq = direct(model, texts)
    assert stats.sequences == len(texts)
    assert stats.counts["bos"] == sum(len(t) for t in texts)              # every query after BOS
    for s in ("entropy", "max_weight", "bos", "distance", "previous", "diagonal", "selection", "pruned"):
        expected = torch.tensor([[sum(v) / len(v) for v in row] for row in values[s]], dtype=torch.float64)
        torch.testing.assert_close(stats.values[s], expected, atol=1e-6, rtol=0, msg=s)
        best = torch.tensor([[max(range(len(texts)), key=lambda i: v[i]) for v in row] for row in per_seq[s]])
        if s not in ("selection", "pruned"):          # F is the same for every head, so ties decide those
            assert stats.examples[s].equal(best), s
    assert 0 < float(stats.values["pruned"].max()) < 1    # the test has teeth: some keys pruned, not all


def test_target_attention_matches_the_task_pairs():
    task = get_task("variables")
    torch.manual_seed(1)
    m = xattn.TransformerWrapper(num_tokens=task.tokenizer.vocab_size, max_seq_len=task.max_len + 1,
                                 attn_layers=xattn.Decoder(dim=16, depth=2, heads=2, attn_dim_head=8)).eval()
    data = TaskData(task, n=10, seed=3)
    stats = head_stats(m, data, stats=["target"], batch_size=4, progress=False)
    sums, count = torch.zeros(2, 2, dtype=torch.float64), 0
    for i in range(10):
        sample = data.sample(i)
        _, trace = m.run_with_trace(torch.tensor([task.tokenizer.encode(sample.text)[:-1]]))
        for q, k in task.attention_targets(sample):
            sums += trace["attn"][:, 0, :, q, k].double()
            count += 1
    assert stats.counts["target"] == count == 10
    torch.testing.assert_close(stats.values["target"], sums / count, atol=1e-6, rtol=0)
    assert data.sample(4) == data.sample(4) != data.sample(5)


def test_importance_matches_finite_differences(model):
    """|∂loss_s/∂ξ| by central differences: head h's pattern scaled by 1 ± ε through a hook, loss_s the mean
    next-token cross-entropy of sequence s computed by hand. ε = 3e-3: softmax runs in float32 (as x-transformers)
    even in a float64 model, so a smaller step drowns in rounding."""
    texts, eps = LINES[:4], 3e-3
    stats = head_stats(model, texts, stats=["importance"], tokenizer=TOK, batch_size=3, progress=False)

    def loss(ids: list[int], layer: int, head: int, scale: float) -> float:
        def gate(attn, hook):
            attn = attn.clone()
            attn[:, head] *= scale
            return attn
        with torch.no_grad(), model.hooks([(f"layers.{layer}.attn.hook_attn", gate)]):
            logp = F.log_softmax(model(torch.tensor([ids]))[0], dim=-1)
        return -sum(float(logp[t, ids[t + 1]]) for t in range(len(ids) - 1)) / (len(ids) - 1)

    expected = torch.zeros(2, 2, dtype=torch.float64)
    for text in texts:
        ids = TOK.encode(text)
        for layer in range(2):
            for head in range(2):
                grad = (loss(ids, layer, head, 1 + eps) - loss(ids, layer, head, 1 - eps)) / (2 * eps)
                expected[layer, head] += abs(grad) / len(texts)
    assert stats.counts["importance"] == len(texts)
    assert float(expected.min()) > 1e-4
    torch.testing.assert_close(stats.values["importance"], expected, atol=1e-5, rtol=1e-4)


def test_ray_equals_local():
    """One local Ray runtime, started and shut down by head_stats itself."""
    import ray  # the test extra installs it: no skip
    torch.manual_seed(0)
    m = xattn.TransformerWrapper(num_tokens=TOK.vocab_size, max_seq_len=12, num_memory_tokens=1,
                                 attn_layers=xattn.Decoder(dim=16, depth=2, heads=2, attn_dim_head=8,
                                                           attn_selective=True)).eval()
    lines = LINES + ["ab?cd", "x" * 3]
    local = head_stats(m, lines, tokenizer=TOK, batch_size=3, progress=False)
    remote = head_stats(m, lines, tokenizer=TOK, batch_size=3, progress=False, backend="ray", workers=2)
    assert not ray.is_initialized()
    assert remote.counts == local.counts and remote.sequences == local.sequences == len(lines)
    assert remote.issues == local.issues == {"skipped_characters": 4, "empty_lines": 1}
    for s, v in local.values.items():
        torch.testing.assert_close(remote.values[s], v, atol=1e-6, rtol=0, msg=s)
        assert remote.examples[s].equal(local.examples[s]), s


def test_local_engine_keeps_only_running_sums(model):
    """16 times the batches, the same accumulator: nothing is kept per batch or per sequence."""
    stats = ["entropy", "bos", "pruned", "importance"]
    small = run_local(model, TextData(LINES[:4], TOK, 12), stats, 4, progress=False)
    large = run_local(model, TextData(LINES[:4] * 16, TOK, 12), stats, 4, progress=False)
    assert large.sequences == 16 * small.sequences
    assert large.nbytes() == small.nbytes()
    assert abs(len(pickle.dumps(large)) - len(pickle.dumps(small))) < 64


def test_batches_of_tokens_equal_texts_and_progress_is_reported(model):
    calls = []
    texts = head_stats(model, LINES, tokenizer=TOK, batch_size=2, progress=lambda done, total: calls.append(
        (done, total)))
    assert calls == [(2, 6), (4, 6), (6, 6)]
    batches = []
    for start in (0, 3):
        rows = [TOK.encode(t) for t in LINES[start:start + 3]]
        n = max(map(len, rows))
        batches.append((torch.tensor([r + [TOK.pad_id] * (n - len(r)) for r in rows]),
                        torch.tensor([[i < len(r) for i in range(n)] for r in rows])))
    streamed = head_stats(model, batches, progress=False)
    table = head_stats(model, TokenBatches(batches).collect(model), batch_size=4, progress=False)   # Ray's form
    for s, v in texts.values.items():
        torch.testing.assert_close(streamed.values[s], v, atol=1e-9, rtol=0, msg=s)
        torch.testing.assert_close(table.values[s], v, atol=1e-9, rtol=0, msg=s)
    frame = texts.to_frame()
    assert list(frame.columns) == ["layer", "head", "stat", "value"] and len(frame) == len(texts.values) * 4
    row = frame[(frame["stat"] == "bos") & (frame["layer"] == 1) & (frame["head"] == 0)]
    assert float(row["value"].iloc[0]) == pytest.approx(float(texts.values["bos"][1, 0]))


def test_bad_input_is_refused_or_counted(model, monkeypatch):
    with pytest.raises(ValueError, match="empty"):
        head_stats(model, [], progress=False)
    with pytest.raises(ValueError, match="empty"):
        head_stats(model, TextData([], TOK), progress=False)
    with pytest.raises(ValueError, match="tokenizer"):
        head_stats(model, ["abc"], progress=False)
    with pytest.raises(ValueError, match="no query|nothing to average"):
        head_stats(model, ["", "zz"], tokenizer=TOK, progress=False)
    with pytest.raises(ValueError, match="unknown statistic"):
        head_stats(model, ["abc"], stats=["attention"], tokenizer=TOK, progress=False)
    with pytest.raises(ValueError, match="target needs task data"):
        head_stats(model, ["abc"], stats=["target"], tokenizer=TOK, progress=False)
    with pytest.raises(ValueError, match="backend"):
        head_stats(model, ["abc"], tokenizer=TOK, backend="spark", progress=False)
    plain = xattn.TransformerWrapper(num_tokens=TOK.vocab_size, max_seq_len=12,
                                     attn_layers=xattn.Decoder(dim=16, depth=1, heads=2, attn_dim_head=8))
    with pytest.raises(ValueError, match="selective model"):
        head_stats(plain, ["abc"], stats=["pruned"], tokenizer=TOK, progress=False)
    assert "pruned" not in head_stats(plain, ["abc"], tokenizer=TOK, progress=False).values
    with pytest.raises(ValueError, match="takes at most"):
        head_stats(plain, TaskData("variables", 4), progress=False)

    # 3 characters outside the alphabet skipped, one line cut to 11 characters + BOS: as if cleaned by hand
    counted = head_stats(model, ["ab-c", "a?b!", "abcd" * 5], tokenizer=TOK, progress=False)
    cleaned = head_stats(model, ["abc", "ab", ("abcd" * 5)[:11]], tokenizer=TOK, progress=False)
    assert counted.issues == {"skipped_characters": 3, "cut_lines": 1}
    assert counted.notes == ["3 character(s) outside the model's alphabet were skipped",
                             "1 line(s) longer than the model takes were cut"]
    for s, v in cleaned.values.items():
        torch.testing.assert_close(counted.values[s], v, atol=1e-9, rtol=0)

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r'pip install "xattn\[ray\]"'):
        head_stats(model, ["abc"], tokenizer=TOK, backend="ray", progress=False)


@pytest.mark.parametrize("batch, message", [
    (torch.ones(2, 5), r"batch 1: tokens must be an integer tensor \[batch, tokens\]; got \(2, 5\) torch.float32"),
    (torch.ones(5, dtype=torch.long), r"batch 1: tokens must be .*; got \(5,\) torch.int64"),
    ((torch.ones(2, 5, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool)),
     r"batch 1: the mask must be None or a bool tensor of the tokens' shape \(2, 5\); got \(2, 4\) torch.bool"),
    ((torch.ones(2, 5, dtype=torch.long), torch.ones(2, 5)), r"got \(2, 5\) torch.float32"),
    ((torch.ones(1, 13, dtype=torch.long), None), r"batch 1: sequences of 13 tokens; this model takes at most 12"),
    ((torch.tensor([[1, 99]]), None), r"batch 1: token ids run from 1 to 99; this model knows 0 to \d+"),
])
def test_bad_token_batches_are_refused_naming_the_batch(model, batch, message):
    good = (torch.tensor([TOK.encode("abc")]), None)
    batch = batch if isinstance(batch, tuple) else (batch, None)
    with pytest.raises(ValueError, match=message):
        head_stats(model, [good, batch], progress=False)
    with pytest.raises(ValueError, match=message.replace("batch 1", "the token table")):
        tokens, mask = batch
        head_stats(model, TokenTable(tokens, torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask),
                   progress=False)


def test_token_batches_must_be_pairs(model):
    with pytest.raises(ValueError, match="batch 0: expected a .tokens, mask. pair; got Tensor"):
        head_stats(model, [torch.ones(2, 5, dtype=torch.long)], progress=False)
    with pytest.raises(ValueError, match="an iterable of .tokens"):
        head_stats(model, torch.ones(2, 5, dtype=torch.long), progress=False)


def test_import_xattn_imports_neither_ray_nor_pandas():
    code = "import sys, xattn; print(sorted({'ray', 'pandas'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_figure_draws_every_statistic_of_every_model(model):
    from xattn.viz import head_stats_figure
    plain = xattn.TransformerWrapper(num_tokens=TOK.vocab_size, max_seq_len=12,
                                     attn_layers=xattn.Decoder(dim=16, depth=2, heads=2, attn_dim_head=8))
    results = {"selective": head_stats(model, LINES, tokenizer=TOK, progress=False),
               "plain": head_stats(plain, LINES, tokenizer=TOK, progress=False)}
    fig = head_stats_figure(results)
    drawn = [(stat, name) for stat in STATS for name, h in results.items() if stat in h.values]
    assert len(fig.data) == len(drawn) == 9 + 7      # texts: no target; plain: no selection, no pruned
    for trace, (stat, name) in zip(fig.data, drawn, strict=True):
        assert trace.z.tolist() == results[name].values[stat].tolist()
        assert trace.customdata.tolist() == results[name].examples[stat].tolist()
    assert sum(a.text == "does not apply" for a in fig.layout.annotations) == 2
    with pytest.raises(ValueError, match="not in these results"):
        head_stats_figure(results, names=["target"])
