"""make_join/send_join, leave, knock and invites (matrixfed/federation/server/membership.py)."""

from __future__ import annotations

import json
from typing import Any

from nacl.signing import SigningKey
from twisted.trial import unittest

from matrixfed.events.room_versions import get_room_version
from matrixfed.federation.server.membership import MembershipHandshakes
from matrixfed.federation.server.rawjson import encode_body, resolve_streams
from tests.auth.roombuilder import RoomBuilder
from tests.federation.server.resident import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    OURS,
    REMOTE,
    THIRD,
    ResidentMixin,
    check_schema,
    event_id_of,
    load_request_schema,
    load_response_schema,
    request,
    sign_as,
)
from tests.storage.harness import PostgresMixin

MAKE_JOIN = "/_matrix/federation/v1/make_join/{roomId}/{userId}"
SEND_JOIN_V1 = "/_matrix/federation/v1/send_join/{roomId}/{eventId}"
SEND_JOIN_V2 = "/_matrix/federation/v2/send_join/{roomId}/{eventId}"
MAKE_LEAVE = "/_matrix/federation/v1/make_leave/{roomId}/{userId}"
SEND_LEAVE_V2 = "/_matrix/federation/v2/send_leave/{roomId}/{eventId}"
SEND_LEAVE_V1 = "/_matrix/federation/v1/send_leave/{roomId}/{eventId}"
MAKE_KNOCK = "/_matrix/federation/v1/make_knock/{roomId}/{userId}"
SEND_KNOCK = "/_matrix/federation/v1/send_knock/{roomId}/{eventId}"
INVITE_V1 = "/_matrix/federation/v1/invite/{roomId}/{eventId}"
INVITE_V2 = "/_matrix/federation/v2/invite/{roomId}/{eventId}"

ALL_VERSIONS = [str(v) for v in range(1, 13)]


class MembershipCase(ResidentMixin, unittest.TestCase):
    async def setup(self) -> MembershipHandshakes:
        await self.make_engine()
        self.hs = MembershipHandshakes(engine=self.engine)
        return self.hs

    async def make(
        self,
        room_id: str,
        user_id: str = BOB,
        *,
        ver: list[str] | None = None,
        origin: str | None = None,
        path: str = MAKE_JOIN,
    ) -> dict[str, Any]:
        query = {"ver": ver if ver is not None else ALL_VERSIONS}
        handler = {
            MAKE_JOIN: self.hs.on_make_join,
            MAKE_LEAVE: self.hs.on_make_leave,
            MAKE_KNOCK: self.hs.on_make_knock,
        }[path]
        code, body = await handler(
            request(
                "GET",
                path,
                {"roomId": room_id, "userId": user_id},
                origin=origin or user_id.split(":", 1)[1],
                query=query,
            )
        )
        self.assertEqual(code, 200)
        assert isinstance(body, dict)
        return body

    async def submit(
        self,
        room_id: str,
        pdu: dict[str, Any],
        *,
        path: str = SEND_JOIN_V2,
        event_id: str | None = None,
        origin: str = REMOTE,
        query: dict[str, list[str]] | None = None,
    ) -> Any:
        rv = await self.store.get_room_version(room_id)
        assert rv is not None
        handler = {
            SEND_JOIN_V2: self.hs.on_send_join_v2,
            SEND_JOIN_V1: self.hs.on_send_join_v1,
            SEND_LEAVE_V2: self.hs.on_send_leave_v2,
            SEND_LEAVE_V1: self.hs.on_send_leave_v1,
            SEND_KNOCK: self.hs.on_send_knock,
        }[path]
        code, body = await handler(
            request(
                "PUT",
                path,
                {"roomId": room_id, "eventId": event_id or event_id_of(pdu, rv)},
                origin=origin,
                query=query,
                content=pdu,
            )
        )
        self.assertEqual(code, 200)
        # As the remote server receives it (big event arrays are read in
        # batches and spliced in as stored JSON text by the resource layer).
        return json.loads(encode_body(await resolve_streams(body)))

    async def join(self, room_id: str, user_id: str = BOB, **kw: Any) -> dict[str, Any]:
        made = await self.make(room_id, user_id)
        rv = get_room_version(made["room_version"])
        pdu = sign_as(made["event"], rv, user_id.split(":", 1)[1])
        body = await self.submit(room_id, pdu, origin=user_id.split(":", 1)[1], **kw)
        assert isinstance(body, dict)
        return body


