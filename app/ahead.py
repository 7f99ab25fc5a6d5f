"""Work done while the server is idle: views made ahead of the clicks that will ask for them.

A Run draws one head; a click on another head's tile then waits while the server makes that head's views (at
2,048 tokens, pooling five stages of 2,048² cells to the screen takes about 0.13 s). Between requests the server has
time for that. After a Run, the page's views `plan` one task per head. A thread runs the tasks one at a time, and
only once no request has been served for `quiet_s` (`serving` marks each one), so no task starts while a request
is served; one task at most (about 0.13 s at 2,048 tokens) runs on beside a request that arrives meanwhile. The
thread runs niced (`NICE`): on a machine that also runs the browser, the page drawing the Run comes first.

Nothing runs until `start` (the served app calls it): views called from a notebook, a test or the API client's
examples make no threads.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)
NICE = 10       # the worker thread's niceness (Linux): background work, but not starved while it holds the GIL


class Ahead:
    """Plans of tasks run by one thread while the server is idle: the newest plan first, at most `most` plans kept
    (a newer plan under the same key replaces the older), each task once."""

    def __init__(self, quiet_s: float, most: int) -> None:
        self.quiet_s, self.most = quiet_s, most
        self.plans: OrderedDict[Hashable, Iterator[Callable[[], object]]] = OrderedDict()
        self.busy = 0                               # requests being served now
        self.last = 0.0                             # when the latest one ended (time.monotonic)
        self.started = False
        self.worker: threading.Thread | None = None
        self.changed = threading.Condition()

    def start(self) -> None:
        """Let plans run from now on (the served app's)."""
        with self.changed:
            self.started = True

    def stop(self) -> None:
        """Drop every plan and run no more (a served app closed: tests)."""
        with self.changed:
            self.started = False
            self.plans.clear()
            self.changed.notify_all()

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Mark a request being served: no task starts until `quiet_s` after the last one ends."""
        with self.changed:
            self.busy += 1
        try:
            yield
        finally:
            with self.changed:
                self.busy -= 1
                self.last = time.monotonic()
                self.changed.notify_all()

    def plan(self, key: Hashable, tasks: Iterable[Callable[[], object]]) -> None:
        """Run `tasks` in order while the server is idle, replacing the plan under `key`; nothing before `start`."""
        with self.changed:
            if not self.started:
                return
            self.plans.pop(key, None)
            self.plans[key] = iter(list(tasks))
            while len(self.plans) > self.most:
                self.plans.popitem(last=False)
            if self.worker is None:
                self.worker = threading.Thread(target=self._work, name="xattn-ahead", daemon=True)
                self.worker.start()
            self.changed.notify_all()

    def idle(self, timeout_s: float) -> bool:
        """Wait until no plan has a task left (for tests and benchmarks); False if `timeout_s` passed first."""
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while self.worker is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
            return True

    def _next(self) -> Callable[[], object] | None:
        """The newest plan's next task once the server is quiet; None when no plan has one left (the thread ends)."""
        with self.changed:
            while True:
                if not self.plans:
                    self.worker = None
                    self.changed.notify_all()
                    return None
                wait = self.last + self.quiet_s - time.monotonic()
                if self.busy == 0 and wait <= 0:
                    key = next(reversed(self.plans))
                    task = next(self.plans[key], None)
                    if task is not None:
                        return task
                    del self.plans[key]
                    continue
                self.changed.wait(None if self.busy else wait)

    def _work(self) -> None:
        try:                # this thread's CPU yields to the rest of the machine's: the page drawing a Run's views
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)       # Linux: one thread's niceness
        except (AttributeError, OSError):
            pass
        while (task := self._next()) is not None:
            try:
                task()
            except Exception:  # noqa: BLE001 -- work ahead is optional: the click makes it again, and says why
                log.exception("work ahead failed")
