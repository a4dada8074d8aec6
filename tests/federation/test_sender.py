"""OutboundSender: batching, one transaction in flight, backoff, crash safety, EDUs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from matrixfed.errors import RemoteError
from matrixfed.events.hashing import compute_event_id
from matrixfed.events.model import Event
from matrixfed.events.room_versions import KNOWN_ROOM_VERSIONS
from matrixfed.federation.client import build_federation_client
from matrixfed.federation.sender import (
    MAX_EDUS_PER_TRANSACTION,
    MAX_PDUS_PER_TRANSACTION,
    RETRY_INITIAL_SECONDS,
    RETRY_MAX_SECONDS,
    OutboundSender,
)
from matrixfed.storage.persist import EventWithContext
from matrixfed.storage.store import Store
from tests.auth.roombuilder import ALICE, BOB, CAROL, RoomBuilder, signing_key_for
from tests.federation.fakes import FakeDNS, TestCA
from tests.harness.fakeremote import CloseConnection, FakeRemote, Garbage, Reply
from tests.storage.harness import DatabaseMixin, PostgresMixin, SqliteMixin

A = "a.example"
B = "b.example"
C = "c.example"

# Polling step and budget while database threads work (not a timing assertion).
POLL_SECONDS = 0.01
POLL_LIMIT = 1000


async def eventually(condition: Callable[[], bool], what: str = "condition") -> None:
    """Wait (on the real reactor, for database threads) until ``condition()`` holds."""
    for _ in range(POLL_LIMIT):
        if condition():
            return
        await deferLater(reactor, POLL_SECONDS)
    raise AssertionError(f"timed out waiting for {what}")


async def settle() -> None:
    """Let pending database work finish (a few reactor turns)."""
    for _ in range(20):
        await deferLater(reactor, POLL_SECONDS)


@attrs.define
class Call:
    destination: str
    path: str
    body: dict[str, Any]
    d: Deferred[Any]

    @property
    def txn_id(self) -> str:
        return self.path.rsplit("/", 1)[1]

    @property
    def event_ids(self) -> list[str]:
        return [p["event_id"] if "event_id" in p else _id(p) for p in self.body["pdus"]]


def _id(pdu: dict[str, Any]) -> str:
    return compute_event_id(pdu, KNOWN_ROOM_VERSIONS["10"])


class FakeClient:
    """Records put_json calls; each waits for the test to answer it."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    async def put_json(
        self,
        destination: str,
        path: str,
        data: Any,
        args: Any = None,
        *,
        timeout: float | None = None,
        ignore_backoff: bool = False,
        max_size: int | None = None,
    ) -> Any:
        d: Deferred[Any] = Deferred()
        self.calls.append(Call(destination, path, data, d))
        return await d

    def pending(self, destination: str | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if not c.d.called and (destination is None or c.destination == destination)
        ]


def ok(call: Call) -> None:
    call.d.callback({"pdus": {e: {} for e in call.event_ids}})


def fail(call: Call, code: int | None = None) -> None:
    if code is None:
        err = RemoteError(call.destination, "connection refused", reachable=False, transient=True)
    else:
        err = RemoteError(
            call.destination,
            f"HTTP {code}",
            reachable=True,
            transient=code >= 500 or code == 429,
            code=code,
        )
    call.d.errback(err)


