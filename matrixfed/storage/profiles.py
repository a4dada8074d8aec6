"""Local users' profiles and the invites they received over federation.

Profiles: one row per local user (``displayname``, ``avatar_url``, either may
be NULL). ``/query/profile`` reads them; the client API writes them.

Received invites: an invite from another server to one of our users, for a
room this server may not be in, is kept with the stripped state the inviter
sent so the client API can show it (``get_invites_for_user``). One row per
(room, user), replaced by a newer invite and removed with
``delete_received_invite`` once the user joins, rejects it or it is retracted.

``is_known_local_user``: until the client API has a users table, a user
"exists" if it has a profile row or any membership in a room we hold.

Every method is one transaction; nothing here holds state outside the
database.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from matrixfed.storage.base import StoreBase
from matrixfed.storage.database import Transaction
from matrixfed.storage.state import SQL_CHUNK

__all__ = ["PROFILE_FIELDS", "Profile", "ProfileStore", "ProfileStoreMixin", "ReceivedInvite"]

# The profile fields this server stores (spec: query/profile).
PROFILE_FIELDS = ("displayname", "avatar_url")


@attrs.frozen(slots=True)
class Profile:
    user_id: str
    displayname: str | None
    avatar_url: str | None


@attrs.frozen(slots=True)
class ReceivedInvite:
    """An invite of a local user received over federation.

    Attributes:
        room_id: the room.
        user_id: the invited local user.
        event_id: the invite event's ID.
        room_version: the room's version.
        sender: who invited.
        event: the invite PDU with our signature.
        stripped_state: the room's stripped state events
            (``{type, state_key, content, sender}``) sent with the invite.
        received_ts: when we accepted it (ms).
    """

    room_id: str
    user_id: str
    event_id: str
    room_version: str
    sender: str
    event: Mapping[str, Any]
    stripped_state: Sequence[Mapping[str, Any]]
    received_ts: int


_UNSET: Any = object()


class ProfileStoreMixin(StoreBase):
    """Profiles and received invites. See the module docstring."""

    # --- profiles ---------------------------------------------------------------

    async def set_profile(
        self,
        user_id: str,
        *,
        displayname: str | None = _UNSET,
        avatar_url: str | None = _UNSET,
    ) -> None:
        """Create the user's profile or change the given fields (None clears one)."""
        fields = {
            name: value
            for name, value in (("displayname", displayname), ("avatar_url", avatar_url))
            if value is not _UNSET
        }

        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "INSERT INTO profiles (user_id) VALUES (?) ON CONFLICT (user_id) DO NOTHING",
                (user_id,),
            )
            for name, value in fields.items():
                assert name in PROFILE_FIELDS
                txn.execute(f"UPDATE profiles SET {name} = ? WHERE user_id = ?", (value, user_id))

        await self.db.run_interaction("set_profile", txn_fn)

    async def get_profile(self, user_id: str) -> Profile | None:
        """The user's profile row, or None."""

        def txn_fn(txn: Transaction) -> Profile | None:
            txn.execute(
                "SELECT displayname, avatar_url FROM profiles WHERE user_id = ?", (user_id,)
            )
            row = txn.fetchone()
            if row is None:
                return None
            return Profile(user_id=user_id, displayname=row[0], avatar_url=row[1])

        return await self.db.run_interaction("get_profile", txn_fn)

    async def is_known_local_user(self, user_id: str) -> bool:
        """Whether the user has a profile or any membership in a room we hold."""

        def txn_fn(txn: Transaction) -> bool:
            txn.execute("SELECT 1 FROM profiles WHERE user_id = ?", (user_id,))
            if txn.fetchone() is not None:
                return True
            txn.execute(
                "SELECT 1 FROM current_state_events WHERE state_key = ? AND type = ? LIMIT 1",
                (user_id, "m.room.member"),
            )
            return txn.fetchone() is not None

        return await self.db.run_interaction("is_known_local_user", txn_fn)

    # --- received invites -------------------------------------------------------

    async def store_received_invite(
        self,
        *,
        room_id: str,
        user_id: str,
        event_id: str,
        room_version: str,
        sender: str,
        event: Mapping[str, Any],
        stripped_state: Sequence[Mapping[str, Any]],
    ) -> None:
        """Remember an invite (replacing an older one for the same room and user)."""
        now = self._now_ms()
        row = (
            room_id,
            user_id,
            event_id,
            room_version,
            sender,
            json.dumps(event, separators=(",", ":")),
            json.dumps(list(stripped_state), separators=(",", ":")),
            now,
        )

        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "INSERT INTO received_invites (room_id, user_id, event_id, room_version, sender,"
                " event_json, stripped_state, received_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (room_id, user_id) DO UPDATE SET event_id = excluded.event_id,"
                " room_version = excluded.room_version, sender = excluded.sender,"
                " event_json = excluded.event_json, stripped_state = excluded.stripped_state,"
                " received_ts = excluded.received_ts",
                row,
            )

        await self.db.run_interaction("store_received_invite", txn_fn)

    async def get_invites_for_user(self, user_id: str) -> list[ReceivedInvite]:
        """The user's pending received invites, oldest first."""

        def txn_fn(txn: Transaction) -> list[ReceivedInvite]:
            txn.execute(
                "SELECT room_id, event_id, room_version, sender, event_json, stripped_state,"
                " received_ts FROM received_invites WHERE user_id = ?"
                " ORDER BY received_ts, room_id",
                (user_id,),
            )
            return [
                ReceivedInvite(
                    room_id=r[0],
                    user_id=user_id,
                    event_id=r[1],
                    room_version=r[2],
                    sender=r[3],
                    event=json.loads(r[4]),
                    stripped_state=json.loads(r[5]),
                    received_ts=int(r[6]),
                )
                for r in txn.fetchall()
            ]

        return await self.db.run_interaction("get_invites_for_user", txn_fn)

    async def delete_received_invite(self, room_id: str, user_id: str) -> bool:
        """Forget the user's invite to the room; False if there was none."""

        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "DELETE FROM received_invites WHERE room_id = ? AND user_id = ?",
                (room_id, user_id),
            )
            return txn.rowcount == 1

        return await self.db.run_interaction("delete_received_invite", txn_fn)

    # --- timeline look-ups of the resident endpoints ------------------------------

    async def get_event_at_timestamp(
        self, room_id: str, ts: int, direction: str
    ) -> tuple[str, int] | None:
        """The room's accepted timeline event closest to ``ts`` in ``direction``.

        Args:
            room_id: the room.
            ts: milliseconds since the epoch.
            direction: "f": the first event at or after ``ts``; "b": the last
                event at or before it.

        Returns:
            (event_id, origin_server_ts), or None when there is none.
        """
        if direction == "f":
            cond, order = ">=", "ASC"
        else:
            cond, order = "<=", "DESC"

        def txn_fn(txn: Transaction) -> tuple[str, int] | None:
            txn.execute(
                "SELECT event_id, origin_server_ts FROM events WHERE room_id = ?"
                f" AND origin_server_ts {cond} ? AND outlier = 0 AND rejected_reason IS NULL"
                f" AND soft_failed = 0 ORDER BY origin_server_ts {order},"
                f" stream_ordering {order} LIMIT 1",
                (room_id, ts),
            )
            row = txn.fetchone()
            return None if row is None else (str(row[0]), int(row[1]))

        return await self.db.run_interaction("get_event_at_timestamp", txn_fn)

    async def get_redactions_for(self, event_ids: Iterable[str]) -> dict[str, list[str]]:
        """target event ID -> IDs of stored redactions of it, for ``event_ids``."""
        ids = list(dict.fromkeys(event_ids))

        def txn_fn(txn: Transaction) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for i in range(0, len(ids), SQL_CHUNK):
                chunk = ids[i : i + SQL_CHUNK]
                txn.execute(
                    "SELECT redacts, event_id FROM redactions"
                    f" WHERE redacts IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
                for target, redaction in txn.fetchall():
                    out.setdefault(str(target), []).append(str(redaction))
            return out

        if not ids:
            return {}
        return await self.db.run_interaction("get_redactions_for", txn_fn)

    async def get_room_heroes(self, room_id: str, *, exclude: str, limit: int) -> list[str]:
        """The room's heroes (client-server ``m.heroes``) from its current state.

        The first ``limit`` users, by the stream order of their membership
        events, who are joined or invited, leaving out ``exclude``; when there
        are none, the first who left or were banned.
        """

        def txn_fn(txn: Transaction) -> list[str]:
            for memberships in (("join", "invite"), ("leave", "ban")):
                txn.execute(
                    "SELECT c.state_key FROM current_state_events c"
                    " JOIN events e ON e.event_id = c.event_id"
                    " WHERE c.room_id = ? AND c.type = ? AND c.state_key != ?"
                    " AND c.membership IN (?, ?) ORDER BY e.stream_ordering LIMIT ?",
                    (room_id, "m.room.member", exclude, *memberships, limit),
                )
                users = [str(r[0]) for r in txn.fetchall()]
                if users:
                    return users
            return []

        return await self.db.run_interaction("get_room_heroes", txn_fn)


class ProfileStore(ProfileStoreMixin):
    """``ProfileStore(db=..., clock=...)``: the mixin on its own."""
