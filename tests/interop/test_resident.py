"""Synapse knocks on and joins restricted rooms hosted by matrixfed.

- Knock: a Synapse user knocks on a matrixfed room whose join rule is
  ``knock`` (``make_knock``/``send_knock`` to matrixfed); matrixfed shows the
  knock, Synapse shows the room among the user's knocked rooms with its
  name, and the owner's invite then lets the user join.
- Rejected invite: a Synapse user invited to a matrixfed room no Synapse
  user is in rejects it (``make_leave``/``send_leave`` to matrixfed).
- Restricted: a Synapse user who is in the allowed room joins a matrixfed
  room restricted to it (matrixfed names its own user in
  ``join_authorised_via_users_server`` and countersigns); a Synapse user who
  is not is refused.
"""

from __future__ import annotations

import os
from urllib.parse import quote

from tests.interop.client import HttpError, wait_for, wait_invited, wait_membership
from tests.interop.synapse import InteropTestCase, for_room_versions, shared_pair


def q(value: str) -> str:
    return quote(value, safe="")


@for_room_versions(("10", "12"))
class ResidentTests(InteropTestCase):
    async def check_synapse_knocks_on_a_matrixfed_room(self, room_version: str) -> None:
        synapse, mf = await shared_pair()
        owner = await mf.register()
        name = f"Knock here {os.urandom(3).hex()}"
        room_id = await owner.create_room(
            room_version=room_version,
            preset="private_chat",
            name=name,
            initial_state=[
                {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}
            ],
        )
        knocker = await synapse.register()
        await knocker.call(
            "POST",
            f"/_matrix/client/v3/knock/{q(room_id)}",
            {"reason": "let me in"},
            args={"via": [mf.server_name], "server_name": [mf.server_name]},
        )
        await wait_membership(owner, room_id, knocker.user_id, "knock")

        async def knocked() -> bool:
            # Not the plain initial sync wait_invited polls later: Synapse
            # caches identical sync answers for a while.
            rooms = (await knocker.sync(timeout_ms=1)).get("rooms", {}).get("knock", {})
            events = rooms.get(room_id, {}).get("knock_state", {}).get("events", [])
            return any(e.get("content", {}).get("name") == name for e in events)

        await wait_for(f"{knocker.user_id} to be shown the knock on {room_id}", knocked)
        await owner.invite(room_id, knocker.user_id)
        await wait_invited(knocker, room_id)
        await knocker.join(room_id, via=[mf.server_name])
        await wait_membership(owner, room_id, knocker.user_id, "join")

    async def check_synapse_joins_a_restricted_matrixfed_room(self, room_version: str) -> None:
        synapse, mf = await shared_pair()
        owner = await mf.register()
        allowed = await owner.create_room(room_version=room_version, preset="public_chat")
        restricted = await owner.create_room(
            room_version=room_version,
            preset="private_chat",
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
        member, outsider = await synapse.register(), await synapse.register()
        await member.join(allowed, via=[mf.server_name])
        await wait_membership(owner, allowed, member.user_id, "join")
        await member.join(restricted, via=[mf.server_name])
        await wait_membership(owner, restricted, member.user_id, "join")
        with self.assertRaises(HttpError) as caught:
            await outsider.join(restricted, via=[mf.server_name])
        self.assertEqual(caught.exception.code, 403)
        self.assertEqual(await owner.membership(restricted, outsider.user_id), None)

    async def check_synapse_rejects_an_invite_with_make_leave(self, room_version: str) -> None:
        synapse, mf = await shared_pair()
        owner = await mf.register()
        room_id = await owner.create_room(room_version=room_version, preset="private_chat")
        invitee = await synapse.register()
        await owner.invite(room_id, invitee.user_id)
        await wait_invited(invitee, room_id)
        await invitee.call("POST", f"/_matrix/client/v3/rooms/{q(room_id)}/leave", {})
        await wait_membership(owner, room_id, invitee.user_id, "leave")
