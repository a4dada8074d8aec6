"""Remote events: the spec's "Checks performed on receipt of a PDU".

``InboundPdus.receive_pdu`` takes one PDU (from ``/send``) through, in order:

1. format, signatures and content hash (``events.checks.check_pdu``, keys
   fetched in one keyring batch; a hash mismatch continues with the redacted
   event). Failure: ``InvalidEventError`` / ``SignatureError``, nothing stored.
2. auth against its own auth events. Missing auth events are fetched from
   the origin (``/event_auth``, then ``/event``) and stored as outliers after
   their own checks. Failure: stored as rejected, ``AuthError`` raised.
3. the state before it: the state after each prev event. Missing prev events
   are first pulled with ``get_missing_events`` (at most
   ``MISSING_EVENTS_LIMIT``, processed oldest first through these same
   checks); a prev event still missing gets its state from ``/state_ids``
   (the state events we lack are fetched and stored as outliers). Several
   prev events with different states are merged by state resolution.
4. auth against that state. Failure: stored as rejected, ``AuthError``.
5. soft-fail: auth against the current state. Failure: stored with
   ``soft_failed`` (not in the timeline, not in current state, no error).

Then the event is persisted; when it leaves forward extremities with
different states, the current state is resolved over all of them. All of it
runs under the room's lock. Remote failures while filling gaps are logged
and the event is judged with what could be had; a state that cannot be had
at all makes the PDU fail with ``InvalidEventError``.

``receive_membership_event`` is the stricter path for send_join /
send_leave / send_knock: the same checks, but every failure is a
``MatrixError`` (400/403) and nothing is stored, and the event must also be
allowed by the current state.
"""

from __future__ import annotations

from collections.abc import Collection, Container, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nacl.exceptions import CryptoError
from twisted.internet.defer import gatherResults
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from unpaddedbase64 import decode_base64

from matrixfed.auth.rules import auth_state_from_events, check_auth, check_auth_events_refs
from matrixfed.auth.selection import CREATE_KEY
from matrixfed.errors import (
    AuthError,
    EventSizeError,
    InvalidEventError,
    MatrixError,
    RemoteError,
    SignatureError,
)
from matrixfed.events.checks import check_pdus
from matrixfed.events.hashing import redacted_signing_json
from matrixfed.events.identifiers import domain_of
from matrixfed.events.model import Event
from matrixfed.events.room_versions import RoomVersion
from matrixfed.state.resolve import resolve_state
from matrixfed.storage.persist import EventWithContext, PersistedEvent, StateResolutionRequired

if TYPE_CHECKING:
    from matrixfed.rooms.engine import RoomEngine

__all__ = ["InboundPdus", "StateMapIds"]

log = Logger()

StateMapIds = dict[tuple[str, str], str]

# spec: get_missing_events; Synapse asks for 10 and so do we: a longer gap is
# cheaper to close with /state_ids than by walking it.
MISSING_EVENTS_LIMIT = 10
# Events fetched one by one with /event before switching to /state (one call).
MAX_EVENTS_FETCHED_BY_ID = 20
# State resolutions over more state entries than this run on a thread.
THREAD_RESOLVE_THRESHOLD = 2000
# Fetched batches larger than this are checked on the thread pool, in chunks.
THREAD_CHECK_THRESHOLD = 200
THREAD_CHECK_CHUNK = 500
# Seconds for each fetch while filling a gap (the /send caller is waiting).
FETCH_TIMEOUT_SECONDS = 30.0


def _path(template: str, *segments: str) -> str:
    from matrixfed.federation.client import federation_path

    return federation_path(template, *segments)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _auth_ids_with_create(event: Event) -> list[str]:
    """The event's auth event IDs, plus the create event's in v12 (not cited there)."""
    ids = list(event.auth_event_ids)
    if event.room_version.room_id_from_create and event.type != "m.room.create":
        ids.append("$" + event.room_id[1:])
    return ids


def _check_same_room(event: Event, statuses: Mapping[str, Any]) -> None:
    """Stored events an event names (itself, its prev events) must be of its room:
    otherwise another room's state would leak into this one."""
    for eid, status in statuses.items():
        if status.room_id != event.room_id:
            raise InvalidEventError(f"{eid} is an event of another room")


