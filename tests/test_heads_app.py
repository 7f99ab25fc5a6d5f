"""The Heads tab (app/heads.py): head statistics over a task or an uploaded text file, as plain functions and
through the /heads endpoint, checked against `xattn.head_stats` run directly and against a hand-written mean;
its refusals; and a click on a head opening Explore in real chromium."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("gradio")
import gradio as gr  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

import xattn  # noqa: E402
from app import heads, limits, models  # noqa: E402
from xattn import TaskData, TextData  # noqa: E402

from conftest import form_options  # noqa: E402
from test_app import array  # noqa: E402

N = 50


def quiet(*args: Any, **kwargs: Any) -> None:
    """A stand-in for gr.Progress outside a request."""


def drawn(figure: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{stat: (values, example ids)} of the figure's heatmaps (a go.Figure, or a value as gradio_client gets it)."""
    data = json.loads(figure["plot"])["data"] if isinstance(figure, dict) else [t.to_plotly_json() for t in figure.data]
    return {t["meta"]["stat"]: (array(t["z"]), array(t["customdata"])) for t in data if t["type"] == "heatmap"}


def same_as(figure: Any, stats: xattn.HeadStats) -> None:
    shown = drawn(figure)
    assert list(shown) == list(stats.values)
    for stat, (values, examples) in shown.items():
        np.testing.assert_allclose(values, stats.values[stat].numpy(), rtol=1e-12, atol=1e-12)
        assert (examples == stats.examples[stat].numpy()).all()


@pytest.fixture(scope="module")
def default() -> models.Loaded:
    return models.bundled(models.default_name())


@pytest.fixture(scope="module")
def direct(default: models.Loaded) -> xattn.HeadStats:
    return xattn.head_stats(default.model, TaskData("variables", N, 0), progress=False)


def test_heads_draws_head_stats_and_a_click_opens_the_example(default: models.Loaded,
                                                              direct: xattn.HeadStats) -> None:
    steps: list[tuple[float, str]] = []
    figure, summary, run = heads.heads(None, default.name, "variables", N, 0, None,
                                       progress=lambda f, desc="": steps.append((f, desc)))
    same_as(figure, direct)
    assert steps[-1] == (1.0, f"{N} of {N} sequences")
    # the mean attention on BOS by hand: every query after the first, of every sequence, run one at a time
    data = TaskData("variables", N, 0)
    bos, queries = torch.zeros(default.depth, default.heads, dtype=torch.float64), 0
    for i in range(N):
        ids = default.tokenizer.encode(data.text(i))
        _, trace = default.model.run_with_trace(torch.tensor([ids]))
        bos += trace["attn"][:, 0, :, 1:, 0].double().sum(-1)
        queries += len(ids) - 1
    np.testing.assert_allclose(drawn(figure)["bos"][0], (bos / queries).numpy(), rtol=1e-5, atol=1e-7)
    assert f"read **{N} sequences**" in summary and f"**{queries:,} queries**" in summary
    assert f"{N} answer characters" in summary and f"{N} sequences for importance" in summary
    layer, head = divmod(int(direct.values["target"].argmax()), default.heads)
    example = int(direct.examples["target"][layer, head])
    assert f"- on the task's key: layer {layer}, head {head} — {float(direct.values['target'][layer, head]):.3g} " \
           f"(sequence {example})" in summary

    tabs, text, *slid = heads.pick(run, gr.EventData(None, {"layer": layer, "head": head, "stat": "target"}))
    assert tabs.selected == "explore"
    assert text == data.text(example) and slid == [layer, head, len(text)]      # the last token: the query
    with pytest.raises(gr.Error, match="no statistic 'nope'"):
        heads.pick(run, gr.EventData(None, {"layer": 0, "head": 0, "stat": "nope"}))
    with pytest.raises(gr.Error, match="Layer 9 does not exist"):
        heads.pick(run, gr.EventData(None, {"layer": 9, "head": 0, "stat": "bos"}))
    with pytest.raises(gr.Error, match="Run Heads first"):
        heads.pick(None, gr.EventData(None, {"layer": 0, "head": 0, "stat": "bos"}))


