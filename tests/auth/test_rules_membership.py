"""Tests for the m.room.member rules of matrixfed.auth.rules, per room version."""

from __future__ import annotations

from typing import Any

from nacl.signing import SigningKey
from signedjson.sign import sign_json
from unpaddedbase64 import encode_base64

from matrixfed.errors import AuthError
from tests.auth.roombuilder import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    EVE,
    VersionedAuthTest,
    for_versions,
)


class _MemberBasics(VersionedAuthTest):
    def setUp(self) -> None:
        super().setUp()
        self.room.standard_room()

    def test_membership_required(self) -> None:
        event = self.room.make("m.room.member", BOB, {"displayname": "b"}, BOB)
        self.assertRejected(event, "membership")

    def test_unknown_membership_rejected(self) -> None:
        self.assertRejected(self.room.make_member(BOB, "wander"), "unknown membership")

    def test_creator_join_straight_after_create(self) -> None:
        room = type(self.room)(self.version)
        room.create()
        # Allowed by the creator rule: no join rules event exists yet.
        self.assertIsNotNone(room.member(ALICE, "join"))

    def test_non_creator_join_straight_after_create_rejected(self) -> None:
        room = type(self.room)(self.version)
        room.create()
        with self.assertRaises(AuthError) as caught:
            room.member(BOB, "join")
        self.assertIn("not invited", str(caught.exception))


class _Join(VersionedAuthTest):
    def _room(self, join_rule: str | None) -> None:
        room = self.room
        room.create()
        room.member(ALICE, "join")
        room.send("m.room.power_levels", ALICE, {"users": room.default_users(ALICE)}, "")
        if join_rule is not None:
            room.send("m.room.join_rules", ALICE, {"join_rule": join_rule}, "")

    def test_public_join(self) -> None:
        self._room("public")
        self.assertAllowed(self.room.make_member(BOB, "join"))

    def test_join_for_someone_else_rejected(self) -> None:
        self._room("public")
        self.assertRejected(self.room.make_member(ALICE, "join", BOB), "another user")

    def test_banned_user_cannot_join(self) -> None:
        self._room("public")
        self.room.member(ALICE, "ban", BOB)
        self.assertRejected(self.room.make_member(BOB, "join"), "banned")

    def test_invite_rule(self) -> None:
        self._room("invite")
        self.assertRejected(self.room.make_member(BOB, "join"), "not invited")
        self.room.member(ALICE, "invite", BOB)
        self.assertAllowed(self.room.make_member(BOB, "join"))

    def test_joined_user_may_join_again(self) -> None:
        self._room("invite")
        self.assertAllowed(self.room.make_member(ALICE, "join", displayname="A"))

    def test_missing_join_rules_reads_as_invite(self) -> None:
        self._room(None)
        self.assertRejected(self.room.make_member(BOB, "join"))
        self.room.member(ALICE, "invite", BOB)
        self.assertAllowed(self.room.make_member(BOB, "join"))

    def test_knock_rule_admits_invited_users_from_v7(self) -> None:
        self._room("knock")
        self.assertRejected(self.room.make_member(BOB, "join"))
        self.room.member(ALICE, "invite", BOB)
        self.assertAllowedIf(self.rv.knock_join_rule, self.room.make_member(BOB, "join"))

    def test_private_or_unknown_rule_rejects(self) -> None:
        self._room("private")
        self.room.member(ALICE, "invite", BOB)
        self.assertRejected(self.room.make_member(BOB, "join"), "join rule")


