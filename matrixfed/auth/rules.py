"""The authorisation rules of room versions 1-12.

Two entry points, matching how the spec splits the rules:

- ``check_auth_events_refs(event, auth_events, rejected=...)``: the rules
  "considering the event's auth_events" (rule 2 in v1-v11, 3 in v12): every
  cited auth event is known, not rejected, in the same room, one per
  (type, state_key), of a type the auth events selection allows; v1-v11 must
  cite the create event, v12 must not.
- ``check_auth(event, state)``: every other rule, against a state map keyed by
  (type, state_key). The map is the event's own auth events or the room state
  before the event, as the caller decides; for v12 it must contain the create
  event even though auth_events do not cite it.

Both return None when the event is allowed and raise ``AuthError`` with a
human-readable reason when it is not. They are pure: no I/O, no mutation of
their inputs, no copies of event content. ``check_auth`` reads the power levels
lazily through one ``PowerLevels`` view per call, so a membership check in a
room with a large power levels event stays cheap.

Not checked here: the signature from the server of
``join_authorised_via_users_server`` (v8+ rule 4.2); that belongs to signature
verification, which sees the server keys. The third-party invite ``signed``
block is verified here, against the public keys in the room state.

Choices where the spec is silent, following the reference implementation:
no join rules event means the "invite" join rule; ``m.federate`` forbids
federation for any value other than ``true``.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from typing import Any

from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json
from unpaddedbase64 import decode_base64

from matrixfed.auth.identifiers import is_user_id_shaped, is_valid_user_id
from matrixfed.auth.power_levels import (
    LEVEL_KEYS,
    PowerLevels,
    is_strict_int,
    parse_power_level,
)
from matrixfed.auth.selection import (
    CREATE,
    CREATE_KEY,
    JOIN_RULES_KEY,
    MEMBER,
    POWER_LEVELS,
    POWER_LEVELS_KEY,
    THIRD_PARTY_INVITE,
    auth_types_for_event,
)
from matrixfed.errors import AuthError
from matrixfed.events.hashing import room_id_from_create_event_id
from matrixfed.events.model import Event
from matrixfed.events.room_versions import KNOWN_ROOM_VERSIONS, EventFormat, RoomVersion

ALIASES = "m.room.aliases"
REDACTION = "m.room.redaction"

# Membership values.
JOIN = "join"
INVITE = "invite"
LEAVE = "leave"
BAN = "ban"
KNOCK = "knock"

# Join rules.
PUBLIC = "public"
KNOCK_RULE = "knock"
RESTRICTED = "restricted"
KNOCK_RESTRICTED = "knock_restricted"
# The reference implementation reads a missing join rule as "invite".
DEFAULT_JOIN_RULE = "invite"

# The content key naming who authorised a restricted join (v8+).
AUTHORISING_USER = "join_authorised_via_users_server"
_ED25519_PREFIX = "ed25519:"


def auth_state_from_events(events: Iterable[Event]) -> dict[tuple[str, str], Event]:
    """Key the state events among ``events`` by (type, state_key).

    Non-state events are skipped; of two events with the same key, the last wins.
    """
    return {ev.state_tuple: ev for ev in events if ev.is_state()}


# --- auth_events references ------------------------------------------------


def check_auth_events_refs(
    event: Event,
    auth_events: Mapping[str, Event],
    *,
    rejected: Container[str] = frozenset(),
) -> None:
    """Check the rules about the auth events an event cites.

    Args:
        event: the event being authorised.
        auth_events: known events by event ID; must hold every cited auth event.
        rejected: IDs of events that were rejected.

    Raises:
        AuthError: a cited event is unknown, rejected, from another room,
            duplicates a (type, state_key), is not one the auth events selection
            allows, or (v1-v11) the create event is not cited, or (v12) it is.
    """
    rv = event.room_version
    pdu = event.pdu  # read directly: this runs once per received event
    event_type = pdu["type"]
    if event_type == CREATE:
        # Rule 1 decides create events before auth_events are considered.
        return
    allowed = auth_types_for_event(
        rv, event_type, pdu["sender"], pdu.get("state_key"), event.content
    )
    room_id = event.room_id
    forbid_create = rv.room_id_from_create
    seen: set[tuple[str, str]] = set()
    for auth_id in event.auth_event_ids:
        auth_event = auth_events.get(auth_id)
        if auth_event is None:
            raise AuthError(f"auth event {auth_id} is not known")
        if auth_id in rejected:
            raise AuthError(f"auth event {auth_id} was rejected")
        auth_pdu = auth_event.pdu
        if "state_key" not in auth_pdu:
            raise AuthError(f"auth event {auth_id} is not a state event")
        key = (auth_pdu["type"], auth_pdu["state_key"])
        if forbid_create and key == CREATE_KEY:
            raise AuthError("the create event must not be cited in auth_events")
        if auth_event.room_id != room_id:
            raise AuthError(f"auth event {auth_id} is in another room")
        if key in seen:
            raise AuthError(f"auth_events cite {key} more than once")
        if key not in allowed:
            raise AuthError(f"auth event {auth_id} {key} is not allowed for this event")
        seen.add(key)
    if not forbid_create and CREATE_KEY not in seen:
        raise AuthError("auth_events do not cite the create event")


# --- the rules ---------------------------------------------------------------


def _domain(identifier: str | None) -> str | None:
    if not isinstance(identifier, str):
        return None
    _, sep, domain = identifier.partition(":")
    return domain if sep else None


def _membership(state: Mapping[tuple[str, str], Event], user_id: str) -> str | None:
    member = state.get((MEMBER, user_id))
    return None if member is None else member.membership


def _redaction_has_own_rule(rv: RoomVersion) -> bool:
    # v1 and v2 (exactly the versions with event IDs in the PDU) authorise
    # redactions by redact level or by event ID domain; v3+ handle redactions
    # outside the auth rules.
    return rv.event_format is EventFormat.V1


def check_auth(event: Event, state: Mapping[tuple[str, str], Event]) -> None:
    """Check ``event`` against the authorisation rules of its room version.

    Args:
        event: the event to authorise.
        state: the auth-relevant state keyed by (type, state_key): the event's
            auth events or the room state before it. For v12 it must include
            the room's create event.

    Raises:
        AuthError: the event is not allowed; the message says which rule.
    """
    rv = event.room_version
    event_type = event.type
    if event_type == CREATE:
        _check_create(event)
        return

    create = state.get(CREATE_KEY)
    if create is None:
        raise AuthError("no m.room.create event in the auth state")
    if rv.room_id_from_create:
        if event.room_id != room_id_from_create_event_id(create.event_id):
            raise AuthError("room_id does not match the room's create event")
    elif create.room_id != event.room_id:
        raise AuthError("the create event in the auth state is for another room")

    if create.content.get("m.federate", True) is not True:
        if _domain(event.sender) != _domain(create.sender):
            raise AuthError("room does not federate and the sender is on another server")

    if rv.special_case_aliases_auth and event_type == ALIASES:
        state_key = event.state_key
        if state_key is None:
            raise AuthError("m.room.aliases event has no state_key")
        if state_key != _domain(event.sender):
            raise AuthError("m.room.aliases state_key is not the sender's server")
        return

    pl = PowerLevels(rv, state.get(POWER_LEVELS_KEY), create)

    if event_type == MEMBER:
        _check_member(event, state, pl, create)
        return

    sender = event.sender
    if _membership(state, sender) != JOIN:
        raise AuthError(f"{sender} is not joined to the room")

    sender_level = pl.user_level(sender)
    if event_type == THIRD_PARTY_INVITE:
        if sender_level < pl.named_level("invite"):
            raise AuthError(f"{sender} may not send third-party invites")
        return

    is_state = event.is_state()
    if pl.event_level(event_type, is_state) > sender_level:
        raise AuthError(f"{sender} lacks the power level to send {event_type}")

    state_key = event.state_key
    if state_key is not None and state_key.startswith("@") and state_key != sender:
        raise AuthError("state_key names another user")

    if event_type == POWER_LEVELS:
        _check_power_levels(event, state, pl, sender_level)
        return

    if event_type == REDACTION and _redaction_has_own_rule(rv):
        if sender_level >= pl.named_level("redact"):
            return
        redacts_domain = _domain(event.redacts)
        if redacts_domain is not None and redacts_domain == _domain(event.event_id):
            return
        raise AuthError(f"{sender} may not redact that event")


def _check_create(event: Event) -> None:
    rv = event.room_version
    content = event.content
    if event.prev_event_ids:
        raise AuthError("create event has prev_events")
    if rv.room_id_from_create:
        if "room_id" in event.pdu:
            raise AuthError("v12 create event must not have a room_id")
    else:
        room_domain = _domain(event.pdu.get("room_id"))
        if room_domain is None or room_domain != _domain(event.sender):
            raise AuthError("room_id and sender of the create event are on different servers")
    if "room_version" in content:
        version = content["room_version"]
        if not isinstance(version, str) or version not in KNOWN_ROOM_VERSIONS:
            raise AuthError("create event names an unknown room version")
    if rv.privileged_creators and "additional_creators" in content:
        additional = content["additional_creators"]
        if not isinstance(additional, list) or not all(is_valid_user_id(u) for u in additional):
            raise AuthError("additional_creators is not a list of valid user IDs")
    if not rv.msc2175_implicit_room_creator and "creator" not in content:
        raise AuthError("create event has no creator")


def _join_rule(state: Mapping[tuple[str, str], Event]) -> Any:
    join_rules = state.get(JOIN_RULES_KEY)
    if join_rules is None:
        return DEFAULT_JOIN_RULE
    return join_rules.content.get("join_rule", DEFAULT_JOIN_RULE)


def _is_creator_join(event: Event, create: Event, target: str) -> bool:
    """Rule: the only previous event is the create event and target is its creator."""
    prev = event.prev_event_ids
    if len(prev) != 1 or prev[0] != create.event_id:
        return False
    if event.room_version.msc2175_implicit_room_creator:
        return target == create.sender
    return target == create.content.get("creator")


def _check_member(
    event: Event,
    state: Mapping[tuple[str, str], Event],
    pl: PowerLevels,
    create: Event,
) -> None:
    rv = event.room_version
    target = event.state_key
    content = event.content
    if target is None or "membership" not in content:
        raise AuthError("m.room.member event needs a state_key and a membership")
    membership = content["membership"]
    sender = event.sender
    sender_membership = _membership(state, sender)
    target_membership = sender_membership if target == sender else _membership(state, target)

    if membership == JOIN:
        if _is_creator_join(event, create, target):
            return
        if sender != target:
            raise AuthError("cannot join on behalf of another user")
        if sender_membership == BAN:
            raise AuthError(f"{sender} is banned from the room")
        join_rule = _join_rule(state)
        if join_rule == INVITE or (rv.knock_join_rule and join_rule == KNOCK_RULE):
            if target_membership in (INVITE, JOIN):
                return
            raise AuthError(f"{sender} is not invited to the room")
        if (rv.restricted_join_rule and join_rule == RESTRICTED) or (
            rv.knock_restricted_join_rule and join_rule == KNOCK_RESTRICTED
        ):
            if target_membership in (INVITE, JOIN):
                return
            authoriser = content.get(AUTHORISING_USER)
            if not isinstance(authoriser, str):
                raise AuthError("restricted join names no authorising user")
            if _membership(state, authoriser) != JOIN:
                raise AuthError(f"authorising user {authoriser} is not joined to the room")
            if pl.user_level(authoriser) < pl.named_level("invite"):
                raise AuthError(f"authorising user {authoriser} may not invite")
            return
        if join_rule == PUBLIC:
            return
        raise AuthError(f"the join rule does not allow {sender} to join")

    if membership == INVITE:
        if "third_party_invite" in content:
            if target_membership == BAN:
                raise AuthError(f"{target} is banned from the room")
            _check_third_party_invite(event, state, target)
            return
        if sender_membership != JOIN:
            raise AuthError(f"{sender} is not joined to the room")
        if target_membership in (JOIN, BAN):
            raise AuthError(f"{target} is {target_membership} and cannot be invited")
        if pl.user_level(sender) >= pl.named_level("invite"):
            return
        raise AuthError(f"{sender} lacks the power level to invite")

    if membership == LEAVE:
        if sender == target:
            if sender_membership in (INVITE, JOIN) or (
                rv.knock_join_rule and sender_membership == KNOCK
            ):
                return
            raise AuthError(f"{sender} cannot leave from membership {sender_membership}")
        if sender_membership != JOIN:
            raise AuthError(f"{sender} is not joined to the room")
        sender_level = pl.user_level(sender)
        if target_membership == BAN and sender_level < pl.named_level("ban"):
            raise AuthError(f"{sender} lacks the power level to unban")
        if sender_level >= pl.named_level("kick") and pl.user_level(target) < sender_level:
            return
        raise AuthError(f"{sender} lacks the power level to kick {target}")

    if membership == BAN:
        if sender_membership != JOIN:
            raise AuthError(f"{sender} is not joined to the room")
        sender_level = pl.user_level(sender)
        if sender_level >= pl.named_level("ban") and pl.user_level(target) < sender_level:
            return
        raise AuthError(f"{sender} lacks the power level to ban {target}")

    if membership == KNOCK and rv.knock_join_rule:
        join_rule = _join_rule(state)
        if join_rule != KNOCK_RULE and not (
            rv.knock_restricted_join_rule and join_rule == KNOCK_RESTRICTED
        ):
            raise AuthError("the join rule does not allow knocking")
        if sender != target:
            raise AuthError("cannot knock on behalf of another user")
        if sender_membership not in (BAN, INVITE, JOIN):
            return
        raise AuthError(f"{sender} cannot knock from membership {sender_membership}")

    raise AuthError(f"unknown membership {membership!r}")


def _third_party_public_keys(invite_content: Mapping[str, Any]) -> list[str]:
    keys: list[str] = []
    single = invite_content.get("public_key")
    if isinstance(single, str):
        keys.append(single)
    listed = invite_content.get("public_keys")
    if isinstance(listed, list):
        for entry in listed:
            if isinstance(entry, dict) and isinstance(entry.get("public_key"), str):
                keys.append(entry["public_key"])
    return keys


def _check_third_party_invite(
    event: Event, state: Mapping[tuple[str, str], Event], target: str
) -> None:
    tpi = event.content["third_party_invite"]
    signed = tpi.get("signed") if isinstance(tpi, dict) else None
    if not isinstance(signed, dict):
        raise AuthError("third_party_invite has no signed block")
    mxid = signed.get("mxid")
    token = signed.get("token")
    if not isinstance(mxid, str) or not isinstance(token, str):
        raise AuthError("third_party_invite.signed lacks mxid or token")
    if mxid != target:
        raise AuthError("third_party_invite.signed.mxid does not match the state_key")
    invite_event = state.get((THIRD_PARTY_INVITE, token))
    if invite_event is None:
        raise AuthError("no m.room.third_party_invite event for the token")
    if invite_event.sender != event.sender:
        raise AuthError("sender did not send the m.room.third_party_invite event")
    signatures = signed.get("signatures")
    if isinstance(signatures, dict):
        for public_key in _third_party_public_keys(invite_event.content):
            if _signed_by(signed, signatures, public_key):
                return
    raise AuthError("third_party_invite.signed is not signed by the invite's keys")


def _signed_by(signed: dict[str, Any], signatures: dict[str, Any], public_key: str) -> bool:
    try:
        key_bytes = decode_base64(public_key)
    except ValueError:
        return False
    for signer, sigs in signatures.items():
        if not isinstance(sigs, dict):
            continue
        for key_id in sigs:
            if not isinstance(key_id, str) or not key_id.startswith(_ED25519_PREFIX):
                continue
            try:
                verify_key = decode_verify_key_bytes(key_id, key_bytes)
                verify_signed_json(signed, signer, verify_key)
            except (SignatureVerifyException, ValueError, TypeError):
                continue
            return True
    return False


# --- power levels ------------------------------------------------------------


def _int_map_ok(value: Any) -> bool:
    return isinstance(value, dict) and all(is_strict_int(v) for v in value.values())


def _check_power_levels(
    event: Event,
    state: Mapping[tuple[str, str], Event],
    pl: PowerLevels,
    sender_level: int | float,
) -> None:
    rv = event.room_version
    content = event.content
    if rv.integer_power_levels:
        for key in LEVEL_KEYS:
            if key in content and not is_strict_int(content[key]):
                raise AuthError(f"power levels {key} is not an integer")
        for key in ("events", "notifications"):
            if key in content and not _int_map_ok(content[key]):
                raise AuthError(f"power levels {key} is not an object of integers")

    users = content.get("users")
    if "users" in content:
        if not isinstance(users, dict):
            raise AuthError("power levels users is not an object")
        for user_id, level in users.items():
            if not is_user_id_shaped(user_id):
                raise AuthError(f"power levels users has an invalid user ID {user_id!r}")
            if parse_power_level(level, rv) is None:
                raise AuthError(f"power levels users has an invalid level for {user_id}")
    if rv.privileged_creators and isinstance(users, dict):
        for creator in pl.creators:
            if creator in users:
                raise AuthError(f"room creator {creator} cannot be listed in power levels users")

    current = pl.event
    if current is None:
        return
    old = current.content
    sender = event.sender

    for key in LEVEL_KEYS:
        old_level, new_level = _pair(old, content, key, rv)
        if old_level == new_level:
            continue
        if old_level is not None and old_level > sender_level:
            raise AuthError(f"{sender} cannot change {key} from above their own level")
        if new_level is not None and new_level > sender_level:
            raise AuthError(f"{sender} cannot set {key} above their own level")

    maps = ("events", "notifications") if rv.limit_notifications_power_levels else ("events",)
    for map_key in maps:
        old_map, new_map = _maps(old, content, map_key)
        for name in old_map.keys() | new_map.keys():
            old_level, new_level = _pair(old_map, new_map, name, rv)
            if old_level == new_level:
                continue
            if old_level is not None and old_level > sender_level:
                raise AuthError(f"{sender} cannot change {map_key}[{name}] from above their level")
            if new_level is not None and new_level > sender_level:
                raise AuthError(f"{sender} cannot set {map_key}[{name}] above their level")

    old_users, new_users = _maps(old, content, "users")
    for user_id in old_users.keys() | new_users.keys():
        old_level, new_level = _pair(old_users, new_users, user_id, rv)
        if old_level == new_level:
            continue
        if old_level is not None and user_id != sender and old_level >= sender_level:
            raise AuthError(f"{sender} cannot change the level of {user_id}")
        if new_level is not None and new_level > sender_level:
            raise AuthError(f"{sender} cannot give {user_id} a level above their own")


def _maps(
    old: Mapping[str, Any], new: Mapping[str, Any], key: str
) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    old_map = old.get(key)
    new_map = new.get(key)
    if key in new and not isinstance(new_map, dict):
        raise AuthError(f"power levels {key} is not an object")
    return (
        old_map if isinstance(old_map, dict) else {},
        new_map if isinstance(new_map, dict) else {},
    )


def _pair(
    old: Mapping[str, Any], new: Mapping[str, Any], key: str, rv: RoomVersion
) -> tuple[int | None, int | None]:
    """Parsed (old, new) values of ``key``; None where absent.

    A new value that does not parse rejects the event; an old one that does not
    parse counts as absent.
    """
    old_level = parse_power_level(old[key], rv) if key in old else None
    if key not in new:
        return old_level, None
    new_level = parse_power_level(new[key], rv)
    if new_level is None:
        raise AuthError(f"power level {key!r} has an invalid value")
    return old_level, new_level
