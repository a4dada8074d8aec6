"""Storage benchmark: persist a large join in one transaction, then read it back.

The batch has the shape of a remote join: the room's state and auth chain as
outliers (create, power levels, join rules and N member events, each member
authorised by create/power levels/join rules) plus our own join event, with
the full state before it. Events are cheap synthetic dicts (no signatures).

Usage::

    /work/venv/bin/python bench/bench_store.py [--sizes 10000,50000]
        [--postgres postgresql://postgres@127.0.0.1:5432/postgres]

PostgreSQL runs in a throw-away schema that is dropped afterwards. Prints
events/s for the persist and timings of typical reads.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from typing import Any
from urllib.parse import quote

from twisted.internet import defer, task
from twisted.internet.task import Clock

from matrixfed.events.model import Event
from matrixfed.events.room_versions import get_room_version
from matrixfed.storage import Database, EventWithContext, Store

RV = get_room_version("10")


def make_join_batch(room_id: str, n_members: int) -> tuple[list[EventWithContext], Event]:
    """(outliers + join event, the join event) for a room with n_members members."""
    events: list[Event] = []
    state: dict[tuple[str, str], str] = {}
    depth = 0

    def ev(
        etype: str, state_key: str, sender: str, content: dict[str, Any], auth: list[str]
    ) -> Event:
        nonlocal depth
        depth += 1
        pdu: dict[str, Any] = {
            "type": etype,
            "room_id": room_id,
            "sender": sender,
            "state_key": state_key,
            "content": content,
            "prev_events": [events[-1].event_id] if events else [],
            "auth_events": auth,
            "depth": depth,
            "origin_server_ts": 1_700_000_000_000 + depth,
            "origin": sender.split(":", 1)[1],
            "hashes": {"sha256": "0" * 43},
            "signatures": {sender.split(":", 1)[1]: {"ed25519:a": "0" * 86}},
        }
        e = Event(pdu, RV, f"${uuid.uuid4().hex}{depth}")
        events.append(e)
        state[(etype, state_key)] = e.event_id
        return e

    creator = "@creator:big.example"
    create = ev("m.room.create", "", creator, {"room_version": "10", "creator": creator}, [])
    cj = ev("m.room.member", creator, creator, {"membership": "join"}, [create.event_id])
    pl = ev(
        "m.room.power_levels",
        "",
        creator,
        {"users": {creator: 100}},
        [create.event_id, cj.event_id],
    )
    jr = ev(
        "m.room.join_rules",
        "",
        creator,
        {"join_rule": "public"},
        [create.event_id, cj.event_id, pl.event_id],
    )
    base_auth = [create.event_id, pl.event_id, jr.event_id]
    for i in range(n_members - 1):
        user = f"@user{i}:server{i % 500}.example"
        ev(
            "m.room.member",
            user,
            user,
            {"membership": "join", "displayname": f"User {i}"},
            base_auth,
        )
    state_before = dict(state)
    me = "@me:bench.example"
    join_pdu: dict[str, Any] = {
        "type": "m.room.member",
        "room_id": room_id,
        "sender": me,
        "state_key": me,
        "content": {"membership": "join"},
        "prev_events": [events[-1].event_id],
        "auth_events": base_auth,
        "depth": depth + 1,
        "origin_server_ts": 1_700_000_000_000 + depth + 1,
        "hashes": {"sha256": "0" * 43},
        "signatures": {},
    }
    join = Event(join_pdu, RV, f"$join{uuid.uuid4().hex}")
    items = [EventWithContext(e, outlier=True) for e in events]
    items.append(EventWithContext(join, state_before=state_before))
    return items, join


async def bench_engine(label: str, uri: str, sizes: list[int]) -> None:
    db = Database.from_uri(uri)
    await db.start()
    store = Store(db=db, clock=Clock())
    try:
        for n in sizes:
            room_id = f"!bench{n}:bench.example"
            t0 = time.perf_counter()
            items, join = make_join_batch(room_id, n)
            t1 = time.perf_counter()
            await store.persist_events(room_id, items)
            t2 = time.perf_counter()
            persist_s = t2 - t1
            print(
                f"{label:8} persist join batch of {len(items):6} events: {persist_s:6.2f} s"
                f" = {len(items) / persist_s:8.0f} events/s (built in {t1 - t0:.2f} s)"
            )
            fresh = Store(db=db, clock=Clock())
            t = time.perf_counter()
            state = await fresh.get_current_state_ids(room_id)
            t_cur = time.perf_counter() - t
            t = time.perf_counter()
            before = await fresh.get_state_before(join.event_id)
            t_before = time.perf_counter() - t
            assert before is not None and len(before) == len(state) - 1
            ids = [i.event.event_id for i in items[:: max(1, len(items) // 1000)]]
            t = time.perf_counter()
            got = await fresh.get_events(ids)
            t_get = time.perf_counter() - t
            assert len(got) == len(ids)
            t = time.perf_counter()
            chain = await fresh.get_auth_chain_ids([join.event_id])
            t_chain = time.perf_counter() - t
            t = time.perf_counter()
            servers = await fresh.get_joined_servers(room_id)
            t_servers = time.perf_counter() - t
            groups, rows = await fresh.count_state_rows(room_id)
            print(
                f"{label:8}   current state ({len(state)}): {t_cur * 1000:.0f} ms;"
                f" state before join: {t_before * 1000:.0f} ms;"
                f" get_events x{len(ids)}: {t_get * 1000:.0f} ms;"
                f" auth chain ({len(chain)}): {t_chain * 1000:.0f} ms;"
                f" joined servers ({len(servers)}): {t_servers * 1000:.0f} ms;"
                f" state groups {groups}, rows {rows}"
            )
    finally:
        db.close()


def _pg_admin(uri: str, sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(uri)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


async def main(reactor: Any, args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        await bench_engine("sqlite", f"sqlite:{os.path.join(tmp, 'bench.db')}", sizes)
    if args.postgres:
        schema = "bench_" + uuid.uuid4().hex[:12]
        _pg_admin(args.postgres, f"CREATE SCHEMA {schema}")
        sep = "&" if "?" in args.postgres else "?"
        uri = f"{args.postgres}{sep}options={quote('-csearch_path=' + schema, safe='')}"
        try:
            await bench_engine("postgres", uri, sizes)
        finally:
            _pg_admin(args.postgres, f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,50000")
    parser.add_argument("--postgres", default=os.environ.get("MATRIXFED_TEST_POSTGRES"))
    ns = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, ns)))
