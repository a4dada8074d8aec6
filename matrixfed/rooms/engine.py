"""The room engine: create rooms, append local events, take in remote ones.

``RoomEngine`` is the only writer of room timelines. Three ways in:

- ``create_room``: the createRoom events (create, creator's join, power
  levels, preset state, initial state, name, topic) are built, authorised one
  after the other against the state they build up, and persisted in ONE store
  transaction: a room exists whole or not at all. Invites follow as ordinary
  appends.
- ``send_event``: a local append. Under the room's lock: build from the
  current state and forward extremities, hash and sign, authorise against
  the current state (``AuthError`` -> 403 ``M_FORBIDDEN``, nothing stored),
  persist with the current state group as the state before it, notify, then
  hand the event to the outbound sender. An invite of a remote user is first
  countersigned by the invitee's server (``/v2/invite``).
- ``receive_pdu`` / ``receive_membership_event``: remote events, through the
  spec's "Checks performed on receipt of a PDU" (``matrixfed.rooms.inbound``).

Appends of one room (local or remote) are serialised by a per-room lock, so
the engine never forks a room by itself and reads of "current state" inside
an append are never stale. Everything is persisted before anyone is told:
the notifier is woken and the sender called after the commit. If the process
dies between the commit and the sender's enqueue, the sender's start-up
recovery queues our users' events again; a remote user's membership event we
appended (send_join/leave/knock) is then not forwarded (the other servers
fetch it with get_missing_events when the next event arrives).

How it fails: every refusal is a ``MatrixError`` (local appends) or the
per-PDU exception of the receipt checks (remote events), raised before
anything is written; a failed store transaction leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from matrixfed.auth.rules import check_auth
from matrixfed.auth.selection import CREATE_KEY, auth_types_for_event, select_auth_event_ids
from matrixfed.errors import AuthError, EventSizeError, InvalidEventError, MatrixError, RemoteError
from matrixfed.events.identifiers import domain_of, is_valid_user_id
from matrixfed.events.keys import KeyMap
from matrixfed.events.model import Event
from matrixfed.events.room_versions import (
    DEFAULT_ROOM_VERSION,
    KNOWN_ROOM_VERSIONS,
    EventFormat,
    RoomVersion,
)
from matrixfed.events.signing import sign_event
from matrixfed.events.validation import validate_pdu
from matrixfed.rooms.builder import (
    MAX_PREV_EVENTS_BUILT,
    PlannedEvent,
    initial_state_plan,
    new_room_id,
    new_v1_event_id,
    pdu_template,
)
from matrixfed.rooms.inbound import InboundPdus, StateMapIds
from matrixfed.rooms.notifier import Notifier
from matrixfed.storage.database import Transaction
from matrixfed.storage.persist import EventWithContext, PersistedEvent
from matrixfed.storage.store import Store

__all__ = ["FederationApi", "KeyFetcher", "OutboundSender", "RoomEngine"]

log = Logger()

# Seconds to wait for the invitee's server to countersign an invite.
INVITE_TIMEOUT_SECONDS = 60.0
# Timestamps tried for a v12 create event before giving up on a free room ID.
MAX_ROOM_ID_ATTEMPTS = 100
# Rooms whose joined servers are remembered (a few KB each for big rooms).
JOINED_SERVERS_CACHE_ROOMS = 1000
# client-server spec "Stripped state": what an invitee is shown of the room.
STRIPPED_STATE_KEYS = (
    ("m.room.create", ""),
    ("m.room.join_rules", ""),
    ("m.room.name", ""),
    ("m.room.avatar", ""),
    ("m.room.canonical_alias", ""),
    ("m.room.encryption", ""),
    ("m.room.topic", ""),
)


class OutboundSender(Protocol):
    """The per-destination sender (matrixfed.federation.sender)."""

    async def send_pdu(self, event: Event, destinations: Collection[str]) -> None: ...


class KeyFetcher(Protocol):
    """What the engine needs of the KeyRing."""

    async def get_keys_batch(
        self, requests: Mapping[str, Mapping[str, int]]
    ) -> dict[str, dict[str, Any]]: ...


class FederationApi(Protocol):
    """What the engine needs of the FederationClient."""

    async def get_json(
        self, destination: str, path: str, args: Any = None, *, timeout: float | None = None
    ) -> Any: ...

    async def post_json(
        self,
        destination: str,
        path: str,
        data: Any,
        args: Any = None,
        *,
        timeout: float | None = None,
    ) -> Any: ...

    async def put_json(
        self,
        destination: str,
        path: str,
        data: Any,
        args: Any = None,
        *,
        timeout: float | None = None,
    ) -> Any: ...


def _like_escape(text: str) -> str:
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def _room_version_or_400(identifier: str) -> RoomVersion:
    rv = KNOWN_ROOM_VERSIONS.get(identifier)
    if rv is None:
        raise MatrixError(
            400, "M_UNSUPPORTED_ROOM_VERSION", f"room version {identifier!r} is not supported"
        )
    return rv


class RoomEngine:
    """Creates rooms and appends events. See the module docstring."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Any,
        server_name: str,
        signing_key: Any,
        keyring: KeyFetcher,
        federation_client: FederationApi,
        notifier: Notifier,
        sender: OutboundSender | None = None,
        default_room_version: str = DEFAULT_ROOM_VERSION,
    ) -> None:
        """Create the engine.

        Args:
            store: the event/state store.
            clock: IReactorTime (``seconds()``; a reactor with ``getThreadPool``
                lets big state resolutions run on a thread).
            server_name: our server name.
            signing_key: our signedjson signing key.
            keyring: fetches remote verify keys.
            federation_client: for invites and fetching missing events.
            notifier: woken after each commit.
            sender: the outbound sender (None: nothing is sent; see set_sender).
            default_room_version: for create_room without a version.
        """
        self.store = store
        self.clock = clock
        self.server_name = server_name
        self.signing_key = signing_key
        self.keyring = keyring
        self.federation_client = federation_client
        self.notifier = notifier
        self.sender = sender
        self.default_room_version = default_room_version
        self._locks: dict[str, DeferredLock] = {}
        # room_id -> (current state group, joined servers at it)
        self._joined_servers: dict[str, tuple[int, frozenset[str]]] = {}
        self.inbound = InboundPdus(engine=self)

    def set_sender(self, sender: OutboundSender | None) -> None:
        """Attach (or detach) the outbound sender."""
        self.sender = sender

    def room_lock(self, room_id: str) -> DeferredLock:
        """The per-room lock appends hold (``async with engine.room_lock(r):``)."""
        lock = self._locks.get(room_id)
        if lock is None:
            lock = self._locks[room_id] = DeferredLock()
        return lock

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    # --- helpers ------------------------------------------------------------

    async def room_for_pdu(self, room_id: str) -> tuple[RoomVersion, bool, bool] | None:
        """(version, partial state, whether we are joined) of a room, in one
        database transaction; None for a room we do not know.

        The joined test runs in SQL on the room's member rows (no Python set
        of a large room's members per received PDU).
        """
        pattern = "%:" + _like_escape(self.server_name)

        def txn_fn(txn: Transaction) -> tuple[str, bool, bool] | None:
            txn.execute(
                "SELECT room_version, partial_state FROM rooms WHERE room_id = ?", (room_id,)
            )
            row = txn.fetchone()
            if row is None:
                return None
            txn.execute(
                "SELECT 1 FROM current_state_events WHERE room_id = ? AND type = ?"
                " AND membership = 'join' AND state_key LIKE ? ESCAPE '!' LIMIT 1",
                (room_id, "m.room.member", pattern),
            )
            return str(row[0]), bool(row[1]), txn.fetchone() is not None

        found = await self.store.db.run_interaction("room_for_pdu", txn_fn)
        if found is None:
            return None
        version, partial, joined = found
        rv = KNOWN_ROOM_VERSIONS.get(version)
        if rv is None:
            return None
        return rv, partial, joined

    async def joined_servers(self, room_id: str, group: int | None = None) -> set[str]:
        """Servers with a joined user in the room's current state.

        Cached per room against the current state group (``group`` when the
        caller already read it): a message does not change the group, so a
        busy large room is not scanned member by member for every event.
        """
        if group is None:
            group = await self.store.get_current_state_group(room_id)
        cached = self._joined_servers.get(room_id)
        if cached is not None and group is not None and cached[0] == group:
            return set(cached[1])
        servers = await self.store.get_joined_servers(room_id)
        if group is not None:
            if len(self._joined_servers) >= JOINED_SERVERS_CACHE_ROOMS:
                self._joined_servers.clear()
            self._joined_servers[room_id] = (group, frozenset(servers))
        return servers

    async def rejected_in_room(self, room_id: str) -> set[str]:
        """IDs of the room's rejected events (a partial index keeps this cheap)."""

        def txn_fn(txn: Transaction) -> set[str]:
            txn.execute(
                "SELECT event_id FROM events WHERE room_id = ? AND rejected_reason IS NOT NULL",
                (room_id,),
            )
            return {r[0] for r in txn.fetchall()}

        return await self.store.db.run_interaction("rejected_in_room", txn_fn)

    async def room_version_of(self, room_id: str) -> RoomVersion:
        """The room's version; 404 M_NOT_FOUND for a room we do not know."""
        rv = await self.store.get_room_version(room_id)
        if rv is None:
            raise MatrixError(404, "M_NOT_FOUND", f"unknown room {room_id}")
        return rv

    async def current_state_ids(self, room_id: str) -> dict[tuple[str, str], str]:
        """The current state through its state group (cached by the store,
        unlike the current_state_events rows); empty for an unknown room."""
        group = await self.store.get_current_state_group(room_id)
        if group is None:
            return {}
        return await self.store.get_state_ids_for_group(group)

    async def current_auth_state(self, event: Event) -> dict[tuple[str, str], Event]:
        """The auth-relevant entries of the room's current state for ``event``."""
        keys = auth_types_for_event(
            event.room_version, event.type, event.sender, event.state_key, event.content
        )
        keys.add(CREATE_KEY)
        ids = await self.store.get_current_state_ids_for_keys(event.room_id, keys)
        events = await self.store.get_events(ids.values())
        return {k: events[eid] for k, eid in ids.items() if eid in events}

    async def auth_state_for(
        self, event: Event, state_ids: Mapping[tuple[str, str], str]
    ) -> dict[tuple[str, str], Event]:
        """The auth-relevant events of ``state_ids`` for ``event`` (create always in)."""
        keys = auth_types_for_event(
            event.room_version, event.type, event.sender, event.state_key, event.content
        )
        keys.add(CREATE_KEY)
        wanted = {k: state_ids[k] for k in keys if k in state_ids}
        events = await self.store.get_events(wanted.values())
        return {k: events[eid] for k, eid in wanted.items() if eid in events}

    async def resolve_state(
        self, rv: RoomVersion, sets: Sequence[Mapping[tuple[str, str], str]]
    ) -> StateMapIds:
        """State resolution over ``sets`` with events from the store
        (``InboundPdus.resolve``; the partial-state resync uses it)."""
        return await self.inbound.resolve(rv, sets)

    def sign(self, pdu: dict[str, Any], rv: RoomVersion) -> Event:
        """Set the v1/v2 event ID, hash and sign ``pdu`` in place; the trusted Event.

        The result is validated like a received PDU, so we never create an
        event other servers would refuse.

        Raises:
            MatrixError: 413 M_TOO_LARGE over a size limit; 400 M_BAD_JSON
                for content that is not valid (canonical) JSON for the room
                version (e.g. floats from v6).
        """
        event_id = None
        if rv.event_format is EventFormat.V1:
            event_id = pdu.setdefault("event_id", new_v1_event_id(self.server_name))
        try:
            sign_event(pdu, rv, self.server_name, self.signing_key)
            validate_pdu(pdu, rv)
        except EventSizeError as e:
            raise MatrixError(413, "M_TOO_LARGE", f"event too large: {e}") from None
        except (InvalidEventError, ValueError, TypeError) as e:
            raise MatrixError(400, "M_BAD_JSON", f"invalid event: {e}") from None
        return Event(pdu, rv, event_id)

    async def _prev_events(self, room_id: str) -> list[Event]:
        extremities = await self.store.get_forward_extremities(room_id)
        events = await self.store.get_events(extremities)
        newest = sorted(events.values(), key=lambda e: (-e.depth, e.event_id))
        return newest[:MAX_PREV_EVENTS_BUILT]

    async def _template(
        self,
        rv: RoomVersion,
        room_id: str,
        state_ids: Mapping[tuple[str, str], str],
        *,
        type: str,
        sender: str,
        content: Mapping[str, Any],
        state_key: str | None,
        redacts: str | None,
    ) -> dict[str, Any]:
        auth_ids = select_auth_event_ids(rv, type, sender, state_key, content, state_ids)
        auth = await self.store.get_events(auth_ids)
        prev = await self._prev_events(room_id)
        return pdu_template(
            rv,
            room_id=room_id,
            event_type=type,
            sender=sender,
            content=content,
            state_key=state_key,
            redacts=redacts,
            prev_events=prev,
            auth_events=[auth[a] for a in auth_ids if a in auth],
            origin=self.server_name,
            origin_server_ts=self.now_ms(),
        )

    # --- public API -----------------------------------------------------------

    async def build_event(
        self,
        room_id: str,
        *,
        type: str,
        sender: str,
        content: Mapping[str, Any],
        state_key: str | None = None,
        redacts: str | None = None,
        extra_auth_state: Mapping[tuple[str, str], str] | None = None,
    ) -> dict[str, Any]:
        """An unsigned PDU template built on the room's current state.

        For make_join/make_leave/make_knock: prev_events are the newest
        forward extremities, auth_events are selected over the current state
        (plus ``extra_auth_state`` entries, which win), depth is one above
        the prev events. No event_id, hashes or signatures.

        Raises:
            MatrixError: 404 for an unknown room.
        """
        rv = await self.room_version_of(room_id)
        state_ids = dict(await self.current_state_ids(room_id))
        if not state_ids:
            raise MatrixError(404, "M_NOT_FOUND", f"no state for room {room_id}")
        if extra_auth_state:
            state_ids.update(extra_auth_state)
        return await self._template(
            rv,
            room_id,
            state_ids,
            type=type,
            sender=sender,
            content=content,
            state_key=state_key,
            redacts=redacts,
        )

    async def create_room(
        self,
        creator: str,
        *,
        room_version: str | None = None,
        preset: str = "private_chat",
        name: str | None = None,
        topic: str | None = None,
        alias: str | None = None,
        initial_state: Sequence[Mapping[str, Any]] = (),
        power_level_content_override: Mapping[str, Any] | None = None,
        is_public: bool = False,
        invite: Sequence[str] = (),
        creation_content: Mapping[str, Any] | None = None,
    ) -> str:
        """Create a room with the client-server createRoom events; return its ID.

        Args:
            creator: a local user ID.
            room_version: "1".."12" (default: the engine's default).
            preset: private_chat, trusted_private_chat or public_chat.
            name, topic: optional m.room.name / m.room.topic.
            alias: a full ``#alias:our.server`` to create and publish as the
                canonical alias.
            initial_state: extra state events ({"type", "state_key", "content"}).
            power_level_content_override: merged over the default power levels.
            is_public: publish in the room directory.
            invite: users to invite once the room exists (each an ordinary
                append; an invite that fails, e.g. an unreachable remote
                server, is logged and skipped: the room stays).
            creation_content: extra keys for the create event's content.

        Raises:
            MatrixError: 400 M_UNSUPPORTED_ROOM_VERSION, M_INVALID_PARAM,
                M_ROOM_IN_USE (alias taken), 403 when an initial event is not
                allowed by the auth rules. Nothing is stored then.
        """
        rv = _room_version_or_400(room_version or self.default_room_version)
        if not is_valid_user_id(creator) or domain_of(creator) != self.server_name:
            raise MatrixError(400, "M_INVALID_PARAM", f"{creator} is not a local user")
        for invitee in invite:
            if not isinstance(invitee, str) or not is_valid_user_id(invitee):
                raise MatrixError(400, "M_INVALID_PARAM", f"invalid invitee {invitee!r}")
        if alias is not None:
            if not alias.startswith("#") or domain_of(alias) != self.server_name:
                raise MatrixError(400, "M_INVALID_PARAM", f"alias {alias!r} is not on this server")
            if await self.store.get_alias(alias) is not None:
                raise MatrixError(400, "M_ROOM_IN_USE", f"alias {alias} is taken")
        plan = initial_state_plan(
            rv,
            creator,
            preset=preset,
            name=name,
            topic=topic,
            alias=alias,
            initial_state=initial_state,
            power_level_content_override=power_level_content_override,
            invite=invite,
            creation_content=creation_content,
        )
        setup = [p for p in plan if p.content.get("membership") != "invite"]
        invites = [p for p in plan if p.content.get("membership") == "invite"]
        # A v12 room ID is the hash of the create event, so two rooms created by
        # one user in the same millisecond would get the same ID: build again
        # with a later timestamp until the ID is free (checked under the lock).
        for ts_bump in range(MAX_ROOM_ID_ATTEMPTS):
            events = self._build_initial_events(rv, setup, ts_bump=ts_bump)
            room_id = events[0].room_id
            async with self.room_lock(room_id):
                if await self.store.get_room(room_id) is not None:
                    continue
                persisted = await self.store.persist_events(
                    room_id, [EventWithContext(e) for e in events]
                )
                break
        else:
            raise MatrixError(500, "M_UNKNOWN", "could not allocate a free room ID")
        if alias is not None:
            await self.store.create_alias(
                alias, room_id, creator=creator, servers=[self.server_name]
            )
        if is_public:
            await self.store.set_room_is_public(room_id, True)
        self.notify_persisted(room_id, events, persisted)
        log.info(
            "created room {room_id} (version {version}) for {creator}",
            room_id=room_id,
            version=rv.identifier,
            creator=creator,
        )
        for planned in invites:
            assert planned.state_key is not None
            try:
                await self.send_event(
                    room_id,
                    type="m.room.member",
                    sender=creator,
                    content=planned.content,
                    state_key=planned.state_key,
                )
            except MatrixError as e:
                # The room exists whatever happens to one invite (a remote
                # server may be down); the creator can invite again.
                log.warn(
                    "createRoom {room_id}: inviting {user} failed: {e}",
                    room_id=room_id,
                    user=planned.state_key,
                    e=e,
                )
        return room_id

    def _build_initial_events(
        self, rv: RoomVersion, plan: Sequence[PlannedEvent], *, ts_bump: int = 0
    ) -> list[Event]:
        events: list[Event] = []
        state: dict[tuple[str, str], Event] = {}
        room_id: str | None = None if rv.room_id_from_create else new_room_id(self.server_name)
        for planned in plan:
            ids = {k: e.event_id for k, e in state.items()}
            auth_ids = select_auth_event_ids(
                rv, planned.type, planned.sender, planned.state_key, planned.content, ids
            )
            by_id = {e.event_id: e for e in state.values()}
            pdu = pdu_template(
                rv,
                room_id=room_id,
                event_type=planned.type,
                sender=planned.sender,
                content=planned.content,
                state_key=planned.state_key,
                redacts=None,
                prev_events=events[-1:],
                auth_events=[by_id[a] for a in auth_ids],
                origin=self.server_name,
                origin_server_ts=self.now_ms() + ts_bump,
            )
            event = self.sign(pdu, rv)
            if room_id is None:
                room_id = event.room_id
            try:
                check_auth(event, state)
            except AuthError as e:
                raise MatrixError(
                    403, "M_FORBIDDEN", f"{planned.type} not allowed in the new room: {e}"
                ) from None
            events.append(event)
            if event.is_state():
                state[event.state_tuple] = event
        return events

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
        """Append a local event to a room and send it to the other servers.

        Raises:
            MatrixError: 404 unknown room; 403 M_FORBIDDEN when the auth rules
                refuse it (nothing stored); 400 for a non-local sender; an
                invite the invitee's server refused or could not countersign
                (its error, or 502).
        """
        if domain_of(sender) != self.server_name:
            raise MatrixError(400, "M_INVALID_PARAM", f"{sender} is not a local user")
        async with self.room_lock(room_id):
            rv = await self.room_version_of(room_id)
            group = await self.store.get_current_state_group(room_id)
            if group is None:
                raise MatrixError(404, "M_NOT_FOUND", f"no state for room {room_id}")
            state_ids = await self.store.get_state_ids_for_group(group)
            pdu = await self._template(
                rv,
                room_id,
                state_ids,
                type=type,
                sender=sender,
                content=content,
                state_key=state_key,
                redacts=redacts,
            )
            event = self.sign(pdu, rv)
            try:
                check_auth(event, await self.auth_state_for(event, state_ids))
            except AuthError as e:
                raise MatrixError(403, "M_FORBIDDEN", str(e)) from None
            target_server = self._remote_target(event)
            if event.membership == "invite" and target_server is not None:
                event = await self._countersign_invite(event, state_ids, target_server)
            servers_before = (
                await self.joined_servers(room_id, group) if self.sender is not None else set()
            )
            persisted = await self.inbound.persist(
                EventWithContext(event, state_before=group), state_ids
            )
        self.notify_persisted(room_id, [event], persisted)
        await self.fan_out(event, servers_before, exclude=())
        return event

    def _remote_target(self, event: Event) -> str | None:
        if event.type != "m.room.member" or event.state_key is None:
            return None
        server = domain_of(event.state_key)
        return None if server in (None, self.server_name) else server

    async def _countersign_invite(
        self, event: Event, state_ids: Mapping[tuple[str, str], str], destination: str
    ) -> Event:
        """Have the invitee's server sign the invite (``PUT /v2/invite``)."""
        from matrixfed.federation.client import federation_path

        stripped = await self.stripped_state(state_ids)
        body = {
            "event": event.pdu,
            "room_version": event.room_version.identifier,
            "invite_room_state": stripped,
        }
        path = federation_path("/_matrix/federation/v2/invite/{}/{}", event.room_id, event.event_id)
        try:
            try:
                answer = await self.federation_client.put_json(
                    destination, path, body, timeout=INVITE_TIMEOUT_SECONDS
                )
            except RemoteError as e:
                if e.errcode != "M_UNRECOGNIZED":
                    raise
                # A server without /v2/invite: the v1 form answers [200, {"event": ...}].
                v1_path = federation_path(
                    "/_matrix/federation/v1/invite/{}/{}", event.room_id, event.event_id
                )
                v1 = await self.federation_client.put_json(
                    destination, v1_path, event.pdu, timeout=INVITE_TIMEOUT_SECONDS
                )
                answer = v1[1] if isinstance(v1, list) and len(v1) == 2 else v1
        except RemoteError as e:
            if e.code is not None and 400 <= e.code < 500 and e.errcode is not None:
                raise MatrixError(e.code, e.errcode, f"{destination}: {e.message}") from None
            raise MatrixError(502, "M_UNKNOWN", f"cannot invite via {destination}: {e}") from None
        returned = answer.get("event") if isinstance(answer, dict) else None
        return await self.inbound.check_countersigned_invite(event, returned, destination)

    async def stripped_state(
        self, state_ids: Mapping[tuple[str, str], str]
    ) -> list[dict[str, Any]]:
        """The room state sent with invites: full PDUs (spec 1.16: the create
        event must be there and every entry formatted for the room version) of
        the client-server spec's stripped-state event types."""
        ids = [state_ids[k] for k in STRIPPED_STATE_KEYS if k in state_ids]
        events = await self.store.get_events(ids)
        return [dict(events[e].pdu) for e in ids if e in events]

    def notify_persisted(
        self, room_id: str, events: Sequence[Event], persisted: Sequence[PersistedEvent]
    ) -> None:
        """Wake the notifier for newly persisted events (and the users that
        membership events concern)."""
        orderings = {p.event_id: p.stream_ordering for p in persisted}
        if not orderings:
            return
        top = max(orderings.values())
        self.notifier.on_new_events(room_id, top)
        for ev in events:
            if ev.type == "m.room.member" and ev.state_key is not None:
                ordering = orderings.get(ev.event_id)
                if ordering is not None:
                    self.notifier.on_user_event(ev.state_key, ordering)

    async def fan_out(
        self, event: Event, servers_before: Collection[str], *, exclude: Collection[str]
    ) -> None:
        """Hand ``event`` to the sender for every other server in the room.

        Destinations: servers joined before or after the event, plus the
        target's server of a membership event about a remote user, plus, in
        a partial-state room, the servers the send_join answer named (the
        partial state omits most members, so it does not say where they
        are), minus us and ``exclude``. A sender failure is logged, never
        raised: the event is already committed.
        """
        if self.sender is None:
            return
        servers = set(servers_before)
        servers |= await self.store.get_partial_state_servers(event.room_id)
        if event.type == "m.room.member":
            # Only a membership change can change who is in the room.
            servers |= await self.joined_servers(event.room_id)
        target = self._remote_target(event)
        if target is not None:
            servers.add(target)
        servers.discard(self.server_name)
        servers.difference_update(exclude)
        if not servers:
            return
        try:
            await self.sender.send_pdu(event, sorted(servers))
        except Exception:
            log.failure(
                "cannot queue {event_id} for {n} servers", event_id=event.event_id, n=len(servers)
            )

    # --- remote events (matrixfed.rooms.inbound) -----------------------------

    async def receive_pdu(
        self,
        origin: str,
        pdu: Any,
        *,
        room_version: RoomVersion | None = None,
        checked: Event | Exception | None = None,
    ) -> Event:
        """Take in one PDU from ``/send`` (see ``InboundPdus.receive_pdu``)."""
        return await self.inbound.receive_pdu(
            origin, pdu, room_version=room_version, checked=checked
        )

    async def receive_membership_event(
        self,
        origin: str,
        pdu: Any,
        *,
        room_id: str,
        expected_membership: str,
        event_id: str | None = None,
    ) -> tuple[Event, StateMapIds]:
        """Append a join/leave/knock from send_join/send_leave/send_knock.

        See ``InboundPdus.receive_membership_event``.
        """
        return await self.inbound.receive_membership_event(
            origin,
            pdu,
            room_id=room_id,
            expected_membership=expected_membership,
            event_id=event_id,
        )

    async def get_state_ids_at(self, room_id: str, event_id: str) -> StateMapIds:
        """The room state before ``event_id`` (what ``/state_ids`` answers).

        Raises:
            MatrixError: 404 when the event is not a non-outlier of the room.
        """
        statuses = await self.store.get_event_statuses([event_id])
        status = statuses.get(event_id)
        if status is None or status.room_id != room_id or status.outlier:
            raise MatrixError(404, "M_NOT_FOUND", f"no state known at {event_id}")
        state = await self.store.get_state_before(event_id)
        if state is None:
            raise MatrixError(404, "M_NOT_FOUND", f"no state known at {event_id}")
        return dict(state)

    async def get_auth_chain_for(self, event_ids: Collection[str]) -> list[Event]:
        """The auth chain of ``event_ids`` (without them), oldest first."""
        return await self.store.get_auth_chain(event_ids)

    async def fetch_keys_for(self, pdus: Sequence[Any], rv: RoomVersion) -> KeyMap:
        """Every verify key the PDUs' signatures need, in one keyring batch."""
        from matrixfed.events.signing import needed_keys_for_pdus

        needed = needed_keys_for_pdus(pdus, rv)
        if not needed:
            return {}
        return await self.keyring.get_keys_batch(needed)
