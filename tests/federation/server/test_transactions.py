"""PUT /send/{txnId}: per-PDU results, limits, ACLs, idempotent retries."""

from __future__ import annotations

import copy
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from matrixfed.errors import MatrixError
from matrixfed.federation.server.endpoint import ApiRequest
from matrixfed.federation.server.transactions import TransactionHandler
from matrixfed.rooms.engine import RoomEngine
from matrixfed.storage.store import Store
from tests.rooms.helpers import ALICE, BOB, make_engine, remote_event
from tests.storage.harness import DatabaseMixin, PostgresMixin, SqliteMixin


def _request(origin: str, txn_id: str, body: Any) -> ApiRequest:
    return ApiRequest(
        method="PUT",
        uri=f"/_matrix/federation/v1/send/{txn_id}",
        path=f"/_matrix/federation/v1/send/{txn_id}",
        origin=origin,
        path_params={"txnId": txn_id},
        query={},
        content=body,
    )


class TransactionTestsMixin(DatabaseMixin):
    async def _setup(
        self, version: str = "10"
    ) -> tuple[RoomEngine, Store, str, TransactionHandler]:
        store = await self.make_store()
        engine = make_engine(store)
        room_id = await engine.create_room(ALICE, room_version=version, preset="public_chat")
        join = await remote_event(
            engine,
            room_id,
            type="m.room.member",
            sender=BOB,
            content={"membership": "join"},
            state_key=BOB,
        )
        await engine.receive_membership_event(
            "b.example", join.pdu, room_id=room_id, expected_membership="join"
        )
        return engine, store, room_id, TransactionHandler(engine=engine, clock=engine.clock)

    async def _send(
        self,
        handler: TransactionHandler,
        txn_id: str,
        pdus: list[Any],
        edus: list[Any] | None = None,
        origin: str = "b.example",
    ) -> Any:
        body: dict[str, Any] = {"origin": origin, "origin_server_ts": 0, "pdus": pdus}
        if edus is not None:
            body["edus"] = edus
        code, answer = await handler.on_send(_request(origin, txn_id, body))
        self.assertEqual(code, 200)
        return answer

    async def test_bad_neighbours_do_not_spoil_good_ones(self) -> None:
        engine, store, room_id, handler = await self._setup()
        good1 = await remote_event(
            engine, room_id, type="m.room.message", sender=BOB, content={"body": "one"}
        )
        forged = await remote_event(
            engine,
            room_id,
            type="m.room.message",
            sender=BOB,
            content={"body": "forged"},
            ts_offset=1,
        )
        forged_pdu = copy.deepcopy(forged.pdu)
        forged_pdu["signatures"]["b.example"]["ed25519:k1"] = "C" * 86
        grab = await remote_event(
            engine,
            room_id,
            type="m.room.power_levels",
            sender=BOB,
            content={"users": {BOB: 100}},
            state_key="",
            ts_offset=2,
        )
        good2 = await remote_event(
            engine,
            room_id,
            type="m.room.message",
            sender=BOB,
            content={"body": "two"},
            prev_events=[good1],
        )
        stray = dict(copy.deepcopy(good1.pdu), room_id="!elsewhere:b.example")
        answer = await self._send(
            handler,
            "t1",
            [good1.pdu, forged_pdu, grab.pdu, good2.pdu, stray],
            edus=[{"edu_type": "m.typing", "content": {}}],
        )
        results = answer["pdus"]
        self.assertEqual(results[good1.event_id], {})
        self.assertEqual(results[good2.event_id], {})
        self.assertIn("error", results[forged.event_id])
        self.assertIn("error", results[grab.event_id])
        self.assertEqual(len(results), 5)
        timeline = [
            e.event_id for _, e in await store.get_room_events_stream(room_id, from_ordering=0)
        ]
        self.assertEqual(timeline[-2:], [good1.event_id, good2.event_id])
        self.assertEqual(await store.have_events([forged.event_id]), set())
        self.assertIn(grab.event_id, await store.get_rejected([grab.event_id]))

    async def test_retried_transaction_answered_once(self) -> None:
        engine, store, room_id, handler = await self._setup()
        msg = await remote_event(
            engine, room_id, type="m.room.message", sender=BOB, content={"body": "once"}
        )
        first = await self._send(handler, "retry-me", [msg.pdu])
        position = await store.get_current_stream_ordering()
        calls: list[Any] = []
        original = engine.receive_pdu

        async def counting(*a: Any, **kw: Any) -> Any:
            calls.append(a)
            return await original(*a, **kw)

        self.patch(engine, "receive_pdu", counting)
        # A new handler is a restart: the answer comes from the database.
        restarted = TransactionHandler(engine=engine, clock=engine.clock)
        again = await self._send(restarted, "retry-me", [msg.pdu])
        self.assertEqual(again, first)
        self.assertEqual(calls, [])
        self.assertEqual(await store.get_current_stream_ordering(), position)
        # The same ID from another origin is another transaction.
        other = await self._send(restarted, "retry-me", [], origin="c.example")
        self.assertEqual(other, {"pdus": {}})

    async def test_pdus_of_a_room_are_checked_in_one_batch(self) -> None:
        engine, store, room_id, handler = await self._setup()
        one = await remote_event(
            engine, room_id, type="m.room.message", sender=BOB, content={"body": "one"}
        )
        two = await remote_event(
            engine, room_id, type="m.room.message", sender=BOB, content={"body": "two"},
            prev_events=[one],
        )  # fmt: skip
        bad = await remote_event(
            engine, room_id, type="m.room.message", sender=BOB, content={"body": "bad"},
            ts_offset=1,
        )  # fmt: skip
        forged = copy.deepcopy(bad.pdu)
        forged["signatures"]["b.example"]["ed25519:k1"] = "C" * 86
        batches: list[int] = []
        original = engine.inbound.check_pdus

        async def counting(pdus: Any, *a: Any, **kw: Any) -> Any:
            batches.append(len(pdus))
            return await original(pdus, *a, **kw)

        self.patch(engine.inbound, "check_pdus", counting)
        answer = await self._send(handler, "batch", [one.pdu, two.pdu, forged])
        self.assertEqual(batches, [3])  # once for the transaction, not per PDU
        self.assertEqual(answer["pdus"][one.event_id], {})
        self.assertEqual(answer["pdus"][two.event_id], {})
        self.assertEqual(len(answer["pdus"]), 3)
        self.assertIn("SignatureError", answer["pdus"][bad.event_id]["error"])
        self.assertEqual(
            await store.have_events([one.event_id, two.event_id]), {one.event_id, two.event_id}
        )

    async def test_pdus_checked_one_by_one_when_the_batch_fails(self) -> None:
        engine, store, room_id, handler = await self._setup()
        one = await remote_event(
            engine, room_id, type="m.room.message", sender=BOB, content={"body": "one"}
        )
        original = engine.inbound.check_pdus
        calls: list[int] = []

        async def failing_batch(pdus: Any, *a: Any, **kw: Any) -> Any:
            calls.append(len(pdus))
            if len(calls) == 1:
                raise RuntimeError("key server trouble")
            return await original(pdus, *a, **kw)

        self.patch(engine.inbound, "check_pdus", failing_batch)
        answer = await self._send(handler, "fallback", [one.pdu])
        self.assertEqual(answer["pdus"], {one.event_id: {}})
        self.assertEqual(calls, [1, 1])
        self.assertEqual(await store.have_events([one.event_id]), {one.event_id})
        self.flushLoggedErrors(RuntimeError)

    async def test_concurrent_duplicate_waits_for_first(self) -> None:
        engine, store, room_id, handler = await self._setup()
        msg = await remote_event(
            engine, room_id, type="m.room.message", sender=BOB, content={"body": "dup"}
        )
        d1 = Deferred.fromCoroutine(self._send(handler, "dup", [msg.pdu]))
        d2 = Deferred.fromCoroutine(self._send(handler, "dup", [msg.pdu]))
        a1 = await d1
        a2 = await d2
        self.assertEqual(a1, a2)
        self.assertEqual(a1["pdus"], {msg.event_id: {}})

    async def test_limits(self) -> None:
        engine, store, room_id, handler = await self._setup()
        for pdus, edus in (([{}] * 51, []), ([], [{}] * 101)):
            with self.assertRaises(MatrixError) as cm:
                await handler.on_send(_request("b.example", "big", {"pdus": pdus, "edus": edus}))
            self.assertEqual((cm.exception.code, cm.exception.errcode), (400, "M_BAD_JSON"))
        with self.assertRaises(MatrixError) as cm:
            await handler.on_send(_request("b.example", "bad", {"pdus": "nope"}))
        self.assertEqual(cm.exception.code, 400)
        # Nothing was remembered for the refused IDs: a valid retry is processed.
        answer = await self._send(handler, "big", [])
        self.assertEqual(answer, {"pdus": {}})

    async def test_acl_denied_origin(self) -> None:
        engine, store, room_id, handler = await self._setup()
        await engine.send_event(
            room_id,
            type="m.room.server_acl",
            sender=ALICE,
            content={"allow": ["*"], "deny": ["b.example"]},
            state_key="",
        )
        msg = await remote_event(
            engine, room_id, type="m.room.message", sender=BOB, content={"body": "banned server"}
        )
        answer = await self._send(handler, "acl", [msg.pdu])
        self.assertIn("ACL", answer["pdus"][msg.event_id]["error"])
        self.assertEqual(await store.have_events([msg.event_id]), set())

    async def test_edus_to_registered_handlers(self) -> None:
        engine, store, room_id, handler = await self._setup()
        typing: list[Any] = []

        async def on_typing(origin: str, content: Any) -> None:
            typing.append((origin, content))

        async def broken(origin: str, content: Any) -> None:
            raise RuntimeError("handler bug")

        handler.register_edu_handler("m.typing", on_typing)
        handler.register_edu_handler("m.receipt", broken)
        edus = [
            {"edu_type": "m.receipt", "content": {}},
            {"edu_type": "m.typing", "content": {"room_id": room_id, "typing": True}},
            {"edu_type": "m.presence", "content": {}},
            "not an object",
        ]
        answer = await self._send(handler, "e1", [], edus=edus)
        self.assertEqual(answer, {"pdus": {}})
        self.assertEqual(typing, [("b.example", {"room_id": room_id, "typing": True})])
        self.flushLoggedErrors(RuntimeError)
        # A retry is answered from storage: EDUs are not replayed.
        await self._send(handler, "e1", [], edus=edus)
        self.assertEqual(len(typing), 1)

    async def test_v1_event_ids_in_results(self) -> None:
        engine, store, room_id, handler = await self._setup("1")
        msg = await remote_event(
            engine, room_id, type="m.room.message", sender=BOB, content={"body": "v1"}
        )
        answer = await self._send(handler, "v1", [msg.pdu])
        self.assertEqual(answer["pdus"], {msg.event_id: {}})
        self.assertTrue(msg.event_id.endswith(":b.example"))


class TransactionTestsSqlite(SqliteMixin, TransactionTestsMixin, unittest.TestCase):
    pass


class TransactionTestsPostgres(PostgresMixin, TransactionTestsMixin, unittest.TestCase):
    pass
