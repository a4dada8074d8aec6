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
4. under the room lock, ``_reconcile``: the state at our join and at every
   event stored after it is computed again from the full state before the
   join, walking them in the order they were stored: the state before an
   event is the state after its prev_events (resolved when they differ).
   Events of other servers (checked against their auth events only while
   partial) are checked again: refused by the full state before them, they
   are rejected; refused by the current state they arrived in (the state of
   the forward extremities at that point of the walk), soft-failed. The
   current state is the state of the forward extremities at the end;
5. ONE transaction (``Store.complete_partial_state``): the new events as
   outliers; the rejected and soft-failed flags (out of the forward
   extremities); our join and each later event pointed at state groups
   holding the full state before and after it (so ``/state_ids`` and
   ``/state`` at them, state resolution over them and the client API's
   state at them are complete); the current state; the partial-state flag
   cleared and the ``partial_state_servers`` rows deleted; and the change
   of current state recorded at a position of the events stream
   (``storage.state_deltas``), so an incremental /sync from a token of the
   partial phase lists the members that were added.

A crash before the commit leaves the room partial and nothing of step 5
written; the resync runs again at start-up.

Servers are tried in turn; a round that fails everywhere is retried after
``RESYNC_RETRY_SECONDS``, and after ``RESYNC_MAX_ATTEMPTS`` such rounds
every ``RESYNC_SLOW_RETRY_SECONDS`` (logged) until it works or the service
stops (resumed at the next start-up). Entries of the
answer pointing at events that fail the checks are left out, as in a join.

Known limits: the full state comes from one server's ``/state_ids`` at our
join, checked like a join's answer (signatures, hashes, auth chain) but not
compared with a second server. A prev_event of a partial-era event that we
never stored (its state came from another server's ``/state_ids`` when the
event arrived) contributes the event's stored state before it to the walk.
Our own events are not re-judged: they were sent, the other servers judge
them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs
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
from matrixfed.events.identifiers import domain_of, is_valid_server_name
from matrixfed.events.model import Event
from matrixfed.events.room_versions import RoomVersion
from matrixfed.joins.api import (
    EVENT_FETCH_CONCURRENCY,
    MAX_EVENTS_FETCHED_SINGLY,
    RESYNC_MAX_ATTEMPTS,
    RESYNC_RETRY_SECONDS,
    RESYNC_SLOW_RETRY_SECONDS,
    AttemptError,
    JoinFederationClient,
    RoomEngineLike,
)
from matrixfed.joins.verify import EventVerifier
from matrixfed.storage.partial_state import StateRewrite
from matrixfed.storage.persist import EventWithContext
from matrixfed.storage.store import Store

__all__ = ["MAX_PARTIAL_STATE_SERVERS", "PartialStateResync", "partial_state_servers"]

log = Logger()

StateKey = tuple[str, str]

# servers_in_room entries used at most: about twice the servers of the
# largest public rooms; bounds the extra fan-out a resident's list can cause.
MAX_PARTIAL_STATE_SERVERS = 20_000