class _SenderTests(DatabaseMixin):
    async def setUp(self) -> None:  # type: ignore[override]
        self.store: Store = await self.make_store()
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.client = FakeClient()
        self.room = RoomBuilder("10")
        self.room.standard_room(ALICE)
        self.room.member(BOB, "join")
        self.room.member(CAROL, "join")
        await self.persist(list(self.room.events.values()))
        self.senders: list[OutboundSender] = []

    async def tearDown(self) -> None:  # type: ignore[override]
        for sender in self.senders:
            await sender.stop()
        for call in self.client.pending():
            call.d.cancel()

    async def persist(self, events: list[Event]) -> None:
        assert self.room.room_id is not None
        await self.store.persist_events(self.room.room_id, [EventWithContext(e) for e in events])

    async def new_sender(self, client: Any = None) -> OutboundSender:
        sender = OutboundSender(
            db=self.store.db,
            store=self.store,
            federation_client=client or self.client,
            clock=self.clock,
            server_name=A,
        )
        self.senders.append(sender)
        await sender.start()
        return sender

    async def message(self, body: str = "hi") -> Event:
        event = self.room.send("m.room.message", ALICE, {"body": body})
        await self.persist([event])
        return event

    async def test_batches_of_50_with_one_transaction_in_flight(self) -> None:
        sender = await self.new_sender()
        first = await self.message("0")
        await sender.send_pdu(first, [A, B])
        await eventually(lambda: len(self.client.calls) == 1, "first transaction")
        sent = [first]
        for i in range(1, 121):
            event = await self.message(str(i))
            await sender.send_pdu(event, [B])
            sent.append(event)
        await settle()
        # Nothing else left while the first transaction is unanswered.
        self.assertEqual(len(self.client.calls), 1)
        delivered: list[str] = []
        txn_ids: list[str] = []
        while True:
            pending = self.client.pending()
            if not pending:
                await settle()
                if not self.client.pending():
                    break
                continue
            self.assertEqual(len(pending), 1, "one transaction in flight per destination")
            [call] = pending
            self.assertEqual(call.destination, B)
            self.assertLessEqual(len(call.body["pdus"]), MAX_PDUS_PER_TRANSACTION)
            self.assertEqual(call.body["origin"], A)
            delivered.extend(call.event_ids)
            txn_ids.append(call.txn_id)
            ok(call)
            await settle()
        self.assertEqual(delivered, [e.event_id for e in sent])
        self.assertEqual([len(c.body["pdus"]) for c in self.client.calls], [1, 50, 50, 20])
        self.assertEqual(len(set(txn_ids)), len(txn_ids))

    async def test_own_server_is_never_a_destination(self) -> None:
        sender = await self.new_sender()
        await sender.send_pdu(await self.message(), [A])
        await settle()
        self.assertEqual(self.client.calls, [])

    async def test_backoff_doubles_up_to_the_maximum_then_resets(self) -> None:
        sender = await self.new_sender()
        event = await self.message()
        await sender.send_pdu(event, [B])
        await eventually(lambda: len(self.client.pending()) == 1)
        expected = RETRY_INITIAL_SECONDS
        waits = []
        for _ in range(12):
            [call] = self.client.pending()
            fail(call)
            await eventually(lambda: sender.retry_interval(B) > 0, "backoff")
            await eventually(lambda: not sender._destinations[B].running, "loop ended")
            waits.append(sender.retry_interval(B))
            self.assertEqual(waits[-1], expected)
            # Not retried before the interval has passed...
            self.clock.advance(expected - 0.5)
            await settle()
            self.assertEqual(self.client.pending(), [])
            # ...and retried right after, with the same transaction.
            self.clock.advance(0.5)
            await eventually(lambda: len(self.client.pending()) == 1, "retry")
            self.assertEqual(self.client.pending()[0].txn_id, call.txn_id)
            expected = min(expected * 2, RETRY_MAX_SECONDS)
        self.assertEqual(waits[:4], [5.0, 10.0, 20.0, 40.0])
        self.assertEqual(waits[-1], RETRY_MAX_SECONDS)
        ok(self.client.pending()[0])
        await eventually(lambda: sender.retry_interval(B) == 0.0, "reset after success")
        # The next event goes out at once.
        await sender.send_pdu(await self.message(), [B])
        await eventually(lambda: len(self.client.pending()) == 1)

    async def test_server_errors_retry_but_client_errors_drop_the_transaction(self) -> None:
        sender = await self.new_sender()
        first = await self.message("first")
        await sender.send_pdu(first, [B])
        await eventually(lambda: len(self.client.pending()) == 1)
        fail(self.client.pending()[0], 502)
        await eventually(lambda: sender.retry_interval(B) > 0)
        self.clock.advance(RETRY_INITIAL_SECONDS)
        await eventually(lambda: len(self.client.pending()) == 1)
        self.assertEqual(self.client.pending()[0].event_ids, [first.event_id])
        # 401 (the receiver could not check our signature yet) is retried too.
        fail(self.client.pending()[0], 401)
        await eventually(lambda: sender.retry_interval(B) == RETRY_INITIAL_SECONDS * 2)
        await eventually(lambda: not sender._destinations[B].running, "loop ended")
        self.clock.advance(RETRY_INITIAL_SECONDS * 2)
        await eventually(lambda: len(self.client.pending()) == 1)
        self.assertEqual(self.client.pending()[0].event_ids, [first.event_id])
        second = await self.message("second")
        await sender.send_pdu(second, [B])
        fail(self.client.pending()[0], 400)
        # The refused transaction is dropped; the queue moves on at once.
        await eventually(lambda: len(self.client.pending()) == 1, "next transaction")
        self.assertEqual(self.client.pending()[0].event_ids, [second.event_id])
        ok(self.client.pending()[0])
        await eventually(lambda: not self.client.pending())
        await settle()
        self.assertEqual(await sender._queue.count_queued(B), 0)
        self.assertEqual(len(self.client.calls), 4)

    async def test_destinations_are_independent(self) -> None:
        sender = await self.new_sender()
        event = await self.message()
        await sender.send_pdu(event, [B, C])
        await eventually(lambda: len(self.client.pending()) == 2)
        fail(self.client.pending(C)[0])
        ok(self.client.pending(B)[0])
        await settle()
        self.assertEqual(await sender._queue.count_queued(B), 0)
        self.assertEqual(await sender._queue.count_queued(C), 1)

    async def test_restart_resends_the_transaction_in_flight_unchanged(self) -> None:
        sender = await self.new_sender()
        events = [await self.message(str(i)) for i in range(3)]
        for e in events:
            await sender.send_pdu(e, [B])
        await eventually(lambda: len(self.client.pending()) == 1)
        crashed = self.client.pending()[0]
        # The process dies with the transaction in flight (the answer never arrives).
        await sender.stop()
        later = await self.message("after the crash")
        client2 = FakeClient()
        await self.new_sender(client2)
        await eventually(lambda: len(client2.pending(B)) == 1, "resent transaction")
        resent = client2.pending(B)[0]
        self.assertEqual(resent.txn_id, crashed.txn_id)
        self.assertEqual(resent.event_ids, crashed.event_ids)
        self.assertEqual(resent.body["pdus"], crashed.body["pdus"])
        ok(resent)
        # Everything still queued follows, including the event the crash left
        # unqueued (which also goes to C, in the room now).
        await eventually(lambda: len(client2.pending(B)) == 1, "rest of the queue")
        rest = client2.pending(B)[0]
        self.assertNotEqual(rest.txn_id, crashed.txn_id)
        self.assertEqual(resent.event_ids + rest.event_ids, [e.event_id for e in [*events, later]])
        self.assertEqual(client2.pending(C)[0].event_ids, [later.event_id])

    async def test_start_queues_local_events_a_crash_left_unqueued(self) -> None:
        # History before the first start is never sent.
        await self.new_sender()
        await settle()
        self.assertEqual(self.client.calls, [])
        stop = self.senders.pop()
        await stop.stop()
        # Committed, but the process died before send_pdu: found again at start-up
        # and sent to the servers in the room at the time; a remote user's event is not.
        local = await self.message("lost")
        remote = self.room.send("m.room.message", BOB, {"body": "from b"})
        await self.persist([remote])
        # A server that joined after the event does not get it.
        await self.persist([self.room.member("@dan:d.example", "join")])
        await self.new_sender()
        await eventually(lambda: len(self.client.pending()) == 2)
        self.assertEqual({c.destination for c in self.client.pending()}, {B, C})
        for call in self.client.pending():
            self.assertEqual(call.event_ids, [local.event_id])
            ok(call)
        await settle()
        # A third start sends nothing again, and keeps no per-event markers.
        live = await self.new_sender()
        await live.send_pdu(await self.message("live"), [B])
        await eventually(lambda: len(self.client.pending()) == 1)
        ok(self.client.pending()[0])
        await settle()
        self.assertEqual(await self.count("federation_queued_events"), 1)
        await self.new_sender()
        await settle()
        self.assertEqual(len(self.client.calls), 3)
        self.assertEqual(await self.count("federation_queued_events"), 0)

    async def count(self, table: str) -> int:
        def txn_fn(txn: Any) -> int:
            txn.execute(f"SELECT COUNT(*) FROM {table}")
            return int(txn.fetchone()[0])

        return await self.store.db.run_interaction("count", txn_fn)

    async def test_edus_batched_by_100_and_sent_without_pdus(self) -> None:
        sender = await self.new_sender()
        for i in range(150):
            sender.send_edu(B, "m.typing", {"n": i})
        sender.send_edu(A, "m.typing", {"n": -1})
        await eventually(lambda: len(self.client.pending()) == 1)
        first = self.client.pending()[0]
        self.assertEqual(first.body["pdus"], [])
        fail(first)
        await eventually(lambda: sender.retry_interval(B) > 0)
        self.clock.advance(RETRY_INITIAL_SECONDS)
        await eventually(lambda: len(self.client.pending()) == 1)
        retry = self.client.pending()[0]
        self.assertEqual((retry.txn_id, retry.body["edus"]), (first.txn_id, first.body["edus"]))
        ok(retry)
        await eventually(lambda: len(self.client.pending()) == 1)
        ok(self.client.pending()[0])
        await settle()
        counts = [len(c.body["edus"]) for c in self.client.calls]
        self.assertLessEqual(max(counts), MAX_EDUS_PER_TRANSACTION)
        contents = [e["content"]["n"] for c in self.client.calls[1:] for e in c.body["edus"]]
        self.assertEqual(contents, list(range(150)))
        self.assertEqual({c.destination for c in self.client.calls}, {B})