def test_the_endpoint_reads_a_text_file_and_says_what_it_cut(client: Client, default: models.Loaded,
                                                             tmp_path: Path) -> None:
    long = "a=1;" * 12                                              # 48 characters: cut at max_seq_len 36
    lines = ["a=3;b=5;?a", "c=1;X=2;c=4;?c", long, "", "b=2;b=7;?b"]
    path = tmp_path / "mine.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    figure, summary = client.predict(default.name, heads.TEXT_FILE, N, 0, handle_file(str(path)), api_name="/heads")
    stats = xattn.head_stats(default.model, TextData(lines, default.tokenizer), progress=False)
    same_as(figure, stats)
    assert "target" not in drawn(figure)                            # the task's key needs task data
    assert "read **5 sequences**: 5 lines of mine.txt" in summary
    assert "1 character(s) outside the model's alphabet were skipped" in summary                   # the X
    assert "1 line(s) longer than the model takes were cut" in summary
    queries = sum(min(len(line.replace("X", "")), default.max_seq_len - 1) for line in lines)
    assert f"**{queries:,} queries**" in summary
    # N reads the first lines only, and says so
    _, summary = client.predict(default.name, heads.TEXT_FILE, 2, 0, handle_file(str(path)), api_name="/heads")
    assert "read **2 sequences**" in summary and "Read the first 2 lines of mine.txt" in summary


def test_a_fresh_model_reads_tasks_as_text(default: models.Loaded) -> None:
    fresh = models.fresh(2, 2, 16, form_options(residual=True), 0, 64)
    choices = [value for _, value in heads.dataset_choices(fresh)]
    assert choices == ["variables", "induction", "brackets", heads.TEXT_FILE]      # printable ASCII reads all three
    assert [v for _, v in heads.dataset_choices(default)] == ["variables", heads.TEXT_FILE]
    dropdown, figure, summary, run = heads.datasets({fresh.name: fresh}, fresh.name)      # on a model change
    assert dropdown["value"] == "variables" and [v for _, v in dropdown["choices"]] == choices
    assert (figure, summary, run) == (None, "", None)
    figure, summary, _ = heads.heads({fresh.name: fresh}, fresh.name, "brackets", 20, 3, None, progress=quiet)
    data = TaskData("brackets", 20, 3)
    same_as(figure, xattn.head_stats(fresh.model, [data.text(i) for i in range(20)], tokenizer=fresh.tokenizer,
                                     progress=False))
    assert "numbers its tokens otherwise than the brackets task" in summary and "target" not in drawn(figure)


def test_batches_stay_within_the_trace_budget() -> None:
    """At most heads.BATCH sequences a forward pass, fewer where every stage's trace of the batch would pass
    MAX_BATCH_TRACE_BYTES: stages × layers × heads × n² × 4 bytes a sequence."""
    fresh = models.fresh(2, 2, 16, form_options(), 0, 2048)
    one = len(xattn.STAGES) * 2 * 2 * 512 * 512 * 4
    assert heads.batch_size(fresh, 512) == limits.MAX_BATCH_TRACE_BYTES // one == 17
    assert heads.batch_size(fresh, 16) == heads.BATCH and heads.batch_size(fresh, 2048) == 1


