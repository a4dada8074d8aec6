"""Checking a join's events in worker processes: the verdicts, the pool, the fallback."""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from typing import Any

from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from matrixfed.errors import EventSizeError, InvalidEventError, SignatureError
from matrixfed.events.checks import CheckResult
from matrixfed.events.keys import KeyMap
from matrixfed.events.model import Event
from matrixfed.events.room_versions import RoomVersion, get_room_version
from matrixfed.events.storedjson import encode_pdu
from matrixfed.events.verdicts import (
    VerdictError,
    check_and_encode,
    check_in_worker,
    results_from_verdicts,
)
from matrixfed.joins.procpool import ProcessCheckPool, ProcessPoolUnavailable
from matrixfed.joins.threads import PoolRunner
from matrixfed.joins.verify import EventVerifier
from tests.events.fixtures import SERVER_B, default_keys, signed_pdu

V10, V12 = get_room_version("10"), get_room_version("12")


def _mixed_chunk() -> list[Any]:
    """One PDU of every outcome: good, hash mismatch, malformed, bad signature."""
    tampered = signed_pdu(V12, n=2)
    tampered["content"]["body"] = "changed"
    bad_sig = signed_pdu(V12, n=3)
    bad_sig["depth"] += 1
    return [
        signed_pdu(V12, n=1),
        tampered,
        {"type": "m.room.message"},
        bad_sig,
        signed_pdu(V12, n=5, signers=(SERVER_B,)),
        "not an object",
    ]


def _summary(results: Sequence[CheckResult], texts: Sequence[str | None]) -> list[Any]:
    out: list[Any] = []
    for result, text in zip(results, texts, strict=True):
        if isinstance(result, Event):
            out.append(("event", result.event_id, result.pdu, text))
        elif isinstance(result, EventSizeError) and result.rejectable:
            out.append(("rejectable", str(result), result.event.event_id, result.event.pdu, text))
        else:
            out.append((type(result).__name__, str(result), text))
    return out


class VerdictTests(unittest.TestCase):
    """The verdicts carry everything ``check_and_encode`` decides (no processes)."""

    def assert_round_trip(self, chunk: list[Any], rv: RoomVersion) -> None:
        direct = check_and_encode(chunk, rv, default_keys())
        rebuilt = results_from_verdicts(
            chunk, rv, check_in_worker(chunk, rv.identifier, default_keys())
        )
        self.assertEqual(_summary(*rebuilt), _summary(*direct))

    def test_every_outcome_round_trips(self) -> None:
        chunk = _mixed_chunk()
        self.assert_round_trip(chunk, V12)
        results, texts = results_from_verdicts(
            chunk, V12, check_in_worker(chunk, "12", default_keys())
        )
        self.assertIsInstance(results[0], Event)
        self.assertIs(results[0].pdu, chunk[0])  # type: ignore[union-attr]
        self.assertEqual(texts[0], encode_pdu(chunk[0]))
        # The hash mismatch keeps the redacted form, a new dict.
        self.assertIsNot(results[1].pdu, chunk[1])  # type: ignore[union-attr]
        self.assertEqual(results[1].content, {})  # type: ignore[union-attr]
        self.assertIsInstance(results[2], InvalidEventError)
        self.assertIsInstance(results[3], SignatureError)
        self.assertIsInstance(results[4], SignatureError)
        self.assertIsInstance(results[5], InvalidEventError)
        self.assertEqual(texts[2:], [None] * 4)

    def test_rejectable_size_error_round_trips(self) -> None:
        wide = signed_pdu(V10, event_type="é" * 128)
        self.assert_round_trip([wide, signed_pdu(V10, n=2)], V10)
        [result], _ = results_from_verdicts(
            [wide], V10, check_in_worker([wide], "10", default_keys())
        )
        assert isinstance(result, EventSizeError)
        self.assertTrue(result.rejectable)
        self.assertIsInstance(result.event, Event)

    def test_verdicts_that_do_not_fit_are_refused(self) -> None:
        chunk = [signed_pdu(V12, n=1)]
        self.assertRaises(VerdictError, results_from_verdicts, chunk, V12, [])
        self.assertRaises(VerdictError, results_from_verdicts, chunk, V12, [("ok", "$x")])
        self.assertRaises(VerdictError, results_from_verdicts, chunk, V12, [()])
        self.assertRaises(VerdictError, results_from_verdicts, chunk, V12, [("what", "?")])


