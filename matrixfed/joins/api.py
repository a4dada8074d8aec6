"""What the join coordinator needs and what it returns: interfaces, values, errors.

The coordinator (``matrixfed.joins.coordinator``) is protocol logic written
against the small interfaces below, so it is tested without HTTP:

- ``JoinFederationClient``: the outbound calls of the handshake, with the
  responses already normalised (v1/v2 shapes merged). ``FederationJoinClient``
  in ``matrixfed.joins.fedclient`` implements it over HTTPS.
- ``KeyBatchFetcher``: ``KeyRing.get_keys_batch``.
- ``RoomEngineLike``: the room engine (local appends, the per-room lock,
  the notifier, auth state and state resolution for the resync).

Errors: ``JoinFailed`` is a ``MatrixError`` that the client API renders as is;
it carries one ``AttemptFailure`` per server tried. ``AttemptError`` is the
internal "this candidate did not work, try the next" signal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs
from twisted.internet.defer import DeferredLock

from matrixfed.errors import MatrixError
from matrixfed.events.keys import ServerVerifyKey
from matrixfed.events.model import Event
from matrixfed.events.room_versions import RoomVersion

# --- limits and timeouts -----------------------------------------------------

# make_join/make_leave/query are small answers from a live server.
MAKE_JOIN_TIMEOUT_SECONDS = 60.0
# send_join of a large room: the resident builds and sends tens of MB (Synapse
# takes minutes for the biggest public rooms).
SEND_JOIN_TIMEOUT_SECONDS = 600.0
# /state of a whole room during a partial-state resync: as large as send_join.
STATE_FETCH_TIMEOUT_SECONDS = 600.0
# Events verified per thread-pool job: big enough to amortise the hand-off,
# small enough for steady progress reports and fair sharing of the reactor.
VERIFY_CHUNK_SIZE = 1000
# Smallest chunk when a batch is split for the workers: below this the
# hand-off to the pool costs more than the parallelism brings.
MIN_VERIFY_CHUNK = 100
# Batches of at least this many PDUs are checked in worker processes (when
# the server has them): below it, a thread finishes before the hand-off of
# the PDUs to another process pays for itself.
PROCESS_POOL_MIN_EVENTS = 1000
# Progress lines in the log: at most one per this many verified events.
PROGRESS_LOG_EVERY = 5000
# Missing state events fetched one by one with /event up to this many; more
# use one /state request.
MAX_EVENTS_FETCHED_SINGLY = 50
# /event requests in flight at once during a resync.
EVENT_FETCH_CONCURRENCY = 10
# Seconds between resync rounds of a partial-state room, and how many rounds
# at that pace (a server restarting, a network blip).
RESYNC_RETRY_SECONDS = 30.0
RESYNC_MAX_ATTEMPTS = 5
# After those, one round per this many seconds until it works: a room left
# partial judges received events by their auth events only, so it never
# stops trying (until shutdown; resumed at start-up).
RESYNC_SLOW_RETRY_SECONDS = 600.0


# --- interfaces --------------------------------------------------------------


class JoinFederationClient(Protocol):
    """The outbound federation calls of joining and leaving.

    Every method raises ``matrixfed.errors.RemoteError`` when the call fails
    (unreachable, timeout, error answer, or an answer of the wrong shape).
    """

    async def query_directory(self, server: str, room_alias: str) -> tuple[str, list[str]]:
        """``/query/directory``: (room_id, servers) for an alias."""
        ...

    async def make_join(
        self, server: str, room_id: str, user_id: str, versions: Sequence[str]
    ) -> Mapping[str, Any]:
        """``make_join``: the response body (``room_version``, ``event``)."""
        ...

    async def send_join(
        self,
        server: str,
        room_id: str,
        event_id: str,
        pdu: Mapping[str, Any],
        *,
        omit_members: bool,
    ) -> Mapping[str, Any]:
        """``send_join`` (v2, v1 fallback): the v2-shaped response body."""
        ...

    async def make_leave(self, server: str, room_id: str, user_id: str) -> Mapping[str, Any]:
        """``make_leave``: the response body (``room_version``, ``event``)."""
        ...

    async def send_leave(
        self, server: str, room_id: str, event_id: str, pdu: Mapping[str, Any]
    ) -> None:
        """``send_leave`` (v2, v1 fallback)."""
        ...

    async def get_state_ids(self, server: str, room_id: str, event_id: str) -> Mapping[str, Any]:
        """``/state_ids``: ``pdu_ids`` and ``auth_chain_ids`` at an event."""
        ...

    async def get_state(self, server: str, room_id: str, event_id: str) -> Mapping[str, Any]:
        """``/state``: ``pdus`` and ``auth_chain`` at an event."""
        ...

    async def get_event(self, server: str, event_id: str) -> Mapping[str, Any]:
        """``/event``: the one PDU."""
        ...


class KeyBatchFetcher(Protocol):
    """Fetches verify keys of many servers in one batch (``KeyRing``)."""

    async def get_keys_batch(
        self, requests: Mapping[str, Mapping[str, int]]
    ) -> dict[str, dict[str, ServerVerifyKey]]: ...


class NotifierLike(Protocol):
    """Wakes waiting clients (``matrixfed.rooms.notifier.Notifier``)."""

    def on_new_events(self, room_id: str, max_stream_ordering: int) -> None: ...

    def on_user_event(self, user_id: str, ordering: int) -> None: ...


class RoomEngineLike(Protocol):
    """What the coordinator needs of the room engine (``RoomEngine``)."""

    async def send_event(
        self,
        room_id: str,
        *,
        type: str,
        sender: str,
        content: Mapping[str, Any],
        state_key: str | None = None,
        redacts: str | None = None,
    ) -> Event:
        """Append a local event (a join or leave in a room we are in)."""
        ...

    def room_lock(self, room_id: str) -> DeferredLock:
        """The per-room lock every append of the room holds."""
        ...

    async def auth_state_for(
        self, event: Event, state_ids: Mapping[tuple[str, str], str]
    ) -> dict[tuple[str, str], Event]:
        """The auth-relevant events of ``state_ids`` for ``event`` (create included)."""
        ...

    async def resolve_state(
        self, rv: RoomVersion, sets: Sequence[Mapping[tuple[str, str], str]]
    ) -> dict[tuple[str, str], str]:
        """State resolution over ``sets`` (their events and auth chains are stored)."""
        ...

    @property
    def notifier(self) -> NotifierLike: ...


class ThreadRunner(Protocol):
    """Runs a pure function on a thread pool (``deferToThreadPool`` in production)."""

    async def run(self, func: Any, *args: Any) -> Any: ...


# --- values ------------------------------------------------------------------


@attrs.frozen(slots=True)
class JoinProgress:
    """One progress report: ``stage`` with ``done`` of ``total`` units.

    Stages, in order: "make_join", "send_join", "keys", "verify", "auth",
    "persist", "joined" (total 1 except for "verify" and "auth": events).
    """

    stage: str
    done: int
    total: int


@attrs.frozen(slots=True)
class JoinResult:
    """The outcome of a successful join.

    Attributes:
        room_id: the room joined.
        event_id: our join event.
        server: the resident server that let us in (None for a local join).
        partial_state: the room was joined with partial state (members
            are being fetched in the background).
    """

    room_id: str
    event_id: str
    server: str | None
    partial_state: bool = False


@attrs.frozen(slots=True)
class LeaveResult:
    """The outcome of a leave (or an invite rejection).

    Attributes:
        room_id: the room.
        event_id: our leave event.
        server: the resident server used (None for a local leave).
    """

    room_id: str
    event_id: str
    server: str | None


@attrs.frozen(slots=True)
class AttemptFailure:
    """Why one candidate server could not be used."""

    server: str
    reason: str
    # HTTP status / errcode the server answered with, if it answered.
    code: int | None = None
    errcode: str | None = None


class AttemptError(Exception):
    """One candidate failed; the coordinator moves to the next.

    Attributes:
        reason: a one-line explanation for the user/operator.
        code, errcode: the remote answer, if the server answered with an error.
    """

    def __init__(self, reason: str, *, code: int | None = None, errcode: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.errcode = errcode


class JoinFailed(MatrixError):
    """No candidate server let us join (or leave); says why for each one.

    The status follows what the residents said, so the client API can pass
    it through: every server refused with 403 -> 403 ``M_FORBIDDEN``; no
    server to ask, or all said 404 -> 404 ``M_NOT_FOUND``; the room's version
    is not supported -> 400 ``M_INCOMPATIBLE_ROOM_VERSION``; anything else
    (unreachable, bad answers) -> 502 ``M_UNKNOWN``. The JSON body carries
    ``failures``: a list of {server, reason}.
    """

    def __init__(self, action: str, target: str, failures: Sequence[AttemptFailure]) -> None:
        self.failures = tuple(failures)
        code, errcode = _status_for(self.failures)
        if failures:
            detail = "; ".join(f"{f.server}: {f.reason}" for f in self.failures)
            message = f"cannot {action} {target}: {detail}"
        else:
            message = f"cannot {action} {target}: no server to ask (give a server name)"
        super().__init__(
            code,
            errcode,
            message,
            failures=[{"server": f.server, "reason": f.reason} for f in self.failures],
        )


def _status_for(failures: Sequence[AttemptFailure]) -> tuple[int, str]:
    if not failures:
        return 404, "M_NOT_FOUND"
    errcodes = {f.errcode for f in failures}
    if errcodes == {"M_FORBIDDEN"}:
        return 403, "M_FORBIDDEN"
    if errcodes == {"M_NOT_FOUND"}:
        return 404, "M_NOT_FOUND"
    if errcodes == {"M_INCOMPATIBLE_ROOM_VERSION"}:
        return 400, "M_INCOMPATIBLE_ROOM_VERSION"
    return 502, "M_UNKNOWN"
