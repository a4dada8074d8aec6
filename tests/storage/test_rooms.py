"""Rooms, aliases and memberships on both engines."""

from __future__ import annotations

from twisted.trial import unittest

from matrixfed.events.room_versions import get_room_version
from matrixfed.storage import EventWithContext
from tests.storage.factory import RoomFactory
from tests.storage.harness import DatabaseMixin, PostgresMixin, SqliteMixin


class RoomsTestsMixin(DatabaseMixin):
    async def test_rooms_crud(self) -> None:
        store = await self.make_store()
        self.assertIsNone(await store.get_room("!r:test"))
        self.assertTrue(await store.store_room("!r:test", "10", creator="@a:test"))
        self.assertFalse(await store.store_room("!r:test", "9"))
        info = await store.get_room("!r:test")
        assert info is not None
        self.assertEqual(
            (info.room_version, info.creator, info.is_public, info.partial_state),
            ("10", "@a:test", False, False),
        )
        self.assertEqual(await store.get_room_version("!r:test"), get_room_version("10"))
        self.assertIsNone(await store.get_room_version("!nope:test"))

        self.assertTrue(await store.set_room_is_public("!r:test", True))
        self.assertFalse(await store.set_room_is_public("!nope:test", True))
        await store.store_room("!s:test", "11", is_public=True)
        self.assertEqual(await store.get_public_room_ids(), ["!r:test", "!s:test"])
        await store.set_room_is_public("!r:test", False)
        self.assertEqual(await store.get_public_room_ids(), ["!s:test"])

        self.assertTrue(await store.set_room_partial_state("!s:test", True))
        self.assertEqual(await store.get_partial_state_room_ids(), ["!s:test"])
        await store.set_room_partial_state("!s:test", False)
        self.assertEqual(await store.get_partial_state_room_ids(), [])

    async def test_aliases_crud(self) -> None:
        store = await self.make_store()
        self.assertTrue(
            await store.create_alias(
                "#a:test", "!r:test", creator="@a:test", servers=["test", "other"]
            )
        )
        # Never overwritten.
        self.assertFalse(await store.create_alias("#a:test", "!x:test"))
        alias = await store.get_alias("#a:test")
        assert alias is not None
        self.assertEqual(
            (alias.room_id, alias.creator, alias.servers), ("!r:test", "@a:test", ("test", "other"))
        )
        await store.create_alias("#b:test", "!r:test")
        self.assertEqual(await store.get_aliases_for_room("!r:test"), ["#a:test", "#b:test"])
        self.assertTrue(await store.delete_alias("#a:test"))
        self.assertFalse(await store.delete_alias("#a:test"))
        self.assertIsNone(await store.get_alias("#a:test"))
        self.assertEqual(await store.get_aliases_for_room("!r:test"), ["#b:test"])

    async def test_memberships_follow_current_state(self) -> None:
        store = await self.make_store()
        room = RoomFactory()
        await store.persist_events(room.room_id, [EventWithContext(e) for e in room.create_room()])
        events = [
            room.member("@bob:b.test"),
            room.member("@carol:c.test"),
            room.member("@dave:c.test", "invite"),
            room.member("@bob:b.test", "leave"),
        ]
        await store.persist_events(room.room_id, [EventWithContext(e) for e in events])
        self.assertEqual(
            await store.get_joined_users(room.room_id), {"@alice:test", "@carol:c.test"}
        )
        self.assertEqual(await store.get_joined_servers(room.room_id), {"test", "c.test"})
        self.assertFalse(await store.is_host_joined(room.room_id, "b.test"))
        self.assertEqual(
            await store.get_room_memberships(room.room_id),
            {
                "@alice:test": "join",
                "@carol:c.test": "join",
                "@dave:c.test": "invite",
                "@bob:b.test": "leave",
            },
        )
        self.assertEqual(
            await store.get_membership(room.room_id, "@bob:b.test"),
            ("leave", events[-1].event_id),
        )
        self.assertIsNone(await store.get_membership(room.room_id, "@zed:test"))
        self.assertEqual(await store.get_rooms_for_user("@bob:b.test"), {})
        self.assertEqual(
            await store.get_rooms_for_user("@bob:b.test", ["join", "leave"]),
            {room.room_id: "leave"},
        )
        self.assertEqual(
            await store.get_rooms_for_user("@dave:c.test", ["invite"]), {room.room_id: "invite"}
        )

    async def test_joined_servers_split_at_the_first_colon(self) -> None:
        # The servers are computed in SQL: the server part is what follows the
        # first ":" (ports and IPv6 literals keep theirs), like domain_of.
        store = await self.make_store()
        room = RoomFactory()
        await store.persist_events(room.room_id, [EventWithContext(e) for e in room.create_room()])
        users = ["@bob:b.test:8448", "@carol:[::1]:8448", "@dave:d.test", "@erin:d.test"]
        events = [room.member(u) for u in users]
        events.append(room.member("@frank:f.test", "invite"))
        events.append(room.member("@dave:d.test", "leave"))
        await store.persist_events(room.room_id, [EventWithContext(e) for e in events])
        joined = await store.get_joined_servers(room.room_id)
        self.assertEqual(joined, {"test", "b.test:8448", "[::1]:8448", "d.test"})
        self.assertEqual(
            await store.get_joined_servers(room.room_id, except_user="@erin:d.test"),
            {"test", "b.test:8448", "[::1]:8448"},
        )
        for server in ("test", "b.test:8448", "[::1]:8448", "d.test"):
            self.assertTrue(await store.is_host_joined(room.room_id, server), server)
        # Invited, left, a prefix or a suffix of a joined server: not joined.
        for server in ("f.test", "b.test", "8448", "1]:8448", "est", ""):
            self.assertFalse(await store.is_host_joined(room.room_id, server), server)
        self.assertFalse(await store.is_host_joined("!other:test", "test"))
        self.assertEqual(await store.get_joined_servers("!other:test"), set())


class RoomsSqliteTests(SqliteMixin, RoomsTestsMixin, unittest.TestCase):
    pass


class RoomsPostgresTests(PostgresMixin, RoomsTestsMixin, unittest.TestCase):
    pass
