"""The app over HTTP: launch it on a free loopback port, call every endpoint with gradio_client, and check
the figures carry the trace's numbers (the same model traced directly with `run_with_trace`)."""
from __future__ import annotations

import asyncio
import base64
import gzip
import http.server
import json
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import brotli
import gradio as gr
import numpy as np
import pytest
import torch

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

import xattn  # noqa: E402
from app import bundle, heatmap, models, texts, views  # noqa: E402
from app import main as app_main  # noqa: E402
from xattn import viz  # noqa: E402

from conftest import form_options  # noqa: E402

DTYPES = {"f4": np.float32, "f8": np.float64, "u1": np.uint8, "i1": np.int8, "i2": np.int16, "i4": np.int32,
          "u2": np.uint16, "u4": np.uint32}


def array(value: Any) -> np.ndarray:
    """A plotly JSON array: a list, or a base64 typed array {"dtype", "bdata", "shape"}."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=DTYPES[value["dtype"]])
        shape = [int(s) for s in str(value.get("shape", len(flat))).split(",")]
        return flat.reshape(shape)
    return np.asarray(value, dtype=np.float64)


def traces(plot: dict, kind: str = "heatmap") -> list[dict]:
    """The plotly traces of one kind in a gr.Plot value as gradio_client returns it (legend markers left out)."""
    assert plot["type"] == "plotly"
    return [t for t in json.loads(plot["plot"])["data"] if t["type"] == kind]


def panels(plot: dict) -> list[dict]:
    """The heatmaps of a subplot figure, left to right (plotly lists them by colour axis, not column)."""
    return sorted(traces(plot), key=lambda t: int(t.get("xaxis", "x")[1:] or 1))


def exact(trace: dict) -> np.ndarray:
    """The exact values a heatmap carries for hover."""
    return array(trace["customdata"]).astype(np.float64)


def same(drawn: np.ndarray, expected: torch.Tensor | np.ndarray) -> None:
    expected = np.asarray(expected, dtype=np.float64)
    assert drawn.shape == expected.shape
    np.testing.assert_allclose(drawn, expected, rtol=1e-5, atol=1e-6, equal_nan=True)


def same_within(drawn: np.ndarray, expected: torch.Tensor, tolerance: float) -> None:
    expected = expected.numpy()
    assert drawn.shape == expected.shape and (np.isnan(drawn) == np.isnan(expected)).all()
    assert np.nanmax(np.abs(drawn - expected)) <= tolerance + 1e-6


def direct(loaded: models.Loaded, text: str, **kwargs: Any) -> xattn.Trace:
    """The library's own trace of `text`, for comparison."""
    ids = loaded.tokenizer.encode(text)[: loaded.max_seq_len]
    return loaded.model.run_with_trace(torch.tensor([ids]), **kwargs)[1]


def test_explore_carries_the_trace(client: Client, default: models.Loaded) -> None:
    trace = direct(default, default.example)
    layer, head, query = default.depth - 1, 1, len(default.tokenizer.encode(default.example)) - 1
    grid, heatmap, strip, row, info = client.predict(default.name, default.example, "attn", layer, head, query,
                                                     api_name="/explore")
    cells = panels(grid)
    assert len(cells) == default.depth * default.heads
    attn_scale = xattn.viz.Scale(0.0, 1.0)        # attention is drawn on a fixed 0–1 scale
    drawn = attn_scale.decode(array(cells[layer * default.heads + head]["z"]))
    same_within(drawn, trace.drawable("attn")[layer, 0, head], attn_scale.step / 2)
    same(exact(traces(heatmap)[0]), trace.drawable("attn")[layer, 0, head])
    shown = views.strip_stages(default)
    assert len(panels(strip)) == len(shown) and shown[0] == "scores" and shown[-1] == "attn"
    for panel, stage in zip(panels(strip), shown, strict=True):
        same(exact(panel), trace.drawable(stage)[layer, 0, head])
    bars = traces(row, "bar")
    assert len(bars) == default.heads
    for h, bar in enumerate(bars):
        same(array(bar["y"]), trace.drawable("attn")[layer, 0, h, query])
    assert default.name in info and f"{trace.tokens.shape[1]} tokens" in info