def partial_state_servers(
    resident: str, servers_in_room: Sequence[str], server_name: str
) -> list[str]:
    """The servers a partial-state room's events also go to until the resync.

    The send_join answer's ``servers_in_room`` is the resident's word: it
    cannot be checked before the resync (the members that would prove it are
    what was omitted). Taking it costs nothing but fan-out: our events go to
    servers that may not be in the room, which learn nothing the resident
    could not forward to them itself (it receives every event of ours), and
    a server outside the room rejects them. The list also only orders who
    is asked for the full state, whose answer is checked like a join's. So
    it is bounded, not trusted: the resident first, valid server names
    only, ourselves left out, at most ``MAX_PARTIAL_STATE_SERVERS``; dropped
    when the resync completes.
    """
    named = [s for s in servers_in_room if is_valid_server_name(s)]
    servers = [s for s in dict.fromkeys([resident, *named]) if s != server_name]
    return servers[:MAX_PARTIAL_STATE_SERVERS]


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
        self._runs: dict[str, _Run] = {}

    def start(self, room_id: str, join_event_id: str, servers: Sequence[str]) -> Deferred[bool]:
        """Start (or return the running) resync of ``room_id``.

        Returns:
            Fires with True once the room has its full state, False if
            ``stop()`` ended it first.
        """
        running = self._running.get(room_id)
        if running is not None:
            return _follow(running)
        run = _Run()
        d = Deferred.fromCoroutine(self._run(room_id, join_event_id, list(servers), run))
        self._running[room_id] = d
        self._runs[room_id] = run

        def done(result: Any) -> Any:
            if self._running.get(room_id) is d:
                del self._running[room_id]
                del self._runs[room_id]
            return result

        def stopped(failure: Failure) -> bool:
            failure.trap(CancelledError)  # type: ignore[no-untyped-call]
            return False

        d.addBoth(done)
        d.addErrback(stopped)
        return _follow(d)

    def stop(self) -> None:
        """Cancel every running resync (service shutdown); rooms stay partial."""
        for run in self._runs.values():
            # A request that was under way may fail with its own error rather
            # than CancelledError: the run must not go on to the next server.
            run.stopped = True
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

    async def _run(self, room_id: str, join_event_id: str, servers: list[str], run: _Run) -> bool:
        attempt = 0
        while True:
            attempt += 1
            for server in servers:
                if run.stopped:
                    raise CancelledError()
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
            if run.stopped:
                raise CancelledError()
            if attempt == RESYNC_MAX_ATTEMPTS:
                log.error(
                    "partial-state room {room_id} still partial after {n} rounds; trying"
                    " again every {slow:.0f} s",
                    room_id=room_id,
                    n=attempt,
                    slow=RESYNC_SLOW_RETRY_SECONDS,
                )
            pause = (
                RESYNC_RETRY_SECONDS if attempt < RESYNC_MAX_ATTEMPTS else RESYNC_SLOW_RETRY_SECONDS
            )
            await deferLater(self._clock, pause, lambda: None)

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
            if ev is None or not ev.is_state() or ev.room_id != room_id:
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
            era = await self._reconcile(room_id, rv, join_event_id, full_before)
            persisted, position = await self._store.complete_partial_state(
                room_id,
                items,
                join_event_id=join_event_id,
                state_before_join=full_before,
                rewrites=era.rewrites,
                rejected=era.rejected,
                soft_failed=era.soft_failed,
                current_state=era.current,
            )
        orderings = [p.stream_ordering for p in persisted]
        if position is not None:
            orderings.append(position)
        if orderings:
            # Wakes /sync: the state change is at ``position`` (state_deltas).
            self._engine.notifier.on_new_events(room_id, max(orderings))
        log.info(
            "resync {room_id}: full state ({n} entries, {new} new events; of {era} events"
            " stored since the join, {rejected} rejected and {soft} soft-failed by the full"
            " state) in {seconds:.2f}s",
            room_id=room_id,
            n=len(era.current),
            new=len(new),
            era=len(era.rewrites) - 1,
            rejected=len(era.rejected),
            soft=len(era.soft_failed),
            seconds=self._clock.seconds() - started,
        )

    async def _reconcile(
        self, room_id: str, rv: RoomVersion, join_event_id: str, base: Mapping[StateKey, str]
    ) -> _Era:
        """Recompute the state at our join and every event stored after it.

        ``base`` is the full state before our join. Walking the events in
        the order they were stored (prev_events first), the state before
        each is the state after its prev_events (resolved when they differ;
        a prev_event from before our join brings its stored state, else the
        event's stored state). Events of other servers are checked again:
        failing the state before them, they are rejected; failing the
        current state they arrived in (the state of the forward extremities
        at that point of the walk), soft-failed. Every state is held as
        changes relative to ``base`` (``_changes``), so the walk costs memory
        in proportion to the changes, not to the room's size.
        """
        join = await self._store.get_event(join_event_id)
        if join is None:
            raise AttemptError(f"our join {join_event_id} is not stored")
        era_events = await self._store.get_partial_era_events(room_id, join_event_id)
        events = await self._store.get_events(e.event_id for e in era_events)
        join_after = _changes(base, {**base, join.state_tuple: join_event_id})
        before: dict[str, Changes] = {join_event_id: {}}
        after: dict[str, Changes] = {join_event_id: join_after}
        extremities: dict[str, Changes] = {join_event_id: join_after}
        current = join_after
        rejected: dict[str, str] = {}
        soft_failed: list[str] = []
        for era_event in era_events:
            eid = era_event.event_id
            event = events.get(eid)
            if event is None:
                continue
            state = await self._state_before(rv, base, event, after)
            reason = era_event.rejected_reason
            soft = era_event.soft_failed
            # Ours were checked against the state we had, and sent: other
            # servers judge them; we cannot take them back.
            if reason is None and domain_of(event.sender) != self._server_name:
                reason = await self._auth_failure(event, base, state)
                if reason is not None:
                    rejected[eid] = f"refused by the full state: {reason}"
                elif not soft and state != current:
                    soft = await self._auth_failure(event, base, current) is not None
                    if soft:
                        soft_failed.append(eid)
                if reason is not None or soft:
                    log.info(
                        "resync {room_id}: {event_id} from {sender} {verdict} by the full state",
                        room_id=room_id,
                        event_id=eid,
                        sender=event.sender,
                        verdict="rejected" if reason is not None else "soft-failed",
                    )
            state_after = state
            if reason is None and event.is_state():
                state_after = _with(base, state, event.state_tuple, eid)
            before[eid] = state
            after[eid] = state_after
            if reason is None and not soft:
                for prev in event.prev_event_ids:
                    extremities.pop(prev, None)
                extremities[eid] = state_after
                current = await self._resolve(rv, base, list(extremities.values()))
        rewrites = [StateRewrite(eid, before[eid], after[eid]) for eid in before]
        return _Era(rewrites, rejected, soft_failed, _full(base, current))

    async def _state_before(
        self,
        rv: RoomVersion,
        base: Mapping[StateKey, str],
        event: Event,
        after: Mapping[str, Changes],
    ) -> Changes:
        sets: list[Changes] = []
        own_added = False
        for prev in dict.fromkeys(event.prev_event_ids):
            if prev in after:
                sets.append(after[prev])
                continue
            stored = await self._store.get_state_after(prev)
            if stored is not None:
                sets.append(_changes(base, stored))
            elif not own_added:
                # A prev_event we never had: the event's state came from
                # another server's /state_ids then, not from partial state.
                own_added = True
                own = await self._store.get_state_before(event.event_id) or {}
                sets.append(_changes(base, own))
        return await self._resolve(rv, base, sets)

    async def _resolve(
        self, rv: RoomVersion, base: Mapping[StateKey, str], sets: Sequence[Changes]
    ) -> Changes:
        if not sets:
            return {}
        if all(s == sets[0] for s in sets[1:]):
            return sets[0]
        resolved = await self._engine.resolve_state(rv, [_full(base, s) for s in sets])
        return _changes(base, resolved)

    async def _auth_failure(
        self, event: Event, base: Mapping[StateKey, str], changes: Changes
    ) -> str | None:
        try:
            check_auth(event, await self._engine.auth_state_for(event, _Layered(base, changes)))
        except AuthError as e:
            return str(e)
        return None

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


