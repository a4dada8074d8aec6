"""KeysStore on SQLite and PostgreSQL: round trips and the newest-response-wins rule."""

from __future__ import annotations

from typing import Any

from signedjson.key import generate_signing_key, get_verify_key
from twisted.trial import unittest

from matrixfed.events.keys import ServerVerifyKey
from matrixfed.storage.database import Transaction
from matrixfed.storage.keys_store import FetchedKeyResponse, KeysStore
from tests.storage.harness import DatabaseMixin, PostgresMixin, SqliteMixin


def fetched(
    server: str,
    key_id: str,
    verify_key: Any,
    *,
    response_valid_until: int,
    key_valid_until: int,
    expired: bool = False,
    fetched_from: str | None = None,
) -> FetchedKeyResponse:
    return FetchedKeyResponse(
        server_name=server,
        fetched_from=fetched_from or server,
        ts_fetched=1000,
        valid_until_ts=response_valid_until,
        keys=(ServerVerifyKey(server, key_id, verify_key, key_valid_until, expired),),
        response={"server_name": server, "valid_until_ts": response_valid_until, "x": "é"},
    )


class KeysStoreTestsMixin(DatabaseMixin):
    async def make_keys_store(self) -> KeysStore:
        return KeysStore(db=await self.make_database())

    async def test_round_trip(self) -> None:
        store = await self.make_keys_store()
        vk = get_verify_key(generate_signing_key("k1"))
        await store.store_fetched(
            [fetched("a.example", "ed25519:k1", vk, response_valid_until=500, key_valid_until=400)]
        )
        keys = await store.get_server_keys(["a.example", "b.example"])
        self.assertEqual(list(keys), ["a.example"])
        stored = keys["a.example"]["ed25519:k1"]
        self.assertEqual(bytes(stored.key.verify_key), bytes(vk))
        self.assertEqual(stored.key.valid_until_ts, 400)
        self.assertFalse(stored.key.expired)
        self.assertEqual(stored.response_valid_until_ts, 500)
        response = await store.get_key_response("a.example")
        assert response is not None
        self.assertEqual(response.response["x"], "é")
        self.assertEqual(response.valid_until_ts, 500)
        self.assertIsNone(await store.get_key_response("b.example"))

    async def test_newer_response_replaces_and_stale_copy_does_not(self) -> None:
        store = await self.make_keys_store()
        vk = get_verify_key(generate_signing_key("k1"))
        await store.store_fetched(
            [fetched("a.example", "ed25519:k1", vk, response_valid_until=500, key_valid_until=500)]
        )
        # The server retired the key: a newer response lists it as expired.
        await store.store_fetched(
            [
                fetched(
                    "a.example",
                    "ed25519:k1",
                    vk,
                    response_valid_until=900,
                    key_valid_until=450,
                    expired=True,
                )
            ]
        )
        # A notary's stale copy of the first response arrives later.
        await store.store_fetched(
            [
                fetched(
                    "a.example",
                    "ed25519:k1",
                    vk,
                    response_valid_until=500,
                    key_valid_until=500,
                    fetched_from="notary.example",
                )
            ]
        )
        stored = (await store.get_server_keys(["a.example"]))["a.example"]["ed25519:k1"]
        self.assertTrue(stored.key.expired)
        self.assertEqual(stored.key.valid_until_ts, 450)
        response = await store.get_key_response("a.example")
        assert response is not None
        self.assertEqual(response.valid_until_ts, 900)
        self.assertEqual(response.fetched_from, "a.example")

    async def test_many_servers_in_one_read(self) -> None:
        store = await self.make_keys_store()
        vk = get_verify_key(generate_signing_key("k1"))
        names = [f"s{i}.example" for i in range(1200)]
        await store.store_fetched(
            [fetched(n, "ed25519:k1", vk, response_valid_until=5, key_valid_until=5) for n in names]
        )
        keys = await store.get_server_keys(names)
        self.assertEqual(sorted(keys), sorted(names))

    async def test_undecodable_row_is_skipped(self) -> None:
        db = await self.make_database()
        store = KeysStore(db=db)

        def insert(txn: Transaction) -> None:
            txn.execute(
                "INSERT INTO server_keys (server_name, key_id, verify_key, valid_until_ts,"
                " expired, response_valid_until_ts, fetched_from, ts_fetched)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                ("a.example", "ed25519:bad", "not base64!", 1, 0, 1, "a.example", 1),
            )

        await db.run_interaction("insert_bad_key", insert)
        self.assertEqual(await store.get_server_keys(["a.example"]), {})


class KeysStoreSqliteTests(SqliteMixin, KeysStoreTestsMixin, unittest.TestCase):
    pass


class KeysStorePostgresTests(PostgresMixin, KeysStoreTestsMixin, unittest.TestCase):
    pass
