"""The resident endpoints of a real matrixfed server against the fake remote, over TLS.

The fake asks for a join template, then submits a forged join, a join for
another server's user and finally a genuine one; a server that is not in the
room is refused the room's state; an ACL-denied server is refused a template;
the fake invites a matrixfed user. Room versions 1, 6, 10, 11 and 12.
"""

from __future__ import annotations

from typing import Any

from nacl.signing import SigningKey
from signedjson.sign import sign_json
from twisted.trial import unittest

from matrixfed.errors import RemoteError
from matrixfed.events.model import Event
from matrixfed.events.redaction import redact
from matrixfed.federation.client import federation_path
from tests.harness.fakeremote import FakeRemote, RemoteRoom
from tests.harness.servers import ServerHandle, TestNetwork

VERSIONS = ("1", "6", "10", "11", "12")
ALL_VERS = [str(v) for v in range(1, 13)]


def forged(event: Event, server_name: str) -> dict[str, Any]:
    """The event signed as ``server_name`` by a key that is not its own (same key ID)."""
    pdu = dict(event.pdu)
    pdu.pop("signatures")
    impostor = SigningKey.generate()
    impostor.version = "k1"  # type: ignore[attr-defined]
    impostor.alg = "ed25519"  # type: ignore[attr-defined]
    pdu["signatures"] = sign_json(redact(pdu, event.room_version), server_name, impostor)[
        "signatures"
    ]
    return pdu


class _ResidentHostile:
    version: str

    async def setUp(self) -> None:
        case: Any = self
        self.case = case
        self.net = TestNetwork(case)
        self.a: ServerHandle = await self.net.start_server()
        self.remote: FakeRemote = await self.net.start_fake_remote()
        self.alice = self.a.user("alice")
        self.mallory = f"@mallory:{self.remote.server_name}"
        self.room_id: str = await self.a.engine.create_room(
            self.alice, preset="public_chat", room_version=self.version
        )

    async def expect_error(self, call: Any, code: int, errcode: str) -> None:
        try:
            await call
        except RemoteError as e:
            self.case.assertEqual((e.code, e.errcode), (code, errcode), e.message)
            return
        self.case.fail(f"expected {code} {errcode}")

    async def make_join(self, user_id: str) -> dict[str, Any]:
        path = federation_path("/_matrix/federation/v1/make_join/{}/{}", self.room_id, user_id)
        answer: dict[str, Any] = await self.remote.client.get_json(
            self.a.name, path, {"ver": ALL_VERS}
        )
        return answer

    async def send_join(self, pdu: dict[str, Any], event_id: str) -> Any:
        path = federation_path("/_matrix/federation/v2/send_join/{}/{}", self.room_id, event_id)
        return await self.remote.client.put_json(self.a.name, path, pdu)

    async def test_forged_and_foreign_joins_refused_genuine_accepted(self) -> None:
        case = self.case
        store = self.a.store
        # Not in the room yet: no state for us.
        extremity = (await store.get_forward_extremities(self.room_id))[0]
        path = federation_path("/_matrix/federation/v1/state_ids/{}", self.room_id)
        await self.expect_error(
            self.remote.client.get_json(self.a.name, path, {"event_id": extremity}),
            403,
            "M_FORBIDDEN",
        )
        made = await self.make_join(self.mallory)
        case.assertEqual(made["room_version"], self.version)
        room = RemoteRoom.of(self.version)
        join = room.from_template(made["event"], self.remote.server_name)
        await self.expect_error(
            self.send_join(forged(join, self.remote.server_name), join.event_id),
            400,
            "M_INVALID_PARAM",
        )
        # A template for a user of another server.
        await self.expect_error(self.make_join("@victim:elsewhere.example"), 403, "M_FORBIDDEN")
        case.assertIsNone(await store.get_event(join.event_id))
        case.assertIsNone(await store.get_membership(self.room_id, self.mallory))
        answer = await self.send_join(join.pdu, join.event_id)
        state_types = {(p["type"], p.get("state_key")) for p in answer["state"]}
        case.assertIn(("m.room.member", self.alice), state_types)
        case.assertEqual(
            await store.get_membership(self.room_id, self.mallory), ("join", join.event_id)
        )
        # Now in the room: the state is served.
        ids = await self.remote.client.get_json(self.a.name, path, {"event_id": join.event_id})
        case.assertNotIn(join.event_id, ids["pdu_ids"])

    async def test_acl_denied_server_gets_no_template(self) -> None:
        await self.a.engine.send_event(
            self.room_id,
            type="m.room.server_acl",
            sender=self.alice,
            state_key="",
            content={"allow": ["*"], "allow_ip_literals": False},
        )
        # The fake's server name is an IP literal.
        await self.expect_error(self.make_join(self.mallory), 403, "M_FORBIDDEN")

    async def test_invite_of_a_local_user(self) -> None:
        case = self.case
        room = RemoteRoom.of(self.version)
        room.standard_room(self.mallory, join_rule="invite")
        room.send("m.room.name", self.mallory, {"name": "Mallory's"}, "")
        dave = self.a.user("dave")
        invite = room.make_member(self.mallory, "invite", dave)
        assert room.room_id is not None
        state = [e.pdu for e in room.state.values() if e.type != "m.room.member"]
        path = federation_path("/_matrix/federation/v2/invite/{}/{}", room.room_id, invite.event_id)
        answer = await self.remote.client.put_json(
            self.a.name,
            path,
            {"room_version": self.version, "event": invite.pdu, "invite_room_state": state},
        )
        case.assertIn(self.a.name, answer["event"]["signatures"])
        invites = await self.a.store.get_invites_for_user(dave)
        case.assertEqual([i.event_id for i in invites], [invite.event_id])


class ResidentHostileV1(_ResidentHostile, unittest.TestCase):
    version = "1"


class ResidentHostileV6(_ResidentHostile, unittest.TestCase):
    version = "6"


class ResidentHostileV10(_ResidentHostile, unittest.TestCase):
    version = "10"


class ResidentHostileV11(_ResidentHostile, unittest.TestCase):
    version = "11"


class ResidentHostileV12(_ResidentHostile, unittest.TestCase):
    version = "12"
