"""Resident read endpoints: state, state_ids, event, event_auth, backfill,
get_missing_events, timestamp_to_event.

Who may read (spec: events.yaml 403 "The requesting host is not in the
room"; Server ACLs): every room-scoped request first passes the room's server
ACL (403 ``M_FORBIDDEN``), then the requesting server must currently have a
joined member in the room, unless the room's history is ``world_readable``.
Unknown rooms answer the same 403 (nothing is revealed about them).

Which events are served: events the requesting server may see by the
history visibility in force at each event (``shared`` and
``world_readable``: any server in the room; ``joined``: servers with a
joined member at the event; ``invited``: also invited ones). Events it may
not see are served redacted by backfill and get_missing_events (the DAG
stays walkable) and refused by ``/event``. Events with an accepted
redaction are served redacted.

How it fails: malformed parameters answer 400 (``M_MISSING_PARAM``,
``M_INVALID_PARAM``, ``M_BAD_JSON``); unknown events or events of another
room 404 ``M_NOT_FOUND``. Nothing here writes.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Container, Iterable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from matrixfed.auth.power_levels import PowerLevels
from matrixfed.errors import MatrixError, bad_json, forbidden, invalid_param, not_found
from matrixfed.events.identifiers import domain_of
from matrixfed.events.model import Event
from matrixfed.events.redaction import redact
from matrixfed.events.storedjson import encode_pdu
from matrixfed.federation.server.auth import Clock
from matrixfed.federation.server.endpoint import ApiRequest, Endpoint, JsonResponse
from matrixfed.federation.server.rawjson import EncodedJsonArray, StreamedJsonArray
from matrixfed.rooms.acl import check_server_acl
from matrixfed.storage.store import Store

__all__ = [
    "ResidentQueries",
    "StateAnswer",
    "may_server_see_event",
    "serve_events",
    "visible_event_ids",
]

log = Logger()

V1 = "/_matrix/federation/v1"
MEMBER = "m.room.member"
HISTORY_VISIBILITY = "m.room.history_visibility"
# spec: client-server "m.room.history_visibility": the default is shared.
DEFAULT_HISTORY_VISIBILITY = "shared"
# Synapse caps backfill at 100 events a request; a larger limit only costs us.
MAX_BACKFILL_LIMIT = 100
# spec: get_missing_events "limit" defaults to 10; more than 100 is clamped
# (the walk holds the events in memory).
DEFAULT_MISSING_EVENTS_LIMIT = 10
MAX_MISSING_EVENTS_LIMIT = 100
# Events per batch (one transaction) of a streamed state answer: the first
# bytes leave early, and per-transaction costs stay small.
STATE_ANSWER_BATCH = 500
# get_missing_events names at most this many events to start or stop at.
MAX_MISSING_EVENTS_IDS = 1000


def _missing(name: str) -> MatrixError:
    return MatrixError(400, "M_MISSING_PARAM", f"Missing parameter: {name}")


def _int_arg(request: ApiRequest, name: str, *, required: bool, default: int = 0) -> int:
    raw = request.arg(name)
    if raw is None:
        if required:
            raise _missing(name)
        return default
    try:
        return int(raw)
    except ValueError:
        raise invalid_param(f"{name} must be an integer") from None


async def _visibility_of_state(store: Store, state: Mapping[tuple[str, str], str]) -> str:
    hv_id = state.get((HISTORY_VISIBILITY, ""))
    if hv_id is not None:
        hv_event = await store.get_event(hv_id)
        if hv_event is not None:
            value = hv_event.content.get("history_visibility")
            if isinstance(value, str):
                return value
    return DEFAULT_HISTORY_VISIBILITY


async def _server_sees_state(
    store: Store, server_name: str, state: Mapping[tuple[str, str], str]
) -> bool:
    visibility = await _visibility_of_state(store, state)
    if visibility in ("shared", "world_readable"):
        return True
    wanted = {"join", "invite"} if visibility == "invited" else {"join"}
    member_ids = [
        eid
        for (etype, state_key), eid in state.items()
        if etype == MEMBER and domain_of(state_key) == server_name
    ]
    members = await store.get_events(member_ids)
    return any(m.membership in wanted for m in members.values())


async def visible_event_ids(store: Store, server_name: str, events: Sequence[Event]) -> set[str]:
    """The IDs among ``events`` that ``server_name`` may see by the history
    visibility in force at each (the state after it).

    An event without stored state (an outlier) is visible: it was fetched as
    part of an auth chain or a join's state, which servers in the room get.
    Events sharing a state are judged once.
    """
    groups = await store.get_state_groups_for_events(e.event_id for e in events)
    verdicts: dict[int, bool] = {}
    visible: set[str] = set()
    for event in events:
        found = groups.get(event.event_id)
        if found is None:
            visible.add(event.event_id)
            continue
        after = found[1]
        if after not in verdicts:
            state = await store.get_state_ids_for_group(after)
            verdicts[after] = await _server_sees_state(store, server_name, state)
        if verdicts[after]:
            visible.add(event.event_id)
    return visible


async def may_server_see_event(store: Store, server_name: str, event: Event) -> bool:
    """Whether ``server_name`` may see ``event`` (see ``visible_event_ids``)."""
    return event.event_id in await visible_event_ids(store, server_name, [event])


async def _redacted_ids(store: Store, events: Sequence[Event]) -> set[str]:
    """IDs among ``events`` with an accepted redaction that applies.

    A redaction applies when it was accepted (neither rejected nor soft-failed)
    in the same room and comes from the original sender's server, or from a
    user with the redact power level in the state before the redaction.
    """
    by_id = {e.event_id: e for e in events}
    targets = await store.get_redactions_for(by_id)
    if not targets:
        return set()
    all_redactions = [r for rs in targets.values() for r in rs]
    statuses = await store.get_event_statuses(all_redactions)
    redactions = await store.get_events(
        r for r, s in statuses.items() if s.rejected_reason is None and not s.soft_failed
    )
    out: set[str] = set()
    for target_id, redaction_ids in targets.items():
        event = by_id[target_id]
        for rid in redaction_ids:
            redaction = redactions.get(rid)
            if redaction is None or redaction.room_id != event.room_id:
                continue
            if redaction.sender_domain() == event.sender_domain() or await _has_redact_power(
                store, redaction
            ):
                out.add(target_id)
                break
    return out


async def _has_redact_power(store: Store, redaction: Event) -> bool:
    state = await store.get_state_before(redaction.event_id)
    if state is None:
        return False
    keys = [k for k in (("m.room.create", ""), ("m.room.power_levels", "")) if k in state]
    events = await store.get_events(state[k] for k in keys)
    by_key = {(e.type, e.state_key or ""): e for e in events.values()}
    pl = PowerLevels.from_state(by_key, redaction.room_version)
    return pl.user_level(redaction.sender) >= pl.named_level("redact")


async def serve_events(
    store: Store, events: Iterable[Event], *, server_name: str | None = None
) -> list[dict[str, Any]]:
    """The PDUs to send for ``events``: redacted where a redaction applies or,
    with ``server_name``, where that server may not see the event."""
    events = list(events)
    redacted = await _redacted_ids(store, events)
    if server_name is not None:
        visible = await visible_event_ids(store, server_name, events)
        redacted.update(e.event_id for e in events if e.event_id not in visible)
    return [redact(e.pdu, e.room_version) if e.event_id in redacted else e.pdu for e in events]


async def serve_stored_events(
    store: Store,
    stored: Mapping[str, tuple[int, str]],
    event_ids: Iterable[str],
    *,
    redaction_targets: Container[str] | None = None,
) -> EncodedJsonArray:
    """``serve_events`` for many events, straight from their stored JSON.

    Args:
        store: the store.
        stored: ``store.get_event_json`` of (at least) ``event_ids``.
        event_ids: the events to send, in order; those not in ``stored`` are
            left out.
        redaction_targets: the events among them that a stored redaction
            targets, when the caller read them already
            (``get_event_json_marked``); None: looked up here.

    Returns:
        The PDUs as pre-encoded JSON: the stored text, or the redacted form
        where an accepted redaction applies. Only the redacted events (and
        their redactions) are ever decoded.
    """
    ids = [e for e in event_ids if e in stored]
    redacted: dict[str, str] = {}
    if redaction_targets is None:
        targets: Iterable[str] = await store.get_redactions_for(ids)
    else:
        targets = [e for e in ids if e in redaction_targets]
    if targets:
        events = await store.get_events(targets)
        for eid in await _redacted_ids(store, list(events.values())):
            ev = events[eid]
            redacted[eid] = encode_pdu(redact(ev.pdu, ev.room_version))
    return EncodedJsonArray([redacted.get(e) or stored[e][1] for e in ids])


class StateAnswer:
    """A room state and its auth chain for a big answer (send_join, /state),
    read in batches while the answer is being sent.

    ``state()`` and ``auth_chain()`` are ``StreamedJsonArray`` values of the
    texts ``serve_stored_events`` gives: the state's events in the given
    order, then the auth chain of ``chain_from`` (plus ``chain_extra``, minus
    ``chain_exclude``) oldest first. Each batch of state is read (one
    transaction) while the one before it is encrypted and sent; the chain is
    walked once the state is out.
    """

    def __init__(
        self,
        store: Store,
        state_ids: Sequence[str],
        *,
        chain_from: Iterable[str],
        chain_extra: Iterable[str] = (),
        chain_exclude: Iterable[str] = (),
    ) -> None:
        self._store = store
        self._state_ids = list(state_ids)
        self._chain_from = list(chain_from)
        self._chain_extra = list(chain_extra)
        self._chain_exclude = set(chain_exclude)

    def state(self) -> StreamedJsonArray:
        """The state's PDUs."""
        return StreamedJsonArray(self._state_batches())

    def auth_chain(self) -> StreamedJsonArray:
        """The auth chain's PDUs, oldest first."""
        return StreamedJsonArray(self._chain_batches())

    async def _served(self, ids: list[str]) -> list[str]:
        stored = await self._store.get_event_json_marked(ids)
        served = await serve_stored_events(
            self._store, stored.json, ids, redaction_targets=stored.redaction_targets
        )
        return served.texts

    async def _state_batches(self) -> AsyncGenerator[list[str], None]:
        ids = self._state_ids
        batches = [ids[i : i + STATE_ANSWER_BATCH] for i in range(0, len(ids), STATE_ANSWER_BATCH)]
        pending: Deferred[list[str]] | None = None
        try:
            for i in range(len(batches)):
                if pending is None:
                    pending = Deferred.fromCoroutine(self._served(batches[i]))
                texts = await pending
                # The next batch is read while this one is sent.
                pending = (
                    Deferred.fromCoroutine(self._served(batches[i + 1]))
                    if i + 1 < len(batches)
                    else None
                )
                yield texts
        finally:
            if pending is not None:
                # Nobody waits for it any more (the client went away).
                pending.addErrback(lambda _: None)

    async def _chain_batches(self) -> AsyncGenerator[list[str], None]:
        chain_ids = await self._store.get_auth_chain_ids(self._chain_from)
        chain_ids.update(self._chain_extra)
        chain_ids.difference_update(self._chain_exclude)
        stored = await self._store.get_event_json_marked(chain_ids)
        texts = stored.json
        chain = sorted((e for e in chain_ids if e in texts), key=lambda e: (texts[e][0], e))
        served = await serve_stored_events(
            self._store, texts, chain, redaction_targets=stored.redaction_targets
        )
        yield served.texts