class _Knock(VersionedAuthTest):
    def _room(self, join_rule: str) -> None:
        self.room.standard_room(join_rule=join_rule)

    def test_knock_on_knock_room(self) -> None:
        self._room("knock")
        self.assertAllowedIf(self.rv.knock_join_rule, self.room.make_member(BOB, "knock"))

    def test_knock_on_knock_restricted_room(self) -> None:
        self._room("knock_restricted")
        event = self.room.make_member(BOB, "knock")
        self.assertAllowedIf(self.rv.knock_restricted_join_rule, event)

    def test_knock_on_public_room_rejected(self) -> None:
        self._room("public")
        self.assertRejected(self.room.make_member(BOB, "knock"))

    def test_knock_for_someone_else_rejected(self) -> None:
        self._room("knock")
        self.assertRejected(self.room.make_member(ALICE, "knock", BOB))

    def test_knock_when_invited_joined_or_banned_rejected(self) -> None:
        self._room("knock")
        self.room.member(ALICE, "invite", BOB)
        self.assertRejected(self.room.make_member(BOB, "knock"))
        self.room.member(ALICE, "ban", CAROL)
        self.assertRejected(self.room.make_member(CAROL, "knock"))
        self.assertRejected(self.room.make_member(ALICE, "knock"))

    def test_knocker_may_withdraw_from_v7(self) -> None:
        self._room("knock")
        if not self.rv.knock_join_rule:
            self.assertRejected(self.room.make_member(BOB, "knock"), "unknown membership")
            return
        self.room.member(BOB, "knock")
        self.assertAllowed(self.room.make_member(BOB, "leave"))
        # A knock is not an invite: the knocker cannot join by themselves.
        self.assertRejected(self.room.make_member(BOB, "join"), "not invited")


class _Restricted(VersionedAuthTest):
    def _room(self, join_rule: str = "restricted", invite: int = 0) -> None:
        users = {**self.room.default_users(ALICE), CAROL: 10}
        self.room.standard_room(users=users, power_levels={"invite": invite})
        self.room.member(CAROL, "join")
        self.room.send("m.room.join_rules", ALICE, {"join_rule": join_rule}, "")
        self.supported = (
            self.rv.knock_restricted_join_rule
            if join_rule == "knock_restricted"
            else self.rv.restricted_join_rule
        )

    def _join(self, authoriser: str | None) -> Any:
        extra = {} if authoriser is None else {"join_authorised_via_users_server": authoriser}
        return self.room.make_member(BOB, "join", **extra)

    def test_authorised_join(self) -> None:
        self._room("restricted")
        self.assertAllowedIf(self.supported, self._join(CAROL), "join rule")

    def test_authorised_join_knock_restricted(self) -> None:
        self._room("knock_restricted")
        self.assertAllowedIf(self.supported, self._join(CAROL), "join rule")

    def test_join_without_authoriser_rejected(self) -> None:
        self._room()
        self.assertRejected(self._join(None))
        if self.supported:
            self.assertRejected(self._join(None), "no authorising user")

    def test_authoriser_must_be_joined(self) -> None:
        self._room()
        self.room.member(CAROL, "leave")
        self.assertRejected(self._join(CAROL))
        if self.supported:
            self.assertRejected(self._join(CAROL), "not joined")
        # A user who never joined is no better.
        self.assertRejected(self._join(EVE))

    def test_authoriser_needs_invite_level(self) -> None:
        self._room(invite=20)
        self.assertRejected(self._join(CAROL))
        if self.supported:
            self.assertRejected(self._join(CAROL), "may not invite")
        self.assertAllowedIf(self.supported, self._join(ALICE))

    def test_invited_user_needs_no_authoriser(self) -> None:
        self._room()
        self.room.member(ALICE, "invite", BOB)
        self.assertAllowedIf(self.supported, self._join(None))

    def test_authoriser_cited_in_auth_events(self) -> None:
        self._room()
        event = self._join(CAROL)
        carol = self.room.state[("m.room.member", CAROL)].event_id
        self.assertEqual(carol in event.auth_event_ids, self.rv.restricted_join_rule)


class _Invite(VersionedAuthTest):
    def setUp(self) -> None:
        super().setUp()
        self.room.standard_room(join_rule="invite")
        self.room.member(ALICE, "invite", DAVE)
        self.room.member(DAVE, "join")

    def test_member_invites(self) -> None:
        self.assertAllowed(self.room.make_member(DAVE, "invite", BOB))

    def test_non_member_cannot_invite(self) -> None:
        self.assertRejected(self.room.make_member(CAROL, "invite", BOB), "not joined")

    def test_cannot_invite_joined_or_banned(self) -> None:
        self.assertRejected(self.room.make_member(ALICE, "invite", DAVE), "join")
        self.room.member(ALICE, "ban", BOB)
        self.assertRejected(self.room.make_member(ALICE, "invite", BOB), "ban")

    def test_invite_level(self) -> None:
        self.room.send(
            "m.room.power_levels",
            ALICE,
            {"users": self.room.default_users(ALICE), "invite": 1},
            "",
        )
        self.assertRejected(self.room.make_member(DAVE, "invite", BOB), "invite")
        self.assertAllowed(self.room.make_member(ALICE, "invite", BOB))

    def test_reinvite_of_invited_user_allowed(self) -> None:
        self.room.member(ALICE, "invite", BOB)
        self.assertAllowed(self.room.make_member(DAVE, "invite", BOB))


