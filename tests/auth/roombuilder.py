"""Build realistic, signed PDUs for a room of any version, for auth tests.

``RoomBuilder`` keeps the room's events and current state. ``make`` builds an
event the way a homeserver would (prev_events = the last event, auth_events by
the auth events selection over the current state, depth, content hash, ed25519
signature of the sender's server, event ID per the room version); ``send``
additionally runs ``check_auth`` against the current state and applies it.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nacl.signing import SigningKey
from signedjson.sign import sign_json
from twisted.trial.unittest import SynchronousTestCase

from matrixfed.auth.rules import auth_state_from_events, check_auth, check_auth_events_refs
from matrixfed.auth.selection import CREATE_KEY, select_auth_event_ids
from matrixfed.errors import AuthError
from matrixfed.events.hashing import add_content_hash, room_id_from_create_event_id
from matrixfed.events.model import Event
from matrixfed.events.redaction import redact
from matrixfed.events.room_versions import KNOWN_ROOM_VERSIONS, EventFormat, RoomVersion

ALL_VERSIONS = tuple(KNOWN_ROOM_VERSIONS)

ALICE = "@alice:a.example"
BOB = "@bob:b.example"
CAROL = "@carol:c.example"
DAVE = "@dave:a.example"
EVE = "@eve:e.example"

# Distinct room and event ID parts across every builder in a test run.
_serial = itertools.count(1)
_signing_keys: dict[str, SigningKey] = {}


def signing_key_for(server_name: str) -> SigningKey:
    """A deterministic ed25519 key per server name (the same in every test run)."""
    key = _signing_keys.get(server_name)
    if key is None:
        key = SigningKey(hashlib.sha256(server_name.encode()).digest())
        key.version = "k1"  # type: ignore[attr-defined]
        key.alg = "ed25519"  # type: ignore[attr-defined]
        _signing_keys[server_name] = key
    return key


def domain(user_id: str) -> str:
    return user_id.split(":", 1)[1]


class RoomBuilder:
    """A room under construction; events are signed by their sender's server."""

    def __init__(self, version: str) -> None:
        self.rv: RoomVersion = KNOWN_ROOM_VERSIONS[version]
        self.events: dict[str, Event] = {}
        self.state: dict[tuple[str, str], Event] = {}
        self.room_id: str | None = None
        self.last: Event | None = None

    # --- building -----------------------------------------------------

    def make(
        self,
        event_type: str,
        sender: str,
        content: Mapping[str, Any],
        state_key: str | None = None,
        *,
        auth_events: list[str] | None = None,
        prev_events: list[str] | None = None,
        pdu_extra: Mapping[str, Any] | None = None,
        drop: tuple[str, ...] = (),
    ) -> Event:
        """Build and sign an event without checking or applying it.

        Args:
            auth_events: override the selected auth event IDs.
            prev_events: override prev_events (default: the last event).
            pdu_extra: top-level keys to add or replace before hashing.
            drop: top-level keys to remove before hashing.
        """
        rv = self.rv
        if prev_events is None:
            prev_events = [] if self.last is None else [self.last.event_id]
        if auth_events is None:
            auth_events = select_auth_event_ids(
                rv,
                event_type,
                sender,
                state_key,
                content,
                {k: ev.event_id for k, ev in self.state.items()},
            )
        depth = 1 + max((self.events[e].depth for e in prev_events if e in self.events), default=0)
        pdu: dict[str, Any] = {
            "type": event_type,
            "sender": sender,
            "content": dict(content),
            "origin_server_ts": 1_700_000_000_000 + next(_serial),
            "depth": depth,
            "prev_events": self._refs(prev_events),
            "auth_events": self._refs(auth_events),
        }
        if not (rv.room_id_from_create and event_type == "m.room.create"):
            pdu["room_id"] = self.room_id
        if state_key is not None:
            pdu["state_key"] = state_key
        if not rv.v11_top_level_keys:
            pdu["origin"] = domain(sender)
        event_id: str | None = None
        if rv.event_format is EventFormat.V1:
            event_id = f"$ev{next(_serial)}:{domain(sender)}"
            pdu["event_id"] = event_id
        if pdu_extra:
            pdu.update(pdu_extra)
        for key in drop:
            pdu.pop(key, None)
        if rv.event_format is EventFormat.V1 and "event_id" in pdu:
            event_id = pdu["event_id"]
        add_content_hash(pdu)
        server = domain(sender)
        signed = sign_json(redact(pdu, rv), server, signing_key_for(server))
        pdu["signatures"] = signed["signatures"]
        return Event(pdu, rv, event_id=event_id)

    def _refs(self, event_ids: list[str]) -> list[Any]:
        if self.rv.event_format is EventFormat.V1:
            return [[e, {"sha256": "AAAA"}] for e in event_ids]
        return list(event_ids)

    def apply(self, event: Event) -> Event:
        """Record ``event`` as accepted: it becomes the last event and updates state."""
        self.events[event.event_id] = event
        if event.type == "m.room.create" and self.room_id is None:
            self.room_id = (
                room_id_from_create_event_id(event.event_id)
                if self.rv.room_id_from_create
                else event.pdu["room_id"]
            )
        if event.is_state():
            self.state[event.state_tuple] = event
        self.last = event
        return event

    def send(
        self,
        event_type: str,
        sender: str,
        content: Mapping[str, Any],
        state_key: str | None = None,
        **kwargs: Any,
    ) -> Event:
        """Build, authorise against the current state, and apply an event."""
        event = self.make(event_type, sender, content, state_key, **kwargs)
        check_auth(event, self.state)
        return self.apply(event)

    # --- helpers ------------------------------------------------------

    def create(self, creator: str = ALICE, **content: Any) -> Event:
        """Send the create event (v1-v11 room ID on the creator's server)."""
        body: dict[str, Any] = {"room_version": self.rv.identifier}
        if not self.rv.msc2175_implicit_room_creator:
            body["creator"] = creator
        body.update(content)
        if not self.rv.room_id_from_create:
            self.room_id = f"!room{next(_serial)}:{domain(creator)}"
        return self.send("m.room.create", creator, body, "")

    def member(
        self, sender: str, membership: str, target: str | None = None, **extra: Any
    ) -> Event:
        content = {"membership": membership, **extra}
        return self.send("m.room.member", sender, content, target or sender)

    def make_member(
        self, sender: str, membership: str, target: str | None = None, **extra: Any
    ) -> Event:
        content = {"membership": membership, **extra}
        return self.make("m.room.member", sender, content, target or sender)

    def standard_room(
        self,
        creator: str = ALICE,
        *,
        join_rule: str = "public",
        users: Mapping[str, Any] | None = None,
        power_levels: Mapping[str, Any] | None = None,
    ) -> RoomBuilder:
        """Create, creator joins, power levels (creator 100 before v12), join rules."""
        self.create(creator)
        self.member(creator, "join")
        pl: dict[str, Any] = {
            "users": dict(users) if users is not None else self.default_users(creator),
            "users_default": 0,
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": 0,
        }
        pl.update(power_levels or {})
        self.send("m.room.power_levels", creator, pl, "")
        self.send("m.room.join_rules", creator, {"join_rule": join_rule}, "")
        return self

    def default_users(self, creator: str) -> dict[str, Any]:
        # v12 creators may not appear in power levels users.
        return {} if self.rv.privileged_creators else {creator: 100}

    def auth_state(self, event: Event) -> dict[tuple[str, str], Event]:
        """The event's own auth events keyed by (type, state_key), plus the v12 create."""
        state = auth_state_from_events(self.events[e] for e in event.auth_event_ids)
        if self.rv.room_id_from_create and CREATE_KEY in self.state:
            state[CREATE_KEY] = self.state[CREATE_KEY]
        return state


