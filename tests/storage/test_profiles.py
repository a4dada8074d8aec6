"""Profiles, received invites and the timestamp look-up (matrixfed/storage/profiles.py)."""

from __future__ import annotations

from twisted.trial import unittest

from tests.storage.harness import DatabaseMixin, PostgresMixin, SqliteMixin


class ProfilesTestsMixin(DatabaseMixin):
    async def test_profile_fields_set_and_cleared(self) -> None:
        store = await self.make_store()
        self.assertIsNone(await store.get_profile("@a:hs"))
        self.assertFalse(await store.is_known_local_user("@a:hs"))
        await store.set_profile("@a:hs", displayname="Alice")
        await store.set_profile("@a:hs", avatar_url="mxc://hs/x")
        profile = await store.get_profile("@a:hs")
        assert profile is not None
        self.assertEqual((profile.displayname, profile.avatar_url), ("Alice", "mxc://hs/x"))
        await store.set_profile("@a:hs", displayname=None)
        profile = await store.get_profile("@a:hs")
        assert profile is not None
        self.assertEqual((profile.displayname, profile.avatar_url), (None, "mxc://hs/x"))
        self.assertTrue(await store.is_known_local_user("@a:hs"))

    async def test_invites_replace_and_delete(self) -> None:
        store = await self.make_store()
        for n in (1, 2):
            await store.store_received_invite(
                room_id="!r:remote",
                user_id="@a:hs",
                event_id=f"$e{n}",
                room_version="10",
                sender="@b:remote",
                event={"type": "m.room.member", "n": n},
                stripped_state=[{"type": "m.room.name", "state_key": "", "content": {}}],
            )
        invites = await store.get_invites_for_user("@a:hs")
        self.assertEqual([i.event_id for i in invites], ["$e2"])
        self.assertEqual(invites[0].event, {"type": "m.room.member", "n": 2})
        self.assertEqual(invites[0].stripped_state[0]["type"], "m.room.name")
        self.assertEqual(await store.get_invites_for_user("@other:hs"), [])
        self.assertTrue(await store.delete_received_invite("!r:remote", "@a:hs"))
        self.assertFalse(await store.delete_received_invite("!r:remote", "@a:hs"))
        self.assertEqual(await store.get_invites_for_user("@a:hs"), [])


class ProfilesSqliteTests(SqliteMixin, ProfilesTestsMixin, unittest.TestCase):
    pass


class ProfilesPostgresTests(PostgresMixin, ProfilesTestsMixin, unittest.TestCase):
    pass
