"""The Heads view: `xattn.head_stats` over a dataset — samples of a bundled task, or an uploaded text file, one
sequence per line — drawn as layers × heads heatmaps, one per statistic (`viz.head_stats_figure`). A click on a
head opens Explore on that layer and head with the sequence where the head shows the statistic most.

The statistics are computed in this process (the library's local engine); Ray is for the CLI and notebooks.
Refusals are the other views' (`views.friendly`): a ValueError becomes a `gr.Error` carrying its sentence.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

import xattn
from xattn import TaskData, TextData, viz
from xattn.tasks import TASKS, get_task

from . import heatmap, limits, models, views
from .models import Loaded, Session
from .views import Figure

TEXT_FILE = "text file"
DEFAULT_N = 200
BATCH = 64                    # sequences per forward pass, fewer where a batch's trace would pass MAX_BATCH_TRACE_BYTES
INTRO = ("Average what every head does over many sequences: samples of a task, or a text file of your own (one "
         f"sequence per line, at most {limits.MAX_HEAD_SEQUENCES:,}). Each heatmap is one statistic, layers down and "
         "heads across (README, *Head statistics*, gives every formula). *Click* a head to open it in Explore on the "
         "sequence where it shows that statistic most. Computed here, in the app's process (the local engine); for "
         "more sequences or a Ray cluster, use `xattn.head_stats` in a notebook or `bench/bench_stats.py`.")


@dataclass(frozen=True)
class HeadsRun:
    """The last Heads run of a session (kept in its gr.State): the model, the statistics drawn, and the text of
    every example sequence a click can open, so a click never computes them again."""

    model: str
    stats: xattn.HeadStats
    texts: dict[int, str]


def readable_tasks(loaded: Loaded) -> list[str]:
    """The bundled tasks whose characters the model reads, the one it was trained on first."""
    alphabet = set(loaded.tokenizer.alphabet)
    readable = [name for name in TASKS if set(get_task(name).alphabet) <= alphabet]
    trained = loaded.card.get("task")
    return sorted(readable, key=lambda name: name != trained)


def dataset_choices(loaded: Loaded) -> list[tuple[str, str]]:
    """(label, value) for the dataset dropdown: the readable tasks, then an uploaded text file."""
    trained = loaded.card.get("task")
    tasks = [(f"{name} task" + (" (the model was trained on it)" if name == trained else ""), name)
             for name in readable_tasks(loaded)]
    return tasks + [("text file (upload below: one sequence per line)", TEXT_FILE)]


def datasets(session: Session | None, model: str) -> tuple[Any, ...]:
    """On a model change: the dataset dropdown for `model` (on its trained task, else the first it can read), and
    the last run's figure, summary and kept run cleared, so a click always opens the model chosen. Left alone for
    a model name that resolves to nothing (the model dropdown says why)."""
    try:
        choices = dataset_choices(models.resolve(model, session))
    except ValueError:
        return gr.update(), gr.update(), gr.update(), gr.update()
    return gr.update(choices=choices, value=choices[0][1]), None, "", None


def file_lines(path: str, n: int) -> tuple[list[str], list[str]]:
    """The first `n` lines of an uploaded file (read no further), and a note if it has more. Refused with a
    sentence if it is not UTF-8 text or holds no text."""
    name = Path(path).name
    lines: list[str] = []
    more = False
    try:
        with open(path, encoding="utf-8") as file:
            for line in file:
                if len(lines) == n:
                    more = True
                    break
                lines.append(line.rstrip("\r\n"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{name} is not UTF-8 text (byte {err.start:,} cannot be decoded): upload a text file, "
                         "one sequence per line.") from None
    if any("\x00" in line for line in lines):
        raise ValueError(f"{name} holds NUL bytes, so it is not a text file: upload a text file, one sequence "
                         "per line.")
    if not any(line.strip() for line in lines):
        raise ValueError(f"{name} holds no text: upload a text file, one sequence per line.")
    return lines, [f"Read the first {n:,} lines of {name}; N sets how many."] if more else []


def dataset(loaded: Loaded, choice: str, n: int, seed: float | None, file: str | None) -> tuple[Any, str, list[str]]:
    """(data for head_stats, what it is in words, notes). A task whose token ids are the model's is read as
    TaskData (its `target` statistic included); one the model reads through an alphabet of its own, as text.
    The seed matters to tasks only."""
    if choice == TEXT_FILE:
        if not file:
            raise ValueError("Choose a text file to upload first (one sequence per line), or pick a task.")
        lines, notes = file_lines(file, n)
        data = TextData(lines, loaded.tokenizer, loaded.max_seq_len)
        if not any(data.text(i) for i in range(len(data))):
            raise ValueError(f"No line of {Path(file).name} holds a character {loaded.name} reads; its alphabet is "
                             f"{loaded.tokenizer.alphabet!r}.")
        return data, f"{len(lines):,} lines of {Path(file).name}", notes
    readable = readable_tasks(loaded)
    if choice not in readable:
        offered = ", ".join(readable + [TEXT_FILE])
        raise ValueError(f"{loaded.name} cannot read the {choice!r} task; choose one of: {offered}.")
    seed = models.whole(seed, "seed", *limits.FORM["seed"])
    data = TaskData(choice, n, seed)
    said = f"{n:,} samples of the {choice} task (seed {seed})"
    if data.tokenizer == loaded.tokenizer:
        return data, said, []
    return (TextData([data.text(i) for i in range(n)], loaded.tokenizer, loaded.max_seq_len), said,
            [f"{loaded.name} numbers its tokens otherwise than the {choice} task, so the samples are read as text "
             "and the task's own statistic (attention on the task's key) is left out."])


def longest(loaded: Loaded, data: Any) -> int:
    """Tokens of the longest sequence `data` gives the model (BOS included, within max_seq_len)."""
    if isinstance(data, TaskData):
        return min(data.source.max_len, loaded.max_seq_len)
    return min(max(len(data.clean(i)[0]) for i in range(len(data))) + 1, loaded.max_seq_len)


def batch_size(loaded: Loaded, n: int) -> int:
    """Sequences per forward pass: BATCH, fewer if a batch of `n`-token traces (every stage: an upper bound on
    what the pass and importance's backward pass hold) would pass MAX_BATCH_TRACE_BYTES; one sequence must fit."""
    limits.check(loaded.model.config, n)
    one = xattn.limits.trace_bytes(loaded.model.config, 1, n)
    return max(1, min(BATCH, limits.MAX_BATCH_TRACE_BYTES // one))


def tag(fig: Figure, stats: xattn.HeadStats) -> Figure:
    """Each heatmap learns its statistic (head_stats_figure adds one per statistic, in STATS order), for clicks."""
    for trace, stat in zip((t for t in fig.data if t.type == "heatmap"), stats.values, strict=True):
        trace.meta = {"stat": stat}
    return fig


def summary(loaded: Loaded, stats: xattn.HeadStats, said: str, notes: list[str]) -> str:
    """Markdown: what was read, what each mean is over, the notes, and the top head of each statistic."""
    counts = stats.counts
    over = [f"**{counts['entropy']:,} queries** (every token after the first) for the per-query statistics"]
    if "target" in counts:
        over.append(f"{counts['target']:,} answer characters for the task's key")
    if "importance" in counts:
        over.append(f"{counts['importance']:,} sequences for importance")
    top = []
    for stat, values in stats.values.items():
        layer, head = divmod(int(values.argmax()), values.shape[1])
        top.append(f"- {viz.STAT_STYLE[stat][0]}: layer {layer}, head {head} — {float(values[layer, head]):.3g} "
                   f"(sequence {int(stats.examples[stat][layer, head])})")
    return "\n\n".join([f"**{loaded.name}** read **{stats.sequences:,} sequences**: {said}. Means over "
                         + "; ".join(over) + ".",
                         *[f"**Note:** {note.rstrip('.')}." for note in notes + stats.notes],
                         "**Top head per statistic** (largest value; click a head in the figure to open its "
                         "clearest example in Explore):\n" + "\n".join(top)])


@dataclass
class HeadsTab:
    """The Heads tab's components (ui.py wires them)."""

    dataset: gr.Dropdown
    n: gr.Number
    seed: gr.Number
    file: gr.File
    button: gr.Button
    summary: gr.Markdown
    figure: Any                # heatmap.PlotlyView
    run: gr.State


def layout(opening: Loaded) -> HeadsTab:
    """The tab's controls, summary and clickable figure, for the page's first model `opening`."""
    gr.Markdown(INTRO)
    choices = dataset_choices(opening)
    with gr.Row():
        dataset_choice = gr.Dropdown(choices, value=choices[0][1], label="dataset", scale=2)
        n = gr.Number(DEFAULT_N, label=f"N: sequences (1–{limits.MAX_HEAD_SEQUENCES:,})", precision=0)
        seed = gr.Number(0, label="seed (tasks)", precision=0)
        file = gr.File(label="text file: one sequence per line (UTF-8)", scale=2, height=150)
    button = gr.Button("Run", variant="primary", elem_id="heads-run")
    with gr.Row():
        figure = heatmap.plotly_view("head statistics", role="heads", elem_id="head-statistics")
        summary_md = gr.Markdown(label="summary", elem_id="heads-summary")
    return HeadsTab(dataset_choice, n, seed, file, button, summary_md, figure,
                    gr.State(None, time_to_live=limits.SESSION_TTL_S))


@views.friendly
def heads(session: Session | None, model: str, choice: str, n: float, seed: float, file: str | None,
          progress: gr.Progress = gr.Progress()) -> tuple[Figure, str, HeadsRun]:
    """Head statistics of `model` over `n` sequences of `choice` (a task, or TEXT_FILE: the first `n` lines of
    `file`): the layers × heads heatmaps, a summary, and the run kept for clicks."""
    loaded = views.load(session, model, progress)
    n = models.whole(n, "N", 1, limits.MAX_HEAD_SEQUENCES,
                     past="For more sequences, run xattn.head_stats in a notebook (its Ray engine spreads them over "
                          "workers).")
    data, said, notes = dataset(loaded, choice, n, seed, file)
    total = len(data)

    def step(done: int, _: int | None) -> None:
        progress(done / total, desc=f"{done:,} of {total:,} sequences")

    stats = xattn.head_stats(loaded.model, data, batch_size=batch_size(loaded, longest(loaded, data)), progress=step)
    texts = {i: data.text(i) for i in {int(i) for ids in stats.examples.values() for i in ids.flatten()}}
    figure = tag(viz.head_stats_figure(stats), stats)
    return figure, summary(loaded, stats, said, notes), HeadsRun(loaded.name, stats, texts)


@views.friendly
def pick(run: HeadsRun | None, evt: gr.EventData) -> list[Any]:
    """A click on a head: Explore selected, with the head's clearest example of the clicked statistic as the text,
    that layer and head, and its last token as the query (the run is of the model chosen: `datasets` clears it
    when the model changes)."""
    if run is None:
        raise ValueError("Run Heads first: a click opens the example of a head in the statistics drawn.")
    data = getattr(evt, "_data", None) or {}
    stat = data.get("stat")
    if stat not in run.stats.examples:
        raise ValueError(f"The figure has no statistic {stat!r}; it shows {', '.join(run.stats.examples)}.")
    layers, heads_ = run.stats.examples[stat].shape
    layer = views.index(data.get("layer"), layers, "layer", run.model)
    head = views.index(data.get("head"), heads_, "head", run.model)
    text = run.texts[int(run.stats.examples[stat][layer, head])]
    return [gr.Tabs(selected="explore"), text, layer, head, len(text)]