def test_realformer_sum_and_residual_off(client: Client, default: models.Loaded) -> None:
    strip, difference, sim_on, sim_off, info = client.predict(
        default.name, default.example, 1, 0, texts.SAME_WEIGHTS, api_name="/realformer")
    residual_on = default.model.config.attn_layers.residual_attn
    twin = models.with_config(default, residual_attn=not residual_on)
    mine, theirs = direct(default, default.example), direct(twin, default.example)
    scores, residual, summed, attn = (exact(p) for p in panels(strip))
    same(scores, mine.drawable("scores")[1, 0, 0])
    same(summed, mine.drawable("scores_residual")[1, 0, 0])
    same(attn, mine.drawable("attn")[1, 0, 0])
    on, off = (mine, theirs) if residual_on else (theirs, mine)
    same(exact(traces(difference)[0]), on.drawable("attn")[1, 0, 0] - off.drawable("attn")[1, 0, 0])
    assert twin.name in info
    for sim in (sim_on, sim_off):
        assert len(traces(sim)) == 2


def test_selective_penalty_and_pruned_keys(client: Client, default: models.Loaded) -> None:
    assert default.model.config.attn_layers.selective, "the default model should be selective"
    query = len(default.tokenizer.encode(default.example)) - 1
    gate_f_pruned, strip, row, across, info = client.predict(default.name, default.example, 1, 2, query,
                                                             api_name="/selective")
    trace = direct(default, default.example)
    gate, penalty, _ = panels(gate_f_pruned)
    for panel, stage in zip(panels(strip), ("masked", "selection", "pre_softmax", "attn"), strict=True):
        same(exact(panel), trace.drawable(stage)[1, 0, 2])
    same(exact(gate), trace.drawable("masked")[1, 0, 0])
    visible = trace.visible[0].numpy()
    same(exact(penalty), np.where(visible, trace["selection"][1, 0, 0].numpy(), np.nan))
    same(array(traces(row, "bar")[0]["y"]), trace.drawable("selection")[1, 0, 0, query])
    assert len(traces(across)) == default.depth
    assert f"for query {query}" in info


def test_fresh_model_with_an_attention_window_in_the_masking_debugger(client: Client) -> None:
    """The form's counts reach the model: a window of 2 (attn_max_attend_past) is a mask of its own."""
    labels = [label for label, _ in models.form_numbers()]
    counts = [2 if "window" in label else 0 for label in labels]
    dropdown, *_ = client.predict(1, 2, 16, form_options(), 0, 32, *counts, api_name="/fresh_model")
    loaded = models.fresh(1, 2, 16, form_options(), 0, 32, *counts)
    assert dropdown["value"] == loaded.name and loaded.model.config.attn_layers.attn.max_attend_past == 2
    text = "abcdefgh"
    effective, removed, _, info = client.predict(loaded.name, text, "none", 4, "", 0, "right", 0, 0,
                                                 api_name="/masking")
    n = len(text) + 1
    window = torch.tensor([[0 <= i - j <= 2 for j in range(n)] for i in range(n)])
    assert ((array(traces(effective)[0]["z"]) == 0) == window.numpy()).all()
    too_far = int(torch.ones(n, n).tril(-3).sum())          # keys more than 2 positions back: j < i − 2
    assert f"**window** hides {too_far} of {n * n}" in info
    assert f"**causal** hides {n * (n - 1) // 2} of {n * n}" in info
    with pytest.raises(AppError, match=r"Attention window \(attn_max_attend_past; 0 means off\) must be a whole"):
        client.predict(1, 2, 16, form_options(), 0, 32, *[2.5 if c else 0 for c in counts], api_name="/fresh_model")


def test_masking_flags_rows_and_shows_the_effect(client: Client, default: models.Loaded) -> None:
    effective, removed, difference, info = client.predict(
        default.name, default.example, "block-diagonal", 4, "", 3, "left", 0, 0, api_name="/masking")
    ids = default.tokenizer.encode(default.example)
    n = len(ids) + 3
    pad = torch.tensor([[False] * 3 + [True] * len(ids)])
    custom = xattn.masks.block_diagonal(n, 4)
    padded = torch.tensor([[default.tokenizer.pad_id] * 3 + ids])
    _, trace = default.model.run_with_trace(padded, mask=pad, attn_mask=custom)
    _, plain = default.model.run_with_trace(padded, mask=pad)
    state = array(traces(effective)[0]["z"])
    assert ((state == 0) == trace.visible[0].numpy()).all()
    assert "no visible key" in info and "position 0" in info        # left pads under a causal mask see nothing
    codes = array(traces(removed)[0]["z"])
    assert ((codes == 0) == trace.visible[0].numpy()).all() and (codes[:, :3] == 1).all()  # pads removed by padding
    # The attention the custom mask removed shows as its negative; only pairs hidden either way are grey.
    expected = trace.drawable("attn")[0, 0, 0].nan_to_num() - plain.drawable("attn")[0, 0, 0].nan_to_num()
    expected[~(trace.visible[0] | plain.visible[0])] = float("nan")
    same(exact(traces(difference)[0]), expected)
    assert "with the custom mask − without" in json.loads(difference["plot"])["layout"]["title"]["text"]
    rows = "\n".join("1" * len(ids) for _ in ids)
    *_, free_info = client.predict(default.name, default.example, "none", 0, rows, 0, "right", 0, 0,
                                   api_name="/masking")
    assert "**custom** hides 0 of" in free_info


