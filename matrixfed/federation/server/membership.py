"""Resident membership handshakes: make/send join, leave and knock; invites.

What a resident server answers when another server's user joins, leaves or
knocks on one of our rooms, or when one of our users is invited elsewhere.

Templates (``make_join``, ``make_leave``, ``make_knock``): the room must be
known (404 ``M_NOT_FOUND``), its version among ``ver`` (400
``M_INCOMPATIBLE_ROOM_VERSION`` with ``room_version``; no ``ver`` means
"1"), the user a user of the requesting server (403), the server allowed
by the room's ACL (403). The template is built by the room engine on the
current state and must itself pass the auth rules against that state (403
``M_FORBIDDEN`` otherwise). For restricted join rules (v8+, and
``knock_restricted`` v10+) a user who is neither invited nor joined must be
joined to one of the allowed rooms: we then name one of our joined users
with the power to invite as ``join_authorised_via_users_server``. When we
know none of the allowed rooms: 400 ``M_UNABLE_TO_AUTHORISE_JOIN``; when the
user qualifies but none of our users may invite: 400
``M_UNABLE_TO_GRANT_JOIN``; otherwise 403.

Submissions (``send_join`` v1/v2, ``send_leave`` v1/v2, ``send_knock``): the
spec's validation first (400 ``M_BAD_JSON`` for a malformed PDU;
400 ``M_INVALID_PARAM`` for the wrong type, membership, room, event ID,
``state_key`` != ``sender``, a sender of another server, a bad content hash
or signature), then the auth rules against the current state (403). A
restricted join naming one of our users is countersigned with our key after
re-checking the allow conditions. The room engine then appends it (it checks
again against its auth events and the state at its prev_events, under the
room's lock) and sends it to the other servers. Nothing is stored when any
check fails; submitting an accepted event again answers the same.

``send_join`` answers the state before the join and the auth chain of that
state and of the join; with ``omit_members=true`` the state leaves out
membership events except those of the room's heroes when the room has no
name nor canonical alias, the auth chain covers only what is returned and
leaves out events already in ``state``, and ``members_omitted`` and
``servers_in_room`` are set.

Invites (``/v1/invite``, ``/v2/invite``) for our users: validated the same
way (target must be ours), authorised against the room's current state when
we hold the room, signed with our key and remembered with their stripped
state for the client API (``Store.get_invites_for_user``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.logger import Logger

from matrixfed.auth.power_levels import PowerLevels
from matrixfed.auth.rules import check_auth
from matrixfed.errors import (
    AuthError,
    InvalidEventError,
    MatrixError,
    RemoteError,
    SignatureError,
    bad_json,
    forbidden,
    invalid_param,
    not_found,
)
from matrixfed.events.checks import check_pdu
from matrixfed.events.hashing import check_content_hash, room_id_from_create_event_id
from matrixfed.events.identifiers import domain_of, is_valid_user_id
from matrixfed.events.model import Event
from matrixfed.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion, get_room_version
from matrixfed.events.signing import AUTHORISING_USER_KEY, sign_event
from matrixfed.federation.server.endpoint import ApiRequest, Endpoint, JsonResponse
from matrixfed.federation.server.queries import StateAnswer
from matrixfed.rooms.acl import check_server_acl
from matrixfed.rooms.engine import RoomEngine

__all__ = ["MembershipHandshakes", "stripped_state_event"]

log = Logger()

V1 = "/_matrix/federation/v1"
V2 = "/_matrix/federation/v2"
MEMBER = "m.room.member"
# spec: make_join "ver": the room versions assumed when the joiner names none.
DEFAULT_VER = ("1",)
# spec: invites-v1: "Servers which receive a v1 invite request must assume
# that the room version is either "1" or "2"" (both share the event format).
V1_INVITE_ROOM_VERSION = "1"
# spec: client-server m.heroes: "the first 5 members of the room".
HEROES = 5
# State served with a knock and stored with invites (client-server "stripped
# state": the events that let a user recognise the room).
STRIPPED_STATE_TYPES = (
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
)


def stripped_state_event(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """The client-server stripped form of a state event, or None if malformed."""
    etype = entry.get("type")
    state_key = entry.get("state_key")
    content = entry.get("content")
    sender = entry.get("sender")
    if not isinstance(etype, str) or not isinstance(state_key, str):
        return None
    if not isinstance(content, dict) or not isinstance(sender, str):
        return None
    return {"type": etype, "state_key": state_key, "content": content, "sender": sender}


def _incompatible(rv: RoomVersion) -> MatrixError:
    return MatrixError(
        400,
        "M_INCOMPATIBLE_ROOM_VERSION",
        "Your homeserver does not support the features required to interact with this room",
        room_version=rv.identifier,
    )


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


class MembershipHandshakes:
    """The resident side of joins, leaves, knocks and invites (module docstring)."""

    def __init__(self, *, engine: RoomEngine) -> None:
        """Args:
        engine: the room engine (builds templates, appends, owns the store,
            our server name, signing key and keyring).
        """
        self._engine = engine
        self._store = engine.store
        self._server_name = engine.server_name

    def endpoints(self) -> list[Endpoint]:
        """The endpoints, for ``JsonResource.add_endpoints``."""
        return [
            Endpoint("GET", V1 + "/make_join/{roomId}/{userId}", self.on_make_join),
            Endpoint("PUT", V1 + "/send_join/{roomId}/{eventId}", self.on_send_join_v1),
            Endpoint("PUT", V2 + "/send_join/{roomId}/{eventId}", self.on_send_join_v2),
            Endpoint("GET", V1 + "/make_leave/{roomId}/{userId}", self.on_make_leave),
            Endpoint("PUT", V1 + "/send_leave/{roomId}/{eventId}", self.on_send_leave_v1),
            Endpoint("PUT", V2 + "/send_leave/{roomId}/{eventId}", self.on_send_leave_v2),
            Endpoint("GET", V1 + "/make_knock/{roomId}/{userId}", self.on_make_knock),
            Endpoint("PUT", V1 + "/send_knock/{roomId}/{eventId}", self.on_send_knock),
            Endpoint("PUT", V1 + "/invite/{roomId}/{eventId}", self.on_invite_v1),
            Endpoint("PUT", V2 + "/invite/{roomId}/{eventId}", self.on_invite_v2),
        ]

    # -- shared ----------------------------------------------------------------

    async def _room(self, origin: str | None, room_id: str) -> tuple[str, RoomVersion]:
        if origin is None:
            raise forbidden("Requests must be authenticated")
        info = await self._store.get_room(room_id)
        if info is None or not await self._store.is_host_joined(room_id, self._server_name):
            raise not_found("Unknown room")
        if info.partial_state:
            # Our state is incomplete: we cannot judge or answer a join yet.
            raise not_found("This server is not fully joined to the room yet")
        await check_server_acl(self._store, room_id, origin)
        return origin, get_room_version(info.room_version)

    async def _check_against_current(self, event: Event) -> None:
        # Only the entries the rules look at (not a 10,000-member state map).
        try:
            check_auth(event, await self._engine.current_auth_state(event))
        except AuthError as e:
            raise forbidden(str(e)) from None

    async def _current_event(self, room_id: str, etype: str, state_key: str = "") -> Event | None:
        eid = await self._store.get_current_state_event_id(room_id, etype, state_key)
        return None if eid is None else await self._store.get_event(eid)

    # -- templates -----------------------------------------------------------------

    async def _make(self, request: ApiRequest, membership: str) -> JsonResponse:
        room_id = request.path_params["roomId"]
        user_id = request.path_params["userId"]
        origin, rv = await self._room(request.origin, room_id)
        if membership == "knock" and not request.args("ver"):
            # spec: make_knock "ver" is required (knocking came with v7).
            raise MatrixError(400, "M_MISSING_PARAM", "Missing parameter: ver")
        if membership != "leave":
            ver = request.args("ver") or DEFAULT_VER
            if rv.identifier not in ver:
                raise _incompatible(rv)
        if not is_valid_user_id(user_id) or domain_of(user_id) != origin:
            raise forbidden("The user is not a user of the requesting server")
        content: dict[str, Any] = {"membership": membership}
        if membership == "join":
            authoriser = await self._restricted_authoriser(room_id, rv, user_id)
            if authoriser is not None:
                content[AUTHORISING_USER_KEY] = authoriser
        template = await self._engine.build_event(
            room_id, type=MEMBER, sender=user_id, content=content, state_key=user_id
        )
        # The spec's template schema lists origin for every version (v11+
        # events do not need it; joiners replace it anyway).
        template.setdefault("origin", self._server_name)
        probe = Event(dict(template), rv, event_id="$template:" + self._server_name)
        await self._check_against_current(probe)
        return 200, {"event": template, "room_version": rv.identifier}

    async def on_make_join(self, request: ApiRequest) -> JsonResponse:
        """``GET /v1/make_join/{roomId}/{userId}?ver=...``."""
        return await self._make(request, "join")

    async def on_make_leave(self, request: ApiRequest) -> JsonResponse:
        """``GET /v1/make_leave/{roomId}/{userId}``."""
        return await self._make(request, "leave")

    async def on_make_knock(self, request: ApiRequest) -> JsonResponse:
        """``GET /v1/make_knock/{roomId}/{userId}?ver=...``."""
        return await self._make(request, "knock")

    # -- restricted rooms ----------------------------------------------------------

    async def _restricted_rule(self, room_id: str, rv: RoomVersion) -> Mapping[str, Any] | None:
        """The join_rules content when the room's rule is restricted, else None."""
        rules = await self._current_event(room_id, "m.room.join_rules")
        if rules is None:
            return None
        rule = rules.content.get("join_rule")
        if (rv.restricted_join_rule and rule == "restricted") or (
            rv.knock_restricted_join_rule and rule == "knock_restricted"
        ):
            return rules.content
        return None

    async def _meets_allow_conditions(self, content: Mapping[str, Any], user_id: str) -> bool:
        """Whether the user is joined to an allowed room.

        spec: with no condition of a known type and shape, the user fails them
        all (False, hence 403).

        Raises:
            MatrixError: 400 M_UNABLE_TO_AUTHORISE_JOIN when we know none of
                the allowed rooms (so cannot decide).
        """
        known_any = False
        valid_any = False
        for cond in _as_list(content.get("allow")):
            if not isinstance(cond, dict) or cond.get("type") != "m.room_membership":
                continue
            other = cond.get("room_id")
            if not isinstance(other, str):
                continue
            valid_any = True
            if not await self._store.is_host_joined(other, self._server_name):
                continue
            known_any = True
            membership = await self._store.get_membership(other, user_id)
            if membership is not None and membership[0] == "join":
                return True
        if valid_any and not known_any:
            raise MatrixError(
                400,
                "M_UNABLE_TO_AUTHORISE_JOIN",
                "This server cannot verify any of the room's join conditions",
            )
        return False

    async def _local_inviter(self, room_id: str) -> str | None:
        """One of our joined users allowed to invite (highest power first)."""
        keys = [("m.room.create", ""), ("m.room.power_levels", "")]
        state_ids = await self._store.get_current_state_ids_for_keys(room_id, keys)
        events = await self._store.get_events(state_ids.values())
        state = {(e.type, e.state_key or ""): e for e in events.values()}
        pl = PowerLevels.from_state(state)
        needed = pl.named_level("invite")
        local = [
            u
            for u in await self._store.get_joined_users(room_id)
            if domain_of(u) == self._server_name
        ]
        able = [u for u in local if pl.user_level(u) >= needed]
        if not able:
            return None
        return sorted(able, key=lambda u: (-pl.user_level(u), u))[0]

    async def _restricted_authoriser(
        self, room_id: str, rv: RoomVersion, user_id: str
    ) -> str | None:
        """The user to name in ``join_authorised_via_users_server``, if needed."""
        rule = await self._restricted_rule(room_id, rv)
        if rule is None:
            return None
        membership = await self._store.get_membership(room_id, user_id)
        if membership is not None and membership[0] in ("invite", "join"):
            return None
        if not await self._meets_allow_conditions(rule, user_id):
            raise forbidden("You do not belong to any of the required rooms to join this room")
        inviter = await self._local_inviter(room_id)
        if inviter is None:
            raise MatrixError(
                400, "M_UNABLE_TO_GRANT_JOIN", "No user of this server can authorise the join"
            )
        return inviter

    async def _maybe_countersign(self, event: Event, pdu: dict[str, Any]) -> dict[str, Any]:
        """Countersign a restricted join authorised by one of our users."""
        authoriser = event.content.get(AUTHORISING_USER_KEY)
        rv = event.room_version
        if not rv.restricted_join_rule or not isinstance(authoriser, str):
            return pdu
        if domain_of(authoriser) != self._server_name:
            return pdu
        rule = await self._restricted_rule(event.room_id, rv)
        membership = await self._store.get_membership(event.room_id, event.sender)
        already = membership is not None and membership[0] in ("invite", "join")
        if rule is not None and not already:
            if not await self._meets_allow_conditions(rule, event.sender):
                raise forbidden("You do not belong to any of the required rooms to join this room")
        signed = dict(pdu)
        sign_event(signed, rv, self._server_name, self._engine.signing_key)
        return signed

    # -- submissions ----------------------------------------------------------------

    async def _validated(
        self, request: ApiRequest, membership: str
    ) -> tuple[str, RoomVersion, dict[str, Any]]:
        """The spec's checks on a submitted membership event; returns the PDU to
        append (countersigned when we authorised a restricted join)."""
        room_id = request.path_params["roomId"]
        event_id = request.path_params["eventId"]
        origin, rv = await self._room(request.origin, room_id)
        pdu = request.content
        if not isinstance(pdu, dict):
            raise bad_json("The event must be a JSON object")
        event = self._shape_checks(pdu, rv, origin, room_id, event_id, membership)
        if not check_content_hash(pdu):
            raise invalid_param("The event's content hash does not match")
        signed = await self._maybe_countersign(event, pdu) if membership == "join" else pdu
        keys = await self._engine.fetch_keys_for([signed], rv)
        try:
            checked = check_pdu(signed, rv, keys)
        except SignatureError as e:
            raise invalid_param(f"Signature check failed: {e}") from None
        except InvalidEventError as e:
            raise bad_json(f"Invalid event: {e}") from None
        await self._check_against_current(checked)
        return origin, rv, signed

    def _shape_checks(
        self,
        pdu: dict[str, Any],
        rv: RoomVersion,
        origin: str,
        room_id: str,
        event_id: str,
        membership: str,
        *,
        target_local: bool = False,
    ) -> Event:
        try:
            event = Event.from_pdu(pdu, rv)
        except InvalidEventError as e:
            raise bad_json(f"Invalid event: {e}") from None
        if event.event_id != event_id:
            raise invalid_param("The event ID does not match the path")
        if event.room_id != room_id:
            raise invalid_param("The event's room_id does not match the path")
        if event.type != MEMBER:
            raise invalid_param(f"Not an {MEMBER} event")
        if event.membership != membership:
            raise invalid_param(f"Not a {membership} event")
        if domain_of(event.sender) != origin:
            raise invalid_param("The sender is not a user of the requesting server")
        if target_local:
            target = event.state_key
            if target is None or domain_of(target) != self._server_name:
                raise invalid_param("The invited user is not a user of this server")
        elif event.state_key != event.sender:
            raise invalid_param("The state_key must be the sender")
        return event

    async def _append(
        self, request: ApiRequest, membership: str
    ) -> tuple[Event, dict[tuple[str, str], str]]:
        origin, rv, pdu = await self._validated(request, membership)
        event, before = await self._engine.receive_membership_event(
            origin,
            pdu,
            room_id=request.path_params["roomId"],
            expected_membership=membership,
            event_id=request.path_params["eventId"],
        )
        log.info(
            "{origin} {membership} {user} in {room_id}: {event_id}",
            origin=origin,
            membership=membership,
            user=event.sender,
            room_id=event.room_id,
            event_id=event.event_id,
        )
        return event, before

    async def _send_join(self, request: ApiRequest) -> dict[str, Any]:
        event, before = await self._append(request, "join")
        omit = request.arg("omit_members", "false") == "true"
        return await self._join_response(event, before, omit_members=omit)

    async def on_send_join_v1(self, request: ApiRequest) -> JsonResponse:
        """``PUT /v1/send_join/{roomId}/{eventId}``: ``[200, {...}]``."""
        return 200, [200, await self._send_join(request)]

    async def on_send_join_v2(self, request: ApiRequest) -> JsonResponse:
        """``PUT /v2/send_join/{roomId}/{eventId}[?omit_members=true]``."""
        return 200, await self._send_join(request)

    async def on_send_leave_v1(self, request: ApiRequest) -> JsonResponse:
        """``PUT /v1/send_leave/{roomId}/{eventId}``: ``[200, {}]``."""
        await self._append(request, "leave")
        return 200, [200, {}]

    async def on_send_leave_v2(self, request: ApiRequest) -> JsonResponse:
        """``PUT /v2/send_leave/{roomId}/{eventId}``: ``{}``."""
        await self._append(request, "leave")
        return 200, {}

    async def on_send_knock(self, request: ApiRequest) -> JsonResponse:
        """``PUT /v1/send_knock/{roomId}/{eventId}``: ``{knock_room_state}``."""
        event, before = await self._append(request, "knock")
        ids = [before[(t, "")] for t in STRIPPED_STATE_TYPES if (t, "") in before]
        events = await self._store.get_events(ids)
        # spec (v1.16): entries formatted as the room version's PDUs.
        return 200, {"knock_room_state": [events[e].pdu for e in ids if e in events]}

    # -- the send_join answer ------------------------------------------------------

    async def _heroes(
        self, room_id: str, state: Mapping[tuple[str, str], str], joiner: str
    ) -> list[str]:
        """Member event IDs (in ``state``) of the room's heroes, when the room
        has no name nor canonical alias; otherwise none."""
        for key in (("m.room.name", ""), ("m.room.canonical_alias", "")):
            eid = state.get(key)
            if eid is not None:
                ev = await self._store.get_event(eid)
                if ev is not None and (ev.content.get("name") or ev.content.get("alias")):
                    return []
        users = await self._store.get_room_heroes(room_id, exclude=joiner, limit=HEROES)
        return [state[(MEMBER, u)] for u in users if (MEMBER, u) in state]

    async def _join_response(
        self, event: Event, before: Mapping[tuple[str, str], str], *, omit_members: bool
    ) -> dict[str, Any]:
        state_ids = list(before.values())
        if omit_members:
            keep = set(await self._heroes(event.room_id, before, event.sender))
            state_ids = [eid for (t, _sk), eid in before.items() if t != MEMBER or eid in keep]
        # Read in batches while the answer is sent: the stored JSON texts go
        # out as they are (a 10,000-member room is never decoded into Events
        # nor encoded again, rawjson.py).
        answer = StateAnswer(
            self._store,
            state_ids,
            chain_from=[*state_ids, event.event_id],
            chain_extra=event.auth_event_ids,
            chain_exclude=state_ids if omit_members else (),
        )
        body: dict[str, Any] = {
            "origin": self._server_name,
            # Redacted where an accepted redaction applies, as /state serves them.
            "state": answer.state(),
            "auth_chain": answer.auth_chain(),
            "event": event.pdu,
            "members_omitted": omit_members,
        }
        if omit_members:
            # From the membership rows of the current state (no event loads):
            # the servers with a joined user other than the joiner.
            servers = await self._store.get_joined_servers(event.room_id, except_user=event.sender)
            body["servers_in_room"] = sorted(servers - {""})
        return body

    # -- invites -----------------------------------------------------------------------

    async def on_invite_v1(self, request: ApiRequest) -> JsonResponse:
        """``PUT /v1/invite/{roomId}/{eventId}``: body is the event; ``[200, {event}]``."""
        pdu = request.content
        if not isinstance(pdu, dict):
            raise bad_json("The event must be a JSON object")
        rv = await self._store.get_room_version(request.path_params["roomId"])
        if rv is None:
            rv = get_room_version(V1_INVITE_ROOM_VERSION)
        unsigned = pdu.get("unsigned")
        state = unsigned.get("invite_room_state") if isinstance(unsigned, dict) else None
        signed = await self._invite(request, pdu, rv, state)
        return 200, [200, {"event": signed}]

    async def on_invite_v2(self, request: ApiRequest) -> JsonResponse:
        """``PUT /v2/invite/{roomId}/{eventId}``: ``{event, room_version,
        invite_room_state}``; answers ``{event}``."""
        body = request.content
        if not isinstance(body, dict):
            raise bad_json("Body must be a JSON object")
        version = body.get("room_version")
        if not isinstance(version, str):
            raise MatrixError(400, "M_MISSING_PARAM", "Missing room_version")
        rv = KNOWN_ROOM_VERSIONS.get(version)
        if rv is None:
            raise MatrixError(
                400,
                "M_INCOMPATIBLE_ROOM_VERSION",
                f"Room version {version!r} is not supported by this server",
                room_version=version,
            )
        pdu = body.get("event")
        if not isinstance(pdu, dict):
            raise bad_json("event must be a JSON object")
        signed = await self._invite(request, pdu, rv, body.get("invite_room_state"))
        return 200, {"event": signed}

    async def _invite(
        self, request: ApiRequest, pdu: dict[str, Any], rv: RoomVersion, room_state: Any
    ) -> dict[str, Any]:
        room_id = request.path_params["roomId"]
        origin = request.origin
        if origin is None:
            raise forbidden("Requests must be authenticated")
        known = await self._store.get_room_version(room_id)
        if known is not None:
            if known.identifier != rv.identifier:
                raise invalid_param("room_version does not match the room")
            await check_server_acl(self._store, room_id, origin)
        event = self._shape_checks(
            pdu, rv, origin, room_id, request.path_params["eventId"], "invite", target_local=True
        )
        if not check_content_hash(pdu):
            raise invalid_param("The event's content hash does not match")
        stripped = await self._checked_invite_state(room_state, rv, room_id)
        keys = await self._engine.fetch_keys_for([pdu], rv)
        try:
            checked = check_pdu(pdu, rv, keys)
        except SignatureError as e:
            raise invalid_param(f"Signature check failed: {e}") from None
        except InvalidEventError as e:
            raise bad_json(f"Invalid event: {e}") from None
        resident = known is not None and await self._store.is_host_joined(
            room_id, self._server_name
        )
        if resident:
            await self._check_against_current(checked)
        signed = dict(pdu)
        sign_event(signed, rv, self._server_name, self._engine.signing_key)
        assert event.state_key is not None
        await self._store.store_received_invite(
            room_id=room_id,
            user_id=event.state_key,
            event_id=event.event_id,
            room_version=rv.identifier,
            sender=event.sender,
            event=signed,
            stripped_state=stripped,
        )
        # The invitee's /sync long poll lists received invites (clientapi.sync).
        self._engine.notifier.wake_user(event.state_key)
        log.info(
            "{sender} invited {user} to {room_id}",
            sender=event.sender,
            user=event.state_key,
            room_id=room_id,
        )
        if resident:
            await self._take_into_room(origin, signed, checked)
        return signed

    async def _take_into_room(self, origin: str, pdu: dict[str, Any], event: Event) -> None:
        """Append an invite to a room we are in, so the invitee can join at once.

        The inviting server also sends it through ``/send``; taking it now
        closes the window in which our user sees the invite but the room's
        state here does not have it yet. Only done when we have its
        prev_events (no fetching while the inviter waits for our answer); any
        failure is left to the ``/send`` copy.
        """
        prevs = set(event.prev_event_ids)
        if prevs - await self._store.have_events(prevs):
            return
        try:
            await self._engine.receive_pdu(origin, pdu, room_version=event.room_version)
        except (InvalidEventError, SignatureError, AuthError, MatrixError, RemoteError) as e:
            log.warn(
                "invite {event_id} not taken into {room_id} now: {error}",
                event_id=event.event_id,
                room_id=event.room_id,
                error=e,
            )

    async def _checked_invite_state(
        self, room_state: Any, rv: RoomVersion, room_id: str
    ) -> list[dict[str, Any]]:
        """Stripped forms of ``invite_room_state``.

        spec (v1.16): the entries are the room version's PDUs and include the
        create event; servers SHOULD refuse invites that break this in room
        versions after 11 (and MAY before), but SHOULD consider their
        ecosystem while servers migrate. From version 12 (whose room ID is
        derived from the create event) we require the create event as a
        valid, signed PDU of this room and check every other entry that
        comes as a full PDU (signed, of this room); entries in the older
        stripped form are still taken, with a warning. Before 12 we keep
        what is well-formed.
        """
        entries = [e for e in _as_list(room_state) if isinstance(e, dict)]
        if not rv.room_id_from_create:
            return [s for s in (stripped_state_event(e) for e in entries) if s is not None]
        if not any(e.get("type") == "m.room.create" for e in entries):
            raise invalid_param("Create event not among invite state entries.")
        full = [e for e in entries if "signatures" in e or e.get("type") == "m.room.create"]
        keys = await self._engine.fetch_keys_for(full, rv)
        out: list[dict[str, Any]] = []
        legacy = 0
        for entry in entries:
            if not any(entry is f for f in full):
                stripped = stripped_state_event(entry)
                if stripped is None:
                    raise invalid_param("An invite_room_state entry is not a state event")
                legacy += 1
                out.append(stripped)
                continue
            try:
                checked = check_pdu(entry, rv, keys, backfilled=True)
            except (InvalidEventError, SignatureError) as e:
                raise invalid_param(f"Invalid invite_room_state entry: {e}") from None
            if checked.type == "m.room.create":
                if room_id_from_create_event_id(checked.event_id) != room_id:
                    raise invalid_param("The create event is for another room")
            elif checked.room_id != room_id:
                raise invalid_param("An invite_room_state entry is for another room")
            stripped = stripped_state_event(checked.pdu)
            if stripped is None:
                raise invalid_param("An invite_room_state entry is not a state event")
            out.append(stripped)
        if legacy:
            log.warn(
                "invite to {room_id}: {n} invite_room_state entries in stripped form",
                room_id=room_id,
                n=legacy,
            )
        return out
