"""Hostile input, untrusted checkpoints, odd numerics, concurrent users and the network, against a running
server on a loopback port: every bad request gets a sentence, nothing runs that should not, no session sees
another's numbers, and the server answers the next request."""
from __future__ import annotations

import json
import pickle
import statistics
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import xattn  # noqa: E402
from app import limits, models, views  # noqa: E402
from app import main as app_main  # noqa: E402
from xattn import viz  # noqa: E402
from xattn.stages import MASKED_STAGES  # noqa: E402

from conftest import form_options  # noqa: E402
from test_app import array, exact, same, traces  # noqa: E402

# MiB of a full trace of the largest fresh model (12 layers × 16 heads, 2048 tokens, float32): grows with the stages.
LARGEST_TRACE_MIB = len(xattn.STAGES) * 12 * 16 * 2048 ** 2 * 4 // 2 ** 20


def answers(client: Client, default: models.Loaded) -> None:
    """The server still serves a real request after a bad one."""
    card, example, *_ = client.predict(default.name, api_name="/model_info")
    assert default.name in card and example == default.example


def refused(client: Client, default: models.Loaded, message: str, *args: Any, api_name: str) -> None:
    """`args` to `api_name` are refused with `message` (any case), and the server keeps answering."""
    with pytest.raises(AppError, match=f"(?i){message}"):
        client.predict(*args, api_name=api_name)
    answers(client, default)


def fresh_args(depth: int = 1, heads: int = 2, dim: int = 16, residual: bool = True, selective: bool = False,
               causal: bool = True, position: str = "absolute", seed: int = 0, max_len: int = 32) -> tuple:
    return depth, heads, dim, form_options(residual, selective, causal, position), seed, max_len


# Text


@pytest.mark.parametrize("text, message", [
    ("", "The text is empty"),
    (" \t\n  ", "The text is empty"),
    ("a=1;\x00\x07\x1b", r"cannot read this text: 3 character\(s\) are not in its alphabet: '\\x00\\x07\\x1b'"),
    ("a=1;€ü" + "".join(chr(0x4E00 + i) for i in range(40)), r"42 character\(s\).*…"),
    ("a" * (limits.MAX_TEXT_CHARS + 1), "characters; the limit here is 100,000"),
])
def test_bad_text_gets_a_sentence(client: Client, default: models.Loaded, text: str, message: str) -> None:
    refused(client, default, message, default.name, text, "attn", 0, 0, 0, api_name="/explore")


def raw_call(server: str, api: str, body: bytes) -> tuple[int, str]:
    """POST raw JSON bytes to /gradio_api/call/<api> (what gradio_client cannot send) and read the answer."""
    base = server.rstrip("/") + f"/gradio_api/call/{api}"
    posted = httpx.post(base, content=body, headers={"content-type": "application/json"}, timeout=30)
    if posted.status_code != 200:
        return posted.status_code, posted.text
    with httpx.stream("GET", f"{base}/{posted.json()['event_id']}", timeout=60) as stream:
        return 200, stream.read().decode()


def test_text_that_is_not_valid_utf8(server: str, client: Client, default: models.Loaded) -> None:
    lone_surrogate = b'{"data": ["%s", "a=\\ud800", "attn", 0, 0, 0, 0, false]}' % default.name.encode()
    status, answer = raw_call(server, "explore", lone_surrogate)
    assert status == 200 and "event: error" in answer and "cannot read this text" in answer, answer
    status, answer = raw_call(server, "explore", b'{"data": ["%s", "a=\xff\xfe", "attn", 0, 0, 0, 0, false]}'
                              % default.name.encode())
    assert status == 400 and "error parsing the body" in answer
    answers(client, default)


