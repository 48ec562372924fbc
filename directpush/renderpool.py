# -*- test-case-name: tests.test_render -*-
"""
A L{Renderer} backed by worker processes.

Rendering is pure Python CPU work: threads would share one core through
the GIL, processes use them all. Workers are started with C{spawn} (never
C{fork}: the server has a running reactor and threads) and import only
the mail and WBXML modules.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, List, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger

from . import wbxml
from .protocol.render import RenderJob, ready, renderEncoded

log = Logger()

#: Fewer messages than this are rendered in one job: the round trip to a
#: worker costs more than spreading them.
BATCH = 32


class RenderPool(Service):
    """
    Renders in C{workers} processes; a service so that twistd starts and
    stops them with the server.
    """

    def __init__(self, reactor: IReactorFromThreads, workers: int) -> None:
        self._reactor = reactor
        self._workers = workers
        self._executor: Any = None

    def startService(self) -> None:
        super().startService()
        context = multiprocessing.get_context("spawn")
        self._executor = ProcessPoolExecutor(max_workers=self._workers, mp_context=context)
        # Workers start on demand, each taking a good part of a second to
        # import its modules: start them now rather than in the first Sync.
        for _ in range(self._workers):
            self._executor.submit(ready)
        log.info("rendering in {workers} worker processes", workers=self._workers)

    def stopService(self) -> "Deferred[None]":
        """
        Stop the workers; the result fires once they have exited. twistd
        waits for it: a server that ends by re-raising SIGTERM runs no
        exit handlers, and workers told to stop only a moment before would
        be left running without a parent.
        """
        super().stopService()
        executor, self._executor = self._executor, None
        stopped: Deferred[None] = Deferred()
        if executor is None:
            stopped.callback(None)
            return stopped

        def shutdown() -> None:
            # Blocks until every worker has exited: not on the reactor thread.
            try:
                executor.shutdown(wait=True, cancel_futures=True)
            finally:
                self._reactor.callFromThread(stopped.callback, None)

        threading.Thread(target=shutdown, name="directpush-renderpool-stop", daemon=True).start()
        return stopped

    def __call__(self, jobs: Sequence[RenderJob]) -> "Deferred[List[wbxml.Element]]":
        jobs = list(jobs)
        if self._executor is None or not jobs:
            # Not running (or nothing to do): render here rather than fail.
            from .protocol.render import renderInline

            return renderInline(jobs)
        size = max(BATCH, -(-len(jobs) // self._workers))
        parts = [self._submit(jobs[i : i + size]) for i in range(0, len(jobs), size)]
        d = gatherResults(parts, consumeErrors=True)
        d.addCallback(lambda lists: [element for part in lists for element in part])
        return d

    def _submit(self, jobs: List[RenderJob]) -> "Deferred[List[wbxml.Element]]":
        d: Deferred[List[wbxml.Element]] = Deferred()
        future: Future = self._executor.submit(renderEncoded, jobs)

        def done(f: Future) -> None:
            # Runs on an executor thread: hand the result to the reactor.
            self._reactor.callFromThread(_fire, d, f)

        future.add_done_callback(done)
        return d


def _fire(d: "Deferred[Any]", future: Future) -> None:
    if future.cancelled():
        d.errback(RuntimeError("rendering was cancelled"))
        return
    error = future.exception()
    if error is not None:
        d.errback(error)
    else:
        d.callback(future.result())
