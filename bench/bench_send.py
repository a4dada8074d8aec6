"""How many PDUs per second does inbound ``/send`` take in?

Builds a public room version 12 room on a fresh SQLite database (in a
temporary directory), lets ``--members`` remote users join it (over /send,
50 joins per transaction), makes ``--forks`` forks of two concurrent state changes (each resolved
by state resolution), then sends ``--messages`` messages from them in
transactions of 50 PDUs through ``TransactionHandler`` (every check of the
receipt path: signatures, auth events, state before, soft-fail, persist) and
prints PDUs per second for the joins and for the messages. Keys come from a
local fake keyring (no network). ``--profile`` prints where the time goes.
This is a benchmark, not a test: it prints numbers and asserts nothing.

    /work/venv/bin/python bench/bench_send.py [--members 500] [--messages 1000] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from matrixfed.federation.server.endpoint import ApiRequest  # noqa: E402
from matrixfed.federation.server.transactions import TransactionHandler  # noqa: E402
from matrixfed.storage.database import Database  # noqa: E402
from matrixfed.storage.store import Store  # noqa: E402
from tests.rooms.helpers import ALICE, make_engine, remote_event  # noqa: E402

# PDUs per transaction (the spec's maximum).
BATCH = 50
# Remote servers the members are spread over.
SERVERS = 20


async def _send(handler: TransactionHandler, origin: str, txn: str, pdus: list[Any]) -> None:
    request = ApiRequest(
        method="PUT",
        uri="/",
        path="/",
        origin=origin,
        path_params={"txnId": txn},
        query={},
        content={"pdus": pdus},
    )
    _, answer = await handler.on_send(request)
    errors = [r for r in answer["pdus"].values() if r]
    if errors:
        raise SystemExit(f"unexpected errors: {errors[:3]}")


async def run(reactor: Any, members: int, messages: int, forks: int, profile: bool) -> None:
    tmp = tempfile.mkdtemp()
    db = Database.from_uri(f"sqlite:{tmp}/bench.db", reactor=reactor)
    await db.start()
    store = Store(db=db, clock=reactor)
    engine = make_engine(store, clock=reactor)  # type: ignore[arg-type]
    handler = TransactionHandler(engine=engine, clock=reactor)
    room_id = await engine.create_room(ALICE, room_version="12", preset="public_chat")
    users = [f"@u{i}:s{i % SERVERS}.example" for i in range(members)]

    start = time.perf_counter()
    for b in range(0, members, BATCH):
        pdus = []
        state = await store.get_current_state_ids(room_id)
        tips = list((await store.get_events(await store.get_forward_extremities(room_id))).values())
        for k, user in enumerate(users[b : b + BATCH]):
            ev = await remote_event(
                engine,
                room_id,
                type="m.room.member",
                sender=user,
                content={"membership": "join"},
                state_key=user,
                ts_offset=k,
                prev_events=tips,
                auth_state=state,
            )
            tips = [ev]
            state[("m.room.member", user)] = ev.event_id
            pdus.append(ev.pdu)
        # One chain per transaction, as a server sends its users' joins.
        await _send(handler, "s0.example", f"j{b}", pdus)
    joins_s = time.perf_counter() - start
    print(f"{members} joins: {members / joins_s:.0f} PDUs/s ({joins_s:.2f}s)")

    if forks:
        start = time.perf_counter()
        for f in range(forks):
            state = await store.get_current_state_ids(room_id)
            tips = list(
                (await store.get_events(await store.get_forward_extremities(room_id))).values()
            )
            pdus = []
            for side in range(2):
                user = users[(2 * f + side) % members]
                ev = await remote_event(
                    engine,
                    room_id,
                    type="m.room.member",
                    sender=user,
                    content={"membership": "join", "displayname": f"{f}"},
                    state_key=user,
                    prev_events=tips,
                    auth_state=state,
                    ts_offset=side,
                )
                pdus.append(ev.pdu)
            await _send(handler, "s0.example", f"f{f}", pdus)
        fork_s = time.perf_counter() - start
        print(
            f"{forks} forks of two state changes in a {members}-member room:"
            f" {fork_s / forks * 1000:.0f} ms per fork (state resolution included)"
        )

    counts: dict[str, int] = {}
    spent: dict[str, float] = {}
    original = db.run_interaction

    def counting(desc: str, func: Any, *args: Any, **kw: Any) -> Any:
        counts[desc] = counts.get(desc, 0) + 1

        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return func(*a, **k)
            finally:
                spent[desc] = spent.get(desc, 0.0) + time.perf_counter() - t0

        return original(desc, timed, *args, **kw)

    db.run_interaction = counting  # type: ignore[method-assign]
    prof = cProfile.Profile() if profile else None
    if prof is not None:
        prof.enable()
    start = time.perf_counter()
    sent = 0
    while sent < messages:
        pdus = []
        state = await store.get_current_state_ids(room_id)
        tips = list((await store.get_events(await store.get_forward_extremities(room_id))).values())
        for k in range(min(BATCH, messages - sent)):
            user = users[(sent + k) % members]
            ev = await remote_event(
                engine,
                room_id,
                type="m.room.message",
                sender=user,
                content={"body": f"m{sent + k}"},
                prev_events=tips,
                auth_state=state,
            )
            tips = [ev]
            pdus.append(ev.pdu)
        await _send(handler, "s0.example", f"m{sent}", pdus)
        sent += len(pdus)
    msg_s = time.perf_counter() - start
    if prof is not None:
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
    print(
        f"{messages} messages in a {members}-member room: {messages / msg_s:.0f} PDUs/s"
        f" ({msg_s:.2f}s, event building included)"
    )
    per_pdu = sum(counts.values()) / messages
    top = ", ".join(
        f"{k} {v / messages:.1f}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])
    )
    print(f"database transactions per message PDU: {per_pdu:.1f} ({top})")
    busy = ", ".join(
        f"{k} {v / messages * 1000:.2f}" for k, v in sorted(spent.items(), key=lambda kv: -kv[1])
    )
    print(f"database thread ms per message PDU: {busy}")
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=500)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--forks", type=int, default=10)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    def go(reactor: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(
            run(reactor, args.members, args.messages, args.forks, args.profile)
        )

    task.react(go)


if __name__ == "__main__":
    main()
