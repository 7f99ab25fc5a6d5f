"""Command line: `xattn-app [--host 127.0.0.1] [--port 7860] [--share]`. Never reaches the network unless --share."""
from __future__ import annotations

import argparse
import gzip
import logging
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Sequence
from functools import partial
from urllib.parse import unquote, urljoin

import anyio
import brotli
import gradio as gr
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xattn.memory import reuse_freed_memory

from . import heatmap, limits, views
from .ui import CSS, build

log = logging.getLogger(__name__)


def create_app() -> gr.Blocks:
    """The app, built but not launched."""
    return build()


class PreloadScripts:
    """The page's HTML answer carries `Link: rel=preload` headers for its scripts, plotly.js and the views' code
    (heatmap.PRELOAD): the browser fetches them as the page starts instead of when the plot views mount; they still
    run when the views add them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/":
            await self.app(scope, receive, send)
            return

        async def with_link(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"link", heatmap.PRELOAD.encode())]}
            await send(message)

        await self.app(scope, receive, with_link)


class KeptFiles:
    """The static files a page loads, answered from memory, each compressed once: Gradio's front end (/assets/) and
    the views' scripts (heatmap.PAGE_URLS). Gradio reads each from disk and brotli-compresses it on every request
    (plotly.js alone takes 30 ms of the server's time a page), time a 2-core machine takes from the browser as it
    starts the page. A browser asking whether its copy is current (If-None-Match) is told so (304). One copy a file
    and encoding, whatever the query: the files are Gradio's and the app's own, a set no client can grow. A ranged
    request, or any answer but 200, goes through as before."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.kept: dict[tuple[str, str], tuple[list[tuple[bytes, bytes]], bytes]] = {}   # (path, encoding)
        self.scripts = {"/" + url.split("?")[0] for url in heatmap.PAGE_URLS}

    def keeps(self, scope: Scope) -> bool:
        return (scope["type"] == "http" and scope["method"] == "GET"
                and (scope["path"].startswith("/assets/") or unquote(scope["path"]) in self.scripts)
                and not any(name == b"range" for name, _ in scope["headers"]))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.keeps(scope):
            await self.app(scope, receive, send)
            return
        asked = dict(scope["headers"])
        accepted = asked.get(b"accept-encoding", b"").decode("latin-1")
        encoding = "br" if "br" in accepted else "gzip" if "gzip" in accepted else ""
        key = (scope["path"], encoding)          # not the query: Gradio sends the same file whatever it says, and
        # a cache keyed by it would grow with every query a client makes up
        if key not in self.kept:
            answer: list[Message] = []

            async def keep(message: Message) -> None:
                answer.append(message)

            await self.app(scope, receive, keep)
            if answer[0]["status"] != 200:
                for message in answer:
                    await send(message)
                return
            body = b"".join(m.get("body", b"") for m in answer[1:])          # compressed off the event loop:
            self.kept[key] = await anyio.to_thread.run_sync(kept_answer, answer[0]["headers"], body, encoding)
        headers, body = self.kept[key]
        etag = dict(headers).get(b"etag")
        if etag is not None and asked.get(b"if-none-match") == etag:
            await send({"type": "http.response.start", "status": 304, "headers": [(b"etag", etag)]})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def kept_answer(headers: list[tuple[bytes, bytes]], body: bytes, encoding: str) -> tuple[list[tuple[bytes, bytes]],
                                                                                         bytes]:
    """A 200 answer's headers and body as KeptFiles keeps them: compressed for `encoding` ("br", "gzip" or "")."""
    if encoding == "br":
        body = brotli.compress(body, quality=5)
    elif encoding == "gzip":
        body = gzip.compress(body, compresslevel=6, mtime=0)
    dropped = {b"content-length", b"content-encoding"}
    headers = [(k, v) for k, v in headers if k.lower() not in dropped] + [(b"content-length", str(len(body)).encode())]
    if encoding:
        headers += [(b"content-encoding", encoding.encode()), (b"vary", b"Accept-Encoding")]
    return headers, body


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="xattn-app", description="Interactive attention visualizer for xattn models.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    return parser.parse_args(argv)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (for tests and benchmarks)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def warm_up(url: str, timeout_s: float = 60.0) -> None:
    """Visit the page at `url` once as the server starts, as a browser would (brotli accepted): the page rendered
    once, its first scripts and styles and the views' scripts compressed and kept (KeptFiles), so that the first
    person to open it finds the server as every later one does. Best effort: a failure only leaves that undone."""
    deadline = time.monotonic() + timeout_s
    get = partial(urllib.request.Request, headers={"Accept-Encoding": "br"})
    try:
        while True:
            try:
                with urllib.request.urlopen(get(url), timeout=10) as answer:
                    page = brotli.decompress(answer.read()).decode() if answer.headers["content-encoding"] == "br" \
                        else answer.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.2)
        for path in [*re.findall(r'(?:src|href)="\./(assets/[^"?]+)"', page), *heatmap.PAGE_URLS]:
            with urllib.request.urlopen(get(urljoin(url, path)), timeout=10) as answer:
                answer.read()
    except (OSError, ValueError, brotli.error) as err:
        log.info("warm-up of %s left undone: %s", url, err)


def launch(host: str = "127.0.0.1", port: int | None = 7860, share: bool = False, block: bool = True,
           concurrency: int = limits.CONCURRENCY, queue_size: int = limits.QUEUE_SIZE) -> tuple[gr.Blocks, str]:
    """Serve the app on `port` (None: any free one); with block=False return at once with the URL while
    the server runs in a thread. At most `concurrency` requests run at once and `queue_size` wait; one more
    is answered "Queue is full" (HTTP 503). Uploads over MAX_UPLOAD_BYTES are refused (HTTP 413); only the
    app's own uploads and static files are served, never other paths."""
    demo = create_app().queue(default_concurrency_limit=concurrency, max_size=queue_size, api_open=False)
    port = free_port(host) if port is None else port
    if host not in ("127.0.0.1", "localhost", "::1") or share:
        print(f"xattn-app: reachable from other machines ({'public share link' if share else host}); "
              f"limits: {limits.MAX_UPLOAD_BYTES // limits.MIB} MiB uploads, {concurrency} requests at once, "
              f"{queue_size} queued.")
    views.AHEAD.start()        # served: each head's views are made while the server is idle (app/ahead.py)
    local = "[::1]" if ":" in host else "127.0.0.1" if host in ("0.0.0.0", "localhost") else host
    threading.Thread(target=warm_up, args=(f"http://{local}:{port}/",), daemon=True, name="xattn-warm-up").start()
    _, url, _ = demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                            quiet=not block, footer_links=["api", "settings"], max_file_size=limits.MAX_UPLOAD_BYTES,
                            allowed_paths=heatmap.static_paths(), show_error=True, css=CSS,
                            app_kwargs={"middleware": [Middleware(PreloadScripts), Middleware(KeptFiles)]})
    return demo, url


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    reuse_freed_memory()       # traces of repeated requests reuse memory instead of page-faulting it in anew
    launch(args.host, args.port, args.share)


if __name__ == "__main__":
    main()
