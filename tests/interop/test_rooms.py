"""Scenarios 1-4: joins both ways (by alias and by room ID), messages both ways in
order, and invites, rejections, leaves, kicks and bans from each side.

Everything is observed through the client-server API of both servers: a join
counts when the resident server shows the member joined and both servers report
the same current state, event by event.
"""

from __future__ import annotations

import os
import signal

from tests.interop.client import (
    ClientUser,
    HttpError,
    wait_bodies,
    wait_for,
    wait_invited,
    wait_membership,
    wait_same_state,
)
from tests.interop.synapse import (
    ROOM_VERSIONS,
    InteropTestCase,
    ServerProcess,
    for_room_versions,
    shared_pair,
)


def unique(prefix: str) -> str:
    return f"{prefix}-{os.urandom(4).hex()}"


@for_room_versions(ROOM_VERSIONS)
class JoinTests(InteropTestCase):
    async def joins_by_alias_and_id(
        self, host: ServerProcess, guest: ServerProcess, room_version: str
    ) -> None:
        owner = await host.register()
        alias_local = unique(f"join-v{room_version}")
        room_id = await owner.create_room(
            room_version=room_version, preset="public_chat", room_alias_name=alias_local
        )
        by_alias = await guest.register()
        joined = await by_alias.join(f"#{alias_local}:{host.server_name}")
        self.assertEqual(joined, room_id)
        by_id = await guest.register()
        self.assertEqual(await by_id.join(room_id, via=[host.server_name]), room_id)
        for user in (by_alias, by_id):
            await wait_membership(owner, room_id, user.user_id, "join")
        state = await wait_same_state(room_id, [owner, by_alias, by_id])
        create = state[("m.room.create", "")]
        self.assertEqual(create[2].get("room_version", "1"), room_version)
        for user in (owner, by_alias, by_id):
            self.assertEqual(state[("m.room.member", user.user_id)][2]["membership"], "join")

    async def check_synapse_joins_matrixfed_room(self, room_version: str) -> None:
        """Scenario 1: Synapse users join a room on matrixfed by alias and by ID."""
        synapse, mf = await shared_pair()
        await self.joins_by_alias_and_id(mf, synapse, room_version)

    async def check_matrixfed_joins_synapse_room(self, room_version: str) -> None:
        """Scenario 2: matrixfed users join a room on Synapse by alias and by ID."""
        synapse, mf = await shared_pair()
        await self.joins_by_alias_and_id(synapse, mf, room_version)


async def sync_bodies_since(user: ClientUser, room_id: str, since: str, count: int) -> list[str]:
    """Message bodies of ``room_id`` arriving in ``user``'s incremental /sync after
    ``since``, gathered until ``count`` have arrived."""
    bodies: list[str] = []
    token = [since]

    async def check() -> bool:
        result = await user.sync(token[0], timeout_ms=2000)
        token[0] = result["next_batch"]
        room = result.get("rooms", {}).get("join", {}).get(room_id, {})
        for event in room.get("timeline", {}).get("events", []):
            if event.get("type") == "m.room.message":
                bodies.append(event["content"].get("body"))
        return len(bodies) >= count

    await wait_for(f"{count} messages in {user.user_id}'s /sync", check)
    return bodies


@for_room_versions(ROOM_VERSIONS)
class MessageTests(InteropTestCase):
    async def check_messages_both_ways_in_order(self, room_version: str) -> None:
        """Scenario 3: alternating messages appear on both sides, in order, in
        /messages and in incremental /sync."""
        synapse, mf = await shared_pair()
        s_user = await synapse.register()
        m_user = await mf.register()
        room_id = await s_user.create_room(room_version=room_version, preset="public_chat")
        await m_user.join(room_id, via=[synapse.server_name])
        await wait_membership(s_user, room_id, m_user.user_id, "join")
        s_since = (await s_user.sync())["next_batch"]
        m_since = (await m_user.sync())["next_batch"]
        sent: list[str] = []
        for i in range(3):
            for sender, receiver in ((s_user, m_user), (m_user, s_user)):
                body = f"{sender.user_id} says {i}"
                await sender.send(room_id, body)
                sent.append(body)
                await wait_bodies(receiver, room_id, sent)
        for user in (s_user, m_user):
            await wait_bodies(user, room_id, sent)
        self.assertEqual(await sync_bodies_since(m_user, room_id, m_since, len(sent)), sent)
        self.assertEqual(await sync_bodies_since(s_user, room_id, s_since, len(sent)), sent)

    async def history_before_join(
        self, host: ServerProcess, guest: ServerProcess, room_version: str
    ) -> None:
        owner = await host.register()
        room_id = await owner.create_room(room_version=room_version, preset="public_chat")
        earlier = [f"before you came {i}" for i in range(5)]
        for body in earlier:
            await owner.send(room_id, body)
        joiner = await guest.register()
        await joiner.join(room_id, via=[host.server_name])
        # history_visibility "shared" (public_chat): a joiner may read what came
        # before; the joining server has it from the join or backfills it.
        await wait_bodies(joiner, room_id, earlier)
        await joiner.send(room_id, "hello")
        await wait_bodies(owner, room_id, [*earlier, "hello"])

    async def check_history_before_join_on_matrixfed(self, room_version: str) -> None:
        """Scenario 3: a Synapse user reads what was said in a matrixfed room
        before they joined."""
        synapse, mf = await shared_pair()
        await self.history_before_join(mf, synapse, room_version)

    async def check_history_before_join_on_synapse(self, room_version: str) -> None:
        """Scenario 3: a matrixfed user reads what was said in a Synapse room
        before they joined."""
        synapse, mf = await shared_pair()
        await self.history_before_join(synapse, mf, room_version)