class MakeJoinTests(MembershipCase):
    async def test_template_per_version_matches_schema(self) -> None:
        await self.setup()
        schema = load_response_schema("joins-v1.yaml", "/make_join/{roomId}/{userId}", "get")
        for version in ("1", "6", "10", "11", "12"):
            room_id = await self.room(version)
            body = await self.make(room_id)
            self.assertEqual(check_schema(body, schema), [], version)
            self.assertEqual(body["room_version"], version)
            event = body["event"]
            self.assertEqual(event["room_id"], room_id)
            self.assertEqual((event["sender"], event["state_key"]), (BOB, BOB))
            self.assertEqual(event["type"], "m.room.member")
            self.assertEqual(event["content"], {"membership": "join"})
            self.assertTrue(event["prev_events"] and event["auth_events"])
            self.assertNotIn("signatures", event)
            if version == "1":
                # v1/v2 references are [event_id, hashes] pairs.
                self.assertIsInstance(event["auth_events"][0], list)
            else:
                self.assertIsInstance(event["auth_events"][0], str)

    async def test_incompatible_room_version(self) -> None:
        await self.setup()
        room_id = await self.room("10")
        e = await self.assert_error(
            self.make(room_id, ver=["1", "2", "9"]), 400, "M_INCOMPATIBLE_ROOM_VERSION"
        )
        self.assertEqual(e.to_json()["room_version"], "10")
        # No ver at all means room version 1 only.
        code_req = request("GET", MAKE_JOIN, {"roomId": room_id, "userId": BOB}, origin=REMOTE)
        await self.assert_error(self.hs.on_make_join(code_req), 400, "M_INCOMPATIBLE_ROOM_VERSION")

    async def test_unknown_room_and_foreign_user(self) -> None:
        await self.setup()
        await self.assert_error(self.make("!nope:a.example"), 404, "M_NOT_FOUND")
        room_id = await self.room("10")
        await self.assert_error(self.make(room_id, CAROL, origin=REMOTE), 403, "M_FORBIDDEN")

    async def test_banned_user_is_refused(self) -> None:
        await self.setup()
        room_id = await self.room("11")
        await self.engine.send_event(
            room_id,
            type="m.room.member",
            sender=ALICE,
            state_key=BOB,
            content={"membership": "ban"},
        )
        await self.assert_error(self.make(room_id), 403, "M_FORBIDDEN")

    async def test_invite_only_room_is_refused(self) -> None:
        await self.setup()
        room_id = await self.room("10", preset="private_chat")
        await self.assert_error(self.make(room_id), 403, "M_FORBIDDEN")

    async def test_partial_state_rooms_are_not_served(self) -> None:
        await self.setup()
        room_id = await self.room("10")
        await self.store.set_room_partial_state(room_id, True)
        await self.assert_error(self.make(room_id), 404, "M_NOT_FOUND")

    async def test_acl_denied_server(self) -> None:
        await self.setup()
        room_id = await self.room(
            "10",
            initial_state=[
                {
                    "type": "m.room.server_acl",
                    "state_key": "",
                    "content": {"allow": ["*"], "deny": ["b.*"]},
                }
            ],
        )
        await self.assert_error(self.make(room_id), 403, "M_FORBIDDEN")
        # Another server is still served.
        body = await self.make(room_id, CAROL)
        self.assertEqual(body["event"]["sender"], CAROL)


