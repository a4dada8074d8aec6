"""Scenario 7: matrixfed restarts in the middle of a conversation; what Synapse
sent while it was down arrives once it is back, in order, and the conversation
goes on both ways.
"""

from __future__ import annotations

from tests.interop.client import timeline_bodies, wait_bodies, wait_for, wait_membership
from tests.interop.synapse import (
    ROOM_VERSIONS,
    InteropTestCase,
    for_room_versions,
    shared_pair,
)


@for_room_versions(ROOM_VERSIONS)
class RestartTests(InteropTestCase):
    async def restart_mid_conversation(self, room_version: str, *, matrixfed_hosts: bool) -> None:
        synapse, _ = await shared_pair()
        mf = await self.start_matrixfed(trusted_key_servers=[synapse.server_name])
        s_user, m_user = await synapse.register(), await mf.register()
        if matrixfed_hosts:
            room_id = await m_user.create_room(room_version=room_version, preset="public_chat")
            await s_user.join(room_id, via=[mf.server_name])
            await wait_membership(m_user, room_id, s_user.user_id, "join")
        else:
            room_id = await s_user.create_room(room_version=room_version, preset="public_chat")
            await m_user.join(room_id, via=[synapse.server_name])
        await wait_membership(s_user, room_id, m_user.user_id, "join")
        before = ["hello from synapse", "hello from matrixfed"]
        await s_user.send(room_id, before[0])
        await wait_bodies(m_user, room_id, before[:1])
        await m_user.send(room_id, before[1])
        await wait_bodies(s_user, room_id, before)

        mf.stop()
        while_down = [f"while you were away {i}" for i in range(3)]
        for body in while_down:
            await s_user.send(room_id, body)
        await mf.start()

        # The conversation goes on from matrixfed's side; Synapse's messages must
        # arrive, in the order they were sent, whatever triggers their delivery.
        reply = "back again"
        await m_user.send(room_id, reply)

        async def synapse_messages_arrived() -> bool:
            seen = await timeline_bodies(m_user, room_id)
            ours = [b for b in seen if b != reply]
            return ours == before + while_down

        await wait_for(f"{m_user.user_id} to see {while_down}", synapse_messages_arrived)
        seen_by_synapse = await timeline_bodies(s_user, room_id)

        async def reply_arrived() -> bool:
            seen_by_synapse[:] = await timeline_bodies(s_user, room_id)
            return reply in seen_by_synapse

        await wait_for(f"{s_user.user_id} to see {reply!r}", reply_arrived)
        self.assertEqual([b for b in seen_by_synapse if b != reply], before + while_down)

    async def check_messages_sent_while_down_arrive(self, room_version: str) -> None:
        """Scenario 7, in a room created on Synapse."""
        await self.restart_mid_conversation(room_version, matrixfed_hosts=False)

    async def check_messages_sent_while_down_arrive_in_matrixfed_room(
        self, room_version: str
    ) -> None:
        """Scenario 7, in a room created on matrixfed (which Synapse keeps alive)."""
        await self.restart_mid_conversation(room_version, matrixfed_hosts=True)
