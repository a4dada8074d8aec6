"""matrixfed/storage/users.py on SQLite and PostgreSQL."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from matrixfed.clientapi.passwords import check_password, hash_password
from matrixfed.storage.users import UserStore, hash_token
from tests.storage.harness import DatabaseMixin, PostgresMixin, SqliteMixin


class UserStoreTestsMixin(DatabaseMixin):
    async def make_users(self) -> UserStore:
        clock = Clock()
        clock.advance(1000)
        return UserStore(db=await self.make_database(), clock=clock)

    async def test_create_is_atomic_and_refuses_duplicates(self) -> None:
        users = await self.make_users()
        self.assertTrue(await users.create_user("@a:x", "h1", admin=True))
        self.assertFalse(await users.create_user("@a:x", "h2"))
        user = await users.get_user("@a:x")
        assert user is not None
        self.assertEqual((user.password_hash, user.admin, user.created_ts), ("h1", True, 1_000_000))
        self.assertIsNone(await users.get_user("@b:x"))
        self.assertEqual(await users.list_users(), ["@a:x"])

    async def test_tokens_and_devices(self) -> None:
        users = await self.make_users()
        await users.create_user("@a:x", None)
        await users.add_access_token("@a:x", "DEV", hash_token("t1"), device_display_name="phone")
        await users.add_access_token("@a:x", "DEV", hash_token("t2"))
        owner = await users.get_token_owner(hash_token("t1"))
        assert owner is not None
        self.assertEqual((owner.user_id, owner.device_id), ("@a:x", "DEV"))
        self.assertEqual(await users.get_devices("@a:x"), {"DEV": "phone"})
        self.assertTrue(await users.delete_access_token(hash_token("t1")))
        self.assertIsNone(await users.get_token_owner(hash_token("t1")))
        self.assertIsNotNone(await users.get_token_owner(hash_token("t2")))
        self.assertFalse(await users.delete_access_token(hash_token("t1")))

    async def test_client_transactions_are_per_token_and_forgotten_on_logout(self) -> None:
        users = await self.make_users()
        t1, t2 = hash_token("t1"), hash_token("t2")
        await users.add_access_token("@a:x", "D", t1)
        await users.store_client_txn(t1, "k", "$e1")
        await users.store_client_txn(t1, "k", "$e2")  # a repeat keeps the first
        self.assertEqual(await users.get_client_txn(t1, "k"), "$e1")
        self.assertIsNone(await users.get_client_txn(t2, "k"))
        self.assertEqual(await users.get_client_txn_keys(t1, ["$e1", "$other"]), {"$e1": "k"})
        await users.delete_access_token(t1)
        self.assertIsNone(await users.get_client_txn(t1, "k"))

    async def test_password_round_trip(self) -> None:
        users = await self.make_users()
        await users.create_user("@a:x", hash_password("correct horse"))
        user = await users.get_user("@a:x")
        assert user is not None and user.password_hash is not None
        self.assertTrue(check_password("correct horse", user.password_hash))
        self.assertFalse(check_password("wrong", user.password_hash))
        self.assertFalse(check_password("correct horse", "garbage"))
        self.assertNotIn("correct horse", user.password_hash)


class UserStoreSqliteTests(SqliteMixin, UserStoreTestsMixin, unittest.TestCase):
    pass


class UserStorePostgresTests(PostgresMixin, UserStoreTestsMixin, unittest.TestCase):
    pass