class SenderTestsSqlite(SqliteMixin, _SenderTests, unittest.TestCase):
    pass


class SenderTestsPostgres(PostgresMixin, _SenderTests, unittest.TestCase):
    pass


class SenderOverTLSTests(SqliteMixin, unittest.TestCase):
    """The sender with the real federation client, delivering to a fake remote."""

    async def start_sender(self, ca: TestCA) -> tuple[Store, RoomBuilder, OutboundSender, Clock]:
        store = await self.make_store()
        key = signing_key_for(A)
        client = build_federation_client(
            reactor=reactor,
            server_name=A,
            signing_key=key,
            ca_file=ca.ca_file,
            allow_private=True,
            dns_resolver=FakeDNS(),
        )
        self.addCleanup(client.close)
        room = RoomBuilder("12")
        room.standard_room(ALICE)
        assert room.room_id is not None
        await store.persist_events(
            room.room_id, [EventWithContext(e) for e in room.events.values()]
        )
        clock = Clock()
        sender = OutboundSender(
            db=store.db, store=store, federation_client=client, clock=clock, server_name=A
        )
        await sender.start()
        self.addCleanup(sender.stop)
        return store, room, sender, clock

    async def test_misbehaving_remote_is_retried_and_a_refusal_dropped(self) -> None:
        ca = TestCA()
        remote = await FakeRemote.start(self, ca)
        answers: list[Any] = [
            CloseConnection(),
            Garbage(b"<html>oops</html>", content_type="text/html"),
            Reply(200, {"pdus": {}}),
            Reply(403, {"errcode": "M_FORBIDDEN", "error": "go away"}),
            Reply(200, {"pdus": {}}),
        ]
        remote.on("PUT", "/_matrix/federation/v1/send/{txnId}", lambda r: answers.pop(0))
        store, room, sender, clock = await self.start_sender(ca)
        assert room.room_id is not None
        dest = remote.server_name

        async def message(body: str) -> Event:
            event = room.send("m.room.message", ALICE, {"body": body})
            await store.persist_events(room.room_id or "", [EventWithContext(event)])
            await sender.send_pdu(event, [dest])
            return event

        first = await message("one")
        # Connection dropped, then a 200 with an HTML body: both retried, same txn.
        for attempt, wait in ((1, RETRY_INITIAL_SECONDS), (2, RETRY_INITIAL_SECONDS * 2)):
            await remote.wait_for("/_matrix/federation/v1/send/", count=attempt)
            await eventually(lambda w=wait: sender.retry_interval(dest) == w, f"backoff {wait}")
            await eventually(lambda: not sender._destinations[dest].running)
            clock.advance(wait)
        await remote.wait_for("/_matrix/federation/v1/send/", count=3)
        await eventually(lambda: sender.retry_interval(dest) == 0.0, "delivered")
        paths = {r.path for r in remote.received("PUT")}
        self.assertEqual(len(paths), 1)
        # A 403 for a whole transaction: dropped, not retried; the next one goes out.
        second = await message("two")
        await remote.wait_for("/_matrix/federation/v1/send/", count=4)
        third = await message("three")
        await remote.wait_for("/_matrix/federation/v1/send/", count=5)
        sent = [[p["content"]["body"] for p in r.json["pdus"]] for r in remote.received("PUT")]
        self.assertEqual(sent, [["one"], ["one"], ["one"], ["two"], ["three"]])
        await eventually(lambda: sender.retry_interval(dest) == 0.0)
        self.assertNotEqual(first.event_id, second.event_id)
        self.assertEqual(third.content["body"], "three")

    async def test_delivers_signed_transactions_and_retries_a_failed_one(self) -> None:
        ca = TestCA()
        remote = await FakeRemote.start(self, ca)
        me = A
        remote.trust(me, {"ed25519:k1": signing_key_for(me).verify_key})
        remote.require_auth = True
        answers = [Reply(500, {"errcode": "M_UNKNOWN"}), Reply(200, {"pdus": {}})]
        remote.on("PUT", "/_matrix/federation/v1/send/{txnId}", lambda r: answers.pop(0))
        store, room, sender, clock = await self.start_sender(ca)
        assert room.room_id is not None
        event = room.send("m.room.message", ALICE, {"body": "over TLS"})
        await store.persist_events(room.room_id, [EventWithContext(event)])
        await sender.send_pdu(event, [remote.server_name])
        await remote.wait_for("/_matrix/federation/v1/send/")
        await eventually(lambda: sender.retry_interval(remote.server_name) > 0)
        clock.advance(RETRY_INITIAL_SECONDS)
        await remote.wait_for("/_matrix/federation/v1/send/", count=2)
        await settle()
        first, second = remote.received("PUT", "/_matrix/federation/v1/send/")
        self.assertEqual(first.path, second.path)
        self.assertEqual((first.auth_error, first.origin), (None, me))
        self.assertEqual(second.json["pdus"], [event.pdu])
        self.assertEqual(await sender._queue.count_queued(remote.server_name), 0)
        self.assertEqual(sender.retry_interval(remote.server_name), 0.0)