# An identity server key pair for third-party invites.
_IS_KEY = SigningKey(b"\x07" * 32)
_IS_KEY.version = "0"  # type: ignore[attr-defined]
_IS_KEY.alg = "ed25519"  # type: ignore[attr-defined]
_IS_PUBLIC = encode_base64(_IS_KEY.verify_key.encode())
_OTHER_KEY = SigningKey(b"\x08" * 32)
_OTHER_KEY.version = "0"  # type: ignore[attr-defined]
_OTHER_KEY.alg = "ed25519"  # type: ignore[attr-defined]


def _signed(mxid: str, token: str, key: SigningKey = _IS_KEY) -> dict[str, Any]:
    return sign_json({"mxid": mxid, "token": token}, "id.example", key)


class _ThirdPartyInvite(VersionedAuthTest):
    def setUp(self) -> None:
        super().setUp()
        self.room.standard_room(join_rule="invite")
        self.room.member(ALICE, "invite", DAVE)
        self.room.member(DAVE, "join")
        self._tpi(ALICE, {"public_key": _IS_PUBLIC})

    def _tpi(self, sender: str, keys: dict[str, Any], token: str = "tok") -> None:
        content = {"display_name": "b...@example.com", "key_validity_url": "https://id", **keys}
        self.room.send("m.room.third_party_invite", sender, content, token)

    def _invite(self, sender: str, target: str, tpi: Any) -> Any:
        content = {"membership": "invite", "third_party_invite": tpi}
        return self.room.make("m.room.member", sender, content, target)

    def test_valid_signature_allows(self) -> None:
        event = self._invite(ALICE, BOB, {"display_name": "b", "signed": _signed(BOB, "tok")})
        self.assertAllowed(event)
        tpi_id = self.room.state[("m.room.third_party_invite", "tok")].event_id
        self.assertIn(tpi_id, event.auth_event_ids)

    def test_key_from_public_keys_list(self) -> None:
        self._tpi(DAVE, {"public_keys": [{"public_key": _IS_PUBLIC, "key_validity_url": "x"}]})
        event = self._invite(DAVE, BOB, {"signed": _signed(BOB, "tok")})
        self.assertAllowed(event)

    def test_urlsafe_key_encoding_accepted(self) -> None:
        urlsafe = encode_base64(_IS_KEY.verify_key.encode(), urlsafe=True)
        self._tpi(ALICE, {"public_key": urlsafe})
        self.assertAllowed(self._invite(ALICE, BOB, {"signed": _signed(BOB, "tok")}))

    def test_wrong_key_rejected(self) -> None:
        event = self._invite(ALICE, BOB, {"signed": _signed(BOB, "tok", _OTHER_KEY)})
        self.assertRejected(event, "not signed")

    def test_tampered_signed_block_rejected(self) -> None:
        signed = _signed(BOB, "tok")
        signed["extra"] = "x"
        self.assertRejected(self._invite(ALICE, BOB, {"signed": signed}), "not signed")

    def test_unsigned_block_rejected(self) -> None:
        event = self._invite(ALICE, BOB, {"signed": {"mxid": BOB, "token": "tok"}})
        self.assertRejected(event, "not signed")

    def test_missing_signed_rejected(self) -> None:
        self.assertRejected(self._invite(ALICE, BOB, {"display_name": "b"}), "signed block")

    def test_missing_mxid_or_token_rejected(self) -> None:
        for signed in ({"token": "tok"}, {"mxid": BOB}, {"mxid": BOB, "token": 5}):
            self.assertRejected(self._invite(ALICE, BOB, {"signed": signed}), "mxid or token")

    def test_mxid_must_match_state_key(self) -> None:
        event = self._invite(ALICE, CAROL, {"signed": _signed(BOB, "tok")})
        self.assertRejected(event, "mxid does not match")

    def test_unknown_token_rejected(self) -> None:
        event = self._invite(ALICE, BOB, {"signed": _signed(BOB, "other")})
        self.assertRejected(event, "no m.room.third_party_invite")

    def test_sender_must_match_third_party_invite_sender(self) -> None:
        event = self._invite(DAVE, BOB, {"signed": _signed(BOB, "tok")})
        self.assertRejected(event, "did not send")

    def test_banned_target_rejected(self) -> None:
        self.room.member(ALICE, "ban", BOB)
        event = self._invite(ALICE, BOB, {"signed": _signed(BOB, "tok")})
        self.assertRejected(event, "banned")