class SendJoinTests(MembershipCase):
    async def test_join_across_versions(self) -> None:
        await self.setup()
        schema = load_response_schema("joins-v2.yaml", "/send_join/{roomId}/{eventId}", "put")
        request_schema = load_request_schema(
            "joins-v2.yaml", "/send_join/{roomId}/{eventId}", "put"
        )
        for version in ("1", "6", "10", "11", "12"):
            room_id = await self.room(version)
            made = await self.make(room_id)
            rv = get_room_version(version)
            pdu = sign_as(made["event"], rv, REMOTE)
            self.assertEqual(check_schema(pdu, request_schema), [], version)
            before = await self.store.get_current_state_ids(room_id)
            body = await self.submit(room_id, pdu)
            self.assertEqual(check_schema(body, schema), [], version)
            join_id = event_id_of(pdu, rv)
            # state: exactly the state before the join, full events.
            state_ids = {event_id_of(p, rv) for p in body["state"]}
            self.assertEqual(state_ids, set(before.values()), version)
            # auth_chain: every auth event of the state and of the join is served.
            served = {event_id_of(p, rv) for p in body["auth_chain"]} | state_ids
            for p in [*body["state"], pdu]:
                for ref in p["auth_events"]:
                    self.assertIn(ref[0] if isinstance(ref, list) else ref, served, version)
            self.assertFalse(body["members_omitted"])
            # The join is now part of the room.
            self.assertEqual(await self.store.get_membership(room_id, BOB), ("join", join_id))
            self.assertEqual(body["event"]["signatures"][REMOTE], pdu["signatures"][REMOTE])

    async def test_redacted_state_is_served_redacted(self) -> None:
        await self.setup()
        room_id = await self.room("10")
        topic = await self.engine.send_event(
            room_id, type="m.room.topic", sender=ALICE, state_key="", content={"topic": "old"}
        )
        await self.engine.send_event(
            room_id, type="m.room.redaction", sender=ALICE, content={}, redacts=topic.event_id
        )
        body = await self.join(room_id, BOB)
        served = [p for p in body["state"] if p["type"] == "m.room.topic"]
        self.assertEqual(served[0]["content"], {})

    async def test_redacted_auth_chain_events_are_served_redacted(self) -> None:
        # An event only in the auth chain (Alice's first profile, replaced and
        # then redacted) goes out redacted; the state's events are as stored.
        await self.setup()
        room_id = await self.room("10")
        first = await self.engine.send_event(
            room_id,
            type="m.room.member",
            sender=ALICE,
            state_key=ALICE,
            content={"membership": "join", "displayname": "A1"},
        )
        await self.engine.send_event(
            room_id,
            type="m.room.member",
            sender=ALICE,
            state_key=ALICE,
            content={"membership": "join", "displayname": "A2"},
        )
        await self.engine.send_event(
            room_id, type="m.room.redaction", sender=ALICE, content={}, redacts=first.event_id
        )
        body = await self.join(room_id, BOB)
        rv = get_room_version("10")
        chain = {event_id_of(p, rv): p for p in body["auth_chain"]}
        self.assertEqual(chain[first.event_id]["content"], {"membership": "join"})
        alice = [p for p in body["state"] if p.get("state_key") == ALICE]
        self.assertEqual(alice[0]["content"]["displayname"], "A2")

    async def test_v1_answers_a_pair(self) -> None:
        await self.setup()
        room_id = await self.room("6")
        made = await self.make(room_id)
        pdu = sign_as(made["event"], get_room_version("6"), REMOTE)
        body = await self.submit(room_id, pdu, path=SEND_JOIN_V1)
        self.assertEqual(body[0], 200)
        self.assertIn("state", body[1])
        self.assertIn("auth_chain", body[1])

    async def test_resubmitting_is_idempotent(self) -> None:
        await self.setup()
        room_id = await self.room("10")
        made = await self.make(room_id)
        pdu = sign_as(made["event"], get_room_version("10"), REMOTE)
        first = await self.submit(room_id, pdu)
        count = await self.stored_count()
        again = await self.submit(room_id, pdu)
        self.assertEqual(await self.stored_count(), count)
        self.assertEqual(
            sorted(str(p) for p in first["state"]), sorted(str(p) for p in again["state"])
        )

    async def test_bad_submissions_change_nothing(self) -> None:
        await self.setup()
        room_id = await self.room("10")
        rv = get_room_version("10")
        made = await self.make(room_id)
        count = await self.stored_count()
        cases: list[tuple[str, dict[str, Any], dict[str, Any], int, str]] = []
        forger = SigningKey(b"\x07" * 32)
        forger.version = "k1"  # type: ignore[attr-defined]
        forger.alg = "ed25519"  # type: ignore[attr-defined]
        forged = sign_as(made["event"], rv, REMOTE, forger)
        cases.append(("forged signature", forged, {}, 400, "M_INVALID_PARAM"))
        good = sign_as(made["event"], rv, REMOTE)
        cases.append(("wrong event id", good, {"event_id": "$" + "A" * 43}, 400, "M_INVALID_PARAM"))
        carol = dict(made["event"], sender=CAROL, state_key=CAROL)
        cases.append(("other server's user", sign_as(carol, rv, THIRD), {}, 400, "M_INVALID_PARAM"))
        leave = dict(made["event"], content={"membership": "leave"})
        cases.append(("not a join", sign_as(leave, rv, REMOTE), {}, 400, "M_INVALID_PARAM"))
        other_target = dict(made["event"], state_key=ALICE)
        cases.append(
            ("state_key not sender", sign_as(other_target, rv, REMOTE), {}, 400, "M_INVALID_PARAM")
        )
        tampered = dict(good, content={"membership": "join", "displayname": "x"})
        cases.append(("content hash", tampered, {}, 400, "M_INVALID_PARAM"))
        malformed = dict(good)
        del malformed["depth"]
        cases.append(("malformed", malformed, {}, 400, "M_BAD_JSON"))
        for name, pdu, kw, code, errcode in cases:
            e = await self.assert_error(self.submit(room_id, pdu, **kw), code, errcode)
            if name == "forged signature":
                self.assertIn("Signature check failed", e.message)
            self.assertEqual(await self.stored_count(), count, name)
        self.assertIsNone(await self.store.get_membership(room_id, BOB))
        self.assertEqual(self.sender.sent, [])

    async def test_join_refused_by_auth_rules_is_403(self) -> None:
        await self.setup()
        room_id = await self.room("10")
        made = await self.make(room_id)
        await self.engine.send_event(
            room_id,
            type="m.room.member",
            sender=ALICE,
            state_key=BOB,
            content={"membership": "ban"},
        )
        count = await self.stored_count()
        pdu = sign_as(made["event"], get_room_version("10"), REMOTE)
        await self.assert_error(self.submit(room_id, pdu), 403, "M_FORBIDDEN")
        self.assertEqual(await self.stored_count(), count)

    async def test_join_is_sent_to_the_other_servers(self) -> None:
        await self.setup()
        room_id = await self.room("10")
        await self.join(room_id, CAROL)
        self.sender.sent.clear()
        await self.join(room_id, BOB)
        self.assertEqual(len(self.sender.sent), 1)
        event, destinations = self.sender.sent[0]
        self.assertEqual(event.sender, BOB)
        self.assertEqual(destinations, [THIRD])

    async def test_omit_members(self) -> None:
        await self.setup()
        room_id = await self.room("12", name="Named room")
        await self.join(room_id, CAROL)
        body = await self.join(room_id, BOB, query={"omit_members": ["true"]})
        rv = get_room_version("12")
        self.assertTrue(body["members_omitted"])
        self.assertEqual(body["servers_in_room"], [OURS, THIRD])
        self.assertEqual([p for p in body["state"] if p["type"] == "m.room.member"], [])
        types = {p["type"] for p in body["state"]}
        self.assertIn("m.room.name", types)
        state_ids = {event_id_of(p, rv) for p in body["state"]}
        chain_ids = {event_id_of(p, rv) for p in body["auth_chain"]}
        self.assertFalse(state_ids & chain_ids)
        for p in [*body["state"], body["event"]]:
            for ref in p["auth_events"]:
                self.assertIn(ref, state_ids | chain_ids)
        # Carol's join is neither in the state nor needed by its auth chains.
        carol = await self.store.get_membership(room_id, CAROL)
        assert carol is not None
        self.assertNotIn(carol[1], state_ids | chain_ids)

    async def test_omit_members_keeps_heroes_of_unnamed_rooms(self) -> None:
        await self.setup()
        room_id = await self.room("11")
        await self.join(room_id, CAROL)
        body = await self.join(room_id, BOB, query={"omit_members": ["true"]})
        members = sorted(p["state_key"] for p in body["state"] if p["type"] == "m.room.member")
        self.assertEqual(members, [ALICE, CAROL])
        self.assertTrue(body["members_omitted"])


