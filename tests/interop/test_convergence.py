"""Scenario 5: one room, members on three servers (two matrixfed, one Synapse),
concurrent topic and power-level changes: every server ends with the same state.

The changes are sent at the same moment from all three servers, so each server
sees forks and must resolve them; agreeing event by event with Synapse means
matrixfed's state resolution picked what Synapse's did.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults

from tests.interop.client import ClientUser, HttpError, wait_membership, wait_same_state
from tests.interop.synapse import (
    ROOM_VERSIONS,
    InteropTestCase,
    for_room_versions,
    shared_trio,
)


async def concurrently(*calls: Awaitable[Any]) -> list[Any]:
    """Run client calls at the same time (each HTTP request is on its own thread)."""
    results: list[Any] = await gatherResults(
        [Deferred.fromCoroutine(_run(c)) for c in calls], consumeErrors=True
    )
    return results


async def _run(call: Awaitable[Any]) -> Any:
    return await call


async def _topic_or_refused(user: ClientUser, room_id: str, topic: str) -> str | None:
    """Set the topic; None when the user's own server refuses it (403): the
    down-grade from the other server may reach it before the request does,
    and then the rules refuse it there. Either order must converge."""
    try:
        return await user.set_state(room_id, "m.room.topic", {"topic": topic})
    except HttpError as e:
        if e.code != 403:
            raise
        return None


@for_room_versions(ROOM_VERSIONS)
class ConvergenceTests(InteropTestCase):
    async def converge(self, room_version: str, *, synapse_hosts: bool) -> None:
        """Concurrent topics, then concurrent power-level changes racing a topic.

        Roles: the creator and a second admin (100) on different servers, and
        ``low`` (50) on the second matrixfed; the room is created on matrixfed
        or on Synapse.
        """
        synapse, mf, mf2 = await shared_trio()
        on_mf, low, on_synapse = await mf.register(), await mf2.register(), await synapse.register()
        creator, admin = (on_synapse, on_mf) if synapse_hosts else (on_mf, on_synapse)
        host = synapse if synapse_hosts else mf
        users = {low.user_id: 50, admin.user_id: 100}
        if int(room_version) < 12:
            # Before v12 the creator's power is only what the users map says.
            users[creator.user_id] = 100
        room_id = await creator.create_room(
            room_version=room_version,
            preset="public_chat",
            power_level_content_override={"users": users},
        )
        for joiner in (low, admin):
            await joiner.join(room_id, via=[host.server_name])
        everyone: list[ClientUser] = [creator, admin, low]
        for observer in everyone:
            for member in everyone:
                await wait_membership(observer, room_id, member.user_id, "join")

        topics = await concurrently(
            *(u.set_state(room_id, "m.room.topic", {"topic": f"by {u.user_id}"}) for u in everyone)
        )
        await concurrently(*(u.send(room_id, f"after topics from {u.user_id}") for u in everyone))
        state = await wait_same_state(room_id, everyone)
        self.assertIn(state[("m.room.topic", "")][0], topics)

        # Two admins on two servers set low's level at once while low, at 50,
        # sets the topic: which power levels win decides whether that topic stands.
        power = await creator.get_state_event(room_id, "m.room.power_levels")
        up = dict(power, users={**power["users"], low.user_id: 60})
        down = dict(power, users={**power["users"], low.user_id: 10})
        power_ids = await concurrently(
            creator.set_state(room_id, "m.room.power_levels", up),
            admin.set_state(room_id, "m.room.power_levels", down),
            _topic_or_refused(low, room_id, "racing the power levels"),
        )
        await concurrently(*(u.send(room_id, f"after power from {u.user_id}") for u in everyone))
        state = await wait_same_state(room_id, everyone)
        self.assertIn(state[("m.room.power_levels", "")][0], power_ids[:2])

    async def check_three_servers_converge(self, room_version: str) -> None:
        """Scenario 5, the room created on matrixfed."""
        await self.converge(room_version, synapse_hosts=False)

    async def check_three_servers_converge_in_synapse_room(self, room_version: str) -> None:
        """Scenario 5, the room created on Synapse."""
        await self.converge(room_version, synapse_hosts=True)