def test_longest_text_is_cut_with_a_warning(client: Client, default: models.Loaded) -> None:
    text = (default.example * (limits.MAX_TEXT_CHARS // len(default.example) + 1))[: limits.MAX_TEXT_CHARS]
    _, heatmap, _, _, info = client.predict(default.name, text, "attn", 0, 0, 0, api_name="/explore")
    assert f"The text is {limits.MAX_TEXT_CHARS + 1} tokens long" in info
    assert f"only the first {default.max_seq_len} are shown" in info
    assert exact(traces(heatmap)[0]).shape == (default.max_seq_len, default.max_seq_len)


@pytest.mark.parametrize("layer, head, query, message", [
    (0, 0, -1, "Value -1 is less than minimum value 0"),
    (0, 0, 4000, "Query 4000 does not exist"),
    (0.5, 0, 0, "Layer 0.5 does not exist"),
])
def test_bad_picks_get_a_sentence(client: Client, default: models.Loaded, layer: float, head: float,
                                  query: float, message: str) -> None:
    refused(client, default, message, default.name, default.example, "attn", layer, head, query,
            api_name="/explore")


@pytest.mark.parametrize("picks", [b"NaN, 0, 0", b"0, Infinity, 0", b"0, 0, -Infinity", b'0, "one", 0'])
def test_numbers_json_cannot_carry_are_refused(server: str, client: Client, default: models.Loaded,
                                              picks: bytes) -> None:
    status, answer = raw_call(server, "explore", b'{"data": ["%s", "a=1;", "attn", %s, 0, false]}'
                              % (default.name.encode(), picks))
    sentences = ("does not exist", "is greater than maximum", "is less than minimum", "Expected a `float`")
    assert status in (400, 422) or ("event: error" in answer and any(s in answer for s in sentences)), answer
    answers(client, default)


# Configs from the form or the API

# A trace of 12 layers × 16 heads × 2048² float32 cells for every stage.


@pytest.mark.parametrize("changes, message", [
    ({"depth": 0}, "depth must be a whole number from 1 to 12; got 0"),
    ({"heads": -2}, "heads must be a whole number from 1 to 16; got -2"),
    ({"dim": -64}, "dim must be a whole number from 8 to 512"),
    ({"max_len": 0}, "max_seq_len must be a whole number from 8 to 2,048"),
    ({"dim": 30, "heads": 4}, r"dim \(30\) must be a multiple of heads \(4\)"),
    ({"depth": 12, "heads": 16, "dim": 512, "max_len": 2048},
     f"a trace of 2048 tokens would take {LARGEST_TRACE_MIB:,} MiB; the limit here is 2,048 MiB"),
    ({"selective": True, "causal": False}, "needs a causal model"),
    ({"seed": -1}, "seed must be a whole number from 0"),
    ({"position": "sinusoidal"}, "'sinusoidal' .* is not in the list of choices"),
])
def test_bad_config_is_refused_and_builds_nothing(client: Client, default: models.Loaded, changes: dict,
                                                  message: str) -> None:
    refused(client, default, message, *fresh_args(**changes), api_name="/fresh_model")
    dropdown, *_ = client.predict(*fresh_args(), api_name="/fresh_model")
    assert dropdown["choices"][-1][0] == dropdown["value"]          # the session holds exactly the good model
    assert len(dropdown["choices"]) == len(models.bundled_names()) + 1


def test_fresh_model_size_is_checked_before_it_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(config: dict) -> None:
        raise AssertionError("xattn.build ran for a model over the budget")
    monkeypatch.setattr(xattn, "build", never)
    with pytest.raises(xattn.limits.TooLarge, match=f"{LARGEST_TRACE_MIB:,} MiB"):
        models.fresh(*fresh_args(depth=12, heads=16, dim=512, max_len=2048))


def test_sessions_keep_a_bounded_number_of_models(client: Client) -> None:
    for seed in range(limits.MAX_SESSION_MODELS + 1):
        dropdown, *_ = client.predict(*fresh_args(seed=seed), api_name="/fresh_model")
    own = [name for name, _ in dropdown["choices"] if name not in models.bundled_names()]
    assert len(own) == limits.MAX_SESSION_MODELS and "seed 0" not in " ".join(own)
    with pytest.raises(AppError, match="no model called"):
        client.predict(own[0].replace("seed 1", "seed 0"), "abc", "attn", 0, 0, 0, api_name="/explore")


# Untrusted checkpoints


class CreatesAFile:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


X_CONFIG = {"num_tokens": 12, "max_seq_len": 16,
            "attn_layers": {"kind": "Decoder", "dim": 16, "depth": 1, "heads": 2, "attn_dim_head": 8}}


def upload(client: Client, weights: Path, config: Path | None = None, alphabet: str = "") -> Any:
    return client.predict(handle_file(str(weights)), handle_file(str(config)) if config else None, alphabet,
                          api_name="/upload_model")


def test_pickle_upload_is_refused_and_its_code_never_runs(client: Client, default: models.Loaded,
                                                          tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "config.json").write_text(json.dumps(X_CONFIG))
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"weight": CreatesAFile(str(marker))}, f)
    torch.save({"weight": CreatesAFile(str(marker))}, tmp_path / "evil.pth")
    for name in ("evil.pt", "evil.pth"):
        with pytest.raises(AppError, match=f"(?i){name} is not a readable checkpoint.*never unpickled"):
            upload(client, tmp_path / name, tmp_path / "config.json")
        assert not marker.exists()
    answers(client, default)


