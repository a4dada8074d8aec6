"""Outbound federation: per-destination transaction queues, persisted, with backoff.

``OutboundSender`` delivers every event the room engine appends to every other
server in the room (``send_pdu``) and ephemeral EDUs (``send_edu``) through
``PUT /_matrix/federation/v1/send/{txnId}``.

Design (crash safety). The event is already committed when the engine calls
``send_pdu``; the sender then writes, in one transaction of its own, one
``federation_outbox`` row per destination plus a "queued" marker for the
event, and only then tries to send. A crash between the event's commit and
that write is covered at start-up: every accepted local event (sent by one of
our users) after the recovery position that has no marker is queued again,
for the servers joined to its room just before or after it, and the position
moves to the end of the stream. Outbox rows are deleted only when the
transaction carrying them has been answered, so nothing queued is lost if the
process dies. The store coalesces the queue writes and per-destination
reservations made at the same time into one database transaction.

Transactions. One transaction in flight per destination, at most
``MAX_PDUS_PER_TRANSACTION`` PDUs (oldest first) and ``MAX_EDUS_PER_TRANSACTION``
EDUs. Before sending, the transaction's ID (``<epoch>.<n>``, from a persisted
per-destination counter, never reused) and its PDUs are recorded as "in
flight"; a retry, including the first one after a restart, resends the same ID
with the same PDUs, so the receiver answers it from its transaction cache and
nothing is delivered twice. EDUs live in memory only (typing, receipts: stale
after a restart anyway) and are lost on a crash.

Failures. A transient failure or an unreachable destination keeps the
transaction and retries it after an exponential backoff
(``RETRY_INITIAL_SECONDS`` doubling up to ``RETRY_MAX_SECONDS``); new events
keep accumulating in the outbox meanwhile. A non-transient 4xx for the whole
transaction means the destination will never take it: it is dropped (logged)
and the queue moves on; except 401/408/429 (``RETRIED_CLIENT_ERRORS``), which
usually pass and are retried like transient failures. A 2xx ends the backoff;
per-PDU errors in the answer are the receiver's verdict on those events and
are logged, not retried.
``wake(destination)`` ends a backoff early (e.g. the destination contacted us).

Weak spots: start-up recovery only knows local senders, so an event we append
for a remote user (a send_join) whose queueing a crash interrupted is not
forwarded to the other servers (they catch up via get_missing_events when the
next event arrives). Events the engine appends with no other server in the
room never reach ``send_pdu``, so each start-up looks at them again (finding
no destination); the work is bounded by the events since the last start.
Cost grows with the number of servers: one outbox row per destination per
event and a few statements per destination per transaction (see
bench/bench_sender.py); a destination that stays down keeps every event
queued (no "catch-up" that would send only each room's latest event).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping
from typing import Any, Protocol

import attrs
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.logger import Logger

from matrixfed.errors import RemoteError
from matrixfed.events.model import Event
from matrixfed.federation.client import federation_path
from matrixfed.storage.database import Database
from matrixfed.storage.sender_store import OutboundTransaction, SenderStore

__all__ = [
    "MAX_EDUS_PER_TRANSACTION",
    "MAX_PDUS_PER_TRANSACTION",
    "OutboundSender",
    "RETRY_INITIAL_SECONDS",
    "RETRY_MAX_SECONDS",
]

log = Logger()

# spec (/send): a transaction carries at most 50 PDUs.
MAX_PDUS_PER_TRANSACTION = 50
# spec (/send): and at most 100 EDUs.
MAX_EDUS_PER_TRANSACTION = 100
# EDUs waiting per destination; beyond this the oldest are dropped (typing and
# receipts for a dead server are worthless and must not grow without bound).
MAX_PENDING_EDUS = 1000
# First retry after a failed transaction: most failures are short restarts.
RETRY_INITIAL_SECONDS = 5.0
# Each further failure doubles the wait...
RETRY_MULTIPLIER = 2.0
# ...up to an hour: a dead server is still probed hourly.
RETRY_MAX_SECONDS = 3600.0
# 4xx answers to a whole transaction that are worth retrying: 401 means the
# receiver could not check our signature (usually it could not fetch our keys
# yet), 408 and 429 that it was too busy. Any other 4xx drops the transaction.
RETRIED_CLIENT_ERRORS = frozenset({401, 408, 429})
# Deadline for one /send request: a receiver checking 50 PDUs (and fetching
# missing events for them) may take a while; longer than that counts as a failure.
TRANSACTION_TIMEOUT_SECONDS = 120.0


class Clock(Protocol):
    """What the sender needs of an IReactorTime."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> Any: ...


class TransactionClient(Protocol):
    """The part of ``FederationClient`` the sender uses."""

    async def put_json(
        self,
        destination: str,
        path: str,
        data: Any,
        args: Any = None,
        *,
        timeout: float | None = None,
        ignore_backoff: bool = False,
        max_size: int | None = None,
    ) -> Any: ...