def test_compare_side_by_side_and_difference(client: Client, default: models.Loaded) -> None:
    other = next(n for n in models.bundled_names() if n != default.name
                 and models.bundled(n).tokenizer == default.tokenizer)
    a_fig, b_fig, difference, _ = client.predict(default.name, other, default.example, "pre_softmax", 0, 1,
                                                 api_name="/compare")
    a, b = direct(default, default.example), direct(models.bundled(other), default.example)
    same(exact(traces(a_fig)[0]), a.drawable("pre_softmax")[0, 0, 1])
    same(exact(traces(b_fig)[0]), b.drawable("pre_softmax")[0, 0, 1])
    same(exact(traces(difference)[0]), a.drawable("pre_softmax")[0, 0, 1] - b.drawable("pre_softmax")[0, 0, 1])


def test_fresh_model_lives_in_its_session_only(client: Client, server: str) -> None:
    before = {k: v.clone() for k, v in models.bundled(models.default_name()).model.state_dict().items()}
    dropdown, *_ = client.predict(2, 2, 32, form_options(True, False, False, "ALiBi"), 7, 64, api_name="/fresh_model")
    name = dropdown["value"]
    heatmap = client.predict(name, "Hello, world!", "biased", 1, 1, 3, api_name="/explore")[1]
    fresh = models.fresh(2, 2, 32, form_options(True, False, False, "ALiBi"), 7, 64)
    same(exact(traces(heatmap)[0]), direct(fresh, "Hello, world!").drawable("biased")[1, 0, 1])
    other = Client(server, verbose=False)
    with pytest.raises(AppError, match="no model called"):
        other.predict(name, "Hello", "attn", 0, 0, 0, api_name="/explore")
    client.predict(models.default_name(), models.bundled(models.default_name()).example, 0, 0, texts.SAME_WEIGHTS,
                   api_name="/realformer")
    after = models.bundled(models.default_name()).model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_upload_xattn_checkpoint(client: Client, tmp_path: Any) -> None:
    fresh = models.fresh(1, 2, 16, form_options(False, False, True, "rotary"), 3, 32)
    xattn.save(fresh.model, tmp_path / "tiny.safetensors")
    dropdown, *_ = client.predict(handle_file(str(tmp_path / "tiny.safetensors")), None, "", api_name="/upload_model")
    heatmap = client.predict(dropdown["value"], "abc", "attn", 0, 1, 2, api_name="/explore")[1]
    same(exact(traces(heatmap)[0]), direct(fresh, "abc").drawable("attn")[0, 0, 1])
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(AppError, match="not a readable"):
        client.predict(handle_file(str(tmp_path / "junk.safetensors")), None, "", api_name="/upload_model")


def test_upload_restores_the_tokenizer_the_checkpoint_carries(client: Client, default: models.Loaded) -> None:
    """A bundled checkpoint uploaded as a file reads text in its own alphabet, so its own example runs."""
    path = xattn.registry.MODELS_DIR / f"{default.name}.safetensors"
    uploaded = models.uploaded(str(path))
    assert uploaded.tokenizer == default.tokenizer
    dropdown, *_ = client.predict(handle_file(str(path)), None, "", api_name="/upload_model")
    heatmap = client.predict(dropdown["value"], default.example, "attn", 0, 0, 3, api_name="/explore")[1]
    same(exact(traces(heatmap)[0]), direct(default, default.example).drawable("attn")[0, 0, 0])


