"""Figures to standalone HTML or PNG, and a trace's tensors to .npz or .safetensors."""
from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
from safetensors.torch import save_file

from ..trace import Trace

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def to_html(fig: go.Figure, path: str | os.PathLike) -> Path:
    """A standalone HTML file with plotly.js inlined, so it opens offline."""
    path = Path(path)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path


def find_chromium() -> str | None:
    """A Chromium executable: $XATTN_CHROMIUM, else /usr/bin/chromium or the first browser on PATH."""
    candidates = [os.environ.get("XATTN_CHROMIUM"), "/usr/bin/chromium", *map(shutil.which, BROWSERS)]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def to_png(fig: go.Figure, path: str | os.PathLike, *, scale: float = 2.0) -> Path:
    """Render `fig` to PNG with plotly.js in a headless Chromium (the system browser, via Playwright),
    at the figure's own width and height. Raises RuntimeError when no Chromium can be found."""
    browser = find_chromium()
    if browser is None:
        raise RuntimeError("to_png needs a Chromium browser: install one (e.g. `apt install chromium`) or point "
                           "XATTN_CHROMIUM at a Chrome/Chromium executable; to_html works without one")
    try:
        from playwright.sync_api import sync_playwright  # optional: only PNG export needs it
    except ImportError:
        raise RuntimeError("to_png needs the playwright package: `pip install playwright` (it drives the system "
                           "Chromium; no browser download is needed); to_html works without it") from None

    width, height = fig.layout.width or 900, fig.layout.height or 600
    html = fig.to_html(include_plotlyjs=True, full_html=True, div_id="figure")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=browser, args=["--no-sandbox"])
        try:
            page = chromium.new_page()
            page.set_content(html)
            url = page.evaluate("([w, h, s]) => Plotly.toImage(document.getElementById('figure'), "
                                "{format: 'png', width: w, height: h, scale: s})", [width, height, scale])
        finally:
            chromium.close()
    path = Path(path)
    path.write_bytes(base64.b64decode(url.split(",", 1)[1]))
    return path


def trace_tensors(trace: Trace) -> dict[str, torch.Tensor]:
    """Every stage plus visible, tokens and layers, contiguous on the CPU."""
    tensors = {stage: trace[stage] for stage in trace.stages}
    tensors.update(visible=trace.visible, tokens=trace.tokens, layers=torch.tensor(trace.layers, dtype=torch.long))
    return {name: t.detach().cpu().contiguous().clone() for name, t in tensors.items()}


def save_trace(trace: Trace, path: str | os.PathLike) -> Path:
    """Write the trace's tensors to `.npz` (compressed) or `.safetensors`, chosen by suffix. Labels, the
    model config and the extra key columns' names go along (as arrays in .npz, as JSON header metadata in
    .safetensors)."""
    path = Path(path)
    tensors = trace_tensors(trace)
    meta = {"config": json.dumps(trace.config.to_dict(), sort_keys=True), "labels": json.dumps(trace.labels),
            "key_extras": json.dumps(trace.key_extras)}
    if path.suffix == ".npz":
        arrays = {name: (t.float() if t.dtype == torch.bfloat16 else t).numpy() for name, t in tensors.items()}
        np.savez_compressed(path, **arrays, **{k: np.array(v) for k, v in meta.items()})
    elif path.suffix == ".safetensors":
        save_file(tensors, str(path), metadata=meta)
    else:
        raise ValueError(f"save_trace writes .npz or .safetensors files, not {path.suffix or 'no suffix'!r}")
    return path