class MembershipRound:
    """One room on ``host``, an owner there, users on ``guest``, and an observer
    on ``guest`` who is in the room: each membership change must be seen on both
    servers."""

    def __init__(self, test: InteropTestCase, host: ServerProcess, guest: ServerProcess) -> None:
        self.test = test
        self.host = host
        self.guest = guest

    async def setup(self, room_version: str, preset: str) -> None:
        self.owner = await self.host.register()
        self.room_id = await self.owner.create_room(room_version=room_version, preset=preset)
        self.observer = await self.guest.register()
        if preset == "private_chat":
            await self.owner.invite(self.room_id, self.observer.user_id)
            await wait_invited(self.observer, self.room_id)
        await self.observer.join(self.room_id, via=[self.host.server_name])
        await wait_membership(self.owner, self.room_id, self.observer.user_id, "join")
        await wait_membership(self.observer, self.room_id, self.owner.user_id, "join")

    async def seen(self, user: ClientUser, membership: str) -> None:
        await wait_membership(self.owner, self.room_id, user.user_id, membership)
        await wait_membership(self.observer, self.room_id, user.user_id, membership)

    async def joined(self) -> ClientUser:
        user = await self.guest.register()
        await user.join(self.room_id, via=[self.host.server_name])
        await self.seen(user, "join")
        return user


