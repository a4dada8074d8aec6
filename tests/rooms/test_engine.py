"""RoomEngine: createRoom for every room version, local appends, fan-out."""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import quote

from twisted.trial import unittest

from matrixfed.auth.rules import check_auth
from matrixfed.errors import MatrixError, RemoteError
from matrixfed.events.checks import check_pdu
from matrixfed.events.keys import ServerVerifyKey
from matrixfed.events.room_versions import KNOWN_ROOM_VERSIONS
from matrixfed.events.room_versions import get_room_version as engine_rv
from matrixfed.events.signing import sign_event
from matrixfed.rooms.engine import RoomEngine
from matrixfed.storage.store import Store
from tests.auth.roombuilder import signing_key_for
from tests.rooms.helpers import (
    ALICE,
    BOB,
    LOCAL,
    FakeFederation,
    RecordingSender,
    make_engine,
)
from tests.storage.harness import DatabaseMixin, PostgresMixin, SqliteMixin

CAROL_LOCAL = "@carol:a.example"


def _keys(*servers: str) -> dict[str, dict[str, ServerVerifyKey]]:
    return {
        s: {"ed25519:k1": ServerVerifyKey(s, "ed25519:k1", signing_key_for(s).verify_key, 2**53)}
        for s in servers
    }


class EngineTestsMixin(DatabaseMixin):
    async def _engine(self, **kw: Any) -> tuple[RoomEngine, Store]:
        store = await self.make_store()
        return make_engine(store, **kw), store

    async def _state_types(self, store: Store, room_id: str) -> dict[tuple[str, str], Any]:
        state = await store.get_current_state_ids(room_id)
        events = await store.get_events(state.values())
        return {k: events[v] for k, v in state.items()}

    async def test_create_room_every_version(self) -> None:
        engine, store = await self._engine()
        for version, rv in KNOWN_ROOM_VERSIONS.items():
            room_id = await engine.create_room(
                ALICE, room_version=version, name="Room", topic="Talk", preset="public_chat"
            )
            self.assertEqual((await store.get_room_version(room_id)), rv)
            state = await self._state_types(store, room_id)
            self.assertEqual(
                set(state),
                {
                    ("m.room.create", ""),
                    ("m.room.member", ALICE),
                    ("m.room.power_levels", ""),
                    ("m.room.join_rules", ""),
                    ("m.room.history_visibility", ""),
                    ("m.room.name", ""),
                    ("m.room.topic", ""),
                },
                version,
            )
            create = state[("m.room.create", "")]
            self.assertEqual(create.content["room_version"], version)
            self.assertEqual("creator" in create.content, int(version) <= 10, version)
            if version == "12":
                self.assertEqual(room_id, "!" + create.event_id[1:])
                self.assertNotIn("room_id", create.pdu)
                self.assertEqual(state[("m.room.power_levels", "")].content["users"], {})
            else:
                self.assertTrue(room_id.endswith(":" + LOCAL))
            self.assertEqual(state[("m.room.join_rules", "")].content["join_rule"], "public")
            self.assertEqual(state[("m.room.member", ALICE)].membership, "join")
            # Every event is a genuine PDU of its version and allowed by the
            # state before it.
            timeline = await store.get_room_events_stream(room_id, from_ordering=0)
            self.assertEqual(len(timeline), 7)
            for _, ev in timeline:
                checked = check_pdu(ev.pdu, rv, _keys(LOCAL))
                self.assertEqual(checked.event_id, ev.event_id)
                before = await store.get_state_before(ev.event_id)
                assert before is not None
                evs = await store.get_events(before.values())
                check_auth(ev, {k: evs[v] for k, v in before.items()})

    async def test_create_room_private_preset_alias_and_initial_state(self) -> None:
        engine, store = await self._engine()
        room_id = await engine.create_room(
            ALICE,
            alias="#lounge:a.example",
            initial_state=[
                {"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}
            ],
            power_level_content_override={"events_default": 10},
            is_public=True,
        )
        state = await self._state_types(store, room_id)
        self.assertEqual(state[("m.room.join_rules", "")].content["join_rule"], "invite")
        self.assertEqual(state[("m.room.guest_access", "")].content["guest_access"], "can_join")
        self.assertEqual(
            state[("m.room.history_visibility", "")].content["history_visibility"], "joined"
        )
        self.assertEqual(state[("m.room.power_levels", "")].content["events_default"], 10)
        self.assertEqual(
            state[("m.room.canonical_alias", "")].content["alias"], "#lounge:a.example"
        )
        alias = await store.get_alias("#lounge:a.example")
        assert alias is not None
        self.assertEqual(alias.room_id, room_id)
        self.assertIn(room_id, await store.get_public_room_ids())
        with self.assertRaises(MatrixError) as cm:
            await engine.create_room(ALICE, alias="#lounge:a.example")
        self.assertEqual(cm.exception.errcode, "M_ROOM_IN_USE")

    async def test_create_room_v12_same_millisecond_gets_distinct_rooms(self) -> None:
        # A v12 room ID is the create event's hash: the same creator in the same
        # millisecond (the test clock does not move) must still get two rooms.
        engine, store = await self._engine()
        first = await engine.create_room(ALICE, room_version="12")
        second = await engine.create_room(ALICE, room_version="12")
        self.assertNotEqual(first, second)
        for room_id in (first, second):
            state = await store.get_current_state_ids(room_id)
            self.assertIn(("m.room.member", ALICE), state)
            create = await store.get_event(state[("m.room.create", "")])
            assert create is not None
            self.assertEqual(create.room_id, room_id)

    async def test_create_room_unknown_version(self) -> None:
        engine, store = await self._engine()
        with self.assertRaises(MatrixError) as cm:
            await engine.create_room(ALICE, room_version="13")
        self.assertEqual(
            (cm.exception.code, cm.exception.errcode), (400, "M_UNSUPPORTED_ROOM_VERSION")
        )
        with self.assertRaises(MatrixError) as cm:
            await engine.create_room(BOB)
        self.assertEqual(cm.exception.code, 400)
        self.assertEqual(await store.get_current_stream_ordering(), 0)

    async def test_create_room_forbidden_initial_state_stores_nothing(self) -> None:
        engine, store = await self._engine()
        with self.assertRaises(MatrixError) as cm:
            await engine.create_room(
                ALICE,
                room_version="10",
                power_level_content_override={"users": {ALICE: 10}, "state_default": 50},
                name="x",
            )
        self.assertEqual(cm.exception.code, 403)
        self.assertEqual(await store.get_current_stream_ordering(), 0)

    async def test_send_message_and_state(self) -> None:
        for version in ("1", "3", "11", "12"):
            engine, store = await self._engine()
            room_id = await engine.create_room(ALICE, room_version=version)
            before = await store.get_forward_extremities(room_id)
            msg = await engine.send_event(
                room_id, type="m.room.message", sender=ALICE, content={"body": "hi"}
            )
            self.assertEqual(msg.prev_event_ids, tuple(before))
            self.assertEqual(await store.get_forward_extremities(room_id), [msg.event_id])
            timeline = await store.get_room_events_stream(room_id, from_ordering=0)
            self.assertEqual(timeline[-1][1].event_id, msg.event_id)
            self.assertEqual(timeline[-1][1].depth, timeline[-2][1].depth + 1)
            check_pdu(msg.pdu, msg.room_version, _keys(LOCAL))
            if version == "1":
                self.assertTrue(msg.event_id.endswith(":" + LOCAL))
                self.assertEqual(len(msg.pdu["prev_events"][0]), 2)
            topic = await engine.send_event(
                room_id,
                type="m.room.topic",
                sender=ALICE,
                content={"topic": "new"},
                state_key="",
            )
            self.assertEqual(
                await store.get_current_state_event_id(room_id, "m.room.topic", ""),
                topic.event_id,
            )

    async def test_forbidden_event_is_403_and_not_stored(self) -> None:
        engine, store = await self._engine()
        room_id = await engine.create_room(ALICE, room_version="10")
        await engine.send_event(
            room_id,
            type="m.room.member",
            sender=ALICE,
            content={"membership": "invite"},
            state_key=CAROL_LOCAL,
        )
        await engine.send_event(
            room_id,
            type="m.room.member",
            sender=CAROL_LOCAL,
            content={"membership": "join"},
            state_key=CAROL_LOCAL,
        )
        position = await store.get_current_stream_ordering()
        state = await store.get_current_state_ids(room_id)
        with self.assertRaises(MatrixError) as cm:
            await engine.send_event(
                room_id,
                type="m.room.name",
                sender=CAROL_LOCAL,
                content={"name": "mine"},
                state_key="",
            )
        self.assertEqual((cm.exception.code, cm.exception.errcode), (403, "M_FORBIDDEN"))
        with self.assertRaises(MatrixError) as cm:
            await engine.send_event(
                room_id,
                type="m.room.message",
                sender="@zed:a.example",
                content={"body": "not a member"},
            )
        self.assertEqual(cm.exception.code, 403)
        self.assertEqual(await store.get_current_stream_ordering(), position)
        self.assertEqual(await store.get_current_state_ids(room_id), state)

    async def test_invalid_local_events_refused(self) -> None:
        engine, store = await self._engine()
        room_id = await engine.create_room(ALICE, room_version="10")
        position = await store.get_current_stream_ordering()
        with self.assertRaises(MatrixError) as cm:
            await engine.send_event(
                room_id, type="m.room.message", sender=ALICE, content={"body": "x" * 70_000}
            )
        self.assertEqual((cm.exception.code, cm.exception.errcode), (413, "M_TOO_LARGE"))
        with self.assertRaises(MatrixError) as cm:
            await engine.send_event(
                room_id, type="m.room.message", sender=ALICE, content={"body": "pi", "value": 3.14}
            )
        self.assertEqual((cm.exception.code, cm.exception.errcode), (400, "M_BAD_JSON"))
        self.assertEqual(await store.get_current_stream_ordering(), position)

    async def test_unknown_room(self) -> None:
        engine, _ = await self._engine()
        with self.assertRaises(MatrixError) as cm:
            await engine.send_event(
                "!nope:a.example", type="m.room.message", sender=ALICE, content={}
            )
        self.assertEqual(cm.exception.code, 404)

    async def test_build_event_template(self) -> None:
        engine, store = await self._engine()
        room_id = await engine.create_room(ALICE, room_version="9", preset="public_chat")
        template = await engine.build_event(
            room_id,
            type="m.room.member",
            sender=BOB,
            content={"membership": "join"},
            state_key=BOB,
        )
        state = await store.get_current_state_ids(room_id)
        self.assertEqual(template["prev_events"], await store.get_forward_extremities(room_id))
        self.assertEqual(
            set(template["auth_events"]),
            {
                state[("m.room.create", "")],
                state[("m.room.power_levels", "")],
                state[("m.room.join_rules", "")],
            },
        )
        self.assertNotIn("event_id", template)
        self.assertNotIn("signatures", template)
        self.assertEqual(template["origin"], LOCAL)

    async def test_fan_out_to_joined_servers(self) -> None:
        sender = RecordingSender()
        engine, store = await self._engine(sender=sender)
        room_id = await engine.create_room(ALICE, room_version="10")
        msg = await engine.send_event(
            room_id, type="m.room.message", sender=ALICE, content={"body": "alone"}
        )
        # Only we are in the room: nothing to send.
        self.assertEqual(sender.sent, [])
        self.assertEqual(msg.sender, ALICE)

    async def test_invite_remote_user_countersigned(self) -> None:
        for version in ("1", "10", "12"):
            fed = FakeFederation()
            sender = RecordingSender()
            engine, store = await self._engine(federation=fed, sender=sender)
            room_id = await engine.create_room(ALICE, room_version=version, name="R")
            seen: list[Any] = []

            def invite(dest: str, path: str, body: Any, args: Any, seen: list[Any] = seen) -> Any:
                seen.append((dest, path, body))
                pdu = copy.deepcopy(body["event"])
                sign_event(
                    pdu, engine_rv(body["room_version"]), "b.example", signing_key_for("b.example")
                )
                return {"event": pdu}

            fed.on("PUT", "/_matrix/federation/v2/invite/", invite)
            event = await engine.send_event(
                room_id,
                type="m.room.member",
                sender=ALICE,
                content={"membership": "invite"},
                state_key=BOB,
            )
            dest, path, body = seen[0]
            self.assertEqual(dest, "b.example")
            self.assertIn(quote(event.event_id, safe=""), path)
            # spec 1.16: full PDUs, the create event included.
            stripped = {e["type"]: e for e in body["invite_room_state"]}
            self.assertEqual(set(stripped), {"m.room.create", "m.room.join_rules", "m.room.name"})
            for pdu in stripped.values():
                check_pdu(pdu, engine_rv(version), _keys(LOCAL))
            self.assertIn("b.example", event.signatures)
            self.assertEqual(await store.get_membership(room_id, BOB), ("invite", event.event_id))
            self.assertEqual(sender.sent[-1], (event, ["b.example"]))

    async def test_invite_falls_back_to_v1(self) -> None:
        fed = FakeFederation()
        engine, store = await self._engine(federation=fed)
        room_id = await engine.create_room(ALICE, room_version="2")

        def unknown(dest: str, path: str, body: Any, args: Any) -> Any:
            raise RemoteError(
                dest, "?", reachable=True, transient=False, code=404, errcode="M_UNRECOGNIZED"
            )

        def v1(dest: str, path: str, body: Any, args: Any) -> Any:
            pdu = copy.deepcopy(body)
            sign_event(pdu, engine_rv("2"), "b.example", signing_key_for("b.example"))
            return [200, {"event": pdu}]

        fed.on("PUT", "/_matrix/federation/v2/invite/", unknown)
        fed.on("PUT", "/_matrix/federation/v1/invite/", v1)
        event = await engine.send_event(
            room_id,
            type="m.room.member",
            sender=ALICE,
            content={"membership": "invite"},
            state_key=BOB,
        )
        self.assertIn("b.example", event.signatures)
        self.assertEqual(await store.get_membership(room_id, BOB), ("invite", event.event_id))

    async def test_create_room_with_invites(self) -> None:
        fed = FakeFederation()
        engine, store = await self._engine(federation=fed)
        room_id = await engine.create_room(
            ALICE, room_version="12", preset="trusted_private_chat", invite=[CAROL_LOCAL, BOB]
        )
        # b.example is unreachable: Carol is invited, Bob is not, the room exists.
        self.assertEqual((await store.get_membership(room_id, CAROL_LOCAL) or ("",))[0], "invite")
        self.assertIsNone(await store.get_membership(room_id, BOB))
        create_id = await store.get_current_state_event_id(room_id, "m.room.create", "")
        assert create_id is not None
        create = await store.get_event(create_id)
        assert create is not None
        # v12 trusted_private_chat: invitees become additional creators.
        self.assertEqual(create.content["additional_creators"], [CAROL_LOCAL, BOB])

    async def test_invite_refused_by_remote_stores_nothing(self) -> None:
        fed = FakeFederation()
        engine, store = await self._engine(federation=fed)
        room_id = await engine.create_room(ALICE, room_version="11")

        def refuse(dest: str, path: str, body: Any, args: Any) -> Any:
            raise RemoteError(
                dest, "no", reachable=True, transient=False, code=403, errcode="M_FORBIDDEN"
            )

        fed.on("PUT", "/_matrix/federation/v2/invite/", refuse)
        position = await store.get_current_stream_ordering()
        with self.assertRaises(MatrixError) as cm:
            await engine.send_event(
                room_id,
                type="m.room.member",
                sender=ALICE,
                content={"membership": "invite"},
                state_key=BOB,
            )
        self.assertEqual(cm.exception.code, 403)
        # An answer that is not our event signed by them is refused too.
        fed.handlers.clear()
        fed.on("PUT", "/_matrix/federation/v2/invite/", lambda *a: {"event": {"type": "x"}})
        with self.assertRaises(MatrixError) as cm:
            await engine.send_event(
                room_id,
                type="m.room.member",
                sender=ALICE,
                content={"membership": "invite"},
                state_key=BOB,
            )
        self.assertEqual(cm.exception.code, 502)
        fed.handlers.clear()
        fed.on(
            "PUT", "/_matrix/federation/v2/invite/", lambda d, p, body, a: {"event": body["event"]}
        )
        with self.assertRaises(MatrixError) as cm:
            await engine.send_event(
                room_id,
                type="m.room.member",
                sender=ALICE,
                content={"membership": "invite"},
                state_key=BOB,
            )
        self.assertEqual(cm.exception.code, 502)
        self.assertEqual(await store.get_current_stream_ordering(), position)
        self.assertIsNone(await store.get_membership(room_id, BOB))


class EngineTestsSqlite(SqliteMixin, EngineTestsMixin, unittest.TestCase):
    pass


class EngineTestsPostgres(PostgresMixin, EngineTestsMixin, unittest.TestCase):
    pass