class RestrictedJoinTests(MembershipCase):
    async def restricted_room(self, allowed: list[str], version: str = "10") -> str:
        return await self.room(
            version,
            preset="private_chat",
            initial_state=[
                {
                    "type": "m.room.join_rules",
                    "state_key": "",
                    "content": {
                        "join_rule": "restricted",
                        "allow": [{"type": "m.room_membership", "room_id": r} for r in allowed],
                    },
                }
            ],
        )

    async def test_member_of_allowed_room_is_admitted_and_countersigned(self) -> None:
        await self.setup()
        for version in ("10", "12"):
            allowed = await self.room(version)
            await self.join(allowed, BOB)
            room_id = await self.restricted_room([allowed], version)
            made = await self.make(room_id)
            self.assertEqual(made["event"]["content"]["join_authorised_via_users_server"], ALICE)
            body = await self.join(room_id, BOB)
            self.assertEqual(sorted(body["event"]["signatures"]), sorted([OURS, REMOTE]))
            membership = await self.store.get_membership(room_id, BOB)
            assert membership is not None
            self.assertEqual(membership[0], "join")
            stored = await self.store.get_event(membership[1])
            assert stored is not None
            self.assertIn(OURS, stored.signatures)

    async def test_others_are_refused(self) -> None:
        await self.setup()
        allowed = await self.room("10")
        room_id = await self.restricted_room([allowed])
        await self.assert_error(self.make(room_id, CAROL), 403, "M_FORBIDDEN")
        # A join claiming our authorisation without meeting the conditions.
        rv = get_room_version("10")
        template = await self.engine.build_event(
            room_id,
            type="m.room.member",
            sender=CAROL,
            state_key=CAROL,
            content={"membership": "join", "join_authorised_via_users_server": ALICE},
        )
        pdu = sign_as(template, rv, THIRD)
        count = await self.stored_count()
        await self.assert_error(self.submit(room_id, pdu, origin=THIRD), 403, "M_FORBIDDEN")
        self.assertEqual(await self.stored_count(), count)

    async def test_no_local_inviter_cannot_grant(self) -> None:
        await self.setup()
        allowed = await self.room("10")
        await self.join(allowed, BOB)
        room_id = await self.room(
            "10",
            preset="private_chat",
            power_level_content_override={"invite": 101},
            initial_state=[
                {
                    "type": "m.room.join_rules",
                    "state_key": "",
                    "content": {
                        "join_rule": "restricted",
                        "allow": [{"type": "m.room_membership", "room_id": allowed}],
                    },
                }
            ],
        )
        await self.assert_error(self.make(room_id), 400, "M_UNABLE_TO_GRANT_JOIN")

    async def test_unknown_allowed_rooms_cannot_be_judged(self) -> None:
        await self.setup()
        room_id = await self.restricted_room(["!elsewhere:z.example"])
        await self.assert_error(self.make(room_id), 400, "M_UNABLE_TO_AUTHORISE_JOIN")

    async def test_no_usable_condition_fails_them_all(self) -> None:
        await self.setup()
        room_id = await self.restricted_room([])
        await self.assert_error(self.make(room_id), 403, "M_FORBIDDEN")