def _state_after(before: Mapping[tuple[str, str], str], event: Event) -> StateMapIds:
    after = dict(before)
    if event.is_state():
        after[event.state_tuple] = event.event_id
    return after


def _checked_event(result: Event | Exception) -> tuple[Event, str | None]:
    """A ``check_pdus`` result as (event, rejection reason), or raise its error:
    a rejectable size error gives the event to store as rejected."""
    if isinstance(result, EventSizeError) and result.rejectable and result.event is not None:
        return result.event, f"too large: {result}"
    if isinstance(result, Exception):
        raise result
    return result, None


class InboundPdus:
    """The receive side of the room engine (module docstring)."""

    def __init__(self, *, engine: RoomEngine) -> None:
        self._engine = engine
        self._store = engine.store

    # --- checks -----------------------------------------------------------

    async def check_pdus(
        self, pdus: Sequence[Any], rv: RoomVersion, *, backfilled: bool = False
    ) -> list[Event | Exception]:
        """check_pdu over ``pdus`` with one key batch; rejectable size errors
        come back as the EventSizeError carrying the event."""
        keys = await self._engine.fetch_keys_for(pdus, rv)
        clock = self._engine.clock
        if len(pdus) > THREAD_CHECK_THRESHOLD and hasattr(clock, "getThreadPool"):
            # PyNaCl releases the GIL: chunks verify in parallel off the reactor.
            chunks = [
                pdus[i : i + THREAD_CHECK_CHUNK] for i in range(0, len(pdus), THREAD_CHECK_CHUNK)
            ]
            pool = clock.getThreadPool()
            results = await gatherResults(
                [
                    deferToThreadPool(clock, pool, check_pdus, c, rv, keys, backfilled=backfilled)
                    for c in chunks
                ]
            )
            return [r for chunk in results for r in chunk]
        return list(check_pdus(pdus, rv, keys, backfilled=backfilled))

    async def _check_one(self, pdu: Any, rv: RoomVersion) -> tuple[Event, str | None]:
        (result,) = await self.check_pdus([pdu], rv)
        return _checked_event(result)

    async def _auth_events_reason(
        self, event: Event, rejected: Container[str] | None = None
    ) -> str | None:
        """Why ``event`` fails against its own auth events (None: it passes).

        Args:
            rejected: the rejected ones among its auth events, when known.
        """
        ids = _auth_ids_with_create(event)
        events = await self._store.get_events(ids)
        if rejected is None:
            rejected = await self._store.get_rejected(ids)
        try:
            check_auth_events_refs(
                event,
                {e: events[e] for e in event.auth_event_ids if e in events},
                rejected=rejected,
            )
            check_auth(event, auth_state_from_events(events.values()))
        except AuthError as e:
            return f"auth events: {e}"
        return None

    async def _fails_current_state(self, event: Event) -> bool:
        try:
            check_auth(event, await self._engine.current_auth_state(event))
        except AuthError as e:
            log.debug("{event_id} fails against current state: {e}", event_id=event.event_id, e=e)
            return True
        return False

    async def _state_reason(self, event: Event, state: Mapping[tuple[str, str], str]) -> str | None:
        try:
            check_auth(event, await self._engine.auth_state_for(event, state))
        except AuthError as e:
            return str(e)
        return None

    # --- fetching ------------------------------------------------------------

    async def _fetch_event(self, origin: str, event_id: str, rv: RoomVersion) -> Any | None:
        try:
            answer = await self._engine.federation_client.get_json(
                origin,
                _path("/_matrix/federation/v1/event/{}", event_id),
                timeout=FETCH_TIMEOUT_SECONDS,
            )
        except RemoteError as e:
            log.info(
                "cannot fetch {event_id} from {origin}: {e}", event_id=event_id, origin=origin, e=e
            )
            return None
        pdus = answer.get("pdus") if isinstance(answer, dict) else None
        if not isinstance(pdus, list) or len(pdus) != 1:
            return None
        return pdus[0]

    async def _store_outliers(self, room_id: str, rv: RoomVersion, pdus: Iterable[Any]) -> None:
        """Check fetched events and store the genuine ones as outliers.

        Each is authorised against its own auth events (from the batch or the
        store), oldest first; failures are stored as rejected outliers.
        """
        pdu_list = list(pdus)
        # Auth chains and state: the prev/auth event count limits do not apply.
        results = await self.check_pdus(pdu_list, rv, backfilled=True)
        events: dict[str, Event] = {}
        reasons: dict[str, str] = {}
        for res in results:
            if isinstance(res, EventSizeError) and res.rejectable and res.event is not None:
                events[res.event.event_id] = res.event
                reasons[res.event.event_id] = "too large"
            elif isinstance(res, Event) and res.room_id == room_id:
                events[res.event_id] = res
        have = await self._store.have_events(events)
        new = sorted(
            (e for e in events.values() if e.event_id not in have),
            key=lambda e: (e.depth, e.event_id),
        )
        if not new:
            return
        needed = {a for e in new for a in e.auth_event_ids}
        if rv.room_id_from_create:
            needed.add("$" + room_id[1:])
        known = await self._store.get_events(needed - events.keys())
        known.update(events)
        rejected = set(await self._store.get_rejected(needed))
        items: list[EventWithContext] = []
        for ev in new:
            reason = reasons.get(ev.event_id)
            if reason is None:
                auth = {a: known[a] for a in ev.auth_event_ids if a in known}
                try:
                    check_auth_events_refs(ev, auth, rejected=rejected)
                    state = auth_state_from_events(auth.values())
                    if rv.room_id_from_create and ev.type != "m.room.create":
                        create = known.get("$" + room_id[1:])
                        if create is not None:
                            state[CREATE_KEY] = create
                    check_auth(ev, state)
                except AuthError as e:
                    reason = f"auth events: {e}"
            if reason is not None:
                rejected.add(ev.event_id)
            items.append(EventWithContext(ev, outlier=True, rejected_reason=reason))
        await self._store.persist_events(room_id, items)

    async def _ensure_auth_events(
        self, origin: str, event: Event, known: Collection[str] | None = None
    ) -> None:
        """Fetch the auth events we lack (``known``: those we have, if known)."""
        ids = set(event.auth_event_ids)
        missing = ids - set(await self._store.have_events(ids) if known is None else known)
        if not missing:
            return
        rv = event.room_version
        try:
            answer = await self._engine.federation_client.get_json(
                origin,
                _path("/_matrix/federation/v1/event_auth/{}/{}", event.room_id, event.event_id),
                timeout=FETCH_TIMEOUT_SECONDS,
            )
            chain = answer.get("auth_chain") if isinstance(answer, dict) else None
            if isinstance(chain, list):
                await self._store_outliers(event.room_id, rv, chain)
        except RemoteError as e:
            log.info(
                "event_auth for {event_id} from {origin} failed: {e}",
                event_id=event.event_id,
                origin=origin,
                e=e,
            )
        missing -= await self._store.have_events(missing)
        fetched = [await self._fetch_event(origin, m, rv) for m in sorted(missing)]
        await self._store_outliers(event.room_id, rv, [p for p in fetched if p is not None])

    async def _fill_gap(
        self, origin: str, event: Event, statuses: Mapping[str, Any], *, partial: bool
    ) -> None:
        """Pull missing prev events with get_missing_events and process them.

        Args:
            statuses: the store's statuses of (at least) the prev events.
        """
        prevs = set(event.prev_event_ids)
        missing = {p for p in prevs if p not in statuses or statuses[p].outlier}
        if not missing:
            return
        extremities = await self._store.get_forward_extremities(event.room_id)
        body = {
            "earliest_events": extremities,
            "latest_events": [event.event_id],
            "limit": MISSING_EVENTS_LIMIT,
            "min_depth": 0,
        }
        try:
            answer = await self._engine.federation_client.post_json(
                origin,
                _path("/_matrix/federation/v1/get_missing_events/{}", event.room_id),
                body,
                timeout=FETCH_TIMEOUT_SECONDS,
            )
        except RemoteError as e:
            log.info(
                "get_missing_events for {event_id} from {origin} failed: {e}",
                event_id=event.event_id,
                origin=origin,
                e=e,
            )
            return
        pdus = answer.get("events") if isinstance(answer, dict) else None
        if not isinstance(pdus, list):
            return
        results = await self.check_pdus(pdus[: MISSING_EVENTS_LIMIT * 2], event.room_version)
        pulled = sorted(
            (r for r in results if isinstance(r, Event) and r.room_id == event.room_id),
            key=lambda e: (e.depth, e.event_id),
        )
        log.info(
            "pulled {n} missing events before {event_id} from {origin}",
            n=len(pulled),
            event_id=event.event_id,
            origin=origin,
        )
        for ev in pulled:
            try:
                await self._process(origin, ev, fill_gaps=False, partial=partial)
            except (AuthError, InvalidEventError, SignatureError, MatrixError) as e:
                log.info("pulled event {event_id}: {e}", event_id=ev.event_id, e=e)

    async def _remote_state_after(
        self, origin: str, room_id: str, rv: RoomVersion, event_id: str
    ) -> StateMapIds:
        """The state after ``event_id`` as ``origin`` says (``/state_ids``)."""
        try:
            answer = await self._engine.federation_client.get_json(
                origin,
                _path("/_matrix/federation/v1/state_ids/{}", room_id),
                {"event_id": event_id},
                timeout=FETCH_TIMEOUT_SECONDS,
            )
        except RemoteError as e:
            raise InvalidEventError(f"cannot get the state at {event_id}: {e}") from None
        pdu_ids = answer.get("pdu_ids") if isinstance(answer, dict) else None
        chain_ids = answer.get("auth_chain_ids") if isinstance(answer, dict) else None
        if not isinstance(pdu_ids, list) or not isinstance(chain_ids, list):
            raise InvalidEventError(f"bad state_ids answer for {event_id}")
        wanted = {i for i in [*pdu_ids, *chain_ids, event_id] if isinstance(i, str)}
        missing = wanted - await self._store.have_events(wanted)
        if len(missing) > MAX_EVENTS_FETCHED_BY_ID:
            try:
                full = await self._engine.federation_client.get_json(
                    origin,
                    _path("/_matrix/federation/v1/state/{}", room_id),
                    {"event_id": event_id},
                    timeout=FETCH_TIMEOUT_SECONDS,
                )
            except RemoteError as e:
                raise InvalidEventError(f"cannot get the state at {event_id}: {e}") from None
            if not isinstance(full, dict):
                raise InvalidEventError(f"bad state answer for {event_id}")
            pdus = [*_as_list(full.get("auth_chain")), *_as_list(full.get("pdus"))]
            await self._store_outliers(room_id, rv, pdus)
            missing -= await self._store.have_events(missing)
        fetched = [await self._fetch_event(origin, m, rv) for m in sorted(missing)]
        await self._store_outliers(room_id, rv, [p for p in fetched if p is not None])
        events = await self._store.get_events(wanted)
        if event_id not in events:
            raise InvalidEventError(f"cannot get prev event {event_id}")
        rejected = await self._store.get_rejected(wanted)
        if events[event_id].room_id != room_id:
            raise InvalidEventError(f"prev event {event_id} is in another room")
        state: StateMapIds = {}
        for i in pdu_ids:
            ev = events.get(i)
            if ev is not None and ev.is_state() and i not in rejected and ev.room_id == room_id:
                state[ev.state_tuple] = i
        prev = events[event_id]
        if event_id in rejected:
            return state
        return _state_after(state, prev)

    # --- state ---------------------------------------------------------------

    async def resolve(
        self,
        rv: RoomVersion,
        sets: Sequence[Mapping[tuple[str, str], str]],
        *,
        extra: Sequence[Event] = (),
    ) -> StateMapIds:
        """State resolution over ``sets`` with events from the store.

        Args:
            extra: events not stored yet that the sets may name (the event
                being persisted); their auth events must be stored.
        """
        if all(s == sets[0] for s in sets[1:]):
            return dict(sets[0])
        ids = {eid for s in sets for eid in s.values()}
        ids.update(a for e in extra for a in e.auth_event_ids)
        chain = await self._store.get_auth_chain_ids(ids, include_given=True)
        event_map = await self._store.get_events(chain)
        event_map.update((e.event_id, e) for e in extra)
        found: set[str] = set()
        for room_id in {e.room_id for e in event_map.values()}:
            found |= await self._engine.rejected_in_room(room_id)
        rejected = frozenset(found & chain)
        clock = self._engine.clock
        size = sum(len(s) for s in sets)
        if size > THREAD_RESOLVE_THRESHOLD and hasattr(clock, "getThreadPool"):
            result: StateMapIds = await deferToThreadPool(
                clock,
                clock.getThreadPool(),
                resolve_state,
                rv,
                list(sets),
                event_map,
                rejected_event_ids=rejected,
            )
            return result
        return resolve_state(rv, sets, event_map, rejected_event_ids=rejected)

    async def _state_before(self, origin: str, event: Event) -> tuple[int | None, StateMapIds]:
        """(the state group, when one existing group is the state before; the state)."""
        rv = event.room_version
        prevs = list(dict.fromkeys(event.prev_event_ids))
        groups = await self._store.get_state_groups_for_events(prevs)
        after_groups = {groups[p][1] for p in prevs if p in groups}
        if prevs and len(groups) == len(prevs) and len(after_groups) == 1:
            group = after_groups.pop()
            return group, await self._store.get_state_ids_for_group(group)
        sets: list[StateMapIds] = []
        for p in prevs:
            after = await self._store.get_state_after(p)
            if after is None:
                after = await self._remote_state_after(origin, event.room_id, rv, p)
            sets.append(dict(after))
        if not sets:
            raise InvalidEventError("event has no prev_events")
        return None, await self.resolve(rv, sets)

    async def persist(
        self, ctx: EventWithContext, before: Mapping[tuple[str, str], str]
    ) -> list[PersistedEvent]:
        """Persist one non-outlier, resolving current state if it forks the room."""
        event = ctx.event
        try:
            return await self._store.persist_events(event.room_id, [ctx])
        except StateResolutionRequired as e:
            sets: list[StateMapIds] = []
            for x in e.extremities:
                if x == event.event_id:
                    sets.append(_state_after(before, event))
                    continue
                after = await self._store.get_state_after(x)
                if after is not None:
                    sets.append(dict(after))
            current = await self.resolve(event.room_version, sets, extra=[event])
            log.info(
                "resolved state of {room_id} over {n} forward extremities",
                room_id=event.room_id,
                n=len(sets),
            )
            return await self._store.persist_events(event.room_id, [ctx], current_state=current)

    # --- receive_pdu ---------------------------------------------------------

    async def receive_pdu(
        self,
        origin: str,
        pdu: Any,
        *,
        room_version: RoomVersion | None = None,
        checked: Event | Exception | None = None,
    ) -> Event:
        """Check and store one PDU received from ``origin``.

        ``checked`` is this PDU's result from ``check_pdus`` in
        ``room_version`` when the caller checked a whole batch at once (a
        ``/send`` transaction); without it the PDU is checked here.

        Returns:
            The event (accepted or soft-failed; a PDU we already had returns
            the stored event).

        Raises:
            InvalidEventError: malformed, or its state cannot be established.
            SignatureError: signatures missing or bad.
            AuthError: rejected by the auth rules (it was stored as rejected).
            MatrixError: 404 unknown room, 403 a room we are not in.
        """
        if type(pdu) is not dict:
            raise InvalidEventError("PDU is not a JSON object")
        room_id = pdu.get("room_id")
        if not isinstance(room_id, str):
            raise InvalidEventError("PDU has no room_id")
        room = await self._engine.room_for_pdu(room_id)
        if room is None:
            raise MatrixError(404, "M_NOT_FOUND", f"unknown room {room_id}")
        stored_rv, partial, joined = room
        rv = room_version or stored_rv
        if not joined:
            raise MatrixError(403, "M_FORBIDDEN", f"{self._engine.server_name} is not in {room_id}")
        if checked is None:
            event, reason = await self._check_one(pdu, rv)
        else:
            event, reason = _checked_event(checked)
        if event.room_id != room_id:
            raise InvalidEventError("room_id does not match")
        async with self._engine.room_lock(room_id):
            if partial:
                # The resync may have completed while we waited for the lock:
                # then the full state judges this event, nothing re-checks it.
                info = await self._store.get_room(room_id)
                partial = info is not None and info.partial_state
            return await self._process(
                origin, event, fill_gaps=True, reason=reason, partial=partial
            )

    async def _process(
        self,
        origin: str,
        event: Event,
        *,
        fill_gaps: bool,
        partial: bool,
        reason: str | None = None,
    ) -> Event:
        """The checks after format/signatures, persisting (caller holds the lock).

        Args:
            partial: the room has partial state (a faster join): the state
                lacks most members, so the auth events decide and the state
                checks wait for the resync.
        """
        auth_ids = _auth_ids_with_create(event)
        statuses = await self._store.get_event_statuses(
            [event.event_id, *event.prev_event_ids, *auth_ids]
        )
        _check_same_room(
            event,
            {e: statuses[e] for e in (event.event_id, *event.prev_event_ids) if e in statuses},
        )
        status = statuses.get(event.event_id)
        if status is not None and not status.outlier:
            if status.rejected_reason is not None:
                raise AuthError(f"rejected earlier: {status.rejected_reason}")
            return event
        if event.type == "m.room.create":
            raise InvalidEventError("a create event cannot join an existing room")
        have_all_auth = all(a in statuses for a in event.auth_event_ids)
        rejected: set[str] | None = None
        if have_all_auth:
            rejected = {a for a in auth_ids if a in statuses and statuses[a].rejected_reason}
        else:
            await self._ensure_auth_events(origin, event, statuses.keys())
        if reason is None:
            reason = await self._auth_events_reason(event, rejected)
        if fill_gaps:
            await self._fill_gap(origin, event, statuses, partial=partial)
        group, before = await self._state_before(origin, event)
        if reason is None and not partial:
            reason = await self._state_reason(event, before)
        soft_failed = False
        if reason is None and not partial:
            current = await self._store.get_current_state_group(event.room_id)
            if current is None or current != group:
                soft_failed = await self._fails_current_state(event)
        ctx = EventWithContext(
            event,
            rejected_reason=reason,
            soft_failed=soft_failed,
            state_before=before if group is None else group,
        )
        persisted = await self.persist(ctx, before)
        if reason is not None:
            log.info(
                "rejected {event_id} from {origin}: {reason}",
                event_id=event.event_id,
                origin=origin,
                reason=reason,
            )
            raise AuthError(reason)
        if soft_failed:
            log.info("soft-failed {event_id} from {origin}", event_id=event.event_id, origin=origin)
            return event
        self._engine.notify_persisted(event.room_id, [event], persisted)
        return event

    # --- membership handshakes (send_join / send_leave / send_knock) ---------

    async def receive_membership_event(
        self,
        origin: str,
        pdu: Any,
        *,
        room_id: str,
        expected_membership: str,
        event_id: str | None = None,
    ) -> tuple[Event, StateMapIds]:
        """Check, authorise and append a membership event a remote server submits.

        The event must be an ``m.room.member`` of ``expected_membership`` for
        its own sender (state_key == sender), sent by a user of ``origin``, in
        ``room_id``, with ID ``event_id`` when given, validly signed (for a
        restricted join, countersign it BEFORE calling: our signature is
        checked too), allowed by its auth events, by the state before it and
        by the current state. It is then persisted, announced and fanned out
        to the other servers of the room (not back to ``origin``).

        Returns:
            (the event, the state before it as (type, state_key) -> event ID).
            An event already accepted earlier returns the same again.

        Raises:
            MatrixError: 400 M_BAD_JSON / M_INVALID_PARAM for a malformed or
                mismatching event, 403 M_FORBIDDEN for bad signatures, a
                sender of another server or an event the rules refuse, 404
                for an unknown room. Nothing is stored then.
        """
        engine = self._engine
        rv = await engine.room_version_of(room_id)
        if type(pdu) is not dict:
            raise MatrixError(400, "M_BAD_JSON", "event is not a JSON object")
        try:
            event, size_reason = await self._check_one(pdu, rv)
        except InvalidEventError as e:
            raise MatrixError(400, "M_BAD_JSON", f"invalid event: {e}") from None
        except SignatureError as e:
            raise MatrixError(403, "M_FORBIDDEN", f"bad signature: {e}") from None
        if size_reason is not None:
            raise MatrixError(400, "M_BAD_JSON", size_reason)
        if event_id is not None and event.event_id != event_id:
            raise MatrixError(400, "M_INVALID_PARAM", "event ID does not match the path")
        if event.room_id != room_id:
            raise MatrixError(400, "M_INVALID_PARAM", "room ID does not match the path")
        if event.type != "m.room.member" or event.membership != expected_membership:
            raise MatrixError(
                400, "M_INVALID_PARAM", f"not an m.room.member {expected_membership} event"
            )
        if event.state_key != event.sender:
            raise MatrixError(400, "M_INVALID_PARAM", "state_key must be the sender")
        if domain_of(event.sender) != origin:
            raise MatrixError(403, "M_FORBIDDEN", "sender is not a user of the requesting server")
        async with engine.room_lock(room_id):
            status = (await self._store.get_event_statuses([event.event_id])).get(event.event_id)
            if status is not None and not status.outlier and status.rejected_reason is None:
                before_known = await self._store.get_state_before(event.event_id)
                return event, dict(before_known or {})
            missing = set(event.auth_event_ids) - await self._store.have_events(
                event.auth_event_ids
            )
            if missing:
                raise MatrixError(403, "M_FORBIDDEN", f"unknown auth events {sorted(missing)}")
            prevs = set(event.prev_event_ids)
            statuses = await self._store.get_event_statuses(prevs)
            try:
                _check_same_room(event, statuses)
            except InvalidEventError as e:
                raise MatrixError(400, "M_INVALID_PARAM", str(e)) from None
            if any(p not in statuses or statuses[p].outlier for p in prevs):
                raise MatrixError(400, "M_INVALID_PARAM", "unknown prev_events")
            reason = await self._auth_events_reason(event)
            group, before = await self._state_before(origin, event)
            if reason is None:
                reason = await self._state_reason(event, before)
            if reason is None and await self._fails_current_state(event):
                reason = "not allowed by the room's current state"
            if reason is not None:
                raise MatrixError(403, "M_FORBIDDEN", reason)
            servers_before = await engine.joined_servers(room_id)
            persisted = await self.persist(
                EventWithContext(event, state_before=before if group is None else group), before
            )
        engine.notify_persisted(room_id, [event], persisted)
        await engine.fan_out(event, servers_before, exclude=(origin,))
        return event, before

    # --- invites we send ----------------------------------------------------

    async def check_countersigned_invite(
        self, sent: Event, returned: Any, destination: str
    ) -> Event:
        """Validate the invite the invitee's server signed and sent back.

        Raises:
            MatrixError: 502 when the answer is not our event signed by
                ``destination``.
        """
        rv = sent.room_version
        if type(returned) is not dict:
            raise MatrixError(502, "M_UNKNOWN", f"{destination} sent no invite event back")
        try:
            event, reason = await self._check_one(returned, rv)
        except (InvalidEventError, SignatureError) as e:
            raise MatrixError(502, "M_UNKNOWN", f"{destination} sent a bad invite: {e}") from None
        if reason is not None or event.event_id != sent.event_id:
            raise MatrixError(502, "M_UNKNOWN", f"{destination} changed the invite event")
        sigs = event.signatures.get(destination)
        if not isinstance(sigs, dict) or not sigs:
            raise MatrixError(502, "M_UNKNOWN", f"{destination} did not sign the invite")
        keys = await self._engine.keyring.get_keys_batch({destination: dict.fromkeys(sigs, 0)})
        message = redacted_signing_json(event.pdu, rv)
        for key_id, key in keys.get(destination, {}).items():
            try:
                key.verify_key.verify(message, decode_base64(sigs.get(key_id, "")))
                return event
            except (CryptoError, ValueError):
                continue
        raise MatrixError(502, "M_UNKNOWN", f"{destination}'s invite signature does not verify")
