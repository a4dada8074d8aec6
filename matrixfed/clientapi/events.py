"""Sending and reading room events: send, state, messages, members.

- ``PUT /rooms/{roomId}/send/{eventType}/{txnId}`` is idempotent per access
  token and request: the first request appends the event and records
  (token, room, type, txnId) -> event ID; a repeat, even one racing the first,
  answers the same event ID and appends nothing.
- ``PUT|GET /rooms/{roomId}/state/{eventType}[/{stateKey}]``, ``GET /state``;
  a member event about someone else in a room joined with partial state
  first waits (bounded) for the full member list (the target's membership
  judges it).
- ``GET /rooms/{roomId}/messages`` pages in topological order (depth, then
  stream ordering). Tokens: ``t{depth}_{stream}`` (topological) and
  ``s{stream}`` (the ``/sync`` ``next_batch``/``prev_batch`` form); both are
  accepted as ``from`` and ``to``. Walking backwards past the oldest local event
  of a room that has backward extremities asks the backfill hook for more.
- ``GET /rooms/{roomId}/members`` and ``/joined_members``; in a room joined
  with partial state they first wait (bounded) for the full member list.

Reads need the requester to be joined to the room (403 ``M_FORBIDDEN``
otherwise); history visibility beyond that is not applied.
"""

from __future__ import annotations

from typing import Any, Literal

from canonicaljson import encode_canonical_json
from twisted.internet.defer import Deferred

from matrixfed.clientapi.common import (
    Requester,
    client_endpoints,
    format_client_event,
    require_object,
)
from matrixfed.clientapi.context import ClientContext
from matrixfed.errors import MatrixError
from matrixfed.events.model import Event
from matrixfed.federation.server.endpoint import ApiRequest, Endpoint, JsonResponse

__all__ = ["EventServlets", "parse_token", "stream_token", "topological_token"]

# spec default for /messages.
DEFAULT_MESSAGES_LIMIT = 10
# Events per /messages page at most (one store query).
MAX_MESSAGES_LIMIT = 1000
# Events asked of a remote server per backfill round.
BACKFILL_LIMIT = 100

# spec: a PDU is at most 65536 bytes of canonical JSON; content alone over that
# can never fit, so it is refused before building the event.
MAX_CONTENT_BYTES = 65536

Token = tuple[Literal["t"], int, int] | tuple[Literal["s"], int, int]


def _event_content(request: ApiRequest) -> dict[str, Any]:
    content = require_object(request)
    if len(encode_canonical_json(content)) > MAX_CONTENT_BYTES:
        raise MatrixError(413, "M_TOO_LARGE", "Event is too large")
    return content


def stream_token(ordering: int, received_ms: int | None = None) -> str:
    """The token for a stream position (``/sync`` since/next_batch).

    ``received_ms`` (the server's clock when the token was made) dates the
    invites received over federation, which are in no stream.
    """
    return f"s{ordering}" if received_ms is None else f"s{ordering}_{received_ms}"


def topological_token(depth: int, ordering: int) -> str:
    """The token for a place in a room's history (``/messages``)."""
    return f"t{depth}_{ordering}"


def parse_token(token: str) -> Token:
    """("t", depth, stream) or ("s", stream, received_ms or 0).

    Raises:
        MatrixError: 400 M_INVALID_PARAM for anything else.
    """
    try:
        if token.startswith("t"):
            depth, _, ordering = token[1:].partition("_")
            return ("t", int(depth), int(ordering))
        if token.startswith("s"):
            ordering, _, received_ms = token[1:].partition("_")
            return ("s", int(ordering), int(received_ms or 0))
    except ValueError:
        pass
    raise MatrixError(400, "M_INVALID_PARAM", f"Invalid pagination token {token!r}")


