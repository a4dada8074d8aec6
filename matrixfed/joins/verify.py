"""Verifying the events a resident hands us (send_join, /state) before storing them.

``EventVerifier.verify`` runs the spec's "Checks performed on receipt of a
PDU" steps 1-4 over a whole batch, fast:

1. every signing key the batch needs is fetched in ONE ``get_keys_batch``
   call (the keyring goes to notaries for origins it cannot reach);
2. format, signatures and content hashes are checked by
   ``events.checks.check_pdus`` in chunks while the reactor keeps serving:
   in worker processes for big batches (``procpool.py``: every core, no
   GIL), on the thread pool otherwise; a bad format or signature drops the
   event, a hash mismatch keeps its redacted form. The stored JSON text of
   each event is made there too, off the persist's path;
3. the auth rules are applied to each event against its own auth events in
   topological order of the auth DAG (``authorise_events``, pure): an event
   citing an unknown or rejected auth event, or failing the rules, is
   rejected (kept, flagged, never state).

``assemble_join`` (pure) then checks what is specific to a join: the create
event and room version, the state map (entries pointing at dropped or
rejected events removed), the resident's copy of our join event, and that
the resulting state authorises the join. Any problem there is an
``AttemptError``: the coordinator tries the next server and stores nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from matrixfed.auth.rules import AUTHORISING_USER, check_auth, check_auth_events_refs
from matrixfed.auth.selection import CREATE_KEY
from matrixfed.errors import AuthError, EventSizeError, InvalidEventError, SignatureError
from matrixfed.events.hashing import room_id_from_create_event_id
from matrixfed.events.model import Event
from matrixfed.events.room_versions import RoomVersion
from matrixfed.events.signing import needed_keys_for_pdus
from matrixfed.events.verdicts import check_and_encode
from matrixfed.joins.api import (
    MIN_VERIFY_CHUNK,
    PROCESS_POOL_MIN_EVENTS,
    PROGRESS_LOG_EVERY,
    VERIFY_CHUNK_SIZE,
    AttemptError,
    JoinProgress,
    KeyBatchFetcher,
    ThreadRunner,
)
from matrixfed.joins.procpool import ProcessCheckPool, ProcessPoolUnavailable
from matrixfed.joins.template import ROOM_VERSION_IF_MISSING, same_event_but_signatures

log = Logger()

StateKey = tuple[str, str]
ProgressFn = Callable[[JoinProgress], None]


@attrs.frozen(slots=True)
class VerifiedBatch:
    """The events of a batch that survived steps 1-3.

    Attributes:
        events: event ID -> event (redacted form where the hash did not
            match), accepted and rejected alike, in the order first seen.
        rejected: event ID -> why the auth rules (or a size rule) rejected it.
        dropped: event ID (or a description) -> why it was dropped.
        key_servers: how many servers' keys were asked for.
        ids: for each input PDU, in order, its event ID (None if dropped).
        encoded: event ID -> stored JSON text of the kept form, made where
            it was checked (worker processes, threads) so the persist does
            not have to.
    """

    events: dict[str, Event]
    rejected: dict[str, str]
    dropped: dict[str, str]
    key_servers: int
    ids: list[str | None]
    encoded: dict[str, str] = attrs.field(factory=dict)


class EventVerifier:
    """Checks batches of received PDUs of one room version (module docstring)."""

    def __init__(
        self,
        *,
        keyring: KeyBatchFetcher,
        runner: ThreadRunner,
        workers: int = 2,
        chunk_size: int = VERIFY_CHUNK_SIZE,
        process_pool: ProcessCheckPool | None = None,
        process_pool_min_events: int = PROCESS_POOL_MIN_EVENTS,
    ) -> None:
        """Create the verifier.

        Args:
            keyring: fetches keys in one batch.
            runner: runs pure functions on a thread pool.
            workers: chunks verified at the same time (the CPU count).
            chunk_size: PDUs per thread-pool job.
            process_pool: worker processes for batches of at least
                ``process_pool_min_events`` PDUs; None: threads only.
        """
        self._keyring = keyring
        self._runner = runner
        self._workers = max(1, workers)
        self._chunk_size = max(1, chunk_size)
        self._pool = process_pool
        self._pool_min = process_pool_min_events

    async def verify(
        self,
        pdus: Sequence[Any],
        room_version: RoomVersion,
        room_id: str,
        *,
        known: Mapping[str, Event] | None = None,
        known_rejected: Iterable[str] = (),
        progress: ProgressFn | None = None,
    ) -> VerifiedBatch:
        """Steps 1-3 of the module docstring over ``pdus`` (duplicates allowed).

        Args:
            pdus: raw PDUs as received (untrusted).
            room_version: the room's version.
            room_id: events of any other room are dropped.
            known: events stored before that the batch may cite as auth events.
            known_rejected: IDs among ``known`` that were rejected.
            progress: receives ("keys", ...), ("verify", done, total), ("auth", ...).
        """
        report = progress or _ignore
        # A walk over every PDU: on the pool too, so a huge join never stalls the reactor.
        needed: dict[str, dict[str, int]] = await self._runner.run(
            needed_keys_for_pdus, pdus, room_version
        )
        report(JoinProgress("keys", 0, len(needed)))
        keys = await self._keyring.get_keys_batch(needed)
        found = sum(1 for server_keys in keys.values() if server_keys)
        log.info(
            "join {room_id}: keys fetched for {found} of {servers} servers",
            room_id=room_id,
            found=found,
            servers=len(needed),
        )
        report(JoinProgress("keys", len(needed), len(needed)))

        results, texts = await self._check_in_chunks(pdus, room_version, keys, room_id, report)

        events: dict[str, Event] = {}
        encoded: dict[str, str] = {}
        redacted: set[str] = set()
        rejected: dict[str, str] = {}
        dropped: dict[str, str] = {}
        ids: list[str | None] = []
        for pdu, result, text in zip(pdus, results, texts, strict=True):
            if isinstance(result, EventSizeError) and result.rejectable:
                event = result.event
                rejected.setdefault(event.event_id, str(result))
            elif isinstance(result, (InvalidEventError, SignatureError)):
                dropped[_describe(pdu)] = str(result)
                ids.append(None)
                continue
            else:
                event = result
            eid = event.event_id
            if event.room_id != room_id:
                dropped[eid] = f"event is in {event.room_id!r}, not {room_id}"
                ids.append(None)
                continue
            ids.append(eid)
            was_redacted = event.pdu is not pdu
            if eid in events and not (eid in redacted and not was_redacted):
                continue
            events[eid] = event
            if text is not None:
                encoded[eid] = text
            if was_redacted:
                redacted.add(eid)
            else:
                redacted.discard(eid)
        if redacted:
            log.warn(
                "join {room_id}: {n} events failed their content hash; using the redacted form",
                room_id=room_id,
                n=len(redacted),
            )
        if dropped:
            log.warn(
                "join {room_id}: dropped {n} events failing format or signature checks, "
                "e.g. {example}",
                room_id=room_id,
                n=len(dropped),
                example=next(iter(dropped.items())),
            )

        report(JoinProgress("auth", 0, len(events)))
        auth_rejected: dict[str, str] = await self._runner.run(
            authorise_events, events, known or {}, frozenset(known_rejected) | set(rejected)
        )
        rejected.update(auth_rejected)
        if auth_rejected:
            log.warn(
                "join {room_id}: {n} events rejected by the auth rules, e.g. {example}",
                room_id=room_id,
                n=len(auth_rejected),
                example=next(iter(auth_rejected.items())),
            )
        report(JoinProgress("auth", len(events), len(events)))
        return VerifiedBatch(events, rejected, dropped, len(needed), ids, encoded)

    async def _check_in_chunks(
        self,
        pdus: Sequence[Any],
        room_version: RoomVersion,
        keys: Mapping[str, Any],
        room_id: str,
        report: ProgressFn,
    ) -> tuple[list[Any], list[str | None]]:
        """(check_pdus result, encode_pdu of the kept event or None) per PDU."""
        total = len(pdus)
        pool = self._pool if total >= self._pool_min else None
        workers = self._workers if pool is None else pool.processes
        # Enough chunks to keep every worker busy to the end, none tiny.
        size = min(self._chunk_size, max(MIN_VERIFY_CHUNK, -(-total // (workers * 4))))
        starts = list(range(0, total, size))
        results: list[Any] = [None] * total
        texts: list[str | None] = [None] * total
        next_index = 0
        done = 0
        last_logged = 0
        report(JoinProgress("verify", 0, total))

        async def check(chunk: Sequence[Any]) -> tuple[list[Any], list[str | None]]:
            nonlocal pool
            if pool is not None:
                try:
                    return await pool.check_chunk(chunk, room_version, keys)
                except ProcessPoolUnavailable as e:
                    log.warn(
                        "join {room_id}: checking on threads instead of worker processes: {e}",
                        room_id=room_id,
                        e=e,
                    )
                    pool = None
            result: tuple[list[Any], list[str | None]] = await self._runner.run(
                check_and_encode, chunk, room_version, keys
            )
            return result

        async def worker() -> None:
            nonlocal next_index, done, last_logged
            while next_index < len(starts):
                start = starts[next_index]
                next_index += 1
                out, out_texts = await check(pdus[start : start + size])
                results[start : start + len(out)] = out
                texts[start : start + len(out)] = out_texts
                done += len(out)
                report(JoinProgress("verify", done, total))
                if done - last_logged >= PROGRESS_LOG_EVERY and done < total:
                    last_logged = done
                    log.info(
                        "join {room_id}: verified {done}/{total} events",
                        room_id=room_id,
                        done=done,
                        total=total,
                    )

        # With worker processes, one chunk more than there are workers in
        # flight, so none idles while the next chunk is handed over.
        in_flight = workers if pool is None else workers + 1
        await gatherResults(
            [Deferred.fromCoroutine(worker()) for _ in range(min(in_flight, len(starts)))],
            consumeErrors=True,
        )
        log.info("join {room_id}: verified {total} events", room_id=room_id, total=total)
        return results, texts


def _ignore(progress: JoinProgress) -> None:
    pass


def _describe(pdu: Any) -> str:
    if isinstance(pdu, dict):
        return f"{pdu.get('event_id') or pdu.get('type')!s} from {pdu.get('sender')!s}"
    return f"a {type(pdu).__name__}"


# --- the auth pass (pure) --------------------------------------------------------


def authorise_events(
    events: Mapping[str, Event],
    known: Mapping[str, Event],
    known_rejected: frozenset[str] | set[str],
) -> dict[str, str]:
    """Apply the auth rules to each event against its own auth events.

    Events are visited in topological order of the auth DAG so an event's
    auth events are decided before it. An event is rejected when it cites an
    auth event that is unknown (neither in ``events`` nor ``known``), rejected,
    part of a cycle, or when the rules refuse it (spec: "Passes authorisation
    rules based on the event's auth events, otherwise it is rejected").

    Args:
        events: the batch, event ID -> event.
        known: events stored before (possible auth events).
        known_rejected: IDs (in the batch or known) already rejected
            (e.g. size rules); they stay rejected and reject what cites them.

    Returns:
        event ID -> reason, for every event of the batch rejected here.
    """
    rejected: dict[str, str] = {}
    bad: set[str] = set(known_rejected)
    pending: dict[str, int] = {}
    children: dict[str, list[str]] = {}
    for eid, event in events.items():
        deps = {a for a in event.auth_event_ids if a in events and a != eid}
        pending[eid] = len(deps)
        for dep in deps:
            children.setdefault(dep, []).append(eid)
    ready = [eid for eid, n in pending.items() if n == 0]
    create: Event | None = None
    for event in events.values():
        if event.type == "m.room.create" and event.state_key == "":
            create = event
            break
    if create is None:
        create = next(
            (e for e in known.values() if e.type == "m.room.create" and e.state_key == ""), None
        )

    def lookup(eid: str) -> Event | None:
        ev = events.get(eid)
        return ev if ev is not None else known.get(eid)

    visited = 0
    while ready:
        eid = ready.pop()
        visited += 1
        event = events[eid]
        if eid not in bad:
            reason = _auth_one(event, lookup, bad, create)
            if reason is not None:
                rejected[eid] = reason
                bad.add(eid)
        for child in children.get(eid, ()):
            pending[child] -= 1
            if pending[child] == 0:
                ready.append(child)
    if visited < len(events):
        for eid, n in pending.items():
            if n > 0 and eid not in bad:
                rejected[eid] = "its auth events form a cycle"
                bad.add(eid)
    return rejected


def _auth_one(
    event: Event,
    lookup: Callable[[str], Event | None],
    bad: set[str],
    create: Event | None,
) -> str | None:
    auth_map: dict[str, Event] = {}
    for aid in event.auth_event_ids:
        ev = lookup(aid)
        if ev is not None:
            auth_map[aid] = ev
    try:
        check_auth_events_refs(event, auth_map, rejected=bad)
        state = {ev.state_tuple: ev for ev in auth_map.values()}
        if event.room_version.room_id_from_create and create is not None:
            state[CREATE_KEY] = create
        check_auth(event, state)
    except AuthError as e:
        return str(e)
    return None


# --- what a join adds ------------------------------------------------------------------


@attrs.frozen(slots=True)
class SendJoinResponse:
    """A send_join answer, shape-checked (contents not yet verified)."""

    state: list[Any]
    auth_chain: list[Any]
    event: Any
    members_omitted: bool
    servers_in_room: tuple[str, ...]

    @property
    def all_pdus(self) -> list[Any]:
        pdus = self.state + self.auth_chain
        if isinstance(self.event, dict):
            pdus.append(self.event)
        return pdus


def parse_send_join_response(body: Any) -> SendJoinResponse:
    """Check the shape of a (v2-shaped) send_join answer.

    Raises:
        AttemptError: ``state``/``auth_chain`` missing or not lists, and so on.
    """
    if not isinstance(body, Mapping):
        raise AttemptError(f"send_join answer is not a JSON object: {type(body).__name__}")
    state = body.get("state")
    auth_chain = body.get("auth_chain")
    if not isinstance(state, list) or not isinstance(auth_chain, list):
        raise AttemptError("send_join answer lacks the state and auth_chain lists")
    members_omitted = body.get("members_omitted") is True
    servers = body.get("servers_in_room")
    servers_in_room: tuple[str, ...] = ()
    if isinstance(servers, list):
        servers_in_room = tuple(s for s in servers if isinstance(s, str))
    if members_omitted and not servers_in_room:
        raise AttemptError("send_join answer omits members but gives no servers_in_room")
    return SendJoinResponse(state, auth_chain, body.get("event"), members_omitted, servers_in_room)


@attrs.frozen(slots=True)
class AssembledJoin:
    """A verified join, ready to persist.

    Attributes:
        join_event: our join (with the resident's countersignature if any).
        events: every state / auth chain event to store (as outliers).
        rejected: event ID -> reason, among ``events``.
        state: (type, state_key) -> event ID: the state before the join.
        create: the room's create event.
        encoded: event ID -> stored JSON text, for (some of) ``events``.
    """

    join_event: Event
    events: dict[str, Event]
    rejected: dict[str, str]
    state: dict[StateKey, str]
    create: Event
    encoded: dict[str, str] = attrs.field(factory=dict)


def assemble_join(
    response: SendJoinResponse,
    batch: VerifiedBatch,
    our_join: Event,
) -> AssembledJoin:
    """The join-specific checks over a verified batch (pure).

    Raises:
        AttemptError: no usable create event, another room version, a bad
            copy of our join event, or a state that does not authorise it.
    """
    rv = our_join.room_version
    room_id = our_join.room_id
    events = batch.events
    rejected = batch.rejected

    join = our_join
    if response.event is None and rv.restricted_join_rule and AUTHORISING_USER in our_join.content:
        # Without the resident's signature the other servers reject our join.
        raise AttemptError("the resident did not return our restricted join countersigned")
    if response.event is not None:
        their = events.get(our_join.event_id)
        if not same_event_but_signatures(our_join.pdu, response.event):
            raise AttemptError("the returned join event is not the one we sent")
        if their is None or not same_event_but_signatures(our_join.pdu, their.pdu):
            raise AttemptError("the returned join event failed its signature or hash checks")
        join = their
    # Our own event is not part of the room's state or auth chain.
    events = {k: v for k, v in events.items() if k != our_join.event_id}

    state: dict[StateKey, str] = {}
    removed = 0
    for eid in batch.ids[: len(response.state)]:
        event = None if eid is None else events.get(eid)
        if event is None or event.event_id in rejected or not event.is_state():
            removed += 1
            continue
        state[event.state_tuple] = event.event_id
    if removed:
        log.warn(
            "join {room_id}: {n} state entries removed (dropped or rejected events)",
            room_id=room_id,
            n=removed,
        )

    create_id = state.get(CREATE_KEY)
    if create_id is None:
        raise AttemptError("the returned state has no valid m.room.create event")
    create = events[create_id]
    version = create.content.get("room_version", ROOM_VERSION_IF_MISSING)
    if version != rv.identifier:
        raise AttemptError(
            f"the create event says room version {version!r}, make_join said {rv.identifier!r}"
        )
    if rv.room_id_from_create and room_id_from_create_event_id(create_id) != room_id:
        raise AttemptError("the create event is not the one of this room (v12 room ID)")

    auth_state = {k: events[v] for k, v in state.items()}
    try:
        check_auth_events_refs(join, events, rejected=frozenset(rejected))
        own_auth = {events[a].state_tuple: events[a] for a in join.auth_event_ids}
        if rv.room_id_from_create:
            own_auth[CREATE_KEY] = create
        check_auth(join, own_auth)
        if response.members_omitted:
            # The partial state lacks members; the authoriser of a restricted
            # join may be among them, so its own auth events fill the gaps.
            check_auth(join, {**own_auth, **auth_state})
        else:
            check_auth(join, auth_state)
    except AuthError as e:
        raise AttemptError(f"the room's state does not authorise our join: {e}") from None
    return AssembledJoin(join, events, dict(rejected), state, create, batch.encoded)
