"""Local users, devices, access tokens and client transactions (schema 0008).

Guarantees: access tokens are never stored, only the hex SHA-256 of each
(``token_hash``), so a copy of the database does not let anyone act as a user.
Creating a user is atomic and refuses an existing ID (``create_user`` returns
False); a new token and its device are written in one transaction; deleting a
token also forgets the client transactions made with it.

How it fails: database errors surface from the returned awaitables; nothing is
half-written because each method is one transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection

import attrs

from matrixfed.storage.base import Clock
from matrixfed.storage.database import Database, Transaction

__all__ = ["TokenOwner", "UserInfo", "UserStore", "hash_token"]

# Event IDs per SELECT ... IN (...): well under SQLite's parameter limit.
_IN_CHUNK = 500


def hash_token(token: str) -> str:
    """The stored form of an access token: hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@attrs.frozen(slots=True)
class UserInfo:
    """A local user account.

    Attributes:
        user_id: the full ID, e.g. "@alice:example.org".
        password_hash: the stored password hash, or None (no password login).
        admin: whether the user is a server administrator.
        created_ts: when the account was created (ms).
    """

    user_id: str
    password_hash: str | None
    admin: bool
    created_ts: int


@attrs.frozen(slots=True)
class TokenOwner:
    """Who an access token belongs to."""

    user_id: str
    device_id: str


class UserStore:
    """``UserStore(db=..., clock=...)``; the database must be started."""

    def __init__(self, *, db: Database, clock: Clock) -> None:
        self.db = db
        self._clock = clock

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    # --- users -------------------------------------------------------------

    async def create_user(
        self, user_id: str, password_hash: str | None, *, admin: bool = False
    ) -> bool:
        """Create a user; False (and nothing written) if the ID is taken."""
        now = self._now_ms()

        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "INSERT INTO users (user_id, password_hash, admin, created_ts)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (user_id) DO NOTHING",
                (user_id, password_hash, int(admin), now),
            )
            return txn.rowcount == 1

        return await self.db.run_interaction("create_user", txn_fn)

    async def get_user(self, user_id: str) -> UserInfo | None:
        """The account ``user_id``, or None."""

        def txn_fn(txn: Transaction) -> UserInfo | None:
            txn.execute(
                "SELECT user_id, password_hash, admin, created_ts FROM users WHERE user_id = ?",
                (user_id,),
            )
            row = txn.fetchone()
            if row is None:
                return None
            return UserInfo(str(row[0]), row[1], bool(row[2]), int(row[3]))

        return await self.db.run_interaction("get_user", txn_fn)

    async def set_password_hash(self, user_id: str, password_hash: str | None) -> bool:
        """Replace a user's password hash; False if there is no such user."""

        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "UPDATE users SET password_hash = ? WHERE user_id = ?", (password_hash, user_id)
            )
            return txn.rowcount == 1

        return await self.db.run_interaction("set_password_hash", txn_fn)

    async def list_users(self) -> list[str]:
        """Every local user ID, sorted."""

        def txn_fn(txn: Transaction) -> list[str]:
            txn.execute("SELECT user_id FROM users ORDER BY user_id")
            return [str(r[0]) for r in txn.fetchall()]

        return await self.db.run_interaction("list_users", txn_fn)

    # --- devices and tokens --------------------------------------------------

    async def add_access_token(
        self,
        user_id: str,
        device_id: str,
        token_hash: str,
        *,
        device_display_name: str | None = None,
    ) -> None:
        """Record a new token for ``device_id`` (created if new) of ``user_id``."""
        now = self._now_ms()

        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "INSERT INTO devices (user_id, device_id, display_name, created_ts)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, device_id) DO NOTHING",
                (user_id, device_id, device_display_name, now),
            )
            txn.execute(
                "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts)"
                " VALUES (?, ?, ?, ?)",
                (token_hash, user_id, device_id, now),
            )

        await self.db.run_interaction("add_access_token", txn_fn)

    async def get_token_owner(self, token_hash: str) -> TokenOwner | None:
        """Who holds the token with this hash, or None when it is unknown."""

        def txn_fn(txn: Transaction) -> TokenOwner | None:
            txn.execute(
                "SELECT user_id, device_id FROM access_tokens WHERE token_hash = ?",
                (token_hash,),
            )
            row = txn.fetchone()
            return None if row is None else TokenOwner(str(row[0]), str(row[1]))

        return await self.db.run_interaction("get_token_owner", txn_fn)

    async def delete_access_token(self, token_hash: str) -> bool:
        """Forget a token and its client transactions; False if it was unknown."""

        def txn_fn(txn: Transaction) -> bool:
            txn.execute("DELETE FROM access_tokens WHERE token_hash = ?", (token_hash,))
            gone = txn.rowcount == 1
            txn.execute("DELETE FROM client_txns WHERE token_hash = ?", (token_hash,))
            return gone

        return await self.db.run_interaction("delete_access_token", txn_fn)

    async def get_devices(self, user_id: str) -> dict[str, str | None]:
        """device_id -> display name for every device of the user."""

        def txn_fn(txn: Transaction) -> dict[str, str | None]:
            txn.execute("SELECT device_id, display_name FROM devices WHERE user_id = ?", (user_id,))
            return {str(d): n for d, n in txn.fetchall()}

        return await self.db.run_interaction("get_devices", txn_fn)

    # --- client transactions -------------------------------------------------

    async def get_client_txn(self, token_hash: str, txn_key: str) -> str | None:
        """The event ID an earlier request with this token and key created, or None."""

        def txn_fn(txn: Transaction) -> str | None:
            txn.execute(
                "SELECT event_id FROM client_txns WHERE token_hash = ? AND txn_key = ?",
                (token_hash, txn_key),
            )
            row = txn.fetchone()
            return None if row is None else str(row[0])

        return await self.db.run_interaction("get_client_txn", txn_fn)

    async def get_client_txn_keys(
        self, token_hash: str, event_ids: Collection[str]
    ) -> dict[str, str]:
        """event_id -> txn_key for the events among ``event_ids`` this token sent."""
        ids = list(event_ids)
        if not ids:
            return {}

        def txn_fn(txn: Transaction) -> dict[str, str]:
            out: dict[str, str] = {}
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start : start + _IN_CHUNK]
                txn.execute(
                    "SELECT event_id, txn_key FROM client_txns WHERE token_hash = ?"
                    f" AND event_id IN ({','.join('?' * len(chunk))})",
                    (token_hash, *chunk),
                )
                out.update({str(e): str(k) for e, k in txn.fetchall()})
            return out

        return await self.db.run_interaction("get_client_txn_keys", txn_fn)

    async def store_client_txn(self, token_hash: str, txn_key: str, event_id: str) -> None:
        """Remember the event a request created (a repeat keeps the first)."""
        now = self._now_ms()

        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "INSERT INTO client_txns (token_hash, txn_key, event_id, created_ts)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (token_hash, txn_key) DO NOTHING",
                (token_hash, txn_key, event_id, now),
            )

        await self.db.run_interaction("store_client_txn", txn_fn)
