"""``GET /sync``: initial and incremental, with long polling.

Tokens are stream positions (``s{ordering}_{ms}``, see ``events.stream_token``;
the time part dates invites received over federation, which are in no stream).
A response covers events with ``since < stream_ordering <= next_batch``; the
upper bound is read once, after any wait, so an event is in exactly one
response of a chain of syncs.

- Initial sync (no ``since``): every joined room with its newest ``limit``
  timeline events and the state before the first of them; invites with their
  stripped state; no left rooms.
- Incremental: only rooms with new events. A room is ``limited`` when more
  than ``limit`` events arrived; then, and for a room the user just joined,
  ``state`` holds the full state before the timeline, otherwise it is empty
  (the timeline carries the state changes), except for changes of the
  current state that no timeline event carries (the members a partial-state
  join's background resync added, ``storage.state_deltas``): such a room
  counts as changed and its ``state`` lists the entries that changed. Rooms
  left since ``since`` come under ``leave`` with the events up to the leave.
- ``timeout`` (ms): when nothing is new, wait on the notifier, which the room
  engine wakes on every commit, local or from federation; no polling.

Received invites from other servers (not in any stream) are listed in every
response until accepted or rejected. Typing, receipts, presence and account
data are always empty.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from matrixfed.clientapi.common import Requester, client_endpoints, format_client_event
from matrixfed.clientapi.context import ClientContext
from matrixfed.clientapi.events import parse_token, stream_token, topological_token
from matrixfed.errors import MatrixError
from matrixfed.events.model import Event
from matrixfed.federation.server.endpoint import ApiRequest, Endpoint, JsonResponse
from matrixfed.rooms.engine import STRIPPED_STATE_KEYS
from matrixfed.storage.state_deltas import CurrentStateChange

__all__ = ["SyncServlets"]

# spec/Synapse default timeline length per room.
DEFAULT_TIMELINE_LIMIT = 10
# A filter asking for more is capped here (one store query per room).
MAX_TIMELINE_LIMIT = 500


def _timeline_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_TIMELINE_LIMIT
    try:
        spec = json.loads(raw)
    except ValueError:
        # A filter ID: we keep no uploaded filters, so the defaults apply.
        return DEFAULT_TIMELINE_LIMIT
    limit = DEFAULT_TIMELINE_LIMIT
    if isinstance(spec, dict):
        room = spec.get("room")
        if isinstance(room, dict) and isinstance(room.get("timeline"), dict):
            value = room["timeline"].get("limit")
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                limit = value
    return min(limit, MAX_TIMELINE_LIMIT)


def _stripped(event: Event) -> dict[str, Any]:
    return {
        "type": event.type,
        "state_key": event.state_key,
        "sender": event.sender,
        "content": dict(event.content),
    }


class SyncServlets:
    """The /sync endpoint."""

    def __init__(self, ctx: ClientContext) -> None:
        self._ctx = ctx

    def endpoints(self) -> list[Endpoint]:
        """Every endpoint of this module."""
        return client_endpoints("GET", "/sync", self._ctx.auth.required(self._sync))

    async def _sync(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        since_raw = request.arg("since")
        since: int | None = None
        since_ms = 0
        if since_raw:
            token = parse_token(since_raw)
            if token[0] != "s":
                raise MatrixError(400, "M_INVALID_PARAM", "since must be a /sync token")
            since, since_ms = token[1], token[2]
        try:
            timeout_ms = int(request.arg("timeout") or 0)
        except ValueError:
            raise MatrixError(400, "M_INVALID_PARAM", "timeout must be an integer") from None
        full_state = request.arg("full_state") == "true"
        limit = _timeline_limit(request.arg("filter"))
        store = self._ctx.store
        user_id = requester.user_id

        if (
            since is not None
            and timeout_ms > 0
            and not full_state
            and not await self._new_received_invites(user_id, since_ms)
        ):
            rooms = await store.get_rooms_for_user(user_id, ("join", "invite"))
            await self._ctx.notifier.wait_for_events(
                list(rooms), since, timeout_ms, user_id=user_id
            )
        now_ms = int(self._ctx.clock.seconds() * 1000)
        now = await store.get_current_stream_ordering()
        if since is not None and since > now:
            # A token from the future (e.g. the database was reset): start over.
            since = None
        body = await self._build(requester, since, now, limit, full_state, since_ms)
        body["next_batch"] = stream_token(now, now_ms)
        return 200, body

    async def _new_received_invites(self, user_id: str, since_ms: int) -> bool:
        """Whether an invite came over federation since the token was made
        (checked before a long poll: such invites are in no stream)."""
        invites = await self._ctx.store.get_invites_for_user(user_id)
        return any(i.received_ts >= since_ms for i in invites)

    async def _build(
        self,
        requester: Requester,
        since: int | None,
        now: int,
        limit: int,
        full_state: bool,
        since_ms: int = 0,
    ) -> dict[str, Any]:
        store = self._ctx.store
        user_id = requester.user_id
        memberships = await store.get_rooms_for_user(user_id, ("join", "invite", "leave", "ban"))
        changed = {} if since is None else await store.get_rooms_changed_since(since)
        # Current-state changes no timeline event carries (the members a
        # partial-state join's resync added): the room changed too.
        deltas = {} if since is None else await store.get_state_deltas(since, now)
        for room_id, room_deltas in deltas.items():
            changed.setdefault(room_id, room_deltas[-1].stream_ordering)
        join: dict[str, Any] = {}
        invite: dict[str, Any] = {}
        leave: dict[str, Any] = {}
        for room_id, membership in sorted(memberships.items()):
            is_new = since is None or room_id in changed
            if membership == "join" and (is_new or full_state):
                join[room_id] = await self._joined_room(
                    requester, room_id, user_id, since, now, limit, full_state, deltas.get(room_id)
                )
            elif (
                membership == "invite"
                and is_new
                and await self._invited_since(room_id, user_id, since)
            ):
                section = await self._invited_room(room_id, user_id)
                if section is not None:
                    invite[room_id] = section
            elif membership in ("leave", "ban") and since is not None and is_new:
                section = await self._left_room(room_id, user_id, since, now, limit)
                if section is not None:
                    leave[room_id] = section
        for received in await store.get_invites_for_user(user_id):
            if received.room_id in memberships and memberships[received.room_id] != "invite":
                continue
            # Listed once: in an initial sync, or the first sync after it came
            # (>=: one received in the same millisecond as the token is repeated
            # rather than lost).
            if since is not None and received.received_ts < since_ms:
                continue
            invite[received.room_id] = {
                "invite_state": {
                    "events": [dict(e) for e in received.stripped_state]
                    + [_stripped_pdu(received.event)]
                }
            }
        return {
            "next_batch": stream_token(now),
            "rooms": {"join": join, "invite": invite, "leave": leave, "knock": {}},
            "presence": {"events": []},
            "account_data": {"events": []},
            "to_device": {"events": []},
            "device_lists": {"changed": [], "left": []},
            "device_one_time_keys_count": {},
        }

    async def _timeline(
        self, room_id: str, since: int | None, upto: int, limit: int
    ) -> tuple[list[tuple[int, Event]], bool]:
        rows = await self._ctx.store.get_room_events_stream(
            room_id,
            from_ordering=upto + 1,
            to_ordering=None if since is None else since + 1,
            direction="b",
            limit=limit + 1,
        )
        limited = len(rows) > limit
        rows = rows[:limit]
        rows.reverse()
        return rows, limited

    async def _state_before(self, room_id: str, first: Event | None) -> list[Event]:
        store = self._ctx.store
        state: Mapping[tuple[str, str], str] | None = None
        if first is not None:
            state = await store.get_state_before(first.event_id)
        if state is None:
            state = await store.get_current_state_ids(room_id)
        events = await store.get_events(state.values())
        return [events[e] for e in sorted(state.values()) if e in events]

    async def _delta_state(
        self, deltas: Sequence[CurrentStateChange], timeline: Sequence[Event]
    ) -> list[Event]:
        """The state events that current-state changes without a timeline event
        (``storage.state_deltas``) brought since the token, for the ``state``
        section. Keys the timeline sets are left to the timeline (newer)."""
        store = self._ctx.store
        first = deltas[0].from_group
        old = {} if first is None else await store.get_state_ids_for_group(first)
        new = await store.get_state_ids_for_group(deltas[-1].to_group)
        in_timeline = {e.state_tuple for e in timeline if e.is_state()}
        ids = sorted(
            eid for key, eid in new.items() if old.get(key) != eid and key not in in_timeline
        )
        events = await store.get_events(ids)
        return [events[e] for e in ids if e in events]

    async def _transaction_ids(self, requester: Requester, events: list[Event]) -> dict[str, str]:
        """event_id -> the client's transaction ID, for events this token sent."""
        own = [e.event_id for e in events if e.sender == requester.user_id]
        keys = await self._ctx.users.get_client_txn_keys(requester.token_hash, own)
        # The key is "send\0room\0type\0txnId" (clientapi.events).
        return {eid: key.rsplit("\x00", 1)[-1] for eid, key in keys.items()}

    async def _joined_room(
        self,
        requester: Requester,
        room_id: str,
        user_id: str,
        since: int | None,
        now: int,
        limit: int,
        full_state: bool,
        deltas: Sequence[CurrentStateChange] | None = None,
    ) -> dict[str, Any]:
        rows, limited = await self._timeline(room_id, since, now, limit)
        events = [e for _, e in rows]
        just_joined = any(
            e.type == "m.room.member" and e.state_key == user_id and e.membership == "join"
            for e in events
        )
        state: list[Event] = []
        if since is None or limited or just_joined or full_state:
            timeline_ids = {e.event_id for e in events}
            state = [
                e
                for e in await self._state_before(room_id, events[0] if events else None)
                if e.event_id not in timeline_ids
            ]
        elif deltas:
            state = await self._delta_state(deltas, events)
        if rows:
            first_ordering, first = rows[0]
            prev_batch = topological_token(first.depth, first_ordering)
        else:
            prev_batch = stream_token(now)
        members = await self._ctx.store.get_room_memberships(room_id)
        txn_ids = await self._transaction_ids(requester, events)
        return {
            "timeline": {
                "events": [
                    format_client_event(
                        e,
                        include_room_id=False,
                        unsigned=(
                            {"transaction_id": txn_ids[e.event_id]}
                            if e.event_id in txn_ids
                            else None
                        ),
                    )
                    for e in events
                ],
                "limited": limited,
                "prev_batch": prev_batch,
            },
            "state": {"events": [format_client_event(e, include_room_id=False) for e in state]},
            "ephemeral": {"events": []},
            "account_data": {"events": []},
            "unread_notifications": {"highlight_count": 0, "notification_count": 0},
            "summary": {
                "m.joined_member_count": sum(1 for m in members.values() if m == "join"),
                "m.invited_member_count": sum(1 for m in members.values() if m == "invite"),
            },
        }

    async def _invited_since(self, room_id: str, user_id: str, since: int | None) -> bool:
        """Whether the user's invite is new since ``since`` (not just other
        activity in a room they are invited to)."""
        if since is None:
            return True
        current = await self._ctx.store.get_membership(room_id, user_id)
        if current is None:
            return False
        statuses = await self._ctx.store.get_event_statuses([current[1]])
        status = statuses.get(current[1])
        return status is not None and status.stream_ordering > since

    async def _invited_room(self, room_id: str, user_id: str) -> dict[str, Any] | None:
        store = self._ctx.store
        state = await store.get_current_state_ids(room_id)
        wanted = [state[k] for k in STRIPPED_STATE_KEYS if k in state]
        member_id = state.get(("m.room.member", user_id))
        if member_id is None:
            return None
        events = await store.get_events([*wanted, member_id])
        stripped = [_stripped(events[e]) for e in wanted if e in events]
        if member_id in events:
            stripped.append(_stripped(events[member_id]))
        return {"invite_state": {"events": stripped}}

    async def _left_room(
        self, room_id: str, user_id: str, since: int, now: int, limit: int
    ) -> dict[str, Any] | None:
        rows, limited = await self._timeline(room_id, since, now, limit)
        cut = None
        for i, (_, e) in enumerate(rows):
            if (
                e.type == "m.room.member"
                and e.state_key == user_id
                and e.membership
                in (
                    "leave",
                    "ban",
                )
            ):
                cut = i
        if cut is None:
            # The leave is older than this window: nothing new to say.
            return None
        rows = rows[: cut + 1]
        first_ordering, first = rows[0]
        return {
            "timeline": {
                "events": [format_client_event(e, include_room_id=False) for _, e in rows],
                "limited": limited,
                "prev_batch": topological_token(first.depth, first_ordering),
            },
            "state": {"events": []},
            "account_data": {"events": []},
        }


def _stripped_pdu(pdu: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": pdu.get("type"),
        "state_key": pdu.get("state_key"),
        "sender": pdu.get("sender"),
        "content": pdu.get("content", {}),
    }