class _Leave(VersionedAuthTest):
    def setUp(self) -> None:
        super().setUp()
        self.room.standard_room(
            users={**self.room.default_users(ALICE), DAVE: 50}, power_levels={"ban": 60}
        )
        self.room.member(DAVE, "join")
        self.room.member(BOB, "join")

    def test_leave_self(self) -> None:
        self.assertAllowed(self.room.make_member(BOB, "leave"))

    def test_reject_invite(self) -> None:
        self.room.member(ALICE, "invite", CAROL)
        self.assertAllowed(self.room.make_member(CAROL, "leave"))

    def test_cannot_leave_twice_or_while_banned(self) -> None:
        self.assertRejected(self.room.make_member(CAROL, "leave"), "cannot leave")
        self.room.member(ALICE, "ban", BOB)
        self.assertRejected(self.room.make_member(BOB, "leave"), "cannot leave")

    def test_kick_needs_kick_level_and_higher_level(self) -> None:
        self.assertAllowed(self.room.make_member(DAVE, "leave", BOB))
        self.assertRejected(self.room.make_member(BOB, "leave", DAVE), "kick")
        self.room.send(
            "m.room.power_levels",
            ALICE,
            {
                "users": {**self.room.default_users(ALICE), DAVE: 50, BOB: 50},
                "ban": 60,
            },
            "",
        )
        # Equal levels cannot kick each other.
        self.assertRejected(self.room.make_member(DAVE, "leave", BOB), "kick")

    def test_kicker_must_be_joined(self) -> None:
        self.room.member(DAVE, "leave")
        self.assertRejected(self.room.make_member(DAVE, "leave", BOB), "not joined")

    def test_unban_needs_ban_level(self) -> None:
        self.room.member(ALICE, "ban", CAROL)
        # Dave has 50: enough to kick, not the ban level of 60.
        self.assertRejected(self.room.make_member(DAVE, "leave", CAROL), "unban")
        self.assertAllowed(self.room.make_member(ALICE, "leave", CAROL))


class _Ban(VersionedAuthTest):
    def setUp(self) -> None:
        super().setUp()
        self.room.standard_room(users={**self.room.default_users(ALICE), DAVE: 50})
        self.room.member(DAVE, "join")
        self.room.member(BOB, "join")

    def test_ban(self) -> None:
        self.assertAllowed(self.room.make_member(DAVE, "ban", BOB))
        # Banning someone not in the room works too.
        self.assertAllowed(self.room.make_member(DAVE, "ban", CAROL))

    def test_ban_needs_ban_level(self) -> None:
        self.assertRejected(self.room.make_member(BOB, "ban", CAROL), "ban")

    def test_cannot_ban_equal_or_higher(self) -> None:
        self.assertRejected(self.room.make_member(DAVE, "ban", ALICE), "ban")

    def test_banner_must_be_joined(self) -> None:
        self.room.member(DAVE, "leave")
        self.assertRejected(self.room.make_member(DAVE, "ban", BOB), "not joined")


for _mixin in (
    _MemberBasics,
    _Join,
    _Knock,
    _Restricted,
    _Invite,
    _ThirdPartyInvite,
    _Leave,
    _Ban,
):
    globals().update(for_versions(_mixin))