class ResidentQueries:
    """The read endpoints a resident server answers for the rooms it holds."""

    def __init__(self, *, store: Store, server_name: str, clock: Clock) -> None:
        """Args:
        store: the event/state store.
        server_name: our server name (``origin`` of transaction-shaped answers).
        clock: for ``origin_server_ts``.
        """
        self._store = store
        self._server_name = server_name
        self._clock = clock

    def endpoints(self) -> list[Endpoint]:
        """The endpoints, for ``JsonResource.add_endpoints``."""
        return [
            Endpoint("GET", V1 + "/state/{roomId}", self.on_state),
            Endpoint("GET", V1 + "/state_ids/{roomId}", self.on_state_ids),
            Endpoint("GET", V1 + "/event/{eventId}", self.on_event),
            Endpoint("GET", V1 + "/event_auth/{roomId}/{eventId}", self.on_event_auth),
            Endpoint("GET", V1 + "/backfill/{roomId}", self.on_backfill),
            Endpoint("POST", V1 + "/get_missing_events/{roomId}", self.on_get_missing_events),
            Endpoint("GET", V1 + "/timestamp_to_event/{roomId}", self.on_timestamp_to_event),
        ]

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    # -- access ------------------------------------------------------------

    async def _world_readable(self, room_id: str) -> bool:
        hv_id = await self._store.get_current_state_event_id(room_id, HISTORY_VISIBILITY, "")
        if hv_id is None:
            return False
        event = await self._store.get_event(hv_id)
        return event is not None and event.content.get("history_visibility") == "world_readable"

    async def assert_may_read(self, origin: str | None, room_id: str) -> str:
        """Pass the ACL and the "in the room" check, or raise 403. Returns origin."""
        if origin is None:
            raise forbidden("Requests must be authenticated")
        if await self._store.get_room(room_id) is None:
            raise forbidden("Host not in room.")
        await check_server_acl(self._store, room_id, origin)
        if await self._store.is_host_joined(room_id, origin):
            return origin
        if await self._world_readable(room_id):
            return origin
        raise forbidden("Host not in room.")

    async def _room_event(self, room_id: str, event_id: str) -> Event:
        event = await self._store.get_event(event_id)
        if event is None or event.room_id != room_id:
            raise not_found(f"Could not find event {event_id}")
        return event

    # -- state ---------------------------------------------------------------

    async def _state_at(self, request: ApiRequest) -> list[str]:
        room_id = request.path_params["roomId"]
        event_id = request.arg("event_id")
        if event_id is None:
            raise _missing("event_id")
        await self.assert_may_read(request.origin, room_id)
        await self._room_event(room_id, event_id)
        info = await self._store.get_room(room_id)
        if info is not None and info.partial_state:
            # spec: 404 when we do not know the state at the event well enough.
            raise not_found("This server has only partial state for the room")
        state = await self._store.get_state_before(event_id)
        if state is None:
            raise not_found(f"State at {event_id} is not known")
        return sorted(state.values())

    async def on_state(self, request: ApiRequest) -> JsonResponse:
        """``GET /state/{roomId}?event_id=``: ``{pdus, auth_chain}``.

        A whole room's state (a partial-state joiner's resync asks for it):
        the stored JSON texts, read in batches while they are sent, like
        send_join's.
        """
        state_ids = await self._state_at(request)
        answer = StateAnswer(self._store, state_ids, chain_from=state_ids)
        return 200, {"pdus": answer.state(), "auth_chain": answer.auth_chain()}

    async def on_state_ids(self, request: ApiRequest) -> JsonResponse:
        """``GET /state_ids/{roomId}?event_id=``: ``{pdu_ids, auth_chain_ids}``."""
        state_ids = await self._state_at(request)
        chain_ids = await self._store.get_auth_chain_ids(state_ids)
        return 200, {"pdu_ids": state_ids, "auth_chain_ids": sorted(chain_ids)}

    # -- single events -------------------------------------------------------

    async def on_event(self, request: ApiRequest) -> JsonResponse:
        """``GET /event/{eventId}``: a one-PDU transaction."""
        event_id = request.path_params["eventId"]
        event = await self._store.get_event(event_id)
        if event is None:
            raise not_found(f"Could not find event {event_id}")
        origin = await self.assert_may_read(request.origin, event.room_id)
        if not await may_server_see_event(self._store, origin, event):
            raise forbidden("You may not see this event")
        return 200, {
            "origin": self._server_name,
            "origin_server_ts": self._now_ms(),
            "pdus": await serve_events(self._store, [event]),
        }

    async def on_event_auth(self, request: ApiRequest) -> JsonResponse:
        """``GET /event_auth/{roomId}/{eventId}``: the event's auth chain."""
        room_id = request.path_params["roomId"]
        event_id = request.path_params["eventId"]
        await self.assert_may_read(request.origin, room_id)
        await self._room_event(room_id, event_id)
        chain = await self._store.get_auth_chain([event_id])
        return 200, {"auth_chain": await serve_events(self._store, chain)}

    # -- history -------------------------------------------------------------

    async def on_backfill(self, request: ApiRequest) -> JsonResponse:
        """``GET /backfill/{roomId}?v=...&limit=``: a transaction of earlier PDUs."""
        room_id = request.path_params["roomId"]
        start = list(request.args("v"))
        if not start:
            raise _missing("v")
        limit = _int_arg(request, "limit", required=True)
        if limit < 0:
            raise invalid_param("limit must not be negative")
        origin = await self.assert_may_read(request.origin, room_id)
        events = await self._store.get_backfill_events(
            room_id, start, min(limit, MAX_BACKFILL_LIMIT)
        )
        return 200, {
            "origin": self._server_name,
            "origin_server_ts": self._now_ms(),
            "pdus": await serve_events(self._store, events, server_name=origin),
        }

    async def on_get_missing_events(self, request: ApiRequest) -> JsonResponse:
        """``POST /get_missing_events/{roomId}``: ``{events}``, oldest first."""
        room_id = request.path_params["roomId"]
        body = request.content
        if not isinstance(body, dict):
            raise bad_json("Body must be a JSON object")
        earliest = _id_list(body, "earliest_events")
        latest = _id_list(body, "latest_events")
        limit = _body_int(body, "limit", DEFAULT_MISSING_EVENTS_LIMIT)
        min_depth = _body_int(body, "min_depth", 0)
        origin = await self.assert_may_read(request.origin, room_id)
        events = await self._store.get_missing_events(
            room_id,
            earliest_events=earliest,
            latest_events=latest,
            limit=max(0, min(limit, MAX_MISSING_EVENTS_LIMIT)),
            min_depth=min_depth,
        )
        return 200, {"events": await serve_events(self._store, events, server_name=origin)}

    async def on_timestamp_to_event(self, request: ApiRequest) -> JsonResponse:
        """``GET /timestamp_to_event/{roomId}?ts=&dir=``: the closest event."""
        room_id = request.path_params["roomId"]
        ts = _int_arg(request, "ts", required=True)
        direction = request.arg("dir")
        if direction is None:
            raise _missing("dir")
        if direction not in ("f", "b"):
            raise invalid_param("dir must be 'f' or 'b'")
        await self.assert_may_read(request.origin, room_id)
        found = await self._store.get_event_at_timestamp(room_id, ts, direction)
        if found is None:
            which = "forward" if direction == "f" else "backward"
            raise not_found(f"Unable to find event from {ts} in {which} direction")
        return 200, {"event_id": found[0], "origin_server_ts": found[1]}


def _id_list(body: Mapping[str, Any], name: str) -> list[str]:
    if name not in body:
        raise _missing(name)
    value = body[name]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_json(f"{name} must be a list of event IDs")
    if len(value) > MAX_MISSING_EVENTS_IDS:
        raise invalid_param(f"{name} names more than {MAX_MISSING_EVENTS_IDS} events")
    return list(value)


def _body_int(body: Mapping[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    if type(value) is not int:
        raise bad_json(f"{name} must be an integer")
    return value
