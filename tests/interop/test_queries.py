"""Scenario 6, second half: ``/query/directory`` and ``/query/profile`` both ways.

A user on one server resolves an alias of, and reads the profile of a user on,
the other server through the client-server API; the server asks the other over
federation.
"""

from __future__ import annotations

from tests.interop.client import HttpError
from tests.interop.synapse import InteropTestCase, shared_pair, with_logs


class QueryTests(InteropTestCase):
    @with_logs
    async def test_synapse_resolves_matrixfed_alias(self) -> None:
        synapse, mf = await shared_pair()
        owner = await mf.register()
        room_id = await owner.create_room(room_alias_name="q-dir-mf", preset="public_chat")
        asker = await synapse.register()
        answer = await asker.resolve_alias(f"#q-dir-mf:{mf.server_name}")
        self.assertEqual(answer["room_id"], room_id)
        self.assertIn(mf.server_name, answer["servers"])

    @with_logs
    async def test_matrixfed_resolves_synapse_alias(self) -> None:
        synapse, mf = await shared_pair()
        owner = await synapse.register()
        room_id = await owner.create_room(room_alias_name="q-dir-syn", preset="public_chat")
        asker = await mf.register()
        answer = await asker.resolve_alias(f"#q-dir-syn:{synapse.server_name}")
        self.assertEqual(answer["room_id"], room_id)
        self.assertIn(synapse.server_name, answer["servers"])

    @with_logs
    async def test_unknown_alias_is_not_found_both_ways(self) -> None:
        synapse, mf = await shared_pair()
        for asker_server, other in ((synapse, mf), (mf, synapse)):
            asker = await asker_server.register()
            with self.assertRaises(HttpError) as caught:
                await asker.resolve_alias(f"#no-such-alias:{other.server_name}")
            self.assertEqual(
                (caught.exception.code, caught.exception.errcode), (404, "M_NOT_FOUND")
            )

    @with_logs
    async def test_synapse_reads_matrixfed_profile(self) -> None:
        synapse, mf = await shared_pair()
        user = await mf.register()
        await user.set_displayname("Mira on matrixfed")
        asker = await synapse.register()
        profile = await asker.profile(user.user_id)
        self.assertEqual(profile.get("displayname"), "Mira on matrixfed")

    @with_logs
    async def test_matrixfed_reads_synapse_profile(self) -> None:
        synapse, mf = await shared_pair()
        user = await synapse.register()
        await user.set_displayname("Sam on Synapse")
        asker = await mf.register()
        profile = await asker.profile(user.user_id)
        self.assertEqual(profile.get("displayname"), "Sam on Synapse")
