"""Rooms, room aliases and membership queries.

Rooms: one row per room we know (created by ``store_room`` or implicitly by
``persist_events``), with its version, creator, directory visibility and
whether we joined with partial state.

Aliases: ``#alias:server -> room_id`` with the creator and the servers to
offer in ``/query/directory``. ``create_alias`` never overwrites.

Memberships are read from the room's *current* state (kept up to date by
``persist_events``): joined users, joined servers (the servers to send new
events to), the rooms a user is in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import attrs

from matrixfed.events.room_versions import RoomVersion, get_room_version
from matrixfed.storage.base import StoreBase
from matrixfed.storage.database import EngineName, Transaction

MEMBER = "m.room.member"


@attrs.frozen(slots=True)
class RoomInfo:
    room_id: str
    room_version: str
    creator: str | None
    is_public: bool
    partial_state: bool


@attrs.frozen(slots=True)
class RoomAlias:
    room_alias: str
    room_id: str
    creator: str | None
    servers: tuple[str, ...]


def _domain_sql(engine: EngineName) -> str:
    """SQL for the server part of a member row's ``state_key``: what follows
    its first ``:`` ('' without one), the same split as ``domain_of``."""
    colon = "instr(state_key, ':')" if engine == "sqlite" else "strpos(state_key, ':')"
    return f"CASE WHEN {colon} = 0 THEN '' ELSE substr(state_key, {colon} + 1) END"


class RoomStoreMixin(StoreBase):
    """Rooms, aliases, memberships. See the module docstring."""

    # --- rooms ----------------------------------------------------------------

    async def store_room(
        self,
        room_id: str,
        room_version: str,
        *,
        creator: str | None = None,
        is_public: bool = False,
    ) -> bool:
        """Record a room; returns False (and changes nothing) if it exists already."""
        now = self._now_ms()

        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "INSERT INTO rooms (room_id, room_version, creator, is_public, created_ts)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (room_id) DO NOTHING",
                (room_id, room_version, creator, 1 if is_public else 0, now),
            )
            return txn.rowcount == 1

        return await self.db.run_interaction("store_room", txn_fn)

    async def get_room(self, room_id: str) -> RoomInfo | None:
        """The room's row, or None if we do not know the room."""

        def txn_fn(txn: Transaction) -> RoomInfo | None:
            txn.execute(
                "SELECT room_id, room_version, creator, is_public, partial_state FROM rooms"
                " WHERE room_id = ?",
                (room_id,),
            )
            row = txn.fetchone()
            if row is None:
                return None
            return RoomInfo(
                room_id=row[0],
                room_version=row[1],
                creator=row[2],
                is_public=bool(row[3]),
                partial_state=bool(row[4]),
            )

        return await self.db.run_interaction("get_room", txn_fn)

    async def get_room_version(self, room_id: str) -> RoomVersion | None:
        """The room's RoomVersion, or None if we do not know the room."""
        info = await self.get_room(room_id)
        return None if info is None else get_room_version(info.room_version)

    async def set_room_is_public(self, room_id: str, is_public: bool) -> bool:
        """Publish or unpublish the room in the directory; False if unknown room."""
        return await self._update_room_flag(room_id, "is_public", is_public)

    async def set_room_partial_state(self, room_id: str, partial_state: bool) -> bool:
        """Mark the room as joined with partial state, or as complete; False if unknown."""
        return await self._update_room_flag(room_id, "partial_state", partial_state)

    async def _update_room_flag(self, room_id: str, column: str, value: bool) -> bool:
        assert column in ("is_public", "partial_state")

        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                f"UPDATE rooms SET {column} = ? WHERE room_id = ?", (1 if value else 0, room_id)
            )
            return txn.rowcount == 1

        return await self.db.run_interaction(f"set_room_{column}", txn_fn)

    async def get_public_room_ids(self) -> list[str]:
        """Rooms published in the directory, sorted."""

        def txn_fn(txn: Transaction) -> list[str]:
            txn.execute("SELECT room_id FROM rooms WHERE is_public = 1")
            return sorted(r[0] for r in txn.fetchall())

        return await self.db.run_interaction("get_public_room_ids", txn_fn)

    async def get_partial_state_room_ids(self) -> list[str]:
        """Rooms joined with partial state (to resume their resync at start-up)."""

        def txn_fn(txn: Transaction) -> list[str]:
            txn.execute("SELECT room_id FROM rooms WHERE partial_state = 1")
            return sorted(r[0] for r in txn.fetchall())

        return await self.db.run_interaction("get_partial_state_room_ids", txn_fn)

    async def get_partial_state_servers(self, room_id: str) -> set[str]:
        """The servers the send_join answer said are in a partial-state room.

        Empty unless the room is flagged partial-state (rows left by an older
        join are never read). ``persist_events(partial_state=...)`` writes them.
        """

        def txn_fn(txn: Transaction) -> set[str]:
            txn.execute(
                "SELECT p.server_name FROM partial_state_servers p"
                " JOIN rooms r ON r.room_id = p.room_id"
                " WHERE p.room_id = ? AND r.partial_state = 1",
                (room_id,),
            )
            return {r[0] for r in txn.fetchall()}

        return await self.db.run_interaction("get_partial_state_servers", txn_fn)

    # --- aliases --------------------------------------------------------------

    async def create_alias(
        self,
        room_alias: str,
        room_id: str,
        *,
        creator: str | None = None,
        servers: Sequence[str] = (),
    ) -> bool:
        """Map ``room_alias`` to ``room_id``; False (nothing changed) if the alias exists."""
        servers_json = json.dumps(list(servers))

        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "INSERT INTO room_aliases (room_alias, room_id, creator, servers)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (room_alias) DO NOTHING",
                (room_alias, room_id, creator, servers_json),
            )
            return txn.rowcount == 1

        return await self.db.run_interaction("create_alias", txn_fn)

    async def get_alias(self, room_alias: str) -> RoomAlias | None:
        """The alias mapping, or None."""

        def txn_fn(txn: Transaction) -> RoomAlias | None:
            txn.execute(
                "SELECT room_alias, room_id, creator, servers FROM room_aliases"
                " WHERE room_alias = ?",
                (room_alias,),
            )
            row = txn.fetchone()
            if row is None:
                return None
            return RoomAlias(
                room_alias=row[0],
                room_id=row[1],
                creator=row[2],
                servers=tuple(json.loads(row[3])),
            )

        return await self.db.run_interaction("get_alias", txn_fn)

    async def delete_alias(self, room_alias: str) -> bool:
        """Remove the alias; False if there was none."""

        def txn_fn(txn: Transaction) -> bool:
            txn.execute("DELETE FROM room_aliases WHERE room_alias = ?", (room_alias,))
            return txn.rowcount == 1

        return await self.db.run_interaction("delete_alias", txn_fn)

    async def get_aliases_for_room(self, room_id: str) -> list[str]:
        """Every alias pointing at the room, sorted."""

        def txn_fn(txn: Transaction) -> list[str]:
            txn.execute("SELECT room_alias FROM room_aliases WHERE room_id = ?", (room_id,))
            return sorted(r[0] for r in txn.fetchall())

        return await self.db.run_interaction("get_aliases_for_room", txn_fn)

    # --- memberships (current state) ------------------------------------------

    async def get_room_memberships(self, room_id: str) -> dict[str, str]:
        """user_id -> membership for every member event in the current state."""

        def txn_fn(txn: Transaction) -> dict[str, str]:
            txn.execute(
                "SELECT state_key, membership FROM current_state_events"
                " WHERE room_id = ? AND type = ?",
                (room_id, MEMBER),
            )
            return {u: m for u, m in txn.fetchall() if m is not None}

        return await self.db.run_interaction("get_room_memberships", txn_fn)

    async def get_joined_users(self, room_id: str) -> set[str]:
        """Users whose current membership is ``join``."""

        def txn_fn(txn: Transaction) -> set[str]:
            txn.execute(
                "SELECT state_key FROM current_state_events"
                " WHERE room_id = ? AND type = ? AND membership = 'join'",
                (room_id, MEMBER),
            )
            return {r[0] for r in txn.fetchall()}

        return await self.db.run_interaction("get_joined_users", txn_fn)

    async def get_joined_servers(self, room_id: str, *, except_user: str | None = None) -> set[str]:
        """Servers with at least one joined user: where the room's new events go.

        Args:
            except_user: leave this user out (the servers of everyone else).

        The servers are collected in SQL: a 10,000-member room is not read
        into Python user by user (this runs for every join's fan-out).
        """

        params: tuple[str, ...] = (room_id, MEMBER)
        if except_user is not None:
            params += (except_user,)
        but = "" if except_user is None else " AND state_key != ?"

        def txn_fn(txn: Transaction) -> set[str]:
            txn.execute(
                f"SELECT DISTINCT {_domain_sql(txn.engine)} FROM current_state_events"
                f" WHERE room_id = ? AND type = ? AND membership = 'join'{but}",
                params,
            )
            return {str(r[0]) for r in txn.fetchall()}

        return await self.db.run_interaction("get_joined_servers", txn_fn)

    async def is_host_joined(self, room_id: str, server_name: str) -> bool:
        """Whether any user of ``server_name`` is joined to the room."""

        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "SELECT 1 FROM current_state_events WHERE room_id = ? AND type = ?"
                f" AND membership = 'join' AND {_domain_sql(txn.engine)} = ?"
                " LIMIT 1",
                (room_id, MEMBER, server_name),
            )
            return txn.fetchone() is not None

        return await self.db.run_interaction("is_host_joined", txn_fn)

    async def get_membership(self, room_id: str, user_id: str) -> tuple[str, str] | None:
        """(membership, event_id) of the user's current member event, or None."""

        def txn_fn(txn: Transaction) -> tuple[str, str] | None:
            txn.execute(
                "SELECT membership, event_id FROM current_state_events"
                " WHERE room_id = ? AND type = ? AND state_key = ?",
                (room_id, MEMBER, user_id),
            )
            row = txn.fetchone()
            return None if row is None else (str(row[0]), str(row[1]))

        return await self.db.run_interaction("get_membership", txn_fn)

    async def get_rooms_for_user(
        self, user_id: str, memberships: Iterable[str] = ("join",)
    ) -> dict[str, str]:
        """room_id -> membership for the rooms where the user's current membership
        is one of ``memberships``."""
        wanted = list(memberships)

        def txn_fn(txn: Transaction) -> dict[str, str]:
            txn.execute(
                "SELECT room_id, membership FROM current_state_events"
                f" WHERE type = ? AND state_key = ? AND membership IN ({','.join('?' * len(wanted))})",
                (MEMBER, user_id, *wanted),
            )
            return {r: m for r, m in txn.fetchall()}

        if not wanted:
            return {}
        return await self.db.run_interaction("get_rooms_for_user", txn_fn)
