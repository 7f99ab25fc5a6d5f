"""The xattn Gradio app: `xattn-app` or `python -m app` opens it at http://127.0.0.1:7860 (see app.main).

Importing it switches Gradio's telemetry off (the app never reaches the network unless --share).
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
