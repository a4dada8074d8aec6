"""Replay real Synapse 1.163.2 traffic into the engine.

We play server B (127.0.0.1:57913) of the captured pair: the room as it stood
when B's user joined (send_join_v2.json: state, auth chain and the join) is
stored the way a join stores it, then A's captured ``/send`` transaction is
answered by our ``/send`` endpoint as Synapse's B answered it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from signedjson.key import decode_verify_key_bytes
from twisted.internet.task import Clock
from twisted.trial import unittest
from unpaddedbase64 import decode_base64

from matrixfed.events.keys import ServerVerifyKey
from matrixfed.events.model import Event
from matrixfed.events.room_versions import get_room_version
from matrixfed.federation.server.endpoint import ApiRequest
from matrixfed.federation.server.transactions import TransactionHandler
from matrixfed.rooms.engine import RoomEngine
from matrixfed.rooms.notifier import Notifier
from matrixfed.storage.persist import EventWithContext
from tests.auth.roombuilder import signing_key_for
from tests.rooms.helpers import FakeFederation
from tests.storage.harness import SqliteMixin

SAMPLES = Path("/work/shared/samples/synapse-1.163.2")
SERVER_A = "127.0.0.1:58169"
SERVER_B = "127.0.0.1:57913"


def _load(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text())


class SampleKeyRing:
    """The two servers' published keys, as captured."""

    def __init__(self) -> None:
        self.keys: dict[str, dict[str, ServerVerifyKey]] = {}
        for name in ("key_v2_server_A.json", "key_v2_server_B.json"):
            body = _load(name)
            server = body["server_name"]
            for key_id, entry in body["verify_keys"].items():
                _, version = key_id.split(":", 1)
                vk = decode_verify_key_bytes(key_id, decode_base64(entry["key"]))
                self.keys.setdefault(server, {})[key_id] = ServerVerifyKey(
                    server, key_id, vk, body["valid_until_ts"]
                )

    async def get_keys_batch(
        self, requests: Mapping[str, Mapping[str, int]]
    ) -> dict[str, dict[str, Any]]:
        return {
            s: {k: v for k, v in self.keys.get(s, {}).items() if k in ids}
            for s, ids in requests.items()
        }


class SynapseSampleTests(SqliteMixin, unittest.TestCase):
    if not SAMPLES.exists():
        skip = "Synapse samples not present"

    async def _joined_room(self) -> tuple[RoomEngine, str]:
        store = await self.make_store()
        clock = Clock()
        clock.advance(1795697996)
        engine = RoomEngine(
            store=store,
            clock=clock,
            server_name=SERVER_B,
            signing_key=signing_key_for(SERVER_B),
            keyring=SampleKeyRing(),
            federation_client=FakeFederation(),
            notifier=Notifier(clock=clock, store=store),
        )
        body = _load("send_join_v2.json")["response"]["body"]
        rv = get_room_version("12")
        events = [Event(p, rv) for p in [*body["auth_chain"], *body["state"]]]
        join = Event(body["event"], rv)
        room_id = join.room_id
        # The response omitted members; before B's join only A's user was in
        # the room, and its membership is in the auth chain.
        state = {e.state_tuple: e.event_id for e in events if e.is_state()}
        await store.persist_events(room_id, [EventWithContext(e, outlier=True) for e in events])
        await store.persist_events(room_id, [EventWithContext(join, state_before=state)])
        return engine, room_id

    async def test_message_transaction_from_synapse(self) -> None:
        engine, room_id = await self._joined_room()
        captured = _load("send_txn_A_to_B_message.json")
        handler = TransactionHandler(engine=engine, clock=engine.clock)
        txn_id = captured["request"]["path"].rsplit("/", 1)[1]
        request = ApiRequest(
            method="PUT",
            uri=captured["request"]["path"],
            path=captured["request"]["path"],
            origin=SERVER_A,
            path_params={"txnId": txn_id},
            query={},
            content=captured["request"]["body"],
        )
        code, answer = await handler.on_send(request)
        self.assertEqual(code, captured["response"]["status"])
        self.assertEqual(answer, captured["response"]["body"])
        (event_id,) = answer["pdus"]
        timeline = await engine.store.get_room_events_stream(room_id, from_ordering=0)
        self.assertEqual(timeline[-1][1].event_id, event_id)
        self.assertEqual(timeline[-1][1].content["body"], "hello from A")
        self.assertEqual(await engine.store.get_forward_extremities(room_id), [event_id])

    async def test_tampered_synapse_pdu_rejected(self) -> None:
        engine, room_id = await self._joined_room()
        captured = _load("send_txn_A_to_B_message.json")
        pdu = captured["request"]["body"]["pdus"][0]
        pdu["signatures"][SERVER_A]["ed25519:a_A"] = "A" * 86
        handler = TransactionHandler(engine=engine, clock=engine.clock)
        request = ApiRequest(
            method="PUT",
            uri="/x",
            path="/x",
            origin=SERVER_A,
            path_params={"txnId": "t"},
            query={},
            content={"pdus": [pdu]},
        )
        _, answer = await handler.on_send(request)
        (result,) = answer["pdus"].values()
        self.assertIn("error", result)
        self.assertEqual(
            len(await engine.store.get_room_events_stream(room_id, from_ordering=0)), 1
        )
