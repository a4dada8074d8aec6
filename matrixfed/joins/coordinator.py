"""The JoinCoordinator: joining (and leaving) rooms that live on other servers.

``join(room_id_or_alias, user_id, servers=...)``:

1. an alias is resolved (locally, or with ``/query/directory`` on its server);
2. candidates: the alias's servers, the given servers, the room ID's server
   (v1-v11 room IDs name one), deduplicated, never ourselves;
3. if this server is already in the room the join is a local event through
   the room engine, no handshake. If another local user's handshake for the
   room is in flight, we wait for it and then join locally (one handshake per
   room at a time);
4. otherwise, per candidate until one works: ``make_join`` (every supported
   ``ver``), the template checked and our event built, hashed and signed
   (``template.py``); ``send_join`` (v2, v1 fallback; ``omit_members`` for a
   partial-state join); the answer verified before anything is stored
   (``verify.py``: one key batch, threaded signature/hash checks, auth DAG,
   the join authorised by the state); any failure moves to the next
   candidate, and if none is left ``JoinFailed`` says what each server did;
5. the room, the state and auth chain (outliers, rejected ones flagged), the
   join (state before it = the returned state) and the current state are
   written in ONE ``persist_events`` transaction, under the engine's room
   lock; then the notifier is woken. A failed join stores nothing.

Partial-state joins (faster joins, MSC3706) are the default (config
``--no-join-partial-state`` turns them off): ``send_join`` asks for
``omit_members=true``; the room is usable once the partial state is in; the
members are fetched in the background by ``PartialStateResync``
(``partial.py``), which then recomputes the state at our join and every
event stored since (rejecting or soft-failing those the full state refuses),
stores it as new state groups, sets the current state and clears the
partial flag in one transaction, and records the current-state change for
/sync (``storage.state_deltas``). A full join is the fallback: a resident
that ignores ``omit_members`` answers with the full state (a full join); a
partial answer that is unusable (no ``servers_in_room``, state that does not
authorise the join, ...) makes us ask the same server again for the full
state.

While the room is partial: the engine also sends our events to the send_join
answer's ``servers_in_room`` (``partial_state_servers``: bounded, not
trusted; stored with the join, dropped by the resync), so the servers whose
members were omitted get them; backfill asks them too; the client API's
member lists wait for the resync (``wait_for_full_state``); events received
meanwhile are checked against their auth events only (the state checks wait
for the resync); we answer no ``make_join``/``send_join`` and no
``/state``/``/state_ids`` for the room.

``leave(room_id, user_id, servers=...)``: a local leave event when the server
is in the room; otherwise (rejecting a remote invite, retracting a knock) the
make_leave/send_leave handshake with the given servers and the room's server.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from signedjson.types import SigningKey
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from matrixfed.errors import MatrixError, RemoteError
from matrixfed.events.identifiers import domain_of, is_valid_user_id
from matrixfed.events.model import Event
from matrixfed.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from matrixfed.joins.api import (
    VERIFY_CHUNK_SIZE,
    AttemptError,
    AttemptFailure,
    JoinFailed,
    JoinFederationClient,
    JoinProgress,
    JoinResult,
    KeyBatchFetcher,
    LeaveResult,
    RoomEngineLike,
    ThreadRunner,
)
from matrixfed.joins.partial import PartialStateResync, partial_state_servers
from matrixfed.joins.procpool import ProcessCheckPool
from matrixfed.joins.template import build_membership_event, room_version_of_template
from matrixfed.joins.verify import (
    AssembledJoin,
    EventVerifier,
    SendJoinResponse,
    assemble_join,
    parse_send_join_response,
)
from matrixfed.storage.persist import EventWithContext
from matrixfed.storage.store import Store

__all__ = ["JoinCoordinator"]

log = Logger()

ProgressFn = Callable[[JoinProgress], None]
MEMBER = "m.room.member"


class JoinCoordinator:
    """Sequences remote joins and leaves. See the module docstring."""

    def __init__(
        self,
        *,
        store: Store,
        engine: RoomEngineLike,
        federation_client: JoinFederationClient,
        keyring: KeyBatchFetcher,
        clock: Any,
        server_name: str,
        signing_key: SigningKey,
        runner: ThreadRunner,
        supported_room_versions: Sequence[str] = tuple(KNOWN_ROOM_VERSIONS),
        partial_state: bool = True,
        verify_workers: int = 2,
        verify_chunk_size: int = VERIFY_CHUNK_SIZE,
        process_pool: ProcessCheckPool | None = None,
    ) -> None:
        """Create the coordinator.

        Args:
            store: the event/state store.
            engine: the room engine (local joins/leaves, room lock, notifier).
            federation_client: the join/leave federation calls.
            keyring: fetches verify keys in batches.
            clock: IReactorTime (``seconds()``, ``callLater``).
            server_name: our server name.
            signing_key: our signing key.
            runner: runs CPU-heavy pure functions on a thread pool.
            supported_room_versions: the ``ver`` values of make_join.
            partial_state: ask residents for partial-state joins (the
                module docstring).
            verify_workers: chunks verified at once (the CPU count).
            verify_chunk_size: PDUs per thread-pool job.
            process_pool: worker processes checking big batches (started
                and stopped by the caller); None: threads only.
        """
        self._store = store
        self._engine = engine
        self._fed = federation_client
        self._clock = clock
        self._server_name = server_name
        self._signing_key = signing_key
        self._versions = tuple(supported_room_versions)
        self._partial_state = partial_state
        self._verifier = EventVerifier(
            keyring=keyring,
            runner=runner,
            workers=verify_workers,
            chunk_size=verify_chunk_size,
            process_pool=process_pool,
        )
        self._joining: dict[str, list[Deferred[None]]] = {}
        self.resync = PartialStateResync(
            store=store,
            federation_client=federation_client,
            verifier=self._verifier,
            clock=clock,
            server_name=server_name,
            engine=engine,
        )

    # --- join ------------------------------------------------------------------

    async def join(
        self,
        room_id_or_alias: str,
        user_id: str,
        *,
        servers: Sequence[str] = (),
        progress: ProgressFn | None = None,
    ) -> JoinResult:
        """Join a local user to a room, through other servers if needed.

        Args:
            room_id_or_alias: "!room:server", "!hash" (v12) or "#alias:server".
            user_id: the local user joining.
            servers: extra candidate servers (e.g. from the client's ``via``).
            progress: receives JoinProgress(stage, done, total) updates.

        Returns:
            The room, our join event and the server used.

        Raises:
            JoinFailed: no candidate let us in (per-server reasons inside).
            MatrixError: bad arguments (400), alias unknown (404), a local
                join refused by the auth rules (403).
        """
        if not is_valid_user_id(user_id) or domain_of(user_id) != self._server_name:
            raise MatrixError(400, "M_INVALID_PARAM", f"{user_id} is not a local user")
        room_id, alias_servers = await self._resolve(room_id_or_alias)
        candidates = self._candidates(room_id, [*alias_servers, *servers])
        # One join of a room at a time: the first does the handshake, the
        # others wait and then find the room joined (a local event).
        while (waiting := self._joining.get(room_id)) is not None:
            d: Deferred[None] = Deferred()
            waiting.append(d)
            await d
        self._joining[room_id] = []
        try:
            if await self._store.is_host_joined(room_id, self._server_name):
                return await self._local_membership(room_id, user_id, "join")
            return await self._remote_join(room_id, user_id, candidates, progress)
        finally:
            for waiter in self._joining.pop(room_id):
                waiter.callback(None)

    async def _resolve(self, room_id_or_alias: str) -> tuple[str, list[str]]:
        if room_id_or_alias.startswith("!"):
            return room_id_or_alias, []
        if not room_id_or_alias.startswith("#") or not domain_of(room_id_or_alias):
            raise MatrixError(
                400, "M_INVALID_PARAM", f"{room_id_or_alias!r} is not a room ID or alias"
            )
        alias = room_id_or_alias
        server = domain_of(alias)
        assert server is not None
        if server == self._server_name:
            local = await self._store.get_alias(alias)
            if local is None:
                raise MatrixError(404, "M_NOT_FOUND", f"room alias {alias} not found")
            return local.room_id, list(local.servers)
        try:
            room_id, servers = await self._fed.query_directory(server, alias)
        except RemoteError as e:
            failure = AttemptFailure(server, e.message, e.code, e.errcode)
            raise JoinFailed("resolve", alias, [failure]) from None
        log.info(
            "alias {alias} is {room_id} (servers {servers})",
            alias=alias,
            room_id=room_id,
            servers=servers,
        )
        return room_id, servers

    def _candidates(self, room_id: str, servers: Sequence[str]) -> list[str]:
        ordered = list(servers)
        room_server = domain_of(room_id)
        if room_server:
            ordered.append(room_server)
        return [s for s in dict.fromkeys(ordered) if s and s != self._server_name]

    async def _local_membership(self, room_id: str, user_id: str, membership: str) -> JoinResult:
        event = await self._engine.send_event(
            room_id,
            type=MEMBER,
            sender=user_id,
            state_key=user_id,
            content={"membership": membership},
        )
        log.info(
            "{user_id} {membership} {room_id} locally ({event_id})",
            user_id=user_id,
            membership=membership,
            room_id=room_id,
            event_id=event.event_id,
        )
        return JoinResult(room_id, event.event_id, None)

    async def _remote_join(
        self,
        room_id: str,
        user_id: str,
        candidates: Sequence[str],
        progress: ProgressFn | None,
    ) -> JoinResult:
        report = _guarded(progress) if progress is not None else _ignore
        failures: list[AttemptFailure] = []
        started = self._clock.seconds()
        for server in candidates:
            try:
                assembled, response = await self._handshake(server, room_id, user_id, report)
            except AttemptError as e:
                failures.append(AttemptFailure(server, e.reason, e.code, e.errcode))
            except RemoteError as e:
                failures.append(AttemptFailure(server, e.message, e.code, e.errcode))
            except Exception as e:
                # A resident's answer must never crash the join: whatever went
                # wrong with it, the next server may do better.
                log.failure("join {room_id} via {server} failed", room_id=room_id, server=server)
                failures.append(AttemptFailure(server, f"unexpected error: {e!r}"))
            else:
                result = await self._persist(room_id, user_id, server, assembled, response, report)
                log.info(
                    "joined {user_id} to {room_id} via {server} in {seconds:.2f}s",
                    user_id=user_id,
                    room_id=room_id,
                    server=server,
                    seconds=self._clock.seconds() - started,
                )
                report(JoinProgress("joined", 1, 1))
                return result
            log.warn(
                "join {room_id} via {server} failed: {reason}",
                room_id=room_id,
                server=server,
                reason=failures[-1].reason,
            )
        raise JoinFailed("join", room_id, failures)

    async def _handshake(
        self, server: str, room_id: str, user_id: str, report: ProgressFn
    ) -> tuple[AssembledJoin, SendJoinResponse]:
        report(JoinProgress("make_join", 0, 1))
        log.info("join {room_id}: make_join from {server}", room_id=room_id, server=server)
        answer = await self._fed.make_join(server, room_id, user_id, self._versions)
        rv = room_version_of_template(answer, self._versions)
        join = build_membership_event(
            answer,
            room_id=room_id,
            user_id=user_id,
            membership="join",
            room_version=rv,
            server_name=self._server_name,
            signing_key=self._signing_key,
            now_ms=int(self._clock.seconds() * 1000),
        )
        report(JoinProgress("make_join", 1, 1))
        partial = self._partial_state
        try:
            return await self._send_join(server, join, rv, report, omit_members=partial)
        except AttemptError as e:
            if not partial:
                raise
            # spec: partial state is an optimisation; ask for the full state.
            log.warn(
                "join {room_id}: partial-state answer from {server} unusable ({reason});"
                " asking for the full state",
                room_id=room_id,
                server=server,
                reason=e.reason,
            )
            return await self._send_join(server, join, rv, report, omit_members=False)

    async def _send_join(
        self,
        server: str,
        join: Event,
        rv: RoomVersion,
        report: ProgressFn,
        *,
        omit_members: bool,
    ) -> tuple[AssembledJoin, SendJoinResponse]:
        room_id = join.room_id
        report(JoinProgress("send_join", 0, 1))
        body = await self._fed.send_join(
            server, room_id, join.event_id, join.pdu, omit_members=omit_members
        )
        response = parse_send_join_response(body)
        log.info(
            "join {room_id}: send_join from {server} returned {state} state and"
            " {auth} auth chain events{partial}",
            room_id=room_id,
            server=server,
            state=len(response.state),
            auth=len(response.auth_chain),
            partial=" (members omitted)" if response.members_omitted else "",
        )
        report(JoinProgress("send_join", 1, 1))
        pdus = response.all_pdus
        batch = await self._verifier.verify(pdus, rv, room_id, progress=report)
        assembled = assemble_join(response, batch, join)
        log.info(
            "join {room_id}: authorised ({n} events, {rejected} rejected, {dropped} dropped;"
            " {state} state entries)",
            room_id=room_id,
            n=len(assembled.events),
            rejected=len(assembled.rejected),
            dropped=len(batch.dropped),
            state=len(assembled.state),
        )
        return assembled, response

    async def _persist(
        self,
        room_id: str,
        user_id: str,
        server: str,
        assembled: AssembledJoin,
        response: SendJoinResponse,
        report: ProgressFn,
    ) -> JoinResult:
        join = assembled.join_event
        partial = response.members_omitted
        items = [
            EventWithContext(
                ev,
                outlier=True,
                rejected_reason=assembled.rejected.get(eid),
                encoded=assembled.encoded.get(eid),
            )
            for eid, ev in assembled.events.items()
        ]
        items.append(EventWithContext(join, state_before=assembled.state))
        report(JoinProgress("persist", 0, 1))
        servers = (
            partial_state_servers(server, response.servers_in_room, self._server_name)
            if partial
            else []
        )
        async with self._engine.room_lock(room_id):
            current: dict[tuple[str, str], str] | None = None
            if await self._store.get_room(room_id) is not None:
                # A room we knew (we left it, or hold outliers of it): its old
                # forward extremities stay, so say what the state is now. A
                # new room's current state is the state after the join, the
                # only extremity: no second copy of the state is written.
                current = dict(assembled.state)
                current[(MEMBER, user_id)] = join.event_id
            persisted = await self._store.persist_events(
                room_id,
                items,
                current_state=current,
                partial_state=partial,
                # Until the resync, our events go to these servers too: the
                # partial state does not say where the omitted members are.
                partial_state_servers=servers,
            )
        report(JoinProgress("persist", 1, 1))
        log.info(
            "join {room_id}: persisted {n} events{partial}",
            room_id=room_id,
            n=len(persisted),
            partial=" (partial state)" if partial else "",
        )
        ordering = max((p.stream_ordering for p in persisted), default=None)
        if ordering is not None:
            self._engine.notifier.on_new_events(room_id, ordering)
            self._engine.notifier.on_user_event(user_id, ordering)
        if partial:
            self.resync.start(room_id, join.event_id, servers)
        return JoinResult(room_id, join.event_id, server, partial_state=partial)

    # --- leave -----------------------------------------------------------------

    async def leave(
        self, room_id: str, user_id: str, *, servers: Sequence[str] = ()
    ) -> LeaveResult:
        """Leave a room, or reject an invite / retract a knock from another server.

        If this server is in the room, a local leave event is appended (the
        engine sends it to the other servers). Otherwise the make_leave /
        send_leave handshake runs against ``servers`` (e.g. the inviting
        server) and then the room's server; if the room is known (we were
        in it once) the leave is stored as an outlier.

        Raises:
            JoinFailed: no server accepted the leave (per-server reasons).
            MatrixError: 400 for a non-local user; the engine's errors.
        """
        if not is_valid_user_id(user_id) or domain_of(user_id) != self._server_name:
            raise MatrixError(400, "M_INVALID_PARAM", f"{user_id} is not a local user")
        if await self._store.is_host_joined(room_id, self._server_name):
            result = await self._local_membership(room_id, user_id, "leave")
            return LeaveResult(room_id, result.event_id, None)
        failures: list[AttemptFailure] = []
        for server in self._candidates(room_id, servers):
            try:
                event = await self._leave_via(server, room_id, user_id)
            except AttemptError as e:
                failures.append(AttemptFailure(server, e.reason, e.code, e.errcode))
            except RemoteError as e:
                failures.append(AttemptFailure(server, e.message, e.code, e.errcode))
            else:
                try:
                    # Kept as a record in a room we know; a room only invited
                    # to gets no row for it (the invite list is the record).
                    if await self._store.get_room(room_id) is not None:
                        await self._store.persist_events(
                            room_id, [EventWithContext(event, outlier=True)]
                        )
                except Exception:
                    # The leave happened: the resident has it. Keeping our copy
                    # is a record, not a condition of success.
                    log.failure("cannot record our leave {event_id}", event_id=event.event_id)
                log.info(
                    "{user_id} left {room_id} via {server}",
                    user_id=user_id,
                    room_id=room_id,
                    server=server,
                )
                return LeaveResult(room_id, event.event_id, server)
        raise JoinFailed("leave", room_id, failures)

    async def _leave_via(self, server: str, room_id: str, user_id: str) -> Event:
        answer = await self._fed.make_leave(server, room_id, user_id)
        rv = room_version_of_template(answer, self._versions)
        event = build_membership_event(
            answer,
            room_id=room_id,
            user_id=user_id,
            membership="leave",
            room_version=rv,
            server_name=self._server_name,
            signing_key=self._signing_key,
            now_ms=int(self._clock.seconds() * 1000),
        )
        await self._fed.send_leave(server, room_id, event.event_id, event.pdu)
        return event

    # --- start-up and shutdown ---------------------------------------------------

    def stop(self) -> None:
        """Stop background work (partial-state resyncs); call before the store closes."""
        self.resync.stop()

    async def wait_for_full_state(self, room_id: str, timeout: float) -> bool:
        """Wait until ``room_id`` has its full state, for at most ``timeout`` seconds.

        Readers that must not present a partial member list (the client
        API's ``/members``) call this first, as Synapse does.

        Returns:
            True when the room is not (or no longer) in partial state; False
            when the resync is still running after ``timeout``, or is not
            running at all (stopped; resumed at the next start-up).
        """
        info = await self._store.get_room(room_id)
        if info is None or not info.partial_state:
            return True
        running = self.resync.finished(room_id)
        if running is None:
            return False
        waited: Deferred[None] = Deferred()

        def fire(_: object) -> None:
            if not waited.called:
                waited.callback(None)

        running.addBoth(fire)
        timer = self._clock.callLater(timeout, fire, None)
        try:
            await waited
        finally:
            if timer.active():
                timer.cancel()
        info = await self._store.get_room(room_id)
        return info is not None and not info.partial_state

    async def resume_partial_state_rooms(self) -> Collection[str]:
        """Restart the background resync of every room still in partial state.

        Returns:
            The rooms whose resync was started.
        """
        return await self.resync.resume_all()


def _ignore(progress: JoinProgress) -> None:
    pass


def _guarded(progress: ProgressFn) -> ProgressFn:
    """``progress`` whose failures are logged, never allowed to break the join."""

    def report(p: JoinProgress) -> None:
        try:
            progress(p)
        except Exception:
            log.failure("join progress callback failed on {stage}", stage=p.stage)

    return report
