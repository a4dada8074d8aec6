"""How fast does the outbound sender queue and drain events?

Persists a version 12 room with ``--servers`` remote servers joined, then
appends ``--messages`` local messages, calling ``OutboundSender.send_pdu`` for
each (what the room engine does after every append), with a federation
client that answers every transaction after ``--latency-ms`` (a network
round trip). Prints: events queued per
second (the persistence cost an append pays), and PDU deliveries per second
until every destination's outbox is empty (transactions of up to 50 PDUs,
one in flight per destination). SQLite in a temporary directory, or
PostgreSQL in a throw-away schema with ``--postgres URI``. A benchmark: it
prints numbers and asserts nothing.

    /work/venv/bin/python bench/bench_sender.py [--servers 20] [--messages 2000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from typing import Any
from urllib.parse import quote

from twisted.internet import defer, task
from twisted.internet.task import Clock, deferLater

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from matrixfed.federation.sender import OutboundSender  # noqa: E402
from matrixfed.storage import Database, EventWithContext, Store  # noqa: E402
from tests.auth.roombuilder import ALICE, RoomBuilder  # noqa: E402

# How often the drain loop looks at the outboxes (seconds of real time).
POLL_SECONDS = 0.05


class FakeClient:
    """Answers every transaction after ``latency`` seconds; counts PDUs delivered."""

    def __init__(self, reactor: Any, latency: float) -> None:
        self.reactor = reactor
        self.latency = latency
        self.pdus = 0
        self.transactions = 0

    async def put_json(self, destination: str, path: str, data: Any, *a: Any, **kw: Any) -> Any:
        if self.latency:
            await deferLater(self.reactor, self.latency)
        self.transactions += 1
        self.pdus += len(data["pdus"])
        return {"pdus": {}}


async def main(reactor: Any, args: argparse.Namespace) -> None:
    schema = None
    if args.postgres:
        import psycopg2

        schema = "bench_" + uuid.uuid4().hex[:12]
        conn = psycopg2.connect(args.postgres)
        conn.autocommit = True
        conn.cursor().execute(f"CREATE SCHEMA {schema}")
        uri = f"{args.postgres}?options={quote('-csearch_path=' + schema, safe='')}"
    else:
        uri = "sqlite:" + os.path.join(tempfile.mkdtemp(prefix="bench-sender-"), "db")
    db = Database.from_uri(uri, reactor=reactor)
    await db.start()
    try:
        store = Store(db=db, clock=Clock())
        room = RoomBuilder("12")
        room.standard_room(ALICE)
        for i in range(args.servers):
            room.member(f"@u{i}:s{i}.example", "join")
        assert room.room_id is not None
        await store.persist_events(
            room.room_id, [EventWithContext(e) for e in room.events.values()]
        )
        destinations = [f"s{i}.example" for i in range(args.servers)]
        client = FakeClient(reactor, args.latency_ms / 1000)
        sender = OutboundSender(
            db=db, store=store, federation_client=client, clock=reactor, server_name="a.example"
        )
        await sender.start()
        messages = [
            room.send("m.room.message", ALICE, {"body": str(i)}) for i in range(args.messages)
        ]
        for event in messages:
            await store.persist_events(room.room_id, [EventWithContext(event)])
        t0 = time.perf_counter()
        for event in messages:
            await sender.send_pdu(event, destinations)
        queued = time.perf_counter() - t0
        expected = args.messages * args.servers
        while client.pdus < expected:
            await deferLater(reactor, POLL_SECONDS)
        drained = time.perf_counter() - t0
        await sender.stop()
        print(
            f"{args.messages} events x {args.servers} destinations: "
            f"queued {args.messages / queued:.0f} events/s ({queued * 1000 / args.messages:.2f} ms"
            f" per send_pdu); delivered {expected} PDUs in {client.transactions} transactions, "
            f"{expected / drained:.0f} PDUs/s"
        )
    finally:
        db.close()
        if schema is not None:
            conn.cursor().execute(f"DROP SCHEMA {schema} CASCADE")
            conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=20)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--postgres", default=None)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="round trip per /send")
    ns = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, ns)))