def test_upload_x_transformers_checkpoint(client: Client, tmp_path: Any) -> None:
    x_transformers = pytest.importorskip("x_transformers")
    config = {"num_tokens": 12, "max_seq_len": 16, "attn_layers": {"kind": "Decoder", "dim": 32, "depth": 2,
                                                                     "heads": 2, "attn_dim_head": 16}}
    torch.manual_seed(0)
    layers = {k: v for k, v in config["attn_layers"].items() if k != "kind"}
    xt = x_transformers.TransformerWrapper(num_tokens=12, max_seq_len=16, attn_layers=x_transformers.Decoder(**layers))
    torch.save(xt.state_dict(), tmp_path / "xt.pt")
    (tmp_path / "xt.json").write_text(json.dumps(config))
    dropdown, *_ = client.predict(handle_file(str(tmp_path / "xt.pt")), handle_file(str(tmp_path / "xt.json")),
                                  "abcdefghij", api_name="/upload_model")
    heatmap = client.predict(dropdown["value"], "hgfe", "attn", 1, 1, 2, api_name="/explore")[1]
    ours = models.uploaded(str(tmp_path / "xt.pt"), str(tmp_path / "xt.json"), "abcdefghij")
    same(exact(traces(heatmap)[0]), direct(ours, "hgfe").drawable("attn")[1, 0, 1])
    with pytest.raises(AppError, match="needs its JSON config"):
        client.predict(handle_file(str(tmp_path / "xt.pt")), None, "", api_name="/upload_model")


@pytest.mark.parametrize("args, message", [
    (("{model}", "   ", "attn", 0, 0, 0), "The text is empty"),
    (("{model}", "a=3;§", "attn", 0, 0, 0), "cannot read this text"),
    (("{model}", "{example}", "attn", 9, 0, 0), "Layer 9 does not exist"),
    (("{model}", "{example}", "attn", 0, 17, 0), "Head 17 does not exist"),
    (("{model}", "{example}", "attn", 0, 0, 400), "Query 400 does not exist"),
    (("no-such-model", "{example}", "attn", 0, 0, 0), "no model called 'no-such-model'"),
])
def test_bad_input_gets_a_sentence(client: Client, default: models.Loaded, args: tuple, message: str) -> None:
    filled = [a.format(model=default.name, example=default.example) if isinstance(a, str) else a for a in args]
    with pytest.raises(AppError, match=message):
        client.predict(*filled, api_name="/explore")


def test_own_shorter_text_runs_with_the_query_left_past_its_end(client: Client, default: models.Loaded) -> None:
    """The query slider still on the example's last token (22) while the text is now 11 tokens long."""
    text, query = "a=1;b=2;?a", len(default.tokenizer.encode(default.example)) - 1
    assert query > len(text)
    *_, row, info = client.predict(default.name, text, "attn", 0, 0, query, api_name="/explore")
    assert f"Query {query} is past the end of this text (11 tokens" in info and "showing its last token, 10" in info
    bars = traces(row, "bar")
    same(array(bars[0]["y"]), direct(default, text).drawable("attn")[0, 0, 0, 10])
    assert views.token_count(None, default.name, text) == 11
    assert views.token_count(None, default.name, "€") is None


def test_bad_config_gets_a_sentence(client: Client) -> None:
    with pytest.raises(AppError, match="multiple of heads"):
        client.predict(2, 3, 32, form_options(False, False, True, "absolute"), 0, 64, api_name="/fresh_model")
    with pytest.raises(AppError, match="needs a causal model"):
        client.predict(2, 2, 32, form_options(False, True, False, "absolute"), 0, 64, api_name="/fresh_model")


def test_long_text_is_cut_with_a_warning(client: Client, default: models.Loaded) -> None:
    text = (default.example * 200)[: default.max_seq_len * 2]
    _, heatmap, _, _, info = client.predict(default.name, text, "attn", 0, 0, 0, api_name="/explore")
    assert f"only the first {default.max_seq_len}" in info
    note = info.split("**Note:**", 1)[1]
    assert "<" not in note, "a note with <…> is cut short where the browser reads it as an HTML tag"
    assert exact(traces(heatmap)[0]).shape == (default.max_seq_len, default.max_seq_len)


def fetched(url: str, encoding: str = "identity", **headers: str) -> tuple[int, Any, bytes]:
    """A GET of `url` accepting `encoding`: (status, headers, body as sent)."""
    request = urllib.request.Request(url, headers={"Accept-Encoding": encoding, **headers})
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as answer:
        return answer.code, answer.headers, b""


