"""Every number that bounds what the app accepts, in one place: the form, the views, uploads and the server
read them from here (README, "Limits and safety", lists them and what happens past them)."""
from __future__ import annotations

from typing import Any

import xattn

MIB = 2**20

# Models and traces: checked before anything is allocated or run.
MAX_PARAMETERS = 50_000_000           # a fresh or uploaded model (200 MB of float32)
MAX_TRACE_BYTES = 2048 * MIB          # one trace of the model's full max_seq_len, every stage, layer and head
                                      # (an upper bound: stages an option leaves as they were share one tensor)
MAX_BATCH_TRACE_BYTES = 1024 * MIB    # one Heads batch's traces, which its importance's backward pass also holds
FORM = {"depth": (1, 12), "heads": (1, 16), "dim": (8, 512), "max_seq_len": (8, 2048), "seed": (0, 2**32 - 1),
        "count": (0, 2048),               # the form's counts: memory tokens, memory key/values, attention window
        "steps": (1, 1024), "top-k": (0, 1 << 20), "budget": (2, 1 << 20)}   # the Generate tab's

# Inputs.
MAX_TEXT_CHARS = 100_000              # longer text is refused; text past the model's max_seq_len is cut, with a warning
MAX_UPLOAD_BYTES = 256 * MIB          # the server refuses bigger uploads (HTTP 413); the loader checks again
MAX_HEAD_SEQUENCES = 2_000            # sequences one Heads run reads (task samples, or a file's first lines)

# Sessions and the server.
MAX_SESSION_MODELS = 4                # fresh or uploaded models kept per browser session (the oldest is dropped)
SESSION_TTL_S = 3600                  # a session's own models are freed an hour after its last change
CONCURRENCY = 2                       # requests computed at once (the machine's cores share the rest)
QUEUE_SIZE = 64                       # requests waiting beyond those; one more gets "Queue is full"
RECENT_RUNS = 2                       # traces kept for clicks and zooms on the Explore tab (app/views.py RECENT)
RECENT_HOVERS = 16                    # focused heads' and strips' exact hover values kept for pages
                                      # (views.make_head_views)
AHEAD_HEADS = 64                      # heads' Explore views kept for clicks, made by them or ahead (views.head_views;
                                      # about 2 MB a head at 2,048 tokens): a Run plans at most this many ahead
RECENT_GENERATIONS = 8                # generations kept for the Generate tab's scrubber (app/generate.py)
RECENT_BYTES = 2048 * MIB             # … counting twice their recorded stages; a bigger one is not kept
CACHE_CLEANUP = (3600, 3600)          # uploaded files are deleted from the server's cache after an hour


def check(config: Any, n: int | None = None, n_src: int | None = None) -> None:
    """Refuse, with the numbers, a model or a trace of `n` tokens (default: its max_seq_len) over the budgets;
    an encoder–decoder's (an EncDecConfig) `n` is its target's and `n_src` its source's, and its trace counts
    the encoder, the decoder and the cross-attention."""
    xattn.limits.check(config, max_parameters=MAX_PARAMETERS, max_trace_bytes=MAX_TRACE_BYTES, n=n, n_src=n_src)