class LeaveAndKnockTests(MembershipCase):
    async def test_leave_v2_and_v1(self) -> None:
        await self.setup()
        room_id = await self.room("10")
        rv = get_room_version("10")
        await self.join(room_id, BOB)
        made = await self.make(room_id, path=MAKE_LEAVE)
        self.assertEqual(made["event"]["content"], {"membership": "leave"})
        pdu = sign_as(made["event"], rv, REMOTE)
        self.assertEqual(await self.submit(room_id, pdu, path=SEND_LEAVE_V2), {})
        membership = await self.store.get_membership(room_id, BOB)
        assert membership is not None
        self.assertEqual(membership[0], "leave")
        await self.join(room_id, BOB)
        made = await self.make(room_id, path=MAKE_LEAVE)
        pdu = sign_as(made["event"], rv, REMOTE)
        self.assertEqual(await self.submit(room_id, pdu, path=SEND_LEAVE_V1), [200, {}])

    async def test_leave_without_membership_is_refused(self) -> None:
        await self.setup()
        room_id = await self.room("10")
        await self.assert_error(self.make(room_id, path=MAKE_LEAVE), 403, "M_FORBIDDEN")

    async def test_knock(self) -> None:
        await self.setup()
        room_id = await self.room(
            "10",
            preset="private_chat",
            name="Knock here",
            initial_state=[
                {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}
            ],
        )
        made = await self.make(room_id, path=MAKE_KNOCK, ver=["10"])
        schema = load_response_schema("knocks.yaml", "/make_knock/{roomId}/{userId}", "get")
        self.assertEqual(check_schema(made, schema), [])
        self.assertEqual(made["event"]["content"], {"membership": "knock"})
        pdu = sign_as(made["event"], get_room_version("10"), REMOTE)
        body = await self.submit(room_id, pdu, path=SEND_KNOCK)
        schema = load_response_schema("knocks.yaml", "/send_knock/{roomId}/{eventId}", "put")
        self.assertEqual(check_schema(body, schema), [])
        types = {p["type"] for p in body["knock_room_state"]}
        self.assertTrue({"m.room.create", "m.room.join_rules", "m.room.name"} <= types)
        membership = await self.store.get_membership(room_id, BOB)
        assert membership is not None
        self.assertEqual(membership[0], "knock")

    async def test_knock_needs_knock_rules_and_version(self) -> None:
        await self.setup()
        old = await self.room("6", preset="private_chat")
        await self.assert_error(
            self.make(old, path=MAKE_KNOCK, ver=["7", "10"]), 400, "M_INCOMPATIBLE_ROOM_VERSION"
        )
        await self.assert_error(self.make(old, path=MAKE_KNOCK, ver=["6"]), 403, "M_FORBIDDEN")
        public = await self.room("10")
        await self.assert_error(self.make(public, path=MAKE_KNOCK, ver=["10"]), 403, "M_FORBIDDEN")
        await self.assert_error(self.make(public, path=MAKE_KNOCK, ver=[]), 400, "M_MISSING_PARAM")