def test_broken_checkpoints_are_refused_naming_the_problem(client: Client, default: models.Loaded,
                                                           tmp_path: Path) -> None:
    good = models.fresh(1, 2, 16, form_options(False, False, True, "absolute"), 0, 32)
    xattn.save(good.model, tmp_path / "good.safetensors")
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    refused(client, default, "not a readable safetensors file", handle_file(str(tmp_path / "cut.safetensors")),
            None, "", api_name="/upload_model")

    def saved(name: str, state: dict[str, torch.Tensor]) -> Any:
        save_file(state, str(tmp_path / name), metadata={"xattn_config": json.dumps(good.model.config.to_dict())})
        return handle_file(str(tmp_path / name))
    state = good.model.state_dict()
    refused(client, default, r"does not fit the model — wrong shape: to_logits.weight \(5, 5\)",
            saved("shapes.safetensors", {**state, "to_logits.weight": torch.zeros(5, 5)}), None, "",
            api_name="/upload_model")
    partial = {k: v for k, v in state.items() if k != "token_emb.weight"}
    with pytest.raises(AppError) as err:
        client.predict(saved("partial.safetensors", {**partial, "to_logits.weight": state["to_logits.weight"].long()}),
                       None, "", api_name="/upload_model")
    assert "missing: token_emb.weight" in str(err.value) and "not floating point: to_logits.weight" in str(err.value)
    (tmp_path / "x.json").write_text(json.dumps(X_CONFIG))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    refused(client, default, "does not hold a state dict of tensors", handle_file(str(tmp_path / "list.pt")),
            handle_file(str(tmp_path / "x.json")), "", api_name="/upload_model")


@pytest.mark.parametrize("config, message", [
    (b"\xff\xfe{not utf-8 \xc3\x28}", "the config bad.json is not readable JSON .*utf-8"),
    (b'{"num_tokens": 12}', "must be a JSON object with num_tokens, max_seq_len and attn_layers"),
    (b"[" * 100_000, "not readable JSON"),
    (json.dumps({**X_CONFIG, "max_seq_len": -4}).encode(), "max_seq_len must be a whole number ≥ 1; got -4"),
    (json.dumps({**X_CONFIG, "attn_layers": {**X_CONFIG["attn_layers"], "dim": "16"}}).encode(),
     "dim must be a whole number ≥ 1; got '16'"),
    (json.dumps({**X_CONFIG, "attn_layers": {**X_CONFIG["attn_layers"], "dim": 4096, "depth": 64}}).encode(),
     "parameters; the limit here is 50,000,000"),
    (json.dumps({**X_CONFIG, "max_seq_len": 100_000}).encode(), "a trace of 100000 tokens would take"),
    (json.dumps({**X_CONFIG, "attn_layers": {**X_CONFIG["attn_layers"], "kind": "Encoder", "attn_selective": True}})
     .encode(), r"Selective attention \(attn_selective\) needs a causal model"),
    (json.dumps({**X_CONFIG, "attn_layers": {**X_CONFIG["attn_layers"], "no_such_option": 1}}).encode(),
     "options xattn does not support: no_such_option"),
])
def test_bad_upload_configs_are_refused(client: Client, default: models.Loaded, tmp_path: Path, config: bytes,
                                        message: str) -> None:
    (tmp_path / "bad.json").write_bytes(config)
    torch.save({}, tmp_path / "w.pt")
    refused(client, default, message, handle_file(str(tmp_path / "w.pt")), handle_file(str(tmp_path / "bad.json")),
            "", api_name="/upload_model")


