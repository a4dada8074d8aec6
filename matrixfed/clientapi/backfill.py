"""Fetch older room history from other servers for ``/messages`` (federation backfill).

``Backfiller.backfill(room_id, limit)`` asks the room's other servers (for a
room joined with partial state, also those its join's answer named), one
after the other, for up to ``limit`` events before the room's backward
extremities (``GET /_matrix/federation/v1/backfill``). The answer is checked
like any received PDU (format, signatures, content hashes; one key batch), then
each event, oldest first, gets the state before it:

- from the events of the batch and the stored events it points at, when we
  have them all (resolved if they disagree);
- otherwise from the server (``/state_ids`` at that event), fetching the
  state events we lack.

Each event is checked against the auth rules with that state (a failing one
is stored as rejected, as the spec requires) and the whole batch is persisted
in ONE store transaction as backfilled history (negative stream orderings:
it never shows up in ``/sync``, only in ``/messages``).

How it fails: a server that is unreachable or answers nonsense is skipped;
when no server helps, ``backfill`` returns 0 and ``/messages`` answers with
what it has. It never raises for remote trouble.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from twisted.logger import Logger

from matrixfed.auth.rules import check_auth
from matrixfed.errors import AuthError, InvalidEventError, MatrixError, RemoteError
from matrixfed.events.model import Event
from matrixfed.events.room_versions import RoomVersion
from matrixfed.federation.client import federation_path
from matrixfed.rooms.engine import RoomEngine
from matrixfed.storage.persist import EventWithContext

__all__ = ["Backfiller"]

log = Logger()

StateIds = dict[tuple[str, str], str]

# Backward extremities named in one /backfill request (URL length).
MAX_EXTREMITIES_PER_REQUEST = 20
# Events asked for per request at most (Synapse serves up to 100).
MAX_BACKFILL_LIMIT = 100
# Seconds to wait for a server's backfill or state answer.
BACKFILL_TIMEOUT_S = 60.0
# Missing state events fetched one by one; more than this and /state is asked.
MAX_EVENTS_FETCHED_BY_ID = 50


class Backfiller:
    """Backfill for one server. See the module docstring."""

    def __init__(self, *, engine: RoomEngine, server_name: str) -> None:
        """Args:
        engine: the room engine (its store, federation client and PDU checks).
        server_name: our server name (never asked).
        """
        self._engine = engine
        self._store = engine.store
        self._fed = engine.federation_client
        self._server_name = server_name

    async def backfill(self, room_id: str, limit: int) -> int:
        """Fetch up to ``limit`` older events of the room; the number stored."""
        extremities = await self._store.get_backward_extremities(room_id)
        rv = await self._store.get_room_version(room_id)
        if not extremities or rv is None:
            return 0
        servers = await self._store.get_joined_servers(room_id)
        # A partial-state room's members are mostly unknown yet: the servers
        # its join's answer named (empty once the room has its full state).
        servers |= await self._store.get_partial_state_servers(room_id)
        servers.discard(self._server_name)
        for server in sorted(servers):
            try:
                stored = await self._from_server(server, room_id, rv, extremities, limit)
            except (RemoteError, InvalidEventError, MatrixError) as e:
                log.info(
                    "backfill of {room_id} from {server} failed: {error}",
                    room_id=room_id,
                    server=server,
                    error=e,
                )
                continue
            if stored:
                log.info(
                    "backfilled {n} events of {room_id} from {server}",
                    n=stored,
                    room_id=room_id,
                    server=server,
                )
                return stored
        return 0

    async def _from_server(
        self, server: str, room_id: str, rv: RoomVersion, extremities: Sequence[str], limit: int
    ) -> int:
        answer = await self._fed.get_json(
            server,
            federation_path("/_matrix/federation/v1/backfill/{}", room_id),
            {
                "v": list(extremities[:MAX_EXTREMITIES_PER_REQUEST]),
                "limit": str(max(1, min(limit, MAX_BACKFILL_LIMIT))),
            },
            timeout=BACKFILL_TIMEOUT_S,
        )
        pdus = answer.get("pdus") if isinstance(answer, dict) else None
        if not isinstance(pdus, list):
            raise InvalidEventError("backfill answer has no pdus list")
        events = await self._checked(pdus[: MAX_BACKFILL_LIMIT * 2], rv, room_id)
        have = await self._store.have_events(e.event_id for e in events)
        statuses = await self._store.get_event_statuses(have)
        # Outliers we hold (e.g. state from the join) become history now.
        events = [e for e in events if e.event_id not in have or statuses[e.event_id].outlier]
        if not events:
            return 0
        events.sort(key=lambda e: (e.depth, e.event_id))
        batch = {e.event_id: e for e in events}
        after: dict[str, StateIds] = {}
        items: list[EventWithContext] = []
        for event in events:
            before = await self._state_before(server, event, batch, after)
            await self._ensure_events(server, room_id, rv, before.values())
            reason = None
            try:
                check_auth(event, await self._engine.auth_state_for(event, before))
            except AuthError as e:
                reason = str(e)
            state_after = dict(before)
            if reason is None and event.is_state():
                state_after[event.state_tuple] = event.event_id
            after[event.event_id] = state_after
            items.append(EventWithContext(event, rejected_reason=reason, state_before=before))
        persisted = await self._store.persist_events(room_id, items, backfilled=True)
        return len(persisted)

    async def _checked(self, pdus: Sequence[Any], rv: RoomVersion, room_id: str) -> list[Event]:
        results = await self._engine.inbound.check_pdus(pdus, rv, backfilled=True)
        return [r for r in results if isinstance(r, Event) and r.room_id == room_id]

    async def _state_before(
        self,
        server: str,
        event: Event,
        batch: Mapping[str, Event],
        after: Mapping[str, StateIds],
    ) -> StateIds:
        sets: list[StateIds] = []
        for prev in dict.fromkeys(event.prev_event_ids):
            if prev in after:
                sets.append(dict(after[prev]))
                continue
            if prev in batch:
                break
            stored = await self._store.get_state_after(prev)
            if stored is None:
                break
            sets.append(dict(stored))
        else:
            if sets:
                resolved = await self._engine.inbound.resolve(event.room_version, sets)
                return dict(resolved)
        return await self._remote_state_before(server, event)

    async def _remote_state_before(self, server: str, event: Event) -> StateIds:
        answer = await self._fed.get_json(
            server,
            federation_path("/_matrix/federation/v1/state_ids/{}", event.room_id),
            {"event_id": event.event_id},
            timeout=BACKFILL_TIMEOUT_S,
        )
        pdu_ids = answer.get("pdu_ids") if isinstance(answer, dict) else None
        if not isinstance(pdu_ids, list) or not all(isinstance(i, str) for i in pdu_ids):
            raise InvalidEventError(f"bad state_ids answer for {event.event_id}")
        await self._ensure_events(
            server, event.room_id, event.room_version, pdu_ids, at_event=event.event_id
        )
        events = await self._store.get_events(pdu_ids)
        rejected = await self._store.get_rejected(pdu_ids)
        state: StateIds = {}
        for eid in pdu_ids:
            ev = events.get(eid)
            if ev is not None and ev.is_state() and ev.room_id == event.room_id:
                if eid not in rejected:
                    state[ev.state_tuple] = eid
        return state

    async def _ensure_events(
        self,
        server: str,
        room_id: str,
        rv: RoomVersion,
        ids: Collection[str],
        *,
        at_event: str | None = None,
    ) -> None:
        """Store the events among ``ids`` we lack, as outliers."""
        wanted = set(ids)
        missing = wanted - await self._store.have_events(wanted)
        if not missing:
            return
        pdus: list[Any] = []
        if len(missing) > MAX_EVENTS_FETCHED_BY_ID and at_event is not None:
            full = await self._fed.get_json(
                server,
                federation_path("/_matrix/federation/v1/state/{}", room_id),
                {"event_id": at_event},
                timeout=BACKFILL_TIMEOUT_S,
            )
            if isinstance(full, dict):
                pdus = [*full.get("auth_chain", []), *full.get("pdus", [])]
        else:
            for eid in sorted(missing):
                answer = await self._fed.get_json(
                    server,
                    federation_path("/_matrix/federation/v1/event/{}", eid),
                    timeout=BACKFILL_TIMEOUT_S,
                )
                got = answer.get("pdus") if isinstance(answer, dict) else None
                if isinstance(got, list):
                    pdus.extend(got[:1])
        events = await self._checked(pdus, rv, room_id)
        fresh = [e for e in events if e.event_id not in await self._store.have_events([e.event_id])]
        if fresh:
            await self._store.persist_events(
                room_id, [EventWithContext(e, outlier=True) for e in fresh]
            )
