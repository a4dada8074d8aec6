"""Completing a partial-state join in the background.

After a join whose send_join answer omitted the members, the room is usable
but its state lacks most ``m.room.member`` events. ``PartialStateResync``
fetches them and makes the room whole:

1. ``/state_ids`` at our join event from a server in the room: the full state
   before the join (what send_join would have returned without
   ``omit_members``) and its auth chain, as IDs;
2. the events we lack: one by one with ``/event`` when few, else one
   ``/state`` request;
3. the same checks as the join (``EventVerifier``: one key batch, threaded
   signature/hash checks, auth against their auth events, which may be
   events stored by the join);
4. under the room lock: every event received from other servers since our
   join (they were checked against their auth events only) is checked again
   against the full state before it (the full state before our join
   overlaid with its stored, partial-derived state before it); the ones the
   auth rules refuse are flagged rejected (``Store.reject_events``, one
   transaction; leaves them out of the forward extremities);
5. one transaction: the new events as outliers, the current state = the full
   state before the join overlaid with every entry that changed since the
   join (our join, events received while partial) minus the rejected ones,
   the partial-state flag cleared and the ``partial_state_servers`` rows
   (the send_join answer's servers_in_room, also sent our events while
   partial) deleted.

Steps 4 and 5 are two transactions: a crash in between leaves the room
partial, the resync runs again at start-up, and the re-check finds the same
events (already rejected ones are skipped).

Servers are tried in turn; a round that fails everywhere is retried after
``RESYNC_RETRY_SECONDS``, up to ``RESYNC_MAX_ATTEMPTS`` rounds, after which
the room stays partial (logged; resumed at the next start-up). Entries of the
answer pointing at events that fail the checks are left out, as in a join.

Known limits: the state group *before* our join, and the state groups of
events received while partial, stay the partial ones (the store has no way
to rewrite an event's state); the room's current state and its memberships
are complete after the resync. The re-check takes the stored state before
each event as right where it has an entry (a fork resolved against the
partial state is not resolved again), and does not soft-fail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
    FirstError,
    gatherResults,
)
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from matrixfed.auth.rules import check_auth
from matrixfed.auth.selection import CREATE_KEY
from matrixfed.errors import AuthError, RemoteError
from matrixfed.events.identifiers import domain_of
from matrixfed.events.model import Event
from matrixfed.joins.api import (
    EVENT_FETCH_CONCURRENCY,
    MAX_EVENTS_FETCHED_SINGLY,
    RESYNC_MAX_ATTEMPTS,
    RESYNC_RETRY_SECONDS,
    AttemptError,
    JoinFederationClient,
    RoomEngineLike,
)
from matrixfed.joins.verify import EventVerifier
from matrixfed.storage.persist import EventWithContext
from matrixfed.storage.store import Store

__all__ = ["PartialStateResync"]

log = Logger()

StateKey = tuple[str, str]


class PartialStateResync:
    """Background completion of partial-state rooms (module docstring)."""

    def __init__(
        self,
        *,
        store: Store,
        federation_client: JoinFederationClient,
        verifier: EventVerifier,
        clock: Any,
        server_name: str,
        engine: RoomEngineLike,
    ) -> None:
        self._store = store
        self._fed = federation_client
        self._verifier = verifier
        self._clock = clock
        self._server_name = server_name
        self._engine = engine
        self._running: dict[str, Deferred[bool]] = {}

    def start(self, room_id: str, join_event_id: str, servers: Sequence[str]) -> Deferred[bool]:
        """Start (or return the running) resync of ``room_id``.

        Returns:
            Fires with True once the room has its full state, False if it gave up.
        """
        running = self._running.get(room_id)
        if running is not None:
            return _follow(running)
        d = Deferred.fromCoroutine(self._run(room_id, join_event_id, list(servers)))
        self._running[room_id] = d

        def done(result: Any) -> Any:
            self._running.pop(room_id, None)
            return result

        def stopped(failure: Failure) -> bool:
            failure.trap(CancelledError)  # type: ignore[no-untyped-call]
            return False

        d.addBoth(done)
        d.addErrback(stopped)
        return _follow(d)

    def stop(self) -> None:
        """Cancel every running resync (service shutdown); rooms stay partial."""
        for d in list(self._running.values()):
            d.cancel()

    def finished(self, room_id: str) -> Deferred[bool] | None:
        """The running resync of ``room_id``, if any (fires as ``start``'s)."""
        running = self._running.get(room_id)
        return None if running is None else _follow(running)

    async def resume_all(self) -> list[str]:
        """Start the resync of every partial-state room (at start-up)."""
        rooms = await self._store.get_partial_state_room_ids()
        started = []
        for room_id in rooms:
            join_id = await self._our_join(room_id)
            if join_id is None:
                log.warn("partial-state room {room_id} has no join of ours", room_id=room_id)
                continue
            servers = sorted(await self._store.get_joined_servers(room_id))
            servers += sorted(await self._store.get_partial_state_servers(room_id))
            room_server = domain_of(room_id)
            if room_server:
                servers.append(room_server)
            servers = [s for s in dict.fromkeys(servers) if s != self._server_name]
            self.start(room_id, join_id, servers)
            started.append(room_id)
        return started

    async def _our_join(self, room_id: str) -> str | None:
        state = await self._store.get_current_state_ids(room_id)
        local = [
            eid
            for (t, sk), eid in state.items()
            if t == "m.room.member" and domain_of(sk) == self._server_name
        ]
        events = await self._store.get_events(local)
        joins = sorted(
            (e for e in events.values() if e.membership == "join"), key=lambda e: e.depth
        )
        return joins[0].event_id if joins else None

    async def _run(self, room_id: str, join_event_id: str, servers: list[str]) -> bool:
        for attempt in range(1, RESYNC_MAX_ATTEMPTS + 1):
            for server in servers:
                try:
                    await self._resync_from(server, room_id, join_event_id)
                except CancelledError:
                    raise
                except (RemoteError, AttemptError) as e:
                    reason = e.message if isinstance(e, RemoteError) else e.reason
                    log.warn(
                        "resync of {room_id} from {server} failed: {reason}",
                        room_id=room_id,
                        server=server,
                        reason=reason,
                    )
                except Exception:
                    log.failure(
                        "resync of {room_id} from {server} failed", room_id=room_id, server=server
                    )
                else:
                    return True
            if attempt < RESYNC_MAX_ATTEMPTS:
                await deferLater(self._clock, RESYNC_RETRY_SECONDS, lambda: None)
        log.error(
            "giving up the resync of partial-state room {room_id} after {n} rounds",
            room_id=room_id,
            n=RESYNC_MAX_ATTEMPTS,
        )
        return False

    async def _resync_from(self, server: str, room_id: str, join_event_id: str) -> None:
        started = self._clock.seconds()
        rv = await self._store.get_room_version(room_id)
        if rv is None:
            raise AttemptError(f"room {room_id} is unknown")
        ids = await self._fed.get_state_ids(server, room_id, join_event_id)
        pdu_ids = _id_list(ids.get("pdu_ids"))
        auth_ids = _id_list(ids.get("auth_chain_ids"))
        if pdu_ids is None or auth_ids is None:
            raise AttemptError("state_ids answer lacks pdu_ids/auth_chain_ids lists")
        wanted = list(dict.fromkeys(pdu_ids + auth_ids))
        have = await self._store.have_events(wanted)
        missing = [eid for eid in wanted if eid not in have]
        log.info(
            "resync {room_id} from {server}: {state} state entries, {missing} events to fetch",
            room_id=room_id,
            server=server,
            state=len(pdu_ids),
            missing=len(missing),
        )
        pdus = await self._fetch(server, room_id, join_event_id, missing)
        partial_before = await self._store.get_state_before(join_event_id) or {}
        # Possible auth events: those of the chain we have, and the create
        # event (v12 events never cite it).
        known_ids = [eid for eid in auth_ids if eid in have]
        create_id = partial_before.get(CREATE_KEY)
        if create_id is not None:
            known_ids.append(create_id)
        known = await self._store.get_events(known_ids)
        known_rejected = await self._store.get_rejected(list(known))
        batch = await self._verifier.verify(
            pdus, rv, room_id, known=known, known_rejected=known_rejected
        )
        new = {eid: ev for eid, ev in batch.events.items() if eid not in have}

        # The full state before our join, from verified, accepted events only.
        stored_ids = [eid for eid in pdu_ids if eid in have]
        stored = await self._store.get_events(stored_ids)
        stored_rejected = await self._store.get_rejected(stored_ids)
        full_before: dict[StateKey, str] = {}
        for eid in pdu_ids:
            ev: Event | None = new.get(eid) or stored.get(eid)
            if ev is None or not ev.is_state():
                continue
            if eid in batch.rejected or eid in stored_rejected:
                continue
            full_before[ev.state_tuple] = eid
        for key, eid in partial_before.items():
            full_before.setdefault(key, eid)

        items = [
            EventWithContext(
                ev,
                outlier=True,
                rejected_reason=batch.rejected.get(eid),
                encoded=batch.encoded.get(eid),
            )
            for eid, ev in new.items()
        ]
        async with self._engine.room_lock(room_id):
            reasons, replaced = await self._recheck(room_id, join_event_id, full_before)
            current = await self._store.get_current_state_ids(room_id)
            reconciled = dict(full_before)
            for key, eid in _without_rejected(current, replaced).items():
                if partial_before.get(key) != eid:
                    reconciled[key] = eid  # changed since our join: newer than the snapshot
            await self._store.reject_events(room_id, reasons)
            persisted = await self._store.persist_events(
                room_id, items, current_state=reconciled, partial_state=False
            )
        ordering = max((p.stream_ordering for p in persisted), default=None)
        if ordering is not None:
            self._engine.notifier.on_new_events(room_id, ordering)
        log.info(
            "resync {room_id}: full state ({n} entries, {new} new events, {rejected} events"
            " received meanwhile rejected) in {seconds:.2f}s",
            room_id=room_id,
            n=len(reconciled),
            new=len(new),
            rejected=len(reasons),
            seconds=self._clock.seconds() - started,
        )

    async def _recheck(
        self, room_id: str, join_event_id: str, full_before_join: dict[StateKey, str]
    ) -> tuple[dict[str, str], dict[str, str | None]]:
        """Auth-check the remote events received since our join against full state.

        Returns:
            (event_id -> rejection reason, rejected state event_id -> the
            entry its key has without it: the value in the full state before
            it, or None).
        """
        ids = await self._store.get_events_received_after(room_id, join_event_id)
        events = await self._store.get_events(ids)
        reasons: dict[str, str] = {}
        replaced: dict[str, str | None] = {}
        for eid in ids:
            event = events.get(eid)
            if event is None or domain_of(event.sender) == self._server_name:
                continue  # ours were checked against the state we had, and sent
            stored = await self._store.get_state_before(eid) or {}
            full = dict(full_before_join)
            full.update(_without_rejected(stored, replaced))
            try:
                check_auth(event, await self._engine.auth_state_for(event, full))
            except AuthError as e:
                reasons[eid] = f"refused by the full state: {e}"
                if event.is_state():
                    replaced[eid] = full.get(event.state_tuple)
                log.info(
                    "resync {room_id}: {event_id} from {sender} fails the full state: {e}",
                    room_id=room_id,
                    event_id=eid,
                    sender=event.sender,
                    e=e,
                )
        return reasons, replaced

    async def _fetch(
        self, server: str, room_id: str, join_event_id: str, missing: list[str]
    ) -> list[Any]:
        if not missing:
            return []
        if len(missing) > MAX_EVENTS_FETCHED_SINGLY:
            answer = await self._fed.get_state(server, room_id, join_event_id)
            pdus = answer.get("pdus")
            chain = answer.get("auth_chain")
            if not isinstance(pdus, list) or not isinstance(chain, list):
                raise AttemptError("state answer lacks pdus/auth_chain lists")
            return pdus + chain
        semaphore = DeferredSemaphore(EVENT_FETCH_CONCURRENCY)

        async def one(event_id: str) -> Any:
            await semaphore.acquire()
            try:
                return dict(await self._fed.get_event(server, event_id))
            finally:
                semaphore.release()

        try:
            fetched: list[Any] = await gatherResults(
                [Deferred.fromCoroutine(one(eid)) for eid in missing], consumeErrors=True
            )
        except FirstError as e:
            error = e.subFailure.value
            raise (error if error is not None else e) from None
        return fetched


def _without_rejected(
    state: Mapping[StateKey, str], replaced: Mapping[str, str | None]
) -> dict[StateKey, str]:
    """``state`` with every rejected entry replaced by what it overwrote."""
    out: dict[StateKey, str] = {}
    for key, eid in state.items():
        value: str | None = eid
        while value is not None and value in replaced:
            value = replaced[value]
        if value is not None:
            out[key] = value
    return out


def _id_list(value: Any) -> list[str] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return value


def _follow(d: Deferred[bool]) -> Deferred[bool]:
    """A Deferred firing with ``d``'s result without consuming it."""
    out: Deferred[bool] = Deferred()

    def relay(result: Any) -> Any:
        if isinstance(result, BaseException) or hasattr(result, "raiseException"):
            out.errback(result)
        else:
            out.callback(result)
        return result

    d.addBoth(relay)
    return out