class ProcessPoolTests(unittest.TestCase):
    """A real pool of worker processes (forkserver), on the real reactor."""

    def setUp(self) -> None:
        self.pool = ProcessCheckPool(reactor=reactor, processes=2)
        self.addCleanup(self.pool.stop)

    async def test_workers_answer_as_check_and_encode_does(self) -> None:
        self.pool.start()
        chunk = _mixed_chunk() + [signed_pdu(V12, n=i) for i in range(10, 60)]
        results, texts = await self.pool.check_chunk(chunk, V12, default_keys())
        self.assertEqual(
            _summary(results, texts), _summary(*check_and_encode(chunk, V12, default_keys()))
        )
        # The events are built on the parent's own PDUs: nothing copied back.
        self.assertIs(results[0].pdu, chunk[0])  # type: ignore[union-attr]

    async def test_a_killed_worker_makes_the_chunk_unavailable_then_the_pool_recovers(
        self,
    ) -> None:
        chunk = [signed_pdu(V12, n=i) for i in range(1, 20)]
        await self.pool.check_chunk(chunk, V12, default_keys())
        executor = self.pool._executor
        assert executor is not None
        for pid in list(executor._processes):  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGKILL)
        with self.assertRaises(ProcessPoolUnavailable):
            # The executor notices the dead workers on this or the next call.
            for _ in range(3):
                await self.pool.check_chunk(chunk, V12, default_keys())
        results, _ = await self.pool.check_chunk(chunk, V12, default_keys())
        self.assertEqual([type(r) for r in results], [Event] * len(chunk))


class _Keyring:
    def __init__(self, keys: KeyMap) -> None:
        self.keys = keys

    async def get_keys_batch(self, needed: Any) -> KeyMap:
        return self.keys


class _BrokenPool(ProcessCheckPool):
    def __init__(self) -> None:
        super().__init__(reactor=reactor, processes=2)
        self.calls = 0

    async def check_chunk(
        self, chunk: Sequence[Any], room_version: RoomVersion, keys: KeyMap
    ) -> tuple[list[CheckResult], list[str | None]]:
        self.calls += 1
        raise ProcessPoolUnavailable("broken on purpose")


class VerifierWithPoolTests(unittest.TestCase):
    """``EventVerifier`` gives the same batch with worker processes, threads,
    or a pool that fails (it falls back to threads)."""

    def setUp(self) -> None:
        self.threads = ThreadPool(minthreads=1, maxthreads=2)
        self.threads.start()
        self.addCleanup(self.threads.stop)
        self.runner = PoolRunner(reactor=reactor, threadpool=self.threads)

    def verifier(self, pool: ProcessCheckPool | None) -> EventVerifier:
        return EventVerifier(
            keyring=_Keyring(default_keys()),
            runner=self.runner,
            chunk_size=7,
            process_pool=pool,
            process_pool_min_events=1,
        )

    async def verify(self, pool: ProcessCheckPool | None, pdus: list[Any]) -> Any:
        room_id = pdus[0]["room_id"]
        batch = await self.verifier(pool).verify(pdus, V12, room_id)
        return (
            {k: e.pdu for k, e in batch.events.items()},
            batch.rejected,
            batch.dropped,
            batch.ids,
            batch.encoded,
        )

    async def test_same_batch_with_processes_threads_or_a_broken_pool(self) -> None:
        pdus = [signed_pdu(V12, n=i) for i in range(1, 40)]
        pdus[5] = dict(pdus[5], depth=pdus[5]["depth"] + 1)  # bad signature: dropped
        pdus[9] = dict(pdus[9], content={"body": "changed"})  # bad hash: redacted
        with_threads = await self.verify(None, pdus)
        pool = ProcessCheckPool(reactor=reactor, processes=2)
        self.addCleanup(pool.stop)
        self.assertEqual(await self.verify(pool, pdus), with_threads)
        self.assertIsNotNone(pool._executor, "the pool failed and was discarded")
        broken = _BrokenPool()
        self.assertEqual(await self.verify(broken, pdus), with_threads)
        # One failure switches that batch to threads: not one retry per chunk.
        self.assertEqual(broken.calls, 1)
        self.assertEqual(len(with_threads[2]), 1)
        self.assertIn(None, with_threads[3])