def test_bad_alphabet_is_refused(client: Client, default: models.Loaded, tmp_path: Path) -> None:
    xattn.save(models.fresh(1, 2, 16, form_options(), 0, 32).model, tmp_path / "m.safetensors")
    refused(client, default, "control character or invalid Unicode", handle_file(str(tmp_path / "m.safetensors")),
            None, "ab\x00c", api_name="/upload_model")
    with pytest.raises(ValueError, match="invalid Unicode '\\\\ud800' at position 2"):   # gradio_client cannot send it
        models.uploaded(str(tmp_path / "m.safetensors"), None, "ab\ud800")


def test_loader_checks_the_file_size_itself(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(limits, "MAX_UPLOAD_BYTES", 1000)
    (tmp_path / "big.safetensors").write_bytes(b"\0" * 5000)
    with pytest.raises(ValueError, match="big.safetensors is 0.0 MiB; the limit here is 0 MiB"):
        models.uploaded(str(tmp_path / "big.safetensors"))


# Numerics: no NaN reaches a figure unmarked


def nan_only_where_masked(trace: xattn.Trace) -> None:
    assert trace.nonfinite() == {}
    visible = trace.visible[None, :, None].expand(trace.shape)
    for stage in trace.stages:
        assert not torch.isnan(trace.drawable(stage))[visible].any(), stage
    grid = viz.grid(trace, "attn")
    heat = viz.heatmap(trace, 0, 0, "pre_softmax")
    drawn = exact(json.loads(heat.to_json())["data"][0])
    assert (np.isnan(drawn) == ~trace.visible[0].numpy()).all()
    assert grid is not None


def test_fully_masked_rows_and_equal_logits(tiny_decoder: xattn.TransformerWrapper) -> None:
    tokens = torch.tensor([[0, 3, 4, 5, 6, 7]])
    hide_row = torch.ones(6, 6, dtype=torch.bool)
    hide_row[2] = False
    _, trace = tiny_decoder.run_with_trace(tokens, attn_mask=hide_row)
    assert trace.fully_masked[0].tolist() == [False, False, True, False, False, False]
    assert torch.isnan(trace.drawable("attn")[:, 0, :, 2]).all()        # the row is grey, never a number
    assert "fully masked query (no visible key)" in viz.heatmap(trace, 0, 0, "attn").to_json()   # and outlined
    nan_only_where_masked(trace)
    flat = tiny_decoder.with_config()
    for attn in flat.attn_layers.attention:
        attn.to_q.weight.data.zero_()
    _, trace = flat.run_with_trace(tokens)
    attn = trace["attn"][:, 0]
    expected = torch.tril(torch.ones(6, 6)) / torch.arange(1, 7)[:, None]
    if not flat.config.attn_layers.selective:
        torch.testing.assert_close(attn, expected.expand_as(attn))
    nan_only_where_masked(trace)


def test_one_layer_drawable_is_that_layer_of_the_whole(tiny_decoder: xattn.TransformerWrapper) -> None:
    """drawable(stage, position) and drawable(stage, position, head), made from one layer's record (`record`), are
    the same NaNs and numbers as that layer (and head) of the whole stage (residual attention carries mask fills
    between layers; a padding mask hides a key too)."""
    tokens = torch.tensor([[0, 3, 4, 5, 6, 7], [0, 8, 9, 10, 11, 12]])
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    _, trace = tiny_decoder.run_with_trace(tokens, mask=mask)
    layers = {stage: [trace.drawable(stage, p) for p in range(len(trace.layers))] for stage in trace.stages}
    heads = {stage: [[trace.drawable(stage, p, h) for h in range(trace[stage].shape[2])]
                     for p in range(len(trace.layers))] for stage in trace.stages}
    assert not trace._drawable                                    # nothing stacked for them
    for stage, parts in layers.items():
        whole = trace.drawable(stage)
        assert stage not in MASKED_STAGES or torch.isnan(whole[:, 1, :, :, 4:]).all(), stage   # padding
        for p, part in enumerate(parts):
            torch.testing.assert_close(part, whole[p], equal_nan=True, rtol=0, atol=0)
            torch.testing.assert_close(trace.drawable(stage, p), whole[p], equal_nan=True, rtol=0, atol=0)
            assert torch.equal(trace.record(stage, p), trace[stage][p])
            for h, one in enumerate(heads[stage][p]):
                torch.testing.assert_close(one, whole[p, :, h], equal_nan=True, rtol=0, atol=0)
                torch.testing.assert_close(trace.drawable(stage, p, h), whole[p, :, h], equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_huge_logits_in_every_precision(tiny_decoder: xattn.TransformerWrapper, dtype: torch.dtype) -> None:
    model = tiny_decoder.with_config()
    for attn in model.attn_layers.attention:
        attn.to_q.weight.data *= 1e3 if dtype == torch.float32 else 30
    model = model.to(dtype)
    try:
        _, trace = model.run_with_trace(torch.tensor([[0, 3, 4, 5, 6, 7, 8, 9]]))
    except RuntimeError as err:                                   # a CPU without this precision's kernels
        pytest.skip(f"{dtype} not available here: {err}")
    assert trace["scores"].abs().max() > (1e3 if dtype == torch.float32 else 10)
    overflow = trace.nonfinite()
    if overflow:            # then the app says so: checked in test_overflow_is_reported
        assert all(count > 0 for count in overflow.values())
    else:
        nan_only_where_masked(trace)
        rows = trace["attn"].float().sum(-1)
        torch.testing.assert_close(rows, torch.ones_like(rows), atol=2e-2, rtol=0)


def test_overflow_is_reported(default: models.Loaded) -> None:
    model = default.model.with_config().eval()
    model.attn_layers.attention[0].to_q.weight.data.fill_(float("inf"))
    loaded = models.Loaded("broken", model, default.tokenizer, default.example)
    run = views.trace_text(loaded, default.example)
    assert run.trace.nonfinite() and any("Numerical overflow" in note for note in run.notes)



@pytest.mark.parametrize(("value", "cell", "counted"), [
    (float("inf"), (1, 4), 1), (float("-inf"), (1, 0), 1), (float("nan"), (1, 4), 1), (float("-inf"), (1, 4), 0)])
def test_one_overflowing_cell_is_counted(tiny_decoder: xattn.TransformerWrapper, value: float,
                                         cell: tuple[int, int], counted: int) -> None:
    """One bad number in one head of one layer's stage is counted there, whatever else is clean; -inf counts only
    in a cell the causal mask leaves visible (query 1 sees keys 0 and 1, not 4)."""
    _, trace = tiny_decoder.run_with_trace(torch.tensor([[0, 3, 4, 5, 6, 7]]))
    assert trace.nonfinite() == {} and len(trace.layers) > 1
    assert trace.visible[0, cell[0], cell[1]] == (cell[1] <= cell[0])
    for stage in ("scores", "attn"):
        records = trace.stages.records[stage]
        kept = records[-1]
        records[-1] = kept.clone()
        records[-1][0, 1, cell[0], cell[1]] = value
        assert trace.nonfinite() == ({stage: counted} if counted else {}), stage
        records[-1] = kept


def test_shared_and_expanded_records_are_counted_in_each_stage(tiny_decoder: xattn.TransformerWrapper) -> None:
    """Stages that record one tensor (a layer leaves them unchanged) each count its bad cells; a record expanded
    from one number (stride 0) counts every cell it stands for."""
    _, trace = tiny_decoder.run_with_trace(torch.tensor([[0, 3, 4, 5, 6, 7]]))
    records = trace.stages.records
    summed = records["scores_residual"][-1]
    sharing = [s for s, r in records.items() if r[-1].data_ptr() == summed.data_ptr() and r[-1].shape == summed.shape]
    assert len(sharing) > 1 and trace.nonfinite() == {}
    summed[0, 1, 1, 0] = float("nan")                              # in place: every stage sharing it holds it
    other = next(s for s in records if s not in sharing)
    records[other][0] = torch.tensor(float("inf")).expand(summed.shape)
    assert trace.nonfinite() == {other: summed.numel(), **{s: 1 for s in sharing}}


# Concurrency: 32 sessions, each its own model and text, no cross-talk


def session_request(server: str, i: int) -> float:
    """Build a fresh model of its own in a session of its own, explore it, and check every number."""
    args = fresh_args(depth=1 + i % 2, heads=1 + i % 2, dim=16, residual=bool(i % 3), causal=True,
                      selective=bool(i % 4 == 1), position=("absolute", "rotary", "ALiBi")[i % 3], seed=100 + i,
                      max_len=24)
    text = f"x{i}=" + "abcdefgh"[i % 8:] + ";"
    layer, head, query = args[0] - 1, args[1] - 1, len(text) // 2
    client = Client(server, verbose=False)
    start = time.perf_counter()
    dropdown, *_ = client.predict(*args, api_name="/fresh_model")
    _, heatmap, _, row, info = client.predict(dropdown["value"], text, "pre_softmax", layer, head, query,
                                              api_name="/explore")
    elapsed = time.perf_counter() - start
    mine = models.fresh(*args)
    assert dropdown["value"] == mine.name
    trace = mine.model.run_with_trace(torch.tensor([mine.tokenizer.encode(text)]))[1]
    same(exact(traces(heatmap)[0]), trace.drawable("pre_softmax")[layer, 0, head])
    for h, bar in enumerate(traces(row, "bar")):
        same(array(bar["y"]), trace.drawable("pre_softmax")[layer, 0, h, query])
    assert mine.name in info
    return elapsed


def test_32_concurrent_sessions_see_only_their_own_numbers(server: str) -> None:
    with ThreadPoolExecutor(32) as pool:
        latencies = sorted(pool.map(lambda i: session_request(server, i), range(32)))
    p50, p95 = statistics.median(latencies), latencies[int(0.95 * (len(latencies) - 1))]
    print(f"32 sessions: p50 {p50:.2f} s, p95 {p95:.2f} s, 0 errors")


def test_overload_gets_a_busy_answer_and_big_uploads_are_refused(default: models.Loaded, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_UPLOAD_BYTES", limits.MIB)
    demo, url = app_main.launch(port=None, block=False, concurrency=1, queue_size=1)
    try:
        clients = [Client(url, verbose=False) for _ in range(12)]

        def call(i: int) -> str:
            try:
                clients[i].predict(default.name, default.example, "attn", 0, 0, i % 5, api_name="/explore")
                return "ok"
            except Exception as err:  # noqa: BLE001 -- the answer itself is what is checked
                return str(err)
        with ThreadPoolExecutor(12) as pool:
            outcomes = list(pool.map(call, range(12)))
        busy = [o for o in outcomes if o != "ok"]
        assert "ok" in outcomes and busy, outcomes
        assert all("Queue is full" in o for o in busy), busy
        assert call(0) == "ok"                                    # and it serves the next request

        upload = httpx.post(url.rstrip("/") + "/gradio_api/upload",
                            files={"files": ("big.safetensors", b"\0" * (limits.MIB + 1))}, timeout=30)
        assert upload.status_code == 413 and "maximum allowed size of 1048576 bytes" in upload.text
        (tmp_path / "big.safetensors").write_bytes(b"\0" * (limits.MIB + 1))
        with pytest.raises(ValueError, match="exceeds the maximum file size of 1048576 bytes"):
            clients[0].predict(handle_file(str(tmp_path / "big.safetensors")), None, "", api_name="/upload_model")
        assert call(1) == "ok"
    finally:
        demo.close()
        views.AHEAD.stop()


# Network


def test_binds_to_loopback_and_serves_no_outside_paths(server: str) -> None:
    assert server.startswith("http://127.0.0.1:")
    secret = Path(__file__).resolve().parents[1] / "README.md"
    for path in ("/gradio_api/file=/etc/passwd", "/file=/etc/passwd", "/gradio_api/file=../../README.md",
                 "/file=../../README.md", f"/gradio_api/file={secret}", "/gradio_api/file=app/main.py",
                 "/gradio_api/file=%2e%2e/%2e%2e/etc/passwd", "/static/../../../../etc/passwd",
                 "/gradio_api/file=..%2f..%2fREADME.md"):
        with pytest.raises(urllib.error.HTTPError) as refused_path:
            urllib.request.urlopen(server.rstrip("/") + path, timeout=10)
        assert refused_path.value.code in (403, 404), path
    with urllib.request.urlopen(server, timeout=10) as response:       # still up
        assert response.status == 200
