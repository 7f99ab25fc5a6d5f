"""The xattn Gradio app: `xattn-app` opens it at http://127.0.0.1:7860 (see main.py); so does `python -m app`
from a checkout. Installed, this folder is the package `xattn_app` (pyproject.toml maps it), so a wheel adds no
top-level `app`: the modules import each other relatively, never as `app.*`.

Importing it switches Gradio's telemetry off (the app never reaches the network unless --share).
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