def test_the_page_preloads_its_scripts_and_its_files_come_compressed_from_memory(server: str) -> None:
    """The page's answer names its scripts (plotly.js, the views' code) in preload headers, each at a URL that
    serves the file; those and Gradio's front-end files come from memory, compressed once (main.KeptFiles): the
    same bytes every time, which decode to the file on disk. A conditional request still goes through to Gradio."""
    status, headers, page = fetched(server)
    urls = [part.split(">")[0].lstrip("<") for part in headers["link"].split(", ")]
    assert headers["link"].endswith(">; rel=preload; as=script") and len(urls) == len(heatmap.PAGE_SCRIPTS)
    asset = re.search(r"assets/index-[\w-]+\.js", page.decode()).group(0)
    files = [*heatmap.PAGE_SCRIPTS, Path(gr.__file__).parent / "templates" / "frontend" / asset]
    for url, path in zip([*urls, asset], files, strict=True):
        want = path.read_bytes()
        assert fetched(urljoin(server, url))[2] == want
        first, again = fetched(urljoin(server, url), "gzip, deflate, br"), fetched(urljoin(server, url), "br")
        assert first[1]["content-encoding"] == "br" and first[2] == again[2] and brotli.decompress(first[2]) == want
        zipped = fetched(urljoin(server, url), "gzip")
        assert zipped[1]["content-encoding"] == "gzip" and gzip.decompress(zipped[2]) == want
    etag = fetched(urljoin(server, asset))[1]["etag"]
    assert fetched(urljoin(server, asset), "br", **{"If-None-Match": etag})[0] == 304


def test_no_view_config_carries_an_event_listener() -> None:
    """Gradio takes a word in quotes in a gr.HTML script for an event of the component, and the component's
    config then carries that event's listener where a prop of that name is looked for (`inputs`): every page
    load deep-copies the config, and copying those took 2.5 s a page here. Every prop is plain data."""
    from app import ui
    demo = ui.build()
    plain = (str, int, float, bool, list, dict, type(None))
    odd = {(c["props"].get("elem_id"), k) for c in demo.config["components"] if c.get("type") == "html"
           for k, v in (c.get("props") or {}).items() if not isinstance(v, plain)}
    assert not odd


def test_the_views_code_ships_once_and_each_view_names_its_events() -> None:
    """A view's js_on_load is a call of the page's one copy of app/heatmap.js (a head script): the config carries
    no view's code, and the events gr.HTML finds in js_on_load are the ones heatmap.js sends."""
    from app import ui
    demo = ui.build()
    scripts = [c["props"]["js_on_load"] for c in demo.config["components"] if c.get("type") == "html"
               and c["props"].get("head") == heatmap.HEAD]
    assert scripts and all(len(script) < 200 for script in scripts)
    sent = set(re.findall(r"trigger\('(\w+)'", heatmap.VIEW_JS.read_text(encoding="utf-8")))
    assert sent == set(heatmap.EVENTS) == set(re.findall(r"'(\w+)'", heatmap.JS))
    assert heatmap.VIEW_JS.as_posix() in heatmap.HEAD and str(heatmap.VIEW_JS) in heatmap.static_paths()


def test_the_page_loads_the_apps_plotly_js_bundle_of_the_installed_version() -> None:
    """The page's plotly.js is the app's bundle (app/bundle.py) when it is the installed plotly's own version (else
    the package's full bundle), and it has the code of every trace type the app's figures use (bundle.TRACES) —
    which are all the plotly trace classes the library and the app make."""
    full, own = heatmap.js_version(heatmap.FULL_PLOTLY_JS), heatmap.js_version(bundle.BUNDLE)
    assert full is not None and own is not None
    assert heatmap.PLOTLY_JS == (bundle.BUNDLE if own == full else heatmap.FULL_PLOTLY_JS)
    defined = set(re.findall(r'moduleType:"trace",name:"(\w+)"', heatmap.PLOTLY_JS.read_text(encoding="utf-8")))
    assert set(bundle.TRACES) <= defined
    root = Path(heatmap.__file__).resolve().parent.parent
    made = {name.lower() for path in [*root.glob("xattn/**/*.py"), *root.glob("app/*.py")]
            for name in re.findall(r"go\.([A-Z]\w+)\(", path.read_text(encoding="utf-8")) if name != "Figure"}
    assert made and made <= set(bundle.TRACES), f"figures use {made - set(bundle.TRACES)}: add them to TRACES"


