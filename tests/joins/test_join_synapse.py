"""Joins of real Synapse rooms (skipped where Synapse is not installed).

A restricted room: Synapse countersigns our join for a member of the allowed
room, and both servers end with the same state.

A partial-state join:

Synapse answers ``send_join?omit_members=true`` with partial state; matrixfed
(partial-state joins are its default) is joined at once, then fetches the
members in the background. Observed through the client API: in the end
matrixfed reports exactly Synapse's current state, members included. With
``--no-join-partial-state`` the same join is a full one.
"""

from __future__ import annotations

import os

from tests.interop.client import wait_membership, wait_same_state
from tests.interop.synapse import InteropTestCase, MatrixfedServer, shared_pair, with_logs


class FullJoinMatrixfed(MatrixfedServer):
    """matrixfed that never asks residents for partial-state joins."""

    def command(self) -> list[str]:
        return [*super().command(), "--no-join-partial-state"]


class PartialStateJoinOfSynapseRoomTests(InteropTestCase):
    async def _join_synapse_room(self, server: type[MatrixfedServer]) -> tuple[str, str]:
        """A Synapse room with seven members joined from ``server``; (room ID, its log)."""
        synapse = await self.start_synapse()
        mf = server.create(
            os.path.abspath(self.mktemp()), self.ca, trusted_key_servers=[synapse.server_name]
        )
        self.servers.append(mf)
        await mf.start()
        owner = await synapse.register()
        room_id = await owner.create_room(room_version="10", preset="public_chat", name="big")
        members = [await synapse.register() for _ in range(6)]
        for member in members:
            await member.join(room_id)
        guest = await mf.register()
        self.assertEqual(await guest.join(room_id, via=[synapse.server_name]), room_id)
        await wait_membership(owner, room_id, guest.user_id, "join")
        state = await wait_same_state(room_id, [owner, guest])
        for user in (owner, guest, *members):
            self.assertEqual(state[("m.room.member", user.user_id)][2]["membership"], "join")
        with open(mf.log_files[0], encoding="utf-8") as f:
            return room_id, f.read()

    @with_logs
    async def test_partial_state_join_reaches_synapses_full_state(self) -> None:
        room_id, log = await self._join_synapse_room(MatrixfedServer)
        # It was a partial-state join, completed by the resync.
        self.assertIn("(members omitted)", log)
        self.assertIn(f"resync {room_id}: full state", log)

    @with_logs
    async def test_full_join_when_partial_state_joins_are_off(self) -> None:
        room_id, log = await self._join_synapse_room(FullJoinMatrixfed)
        self.assertIn(f"join {room_id}: send_join from", log)
        self.assertNotIn("(members omitted)", log)
        self.assertNotIn(f"resync {room_id}", log)


class RestrictedJoinOfSynapseRoomTests(InteropTestCase):
    @with_logs
    async def test_join_countersigned_by_synapse(self) -> None:
        """A matrixfed member of the allowed room joins Synapse's restricted room."""
        synapse, mf = await shared_pair()
        owner = await synapse.register()
        allowed = await owner.create_room(room_version="10", preset="public_chat")
        restricted = await owner.create_room(
            room_version="10",
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
        member = await mf.register()
        await member.join(allowed, via=[synapse.server_name])
        await wait_membership(owner, allowed, member.user_id, "join")
        await member.join(restricted, via=[synapse.server_name])
        await wait_membership(owner, restricted, member.user_id, "join")
        state = await wait_same_state(restricted, [owner, member])
        join = state[("m.room.member", member.user_id)]
        self.assertEqual(join[2]["membership"], "join")
        self.assertEqual(join[2]["join_authorised_via_users_server"], owner.user_id)