class EventServlets:
    """send, state, messages and members."""

    def __init__(self, ctx: ClientContext) -> None:
        self._ctx = ctx
        self._inflight: dict[tuple[str, str], list[Deferred[str]]] = {}

    def endpoints(self) -> list[Endpoint]:
        """Every endpoint of this module."""
        req = self._ctx.auth.required
        eps: list[Endpoint] = []
        eps += client_endpoints("PUT", "/rooms/{roomId}/send/{eventType}/{txnId}", req(self._send))
        eps += client_endpoints(
            "PUT", "/rooms/{roomId}/state/{eventType}/{stateKey}", req(self._put_state)
        )
        eps += client_endpoints("PUT", "/rooms/{roomId}/state/{eventType}", req(self._put_state))
        eps += client_endpoints(
            "GET", "/rooms/{roomId}/state/{eventType}/{stateKey}", req(self._get_state_event)
        )
        eps += client_endpoints(
            "GET", "/rooms/{roomId}/state/{eventType}", req(self._get_state_event)
        )
        eps += client_endpoints("GET", "/rooms/{roomId}/state", req(self._get_state))
        eps += client_endpoints("GET", "/rooms/{roomId}/messages", req(self._messages))
        eps += client_endpoints("GET", "/rooms/{roomId}/members", req(self._members))
        eps += client_endpoints("GET", "/rooms/{roomId}/joined_members", req(self._joined_members))
        eps += client_endpoints("GET", "/rooms/{roomId}/event/{eventId}", req(self._get_event))
        return eps

    async def _require_joined(self, room_id: str, user_id: str) -> None:
        membership = await self._ctx.store.get_membership(room_id, user_id)
        if membership is None or membership[0] != "join":
            raise MatrixError(403, "M_FORBIDDEN", f"User {user_id} not in room {room_id}")

    # --- writes ------------------------------------------------------------

    async def _send(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        room_id = request.path_params["roomId"]
        event_type = request.path_params["eventType"]
        txn_id = request.path_params["txnId"]
        content = _event_content(request)
        txn_key = "\x00".join(("send", room_id, event_type, txn_id))
        key = (requester.token_hash, txn_key)
        waiters = self._inflight.get(key)
        if waiters is not None:
            # The same transaction is being sent right now: share its answer.
            d: Deferred[str] = Deferred()
            waiters.append(d)
            return 200, {"event_id": await d}
        waiters = self._inflight[key] = []
        try:
            event_id = await self._ctx.users.get_client_txn(requester.token_hash, txn_key)
            if event_id is None:
                event = await self._ctx.engine.send_event(
                    room_id, type=event_type, sender=requester.user_id, content=content
                )
                event_id = event.event_id
                await self._ctx.users.store_client_txn(requester.token_hash, txn_key, event_id)
        except BaseException as e:
            del self._inflight[key]
            for w in waiters:
                w.errback(e)
            raise
        del self._inflight[key]
        for w in waiters:
            w.callback(event_id)
        return 200, {"event_id": event_id}

    async def _put_state(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        room_id = request.path_params["roomId"]
        content = _event_content(request)
        event_type = request.path_params["eventType"]
        state_key = request.path_params.get("stateKey", "")
        if event_type == "m.room.member" and state_key != requester.user_id:
            # Judged by the target's membership: not by a partial state's guess.
            await self._ctx.require_full_state(room_id, f"membership of {state_key}")
        event = await self._ctx.engine.send_event(
            room_id,
            type=event_type,
            sender=requester.user_id,
            content=content,
            state_key=state_key,
        )
        return 200, {"event_id": event.event_id}

    # --- reads -------------------------------------------------------------

    async def _get_state_event(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        room_id = request.path_params["roomId"]
        await self._require_joined(room_id, requester.user_id)
        event_id = await self._ctx.store.get_current_state_event_id(
            room_id, request.path_params["eventType"], request.path_params.get("stateKey", "")
        )
        event = None if event_id is None else await self._ctx.store.get_event(event_id)
        if event is None:
            raise MatrixError(404, "M_NOT_FOUND", "Event not found.")
        if request.arg("format") == "event":
            return 200, format_client_event(event)
        return 200, dict(event.content)

    async def _current_state_events(self, room_id: str) -> list[Event]:
        state = await self._ctx.store.get_current_state_ids(room_id)
        events = await self._ctx.store.get_events(state.values())
        return [events[e] for e in sorted(state.values()) if e in events]

    async def _get_state(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        room_id = request.path_params["roomId"]
        await self._require_joined(room_id, requester.user_id)
        return 200, [format_client_event(e) for e in await self._current_state_events(room_id)]

    async def _get_event(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        room_id = request.path_params["roomId"]
        await self._require_joined(room_id, requester.user_id)
        event = await self._ctx.store.get_event(request.path_params["eventId"])
        if event is None or event.room_id != room_id:
            raise MatrixError(404, "M_NOT_FOUND", "Event not found.")
        return 200, format_client_event(event)

    async def _members(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        room_id = request.path_params["roomId"]
        await self._require_joined(room_id, requester.user_id)
        await self._ctx.require_full_state(room_id, "members")
        wanted = request.arg("membership")
        unwanted = request.arg("not_membership")
        chunk = []
        for event in await self._current_state_events(room_id):
            if event.type != "m.room.member":
                continue
            if wanted is not None and event.membership != wanted:
                continue
            if unwanted is not None and event.membership == unwanted:
                continue
            chunk.append(format_client_event(event))
        return 200, {"chunk": chunk}

    async def _joined_members(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        room_id = request.path_params["roomId"]
        await self._require_joined(room_id, requester.user_id)
        await self._ctx.require_full_state(room_id, "joined_members")
        joined: dict[str, dict[str, Any]] = {}
        for event in await self._current_state_events(room_id):
            if event.type == "m.room.member" and event.membership == "join":
                assert event.state_key is not None
                profile = {
                    out: event.content[key]
                    for key, out in (("displayname", "display_name"), ("avatar_url", "avatar_url"))
                    if isinstance(event.content.get(key), str)
                }
                joined[event.state_key] = profile
        return 200, {"joined": joined}

    async def _messages(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        room_id = request.path_params["roomId"]
        await self._require_joined(room_id, requester.user_id)
        direction = request.arg("dir", "b")
        if direction not in ("b", "f"):
            raise MatrixError(400, "M_INVALID_PARAM", "dir must be 'b' or 'f'")
        try:
            limit = int(request.arg("limit") or DEFAULT_MESSAGES_LIMIT)
        except ValueError:
            raise MatrixError(400, "M_INVALID_PARAM", "limit must be an integer") from None
        limit = max(0, min(limit, MAX_MESSAGES_LIMIT))
        from_raw = request.arg("from")
        to_raw = request.arg("to")
        start = await self._topological_from(room_id, from_raw, direction)
        stop = None if to_raw is None else parse_token(to_raw)
        rows = await self._page(room_id, start, limit, direction)
        if direction == "b" and len(rows) < limit and self._ctx.backfill is not None:
            if await self._ctx.store.get_backward_extremities(room_id):
                fetched = await self._ctx.backfill(room_id, max(limit, BACKFILL_LIMIT))
                if fetched:
                    rows = await self._page(room_id, start, limit, direction)
        chunk: list[dict[str, Any]] = []
        last: tuple[int, int] | None = None
        for position, event in rows:
            if stop is not None and _beyond(position, stop, direction):
                break
            chunk.append(format_client_event(event))
            last = position
        response: dict[str, Any] = {
            "start": from_raw or _start_token(start, direction),
            "chunk": chunk,
        }
        reached_stop = len(chunk) < len(rows)
        if last is not None and len(rows) >= limit > 0 and not reached_stop:
            response["end"] = topological_token(*last)
        return 200, response

    async def _page(
        self, room_id: str, start: tuple[int, int] | None, limit: int, direction: str
    ) -> list[tuple[tuple[int, int], Event]]:
        return await self._ctx.store.get_room_events_topological(
            room_id,
            from_token=start,
            limit=limit,
            direction="b" if direction == "b" else "f",
        )

    async def _topological_from(
        self, room_id: str, raw: str | None, direction: str
    ) -> tuple[int, int] | None:
        if raw is None:
            return None
        token = parse_token(raw)
        if token[0] == "t":
            return (token[1], token[2])
        # A stream position: the place of the newest event at or before it.
        ordering = token[1]
        rows = await self._ctx.store.get_room_events_stream(
            room_id, from_ordering=ordering + 1, direction="b", limit=1
        )
        if not rows:
            return None if direction == "f" else (-(2**62), 0)
        stream, event = rows[0]
        # Exclusive bounds: going back from just after it includes it; going
        # forward starts just after it.
        return (event.depth, stream + 1) if direction == "b" else (event.depth, stream)


def _start_token(start: tuple[int, int] | None, direction: str) -> str:
    if start is None:
        return topological_token(2**62, 0) if direction == "b" else topological_token(0, 0)
    return topological_token(*start)


def _beyond(position: tuple[int, int], stop: Token, direction: str) -> bool:
    if stop[0] == "s":
        return position[1] > stop[1] if direction == "f" else position[1] <= stop[1]
    bound = (stop[1], stop[2])
    return position > bound if direction == "f" else position <= bound