def test_kept_files_are_one_copy_a_file_and_encoding_and_refusals_are_not_kept() -> None:
    """main.KeptFiles asks Gradio once per file and encoding, whatever the query says (a client making up queries
    cannot grow it); a 404 goes through each time, and so does a ranged request."""
    asked: list[str] = []

    async def gradio(scope: dict, receive: Any, send: Any) -> None:
        asked.append(scope["path"])
        found = scope["path"].endswith(".js")
        await send({"type": "http.response.start", "status": 200 if found else 404,
                    "headers": [(b"content-type", b"text/javascript"), (b"etag", b'"e1"')]})
        await send({"type": "http.response.body", "body": b"let x = 1;" * 50 if found else b"no"})

    kept = app_main.KeptFiles(gradio)

    def get(path: str, query: bytes = b"", **headers: str) -> list[dict]:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": path, "query_string": query,
                 "headers": [(k.lower().replace("_", "-").encode(), v.encode()) for k, v in headers.items()]}
        asyncio.run(kept(scope, None, send))
        return sent

    first = get("/assets/a.js", accept_encoding="br")
    for query in (b"v=1", b"v=2", b"x"):
        assert get("/assets/a.js", query, accept_encoding="gzip, br") == first
    assert asked == ["/assets/a.js"] and brotli.decompress(first[1]["body"]) == b"let x = 1;" * 50
    assert get("/assets/a.js", accept_encoding="br", if_none_match='"e1"')[0]["status"] == 304
    assert get("/assets/a.js")[1]["body"] == b"let x = 1;" * 50 and asked == ["/assets/a.js"] * 2   # plain: its own
    for _ in range(2):
        assert get("/assets/gone.js.map")[0]["status"] == 404
    get("/assets/a.js", accept_encoding="br", range="bytes=0-3")
    assert asked == ["/assets/a.js"] * 2 + ["/assets/gone.js.map"] * 2 + ["/assets/a.js"]


def test_the_server_visits_its_page_once_as_it_starts() -> None:
    """main.warm_up asks for the page, the scripts and styles it names first and the views' scripts, accepting
    brotli as a browser does (so KeptFiles keeps what the first visitor is sent); a server not up yet is waited
    for, and one that never answers leaves it undone without an error."""
    asked: list[tuple[str, str]] = []
    page = b'<link href="./assets/index-A1.css"><script type="module" src="./assets/index-B2.js"></script>'

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 -- http.server's name
            asked.append((self.path, self.headers["Accept-Encoding"]))
            body = brotli.compress(page) if self.path == "/" else b"x"
            self.send_response(200)
            self.send_header("Content-Encoding", "br" if self.path == "/" else "identity")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    port = app_main.free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Page)
    threading.Timer(0.5, server.serve_forever).start()                   # not up at first: waited for
    try:
        app_main.warm_up(f"http://127.0.0.1:{port}/", timeout_s=20)
    finally:
        server.shutdown()
    scripts = ["/" + url for url in heatmap.PAGE_URLS]
    assert [path for path, _ in asked] == ["/", "/assets/index-A1.css", "/assets/index-B2.js", *scripts]
    assert {encoding for _, encoding in asked} == {"br"}
    started = time.monotonic()
    app_main.warm_up(f"http://127.0.0.1:{app_main.free_port()}/", timeout_s=1)   # nothing there: given up
    assert time.monotonic() - started < 5


def test_cli_defaults_are_private() -> None:
    args = app_main.parse_args([])
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7860, False)


def test_model_info_and_views_that_do_not_apply(client: Client) -> None:
    plain = next(n for n in models.bundled_names()
                 if not models.bundled(n).model.config.attn_layers.selective)
    loaded = models.bundled(plain)
    card, example, _, layer, head, query, *_ = client.predict(plain, api_name="/model_info")
    assert plain in card and example == loaded.example
    assert (layer["maximum"], head["maximum"]) == (loaded.depth - 1, loaded.heads - 1)
    with pytest.raises(AppError, match="does not use selective attention"):
        client.predict(plain, loaded.example, 0, 0, 0, api_name="/selective")


def test_long_inputs_keep_exact_values_in_the_focused_heatmap_only(client: Client) -> None:
    dropdown, *_ = client.predict(1, 2, 16, form_options(), 0, 512, api_name="/fresh_model")
    text = "the quick brown fox jumps over the lazy dog. " * 7                  # 315 characters
    fresh = models.fresh(1, 2, 16, form_options(False, False, True, "absolute"), 0, 512)
    _, heatmap, strip, _, _ = client.predict(dropdown["value"], text, "attn", 0, 1, 5, api_name="/explore")
    same(exact(traces(heatmap)[0]), direct(fresh, text).drawable("attn")[0, 0, 1])
    assert len(text) + 1 > viz.figures.EXACT_HOVER_TOKENS
    assert all("customdata" not in p and "customdata" not in p["hovertemplate"] for p in panels(strip))