# --- table-driven test plumbing -------------------------------------------

if TYPE_CHECKING:
    _Base = SynchronousTestCase
else:
    _Base = object


class VersionedAuthTest(_Base):
    """Mixin for tests run once per room version (see ``for_versions``)."""

    version: str

    def setUp(self) -> None:
        self.room = RoomBuilder(self.version)
        self.rv = self.room.rv

    def assertAllowed(self, event: Event) -> None:
        """Allowed both by the room state before it and by its own auth events."""
        check_auth(event, self.room.state)
        check_auth(event, self.room.auth_state(event))
        check_auth_events_refs(event, self.room.events)

    def assertRejected(self, event: Event, reason: str = "") -> AuthError:
        """Rejected by the room state before it; ``reason`` must be in the message."""
        with self.assertRaises(AuthError) as caught:
            check_auth(event, self.room.state)
        self.assertIn(reason, str(caught.exception))
        return caught.exception

    def assertAllowedIf(self, condition: bool, event: Event, reason: str = "") -> None:
        if condition:
            self.assertAllowed(event)
        else:
            self.assertRejected(event, reason)


def for_versions(
    mixin: type[VersionedAuthTest], versions: tuple[str, ...] = ALL_VERSIONS
) -> dict[str, type]:
    """One trial TestCase per room version: ``FooV1`` ... ``FooV12``."""
    classes: dict[str, type] = {}
    for version in versions:
        name = f"{mixin.__name__.lstrip('_')}V{version}"
        classes[name] = type(
            name,
            (mixin, SynchronousTestCase),
            {"version": version, "__module__": mixin.__module__},
        )
    return classes