@for_room_versions(ROOM_VERSIONS)
class MembershipTests(InteropTestCase):
    async def invites(self, host: ServerProcess, guest: ServerProcess, room_version: str) -> None:
        """An invite rejected, then one accepted as soon as the invitee is shown it."""
        r = MembershipRound(self, host, guest)
        await r.setup(room_version, "private_chat")
        rejects, accepts = await guest.register(), await guest.register()
        await r.owner.invite(r.room_id, rejects.user_id)
        await r.seen(rejects, "invite")
        await wait_invited(rejects, r.room_id)
        await rejects.leave(r.room_id)
        await r.seen(rejects, "leave")
        await r.owner.invite(r.room_id, accepts.user_id)
        await wait_invited(accepts, r.room_id)
        await accepts.join(r.room_id, via=[host.server_name])
        await r.seen(accepts, "join")
        await wait_same_state(r.room_id, [r.owner, r.observer, accepts])

    async def leave_kick_ban(
        self, host: ServerProcess, guest: ServerProcess, room_version: str
    ) -> None:
        """A leave, a kick and a ban of the guest side's users by the host's owner."""
        r = MembershipRound(self, host, guest)
        await r.setup(room_version, "public_chat")
        leaver, kicked, banned = await r.joined(), await r.joined(), await r.joined()
        await leaver.leave(r.room_id)
        await r.seen(leaver, "leave")
        await r.owner.kick(r.room_id, kicked.user_id)
        await r.seen(kicked, "leave")
        with self.assertRaises(HttpError) as caught:
            await kicked.send(r.room_id, "still here?")
        self.assertEqual(caught.exception.code, 403)
        await r.owner.ban(r.room_id, banned.user_id)
        await r.seen(banned, "ban")
        with self.assertRaises(HttpError) as caught:
            await banned.join(r.room_id, via=[host.server_name])
        self.assertEqual(caught.exception.code, 403)
        await wait_same_state(r.room_id, [r.owner, r.observer])

    async def remote_admin(
        self, host: ServerProcess, guest: ServerProcess, room_version: str
    ) -> None:
        """An admin on the guest server kicks and bans users of the host server in
        a room the host created; a host user who left rejoins."""
        owner = await host.register()
        admin = await guest.register()
        users = {admin.user_id: 100}
        if int(room_version) < 12:
            users[owner.user_id] = 100
        room_id = await owner.create_room(
            room_version=room_version,
            preset="public_chat",
            power_level_content_override={"users": users},
        )
        await admin.join(room_id, via=[host.server_name])
        kicked, banned, rejoiner = [await host.register() for _ in range(3)]
        for user in (kicked, banned, rejoiner):
            await user.join(room_id)
            await wait_membership(admin, room_id, user.user_id, "join")
        await admin.kick(room_id, kicked.user_id)
        await admin.ban(room_id, banned.user_id)
        for observer in (owner, admin):
            await wait_membership(observer, room_id, kicked.user_id, "leave")
            await wait_membership(observer, room_id, banned.user_id, "ban")
        with self.assertRaises(HttpError) as caught:
            await banned.join(room_id)
        self.assertEqual(caught.exception.code, 403)
        await rejoiner.leave(room_id)
        await wait_membership(admin, room_id, rejoiner.user_id, "leave")
        await rejoiner.join(room_id)
        await wait_membership(admin, room_id, rejoiner.user_id, "join")
        await wait_same_state(room_id, [owner, admin])

    async def check_synapse_admin_kicks_and_bans_in_matrixfed_room(self, room_version: str) -> None:
        """Scenario 4: a Synapse admin kicks and bans matrixfed users in a
        matrixfed room."""
        synapse, mf = await shared_pair()
        await self.remote_admin(mf, synapse, room_version)

    async def check_matrixfed_admin_kicks_and_bans_in_synapse_room(self, room_version: str) -> None:
        """Scenario 4: a matrixfed admin kicks and bans Synapse users in a
        Synapse room."""
        synapse, mf = await shared_pair()
        await self.remote_admin(synapse, mf, room_version)

    async def check_invites_from_matrixfed(self, room_version: str) -> None:
        """Scenario 4: a matrixfed user invites Synapse users."""
        synapse, mf = await shared_pair()
        await self.invites(mf, synapse, room_version)

    async def check_invites_from_synapse(self, room_version: str) -> None:
        """Scenario 4: a Synapse user invites matrixfed users."""
        synapse, mf = await shared_pair()
        await self.invites(synapse, mf, room_version)

    async def check_leave_kick_ban_by_matrixfed(self, room_version: str) -> None:
        """Scenario 4: Synapse users leave, are kicked and banned from a matrixfed room."""
        synapse, mf = await shared_pair()
        await self.leave_kick_ban(mf, synapse, room_version)

    async def check_leave_kick_ban_by_synapse(self, room_version: str) -> None:
        """Scenario 4: matrixfed users leave, are kicked and banned from a Synapse room."""
        synapse, mf = await shared_pair()
        await self.leave_kick_ban(synapse, mf, room_version)


@for_room_versions(("1", "10", "11", "12"))
class InviteBeforeSendTests(InteropTestCase):
    async def check_invitee_joins_before_the_invite_is_sent_to_the_room(
        self, room_version: str
    ) -> None:
        """Scenario 4: a matrixfed user accepts an invite from Synapse at once,
        while Synapse has not yet sent the invite event into the room (it is
        frozen right after ``/invite``): matrixfed, already in the room, joins
        locally on the strength of the invite it countersigned."""
        _, mf = await shared_pair()
        synapse = await self.start_synapse()
        owner = await synapse.register()
        room_id = await owner.create_room(room_version=room_version, preset="private_chat")
        observer = await mf.register()
        await owner.invite(room_id, observer.user_id)
        await wait_invited(observer, room_id)
        await observer.join(room_id, via=[synapse.server_name])
        await wait_membership(owner, room_id, observer.user_id, "join")

        invitee = await mf.register()
        await owner.invite(room_id, invitee.user_id)
        assert synapse.proc is not None
        os.kill(synapse.proc.pid, signal.SIGSTOP)
        try:
            await wait_invited(invitee, room_id)
            await invitee.join(room_id, via=[synapse.server_name])
            await wait_membership(observer, room_id, invitee.user_id, "join")
        finally:
            os.kill(synapse.proc.pid, signal.SIGCONT)
        await wait_membership(owner, room_id, invitee.user_id, "join")
        await wait_same_state(room_id, [owner, observer, invitee])