Changes = dict[StateKey, str | None]


@attrs.define(slots=True)
class _Run:
    """One running resync; ``stop()`` sets ``stopped``."""

    stopped: bool = False


@attrs.frozen(slots=True)
class _Era:
    """What ``_reconcile`` found (see ``Store.complete_partial_state``)."""

    rewrites: list[StateRewrite]
    rejected: dict[str, str]
    soft_failed: list[str]
    current: dict[StateKey, str]


def _changes(base: Mapping[StateKey, str], state: Mapping[StateKey, str]) -> Changes:
    """``state`` as changes of ``base`` (None: key absent), with no entry equal to ``base``."""
    out: Changes = {k: v for k, v in state.items() if base.get(k) != v}
    for k in base:
        if k not in state:
            out[k] = None
    return out


def _with(base: Mapping[StateKey, str], changes: Changes, key: StateKey, event_id: str) -> Changes:
    """``changes`` with ``key`` set to ``event_id`` (kept free of entries equal to ``base``)."""
    out = dict(changes)
    if base.get(key) == event_id:
        out.pop(key, None)
    else:
        out[key] = event_id
    return out


def _full(base: Mapping[StateKey, str], changes: Changes) -> dict[StateKey, str]:
    state = dict(base)
    for k, v in changes.items():
        if v is None:
            state.pop(k, None)
        else:
            state[k] = v
    return state


class _Layered(Mapping[StateKey, str]):
    """The state ``base`` + ``changes`` without copying ``base`` (auth lookups)."""

    def __init__(self, base: Mapping[StateKey, str], changes: Changes) -> None:
        self._base = base
        self._changes = changes

    def __getitem__(self, key: StateKey) -> str:
        if key in self._changes:
            value = self._changes[key]
            if value is None:
                raise KeyError(key)
            return value
        return self._base[key]

    def __iter__(self) -> Iterator[StateKey]:
        return iter(_full(self._base, self._changes))

    def __len__(self) -> int:
        return len(_full(self._base, self._changes))


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