def write(tmp_path: Path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def test_refusals_say_why(client: Client, default: models.Loaded, tmp_path: Path) -> None:
    def refused(match: str, *args: Any, session: Any = None) -> None:
        with pytest.raises(gr.Error, match=match):
            heads.heads(session, *args, progress=quiet)

    name, cap = default.name, limits.MAX_HEAD_SEQUENCES
    refused("N must be a whole number from 1 to 2,000; got 2.5", name, "variables", 2.5, 0, None)
    refused("N is empty", name, "variables", None, 0, None)
    refused("got 0", name, "variables", 0, 0, None)
    refused(f"N must be a whole number from 1 to {cap:,}; got {cap + 1}. For more sequences, run xattn.head_stats "
            "in a notebook", name, "variables", cap + 1, 0, None)
    refused("Seed must be a whole number", name, "variables", 5, -1, None)
    refused(f"{name} cannot read the 'brackets' task; choose one of: variables, text file", name, "brackets", 5, 0,
            None)
    refused("Choose a text file to upload first", name, heads.TEXT_FILE, 5, 0, None)
    refused("empty.txt holds no text", name, heads.TEXT_FILE, 5, 0, write(tmp_path, "empty.txt", b""))
    refused("blank.txt holds no text", name, heads.TEXT_FILE, 5, 0, write(tmp_path, "blank.txt", b"\n  \n"))
    refused(r"picture.png is not UTF-8 text \(byte 0 cannot", name, heads.TEXT_FILE, 5, 0,
            write(tmp_path, "picture.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"))
    refused("nul.txt holds NUL bytes", name, heads.TEXT_FILE, 5, 0, write(tmp_path, "nul.txt", b"a=1;\x00\x00?a\n"))
    refused(f"No line of other.txt holds a character {name} reads; its alphabet is", name, heads.TEXT_FILE, 5, 0,
            write(tmp_path, "other.txt", b"XYZ\nQRS\n"))
    encdec = models.fresh(1, 2, 16, form_options(), 0, 32, encoder_decoder=True)
    refused("is an encoder–decoder", encdec.name, "variables", 5, 0, None, session={encdec.name: encdec})
    # over HTTP: the sentence reaches the client, and the server answers the next request
    with pytest.raises(AppError, match="holds NUL bytes"):
        client.predict(name, heads.TEXT_FILE, 5, 0, handle_file(write(tmp_path, "nul.txt", b"\x00")),
                       api_name="/heads")
    _, summary = client.predict(name, "variables", 3, 0, None, api_name="/heads")
    assert "read **3 sequences**" in summary


# In the browser

HEAD = """([stat, layer, head]) => {
  const gd = document.querySelector('#head-statistics .js-plotly-plot');
  gd.scrollIntoView({block: 'center'});
  const t = gd._fullData.find(d => d.type === 'heatmap' && d.meta && d.meta.stat === stat);
  const xa = gd._fullLayout['xaxis' + t.xaxis.slice(1)], ya = gd._fullLayout['yaxis' + t.yaxis.slice(1)];
  const box = gd.getBoundingClientRect();
  return [box.left + xa._offset + xa.l2p(head), box.top + ya._offset + ya.l2p(layer)];
}"""


@pytest.fixture
def page(server: str) -> Iterator[Any]:
    from test_browser import opened_page
    with opened_page(server) as page:
        yield page


def test_a_click_on_a_head_opens_explore_on_its_example(page: Any, default: models.Loaded, direct: xattn.HeadStats,
                                                        tmp_path: Path) -> None:
    from test_browser_clicks import STAMP, sliders, title_has
    shots = Path(os.environ.get("XATTN_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    opening = default.card["notable_heads"][0]                       # the page explores its example on this head
    title_has(page, "focused-head", f"layer {opening['layer']} · head {opening['head']}")
    page.get_by_role("tab", name="Heads").click()
    page.get_by_label("N: sequences", exact=False).fill(str(N))
    page.locator("#heads-run").click()
    page.wait_for_function(f"() => ({STAMP})('head-statistics').drawn === '1'", timeout=90_000)
    page.get_by_text(f"read {N} sequences").wait_for(timeout=10_000)
    page.mouse.move(5, 5)
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / "heads.png"), full_page=True)

    layer, head = divmod(int(direct.values["previous"].argmax()), default.heads)
    text = TaskData("variables", N, 0).text(int(direct.examples["previous"][layer, head]))
    x, y = page.evaluate(HEAD, ["previous", layer, head])
    page.mouse.click(x, y)
    title_has(page, "focused-head", f"layer {layer} · head {head}")
    assert page.get_by_role("tab", name="Explore").get_attribute("aria-selected") == "true"
    assert page.get_by_label("text", exact=True).input_value() == text
    assert sliders(page) == [layer, head, len(text)]
    page.wait_for_function("(n) => document.querySelectorAll('#token-text [data-q]').length === n", arg=len(text) + 1,
                           timeout=30_000)                             # the text view reads the example too