class EventSource(Protocol):
    """The part of the event store the sender reads."""

    async def get_events(self, event_ids: Collection[str]) -> Mapping[str, Event]: ...

    async def get_state_before(self, event_id: str) -> Mapping[tuple[str, str], str] | None: ...

    async def get_state_after(self, event_id: str) -> Mapping[tuple[str, str], str] | None: ...


@attrs.define
class _Destination:
    name: str
    edus: deque[dict[str, Any]] = attrs.field(factory=deque)
    running: bool = False
    # Set when work arrives while the loop runs, so it looks again before stopping.
    dirty: bool = False
    retry_interval: float = 0.0
    # the IDelayedCall of the pending retry
    retry_call: Any = None
    # EDUs of the transaction in flight (kept for its retries).
    inflight_txn_id: str | None = None
    inflight_edus: list[dict[str, Any]] = attrs.field(factory=list)


class OutboundSender:
    """Per-destination transaction queues. See the module docstring."""

    def __init__(
        self,
        *,
        db: Database,
        store: EventSource,
        federation_client: TransactionClient,
        clock: Clock,
        server_name: str,
    ) -> None:
        """Args:
        db: the database holding the sender's tables (schema 0006).
        store: reads events and the servers joined to a room.
        federation_client: sends the transactions (signed as us).
        clock: time for backoff and ``origin_server_ts``.
        server_name: our server name (never a destination; the origin).
        """
        self._queue = SenderStore(db=db)
        self._store = store
        self._client = federation_client
        self._clock = clock
        self._server_name = server_name
        self._destinations: dict[str, _Destination] = {}
        self._loops: set[Deferred[None]] = set()
        self._started = False
        self._stopped = False

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Queue local events a crash left unqueued, then resume every destination
        with PDUs queued or a transaction in flight. Call once the database is open."""
        position = await self._queue.init_position()
        recovered, end = await self._queue.get_unqueued_local_events(self._server_name, position)
        for event in recovered:
            servers = await self._servers_at(event.event_id)
            await self._queue.queue_event(event.event_id, self._others(servers))
        if recovered:
            log.info("sender: queued {n} local events a restart had left unsent", n=len(recovered))
        # Every local event up to the scanned end is queued now; later ones are
        # above the position (queued live, or found by the next start's scan).
        await self._queue.set_position(end)
        self._started = True
        destinations = await self._queue.get_destinations_with_work()
        if destinations:
            log.info("sender: resuming {n} destinations", n=len(destinations))
        for destination in destinations:
            self._kick(destination)

    async def stop(self) -> None:
        """Stop sending: pending retries are cancelled, requests in flight abandoned
        (their transactions stay in flight in the database and are resent by the
        next start)."""
        self._stopped = True
        for dest in self._destinations.values():
            if dest.retry_call is not None and dest.retry_call.active():
                dest.retry_call.cancel()
            dest.retry_call = None
        loops = list(self._loops)
        for d in loops:
            d.cancel()
        await DeferredList(loops, consumeErrors=True)
        await self._queue.idle()

    # -- API --------------------------------------------------------------------------

    async def send_pdu(self, event: Event, destinations: Collection[str]) -> None:
        """Queue a stored event for ``destinations`` (our own name is ignored) and
        start sending. Returns once the queue entries are persisted.

        Raises:
            LookupError: the event is not stored.
        """
        others = self._others(destinations)
        queued = await self._queue.queue_event(event.event_id, others)
        if not queued:
            return
        for destination in others:
            self._kick(destination)

    def send_edu(self, destination: str, edu_type: str, content: Mapping[str, Any]) -> None:
        """Send an EDU (kept in memory: lost if the process stops first)."""
        if destination == self._server_name:
            return
        dest = self._dest(destination)
        if len(dest.edus) >= MAX_PENDING_EDUS:
            dest.edus.popleft()
            log.warn(
                "sender: too many EDUs pending for {destination}; dropped the oldest",
                destination=destination,
            )
        dest.edus.append({"edu_type": edu_type, "content": dict(content)})
        self._kick(destination)

    def wake(self, destination: str) -> None:
        """Retry ``destination`` now instead of waiting for its backoff to end."""
        dest = self._destinations.get(destination)
        if dest is None:
            return
        dest.retry_interval = 0.0
        if dest.retry_call is not None and dest.retry_call.active():
            dest.retry_call.cancel()
            dest.retry_call = None
            self._kick(destination)

    def retry_interval(self, destination: str) -> float:
        """Seconds of the current backoff of ``destination`` (0: not backing off)."""
        dest = self._destinations.get(destination)
        return dest.retry_interval if dest is not None else 0.0

    # -- internals ---------------------------------------------------------------------

    async def _servers_at(self, event_id: str) -> set[str]:
        """Servers with a joined user just before or just after the event."""
        member_ids: set[str] = set()
        for state in (
            await self._store.get_state_before(event_id),
            await self._store.get_state_after(event_id),
        ):
            if state is not None:
                member_ids.update(eid for (t, _), eid in state.items() if t == "m.room.member")
        members = await self._store.get_events(member_ids)
        return {
            ev.state_key.split(":", 1)[1]
            for ev in members.values()
            if ev.membership == "join" and ev.state_key is not None and ":" in ev.state_key
        }

    def _others(self, destinations: Collection[str]) -> list[str]:
        return sorted({d for d in destinations if d != self._server_name})

    def _dest(self, destination: str) -> _Destination:
        dest = self._destinations.get(destination)
        if dest is None:
            dest = self._destinations[destination] = _Destination(destination)
        return dest

    def _kick(self, destination: str) -> None:
        dest = self._dest(destination)
        if self._stopped or not self._started:
            return
        if dest.running:
            dest.dirty = True
            return
        if dest.retry_call is not None and dest.retry_call.active():
            return  # backing off: the retry will pick the new work up
        dest.running = True
        d = Deferred.fromCoroutine(self._run(dest))
        self._loops.add(d)

        def done(result: object) -> None:
            self._loops.discard(d)
            dest.running = False

        d.addBoth(done)

    def _retry(self, dest: _Destination) -> None:
        dest.retry_call = None
        self._kick(dest.name)

    async def _run(self, dest: _Destination) -> None:
        # The transaction just delivered (or dropped): finished together with
        # reserving the next one, in one database round. If the loop ends before
        # that, it stays in flight and is resent (same ID) by the next start.
        finished: str | None = None
        try:
            while not self._stopped:
                dest.dirty = False
                txn = await self._queue.next_transaction(
                    dest.name,
                    MAX_PDUS_PER_TRANSACTION,
                    now_ms=int(self._clock.seconds() * 1000),
                    allow_empty=bool(dest.edus),
                    finished_txn_id=finished,
                )
                finished = None
                if txn is None:
                    if dest.dirty:
                        continue
                    return
                if not await self._send(dest, txn):
                    return
                finished = txn.txn_id
        except CancelledError:
            return
        except Exception:
            # A database failure: keep the queue, try again later.
            log.failure("sender: queue for {destination} failed", destination=dest.name)
            self._schedule_retry(dest)

    async def _send(self, dest: _Destination, txn: OutboundTransaction) -> bool:
        """Send one transaction; True if done with it (delivered or dropped)."""
        if dest.inflight_txn_id != txn.txn_id:
            dest.inflight_txn_id = txn.txn_id
            dest.inflight_edus = (
                []
                if txn.resumed
                else [
                    dest.edus.popleft()
                    for _ in range(min(len(dest.edus), MAX_EDUS_PER_TRANSACTION))
                ]
            )
        events = await self._store.get_events([eid for _, eid in txn.pdus])
        pdus = [dict(events[eid].pdu) for _, eid in txn.pdus if eid in events]
        body = {
            "origin": self._server_name,
            "origin_server_ts": int(self._clock.seconds() * 1000),
            "pdus": pdus,
            "edus": dest.inflight_edus,
        }
        path = federation_path("/_matrix/federation/v1/send/{}", txn.txn_id)
        try:
            answer = await self._client.put_json(
                dest.name, path, body, timeout=TRANSACTION_TIMEOUT_SECONDS, ignore_backoff=True
            )
        except RemoteError as e:
            if (
                e.reachable
                and not e.transient
                and e.code is not None
                and 400 <= e.code < 500
                and e.code not in RETRIED_CLIENT_ERRORS
            ):
                log.warn(
                    "sender: {destination} refused transaction {txn_id} ({n} PDUs) for good:"
                    " {error}; dropped",
                    destination=dest.name,
                    txn_id=txn.txn_id,
                    n=len(pdus),
                    error=str(e),
                )
                self._done(dest)
                return True
            log.info(
                "sender: transaction {txn_id} to {destination} failed: {error}",
                txn_id=txn.txn_id,
                destination=dest.name,
                error=str(e),
            )
            self._schedule_retry(dest)
            return False
        self._log_pdu_errors(dest.name, answer)
        self._done(dest)
        dest.retry_interval = 0.0
        return True

    @staticmethod
    def _done(dest: _Destination) -> None:
        dest.inflight_txn_id = None
        dest.inflight_edus = []

    def _schedule_retry(self, dest: _Destination) -> None:
        if self._stopped:
            return
        if dest.retry_interval <= 0:
            dest.retry_interval = RETRY_INITIAL_SECONDS
        else:
            dest.retry_interval = min(dest.retry_interval * RETRY_MULTIPLIER, RETRY_MAX_SECONDS)
        dest.retry_call = self._clock.callLater(dest.retry_interval, self._retry, dest)

    @staticmethod
    def _log_pdu_errors(destination: str, answer: Any) -> None:
        # v1 servers answered [200, {...}]; both shapes carry a "pdus" map.
        if isinstance(answer, list) and len(answer) == 2:
            answer = answer[1]
        results = answer.get("pdus") if isinstance(answer, dict) else None
        if not isinstance(results, dict):
            return
        for event_id, result in results.items():
            if isinstance(result, dict) and "error" in result:
                log.info(
                    "sender: {destination} rejected {event_id}: {error}",
                    destination=destination,
                    event_id=event_id,
                    error=result["error"],
                )