class InviteTests(MembershipCase):
    def foreign_room(self, version: str) -> RoomBuilder:
        room = RoomBuilder(version)
        room.standard_room(CAROL, join_rule="invite")
        room.send("m.room.name", CAROL, {"name": "Carol's"}, "")
        return room

    async def invite(
        self, room: RoomBuilder, *, target: str = DAVE, v1: bool = False, state: Any = None
    ) -> Any:
        event = room.make_member(CAROL, "invite", target)
        assert room.room_id is not None
        if state is None:
            state = [e.pdu for e in room.state.values() if e.type != "m.room.member"]
        if v1:
            pdu = dict(event.pdu, unsigned={"invite_room_state": state})
            req = request(
                "PUT",
                INVITE_V1,
                {"roomId": room.room_id, "eventId": event.event_id},
                origin=THIRD,
                content=pdu,
            )
            return event, await self.hs.on_invite_v1(req)
        body = {"room_version": room.rv.identifier, "event": event.pdu, "invite_room_state": state}
        req = request(
            "PUT",
            INVITE_V2,
            {"roomId": room.room_id, "eventId": event.event_id},
            origin=THIRD,
            content=body,
        )
        return event, await self.hs.on_invite_v2(req)

    async def test_invite_v2_is_signed_and_stored(self) -> None:
        await self.setup()
        schema = load_response_schema("invites-v2.yaml", "/invite/{roomId}/{eventId}", "put")
        for version in ("10", "12"):
            room = self.foreign_room(version)
            event, (code, body) = await self.invite(room)
            self.assertEqual(code, 200)
            self.assertEqual(check_schema(body, schema), [])
            self.assertEqual(sorted(body["event"]["signatures"]), sorted([OURS, THIRD]))
            self.assertEqual(body["event"]["content"], event.pdu["content"])
        invites = await self.store.get_invites_for_user(DAVE)
        self.assertEqual(len(invites), 2)
        names = [s["content"].get("name") for s in invites[0].stripped_state]
        self.assertIn("Carol's", names)
        self.assertEqual(
            set(invites[0].stripped_state[0]), {"type", "state_key", "content", "sender"}
        )

    async def test_v12_invite_state_create_is_checked_others_may_be_stripped(self) -> None:
        await self.setup()
        room = self.foreign_room("12")
        create = room.state[("m.room.create", "")].pdu
        name = room.state[("m.room.name", "")]
        stripped_name = {
            "type": "m.room.name",
            "state_key": "",
            "sender": CAROL,
            "content": {"name": "Carol's"},
        }
        event, (code, body) = await self.invite(room, state=[create, stripped_name])
        self.assertEqual(code, 200)
        invites = await self.store.get_invites_for_user(DAVE)
        self.assertEqual(invites[0].stripped_state[1], stripped_name)
        bad_sig = dict(name.pdu, signatures={THIRD: {"ed25519:k1": "A" * 86}})
        await self.assert_error(self.invite(room, state=[create, bad_sig]), 400, "M_INVALID_PARAM")
        other = self.foreign_room("12")
        await self.assert_error(
            self.invite(room, state=[other.state[("m.room.create", "")].pdu]),
            400,
            "M_INVALID_PARAM",
        )

    async def test_invite_v1(self) -> None:
        await self.setup()
        room = self.foreign_room("1")
        event, (code, body) = await self.invite(room, v1=True)
        self.assertEqual((code, body[0]), (200, 200))
        self.assertIn(OURS, body[1]["event"]["signatures"])
        invites = await self.store.get_invites_for_user(DAVE)
        self.assertEqual([i.event_id for i in invites], [event.event_id])

    async def test_invite_into_a_room_we_hold_follows_its_rules(self) -> None:
        await self.setup()
        rv = get_room_version("10")
        strict = await self.room("10")
        lenient = await self.room("10", power_level_content_override={"invite": 0})
        for room_id in (strict, lenient):
            await self.join(room_id, CAROL)
        for room_id, allowed in ((strict, False), (lenient, True)):
            template = await self.engine.build_event(
                room_id,
                type="m.room.member",
                sender=CAROL,
                state_key=DAVE,
                content={"membership": "invite"},
            )
            pdu = sign_as(template, rv, THIRD)
            req = request(
                "PUT",
                INVITE_V2,
                {"roomId": room_id, "eventId": event_id_of(pdu, rv)},
                origin=THIRD,
                content={"room_version": "10", "event": pdu, "invite_room_state": []},
            )
            if allowed:
                code, body = await self.hs.on_invite_v2(req)
                self.assertIn(OURS, body["event"]["signatures"])
                # Taken into the room at once: Dave can join without waiting for /send.
                self.assertEqual(
                    await self.store.get_membership(room_id, DAVE),
                    ("invite", event_id_of(pdu, rv)),
                )
            else:
                await self.assert_error(self.hs.on_invite_v2(req), 403, "M_FORBIDDEN")
        invites = await self.store.get_invites_for_user(DAVE)
        self.assertEqual([i.room_id for i in invites], [lenient])

    async def test_bad_invites(self) -> None:
        await self.setup()
        room = self.foreign_room("12")
        await self.assert_error(self.invite(room, target=BOB), 400, "M_INVALID_PARAM")
        await self.assert_error(self.invite(room, state=[]), 400, "M_INVALID_PARAM")
        body = {"room_version": "99", "event": {}, "invite_room_state": []}
        req = request(
            "PUT",
            INVITE_V2,
            {"roomId": "!r:c.example", "eventId": "$e"},
            origin=THIRD,
            content=body,
        )
        e = await self.assert_error(self.hs.on_invite_v2(req), 400, "M_INCOMPATIBLE_ROOM_VERSION")
        self.assertEqual(e.to_json()["room_version"], "99")
        # An invite sent by a server that is not the sender's.
        event = room.make_member(CAROL, "invite", DAVE)
        assert room.room_id is not None
        req = request(
            "PUT",
            INVITE_V2,
            {"roomId": room.room_id, "eventId": event.event_id},
            origin=REMOTE,
            content={"room_version": "12", "event": event.pdu, "invite_room_state": []},
        )
        await self.assert_error(self.hs.on_invite_v2(req), 400, "M_INVALID_PARAM")
        self.assertEqual(await self.store.get_invites_for_user(DAVE), [])


# The same on PostgreSQL (skipped unless MATRIXFED_TEST_POSTGRES is set).
class SendJoinPostgresTests(PostgresMixin, SendJoinTests):
    pass


class RestrictedJoinPostgresTests(PostgresMixin, RestrictedJoinTests):
    pass


class InvitePostgresTests(PostgresMixin, InviteTests):
    pass
