"""Checking a big join's events in worker processes, on every core.

A join of a large room verifies tens of thousands of PDUs: format, event
ID, content hash and one ed25519 signature each (``check_pdus``). Threads do
not help much: about a third of the per-event work is Python (canonical
JSON, hashing, validation) under the GIL, and measured on these 2-core
machines two verify threads ran no faster than one. Worker processes do:
``ProcessCheckPool`` sends chunks of PDUs to a ``ProcessPoolExecutor`` whose
workers run ``check_pdus`` and the storage encoding and answer with a compact
verdict per PDU (``matrixfed.events.verdicts``), never the events themselves:
the parent keeps the PDUs it parsed and builds the ``Event`` objects from
them, so only the PDUs travel out and only strings travel back.

Workers come from a ``forkserver`` (a clean process that has imported the
checking code once; forking the reactor's own process, with its threads and
sockets, is unsafe) and are started by ``start()`` so a join never waits for
them. As with every ``spawn``/``forkserver`` pool, a worker imports the
program's main module under another name: a program embedding matrixfed
must guard its start-up code with ``if __name__ == "__main__"`` (``twistd``
and ``trial`` do), or pass ``--join-verify-processes 0``. Whatever goes wrong with the pool (a worker killed, the pool unusable)
makes ``check_chunk`` raise ``ProcessPoolUnavailable``; the verifier then
checks that chunk on its threads instead and the pool is rebuilt for the
next join, so a broken pool costs speed, never a join.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from matrixfed.events import verdicts
from matrixfed.events.checks import CheckResult
from matrixfed.events.keys import KeyMap
from matrixfed.events.room_versions import RoomVersion

__all__ = ["ProcessCheckPool", "ProcessPoolUnavailable"]

log = Logger()


class ProcessPoolUnavailable(Exception):
    """The worker processes could not check a chunk; check it another way."""


# How long each warm-up job holds its worker, in seconds: long enough that
# the jobs submitted back to back by start() find no idle worker and each
# makes the executor start another process (it starts them on demand).
WARM_UP_HOLD_SECONDS = 0.05


class ProcessCheckPool:
    """A pool of worker processes checking chunks of PDUs (module docstring)."""

    def __init__(self, *, reactor: Any, processes: int) -> None:
        """Args:
        reactor: IReactorThreads: results are delivered on its thread.
        processes: worker processes (the CPU count; at least 1).
        """
        self._reactor = reactor
        self._processes = max(1, processes)
        self._executor: ProcessPoolExecutor | None = None
        self._warming: list[Future[Any]] = []

    @property
    def processes(self) -> int:
        return self._processes

    def start(self) -> None:
        """Start the workers now, in the background, so no join waits for them."""
        executor = self._get_executor()
        self._warming = []
        for _ in range(self._processes):
            try:
                self._warming.append(executor.submit(time.sleep, WARM_UP_HOLD_SECONDS))
            except Exception:
                log.failure("cannot start the join's worker processes")
                self._discard(executor)
                return

    async def ready(self) -> None:
        """Wait until the workers ``start()`` launched are up (or failed to start).

        Nothing needs to wait for this: a chunk submitted earlier waits in the
        executor's queue. It is for measuring a join against warm workers.
        """
        for future in self._warming:
            try:
                await _deferred_from_future(self._reactor, future)
            except Exception:
                return

    def stop(self) -> None:
        """Stop the workers; chunks still queued are cancelled."""
        executor, self._executor = self._executor, None
        if executor is not None:
            _shut_down(executor)

    async def check_chunk(
        self, chunk: Sequence[Any], room_version: RoomVersion, keys: KeyMap
    ) -> tuple[list[CheckResult], list[str | None]]:
        """``check_and_encode(chunk, room_version, keys)`` in a worker process.

        Raises:
            ProcessPoolUnavailable: the pool could not do it (the caller
                checks the chunk itself); the pool is rebuilt next time.
        """
        executor = self._get_executor()
        try:
            future = executor.submit(
                verdicts.check_in_worker, list(chunk), room_version.identifier, keys
            )
        except Exception as e:
            self._discard(executor)
            raise ProcessPoolUnavailable(f"cannot submit to the worker processes: {e!r}") from e
        try:
            answer = await _deferred_from_future(self._reactor, future)
            return verdicts.results_from_verdicts(chunk, room_version, answer)
        except Exception as e:
            # The worker catches every PDU's error itself: anything raised
            # here is the pool's (a worker died, pickling failed).
            self._discard(executor)
            raise ProcessPoolUnavailable(f"a worker process failed: {e!r}") from e

    def _get_executor(self) -> ProcessPoolExecutor:
        if self._executor is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([verdicts.__name__])
            self._executor = ProcessPoolExecutor(max_workers=self._processes, mp_context=context)
        return self._executor

    def _discard(self, executor: ProcessPoolExecutor) -> None:
        if self._executor is executor:
            self._executor = None
        log.warn("join worker processes discarded; the next big join starts new ones")
        _shut_down(executor)


def _shut_down(executor: ProcessPoolExecutor) -> None:
    """Stop ``executor`` and its workers now, without waiting for them.

    ``shutdown(wait=False)`` alone leaves workers blocked on their queue
    when the program exits right after (seen under twistd: they outlived
    it and kept its output pipes open), so each worker is also terminated;
    a worker holds nothing that needs a clean exit.
    """
    workers = list(getattr(executor, "_processes", {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for worker in workers:
        if worker.is_alive():
            worker.terminate()


def _deferred_from_future(reactor: Any, future: Future[Any]) -> Deferred[Any]:
    """A Deferred firing on the reactor thread with ``future``'s outcome."""

    def cancel(_: Deferred[Any]) -> None:
        future.cancel()

    d: Deferred[Any] = Deferred(cancel)

    def fire(done: Future[Any]) -> None:
        if d.called:  # cancelled meanwhile
            return
        if done.cancelled():
            d.errback(ProcessPoolUnavailable("the chunk was cancelled"))
            return
        error = done.exception()
        if error is not None:
            d.errback(error)
        else:
            d.callback(done.result())

    # The executor calls back from its own thread (or at once, if done).
    future.add_done_callback(lambda done: reactor.callFromThread(fire, done))
    return d
