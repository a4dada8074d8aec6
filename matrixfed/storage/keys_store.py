"""Persistence of other servers' signing keys (schema 0002_server_keys.sql).

Guarantees: one ``store_fetched`` call writes every key and raw response it is
given in one transaction. A row is only replaced by information from a
response at least as new (by the response's own ``valid_until_ts``), so a
notary's stale copy never undoes a newer answer, e.g. un-expiring a key the
server has since retired. Reads are batched: ``get_server_keys`` loads many
servers in one transaction.

How it fails: database errors surface from the returned awaitables; a stored
key that no longer decodes is skipped (and logged), never returned.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import attrs
from signedjson.key import decode_verify_key_bytes
from twisted.logger import Logger
from unpaddedbase64 import decode_base64, encode_base64

from matrixfed.events.keys import ServerVerifyKey
from matrixfed.storage.database import Database, Transaction

__all__ = ["FetchedKeyResponse", "KeysStore", "StoredKey", "StoredKeyResponse"]

log = Logger()

# Server names per SELECT ... IN (...): well under SQLite's parameter limit.
_IN_CHUNK = 500


@attrs.frozen(slots=True)
class FetchedKeyResponse:
    """A verified key response, ready to persist.

    Attributes:
        server_name: whose keys these are.
        fetched_from: the server that answered (the owner, or a notary).
        ts_fetched: when we received it (ms).
        valid_until_ts: the response's own ``valid_until_ts`` (ms).
        keys: the keys it gave, with their effective validity.
        response: the signed response JSON as received.
    """

    server_name: str
    fetched_from: str
    ts_fetched: int
    valid_until_ts: int
    keys: tuple[ServerVerifyKey, ...]
    response: Mapping[str, Any]


@attrs.frozen(slots=True)
class StoredKey:
    """A stored key and the ``valid_until_ts`` of the response it came from."""

    key: ServerVerifyKey
    response_valid_until_ts: int


@attrs.frozen(slots=True)
class StoredKeyResponse:
    """The newest signed key response stored for a server."""

    server_name: str
    fetched_from: str
    ts_fetched: int
    valid_until_ts: int
    response: dict[str, Any]


def _store_txn(txn: Transaction, fetched: Sequence[FetchedKeyResponse]) -> None:
    key_rows = []
    response_rows = []
    for f in fetched:
        for key in f.keys:
            key_rows.append(
                (
                    f.server_name,
                    key.key_id,
                    encode_base64(bytes(key.verify_key)),
                    key.valid_until_ts,
                    1 if key.expired else 0,
                    f.valid_until_ts,
                    f.fetched_from,
                    f.ts_fetched,
                )
            )
        response_rows.append(
            (
                f.server_name,
                f.fetched_from,
                f.ts_fetched,
                f.valid_until_ts,
                json.dumps(f.response, ensure_ascii=False, separators=(",", ":")),
            )
        )
    txn.executemany(
        "INSERT INTO server_keys (server_name, key_id, verify_key, valid_until_ts, expired,"
        " response_valid_until_ts, fetched_from, ts_fetched) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (server_name, key_id) DO UPDATE SET"
        " verify_key = excluded.verify_key, valid_until_ts = excluded.valid_until_ts,"
        " expired = excluded.expired,"
        " response_valid_until_ts = excluded.response_valid_until_ts,"
        " fetched_from = excluded.fetched_from, ts_fetched = excluded.ts_fetched"
        " WHERE excluded.response_valid_until_ts >= server_keys.response_valid_until_ts",
        key_rows,
    )
    txn.executemany(
        "INSERT INTO server_key_responses (server_name, fetched_from, ts_fetched,"
        " valid_until_ts, response_json) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (server_name) DO UPDATE SET"
        " fetched_from = excluded.fetched_from, ts_fetched = excluded.ts_fetched,"
        " valid_until_ts = excluded.valid_until_ts, response_json = excluded.response_json"
        " WHERE excluded.valid_until_ts >= server_key_responses.valid_until_ts",
        response_rows,
    )


def _get_keys_txn(txn: Transaction, servers: list[str]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for i in range(0, len(servers), _IN_CHUNK):
        chunk = servers[i : i + _IN_CHUNK]
        txn.execute(
            "SELECT server_name, key_id, verify_key, valid_until_ts, expired,"
            " response_valid_until_ts FROM server_keys"
            f" WHERE server_name IN ({', '.join('?' * len(chunk))})",
            chunk,
        )
        rows.extend(txn.fetchall())
    return rows


def _get_response_txn(txn: Transaction, server_name: str) -> tuple[Any, ...] | None:
    txn.execute(
        "SELECT fetched_from, ts_fetched, valid_until_ts, response_json"
        " FROM server_key_responses WHERE server_name = ?",
        (server_name,),
    )
    return txn.fetchone()


class KeysStore:
    """Reads and writes ``server_keys`` and ``server_key_responses``."""

    def __init__(self, *, db: Database) -> None:
        """Create the store.

        Args:
            db: a started Database (migrations applied).
        """
        self._db = db

    async def store_fetched(self, fetched: Sequence[FetchedKeyResponse]) -> None:
        """Persist verified key responses and their keys, in one transaction."""
        if fetched:
            await self._db.run_interaction("store_server_keys", _store_txn, list(fetched))

    async def get_server_keys(
        self, server_names: Collection[str]
    ) -> dict[str, dict[str, StoredKey]]:
        """Every stored key of the given servers.

        Args:
            server_names: the servers to load.

        Returns:
            server name -> key ID -> stored key; servers without keys are absent.
        """
        if not server_names:
            return {}
        rows = await self._db.run_interaction(
            "get_server_keys", _get_keys_txn, sorted(set(server_names))
        )
        result: dict[str, dict[str, StoredKey]] = {}
        for server_name, key_id, key_b64, valid_until_ts, expired, response_valid in rows:
            try:
                verify_key: Any = decode_verify_key_bytes(key_id, decode_base64(key_b64))
            except Exception:
                log.warn(
                    "skipping undecodable stored key {key_id} of {server}",
                    key_id=key_id,
                    server=server_name,
                )
                continue
            key = ServerVerifyKey(
                server_name=server_name,
                key_id=key_id,
                verify_key=verify_key,
                valid_until_ts=int(valid_until_ts),
                expired=bool(expired),
            )
            result.setdefault(server_name, {})[key_id] = StoredKey(key, int(response_valid))
        return result

    async def get_key_response(self, server_name: str) -> StoredKeyResponse | None:
        """The newest stored signed key response of ``server_name``, if any."""
        row = await self._db.run_interaction("get_key_response", _get_response_txn, server_name)
        if row is None:
            return None
        fetched_from, ts_fetched, valid_until_ts, response_json = row
        return StoredKeyResponse(
            server_name=server_name,
            fetched_from=fetched_from,
            ts_fetched=int(ts_fetched),
            valid_until_ts=int(valid_until_ts),
            response=json.loads(response_json),
        )
