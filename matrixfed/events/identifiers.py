"""The grammar of server names, user IDs, room IDs and event IDs.

Pure string checks from appendices.md "Identifier Grammar" and the room version
specs. They accept what the spec says servers MUST accept over federation (for
user IDs, the historical grammar: any localpart without ``:`` or NUL), so a
check here failing means the value can never be valid, not merely unusual.
"""

from __future__ import annotations

import re

# spec: appendices "Event IDs", "Room IDs", "User Identifiers": whole ID incl. sigil.
MAX_ID_BYTES = 255

# spec: appendices "Server Name": hostname [":" port], hostname an IPv4 literal, a
# bracketed IPv6 literal (2-45 chars of hex digits, ":" and ".") or a DNS name of
# 1-255 chars of letters, digits, "-" and "." (an IPv4 literal is also such a name).
_SERVER_NAME_RE = re.compile(
    r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.\-]{1,255})(?::[0-9]{1,5})?",
    re.ASCII,
)

# A SHA-256 reference hash in unpadded base64 is 43 characters.
_HASH_B64_LEN = 43
_STD_B64_RE = re.compile(rf"[A-Za-z0-9+/]{{{_HASH_B64_LEN}}}", re.ASCII)
_URLSAFE_B64_RE = re.compile(rf"[A-Za-z0-9_\-]{{{_HASH_B64_LEN}}}", re.ASCII)


def is_valid_server_name(name: str) -> bool:
    """True if ``name`` matches the spec's server name grammar."""
    return _SERVER_NAME_RE.fullmatch(name) is not None


def utf8_len(value: str) -> int:
    """Length of ``value`` in UTF-8 bytes; -1 if it cannot be encoded (lone surrogate)."""
    if value.isascii():
        return len(value)
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return -1


def domain_of(identifier: str) -> str | None:
    """The server part of ``&localpart:domain`` (everything after the first ``:``).

    Returns None when there is no ``:``. The localpart of every sigilled ID
    excludes ``:``, so the first one always separates localpart and domain.
    """
    _, sep, domain = identifier.partition(":")
    return domain if sep else None


def is_valid_user_id(user_id: str, *, check_length: bool = True) -> bool:
    """True if ``user_id`` is acceptable as an event ``sender`` over federation.

    The historical grammar applies (appendices "Historical User IDs"): the
    localpart may be empty or hold any code point except ``:`` and NUL; the
    domain must be a valid server name; the whole ID at most 255 bytes.

    Args:
        user_id: the candidate.
        check_length: False to check the grammar only (PDU validation applies
            the length limit itself, per room version).
    """
    if not user_id.startswith("@"):
        return False
    localpart, sep, domain = user_id[1:].partition(":")
    if not sep or "\x00" in localpart:
        return False
    if not is_valid_server_name(domain):
        return False
    n = utf8_len(user_id)
    return n >= 0 and (not check_length or n <= MAX_ID_BYTES)


def is_valid_v1_event_id(event_id: str, *, check_length: bool = True) -> bool:
    """Room versions 1 and 2: ``$opaque_id:domain`` with a valid server name.

    Args:
        event_id: the candidate.
        check_length: False to skip the 255-byte limit.
    """
    if not event_id.startswith("$") or "\x00" in event_id:
        return False
    domain = domain_of(event_id)
    if domain is None or not is_valid_server_name(domain):
        return False
    n = utf8_len(event_id)
    return n >= 0 and (not check_length or n <= MAX_ID_BYTES)


def is_valid_hash_event_id(event_id: str, *, urlsafe: bool) -> bool:
    """Room versions 3+: ``$`` and the unpadded base64 of a SHA-256 hash.

    Args:
        event_id: the candidate.
        urlsafe: True for room versions 4+ (URL-safe alphabet), False for v3.
    """
    if len(event_id) != _HASH_B64_LEN + 1 or event_id[0] != "$":
        return False
    pattern = _URLSAFE_B64_RE if urlsafe else _STD_B64_RE
    return pattern.fullmatch(event_id, 1) is not None


def is_valid_hash_room_id(room_id: str) -> bool:
    """Room version 12: ``!`` and the URL-safe unpadded base64 of a SHA-256 hash."""
    if len(room_id) != _HASH_B64_LEN + 1 or room_id[0] != "!":
        return False
    return _URLSAFE_B64_RE.fullmatch(room_id, 1) is not None


def is_valid_domain_room_id(room_id: str, *, check_length: bool = True) -> bool:
    """Room versions 1-11: ``!opaque_id:domain``, at most 255 bytes.

    Only the shape is checked: the domain is there to avoid collisions and is
    never contacted, so any non-empty string without NUL is accepted for it.

    Args:
        room_id: the candidate.
        check_length: False to skip the 255-byte limit.
    """
    if not room_id.startswith("!") or "\x00" in room_id:
        return False
    domain = domain_of(room_id)
    if not domain:
        return False
    n = utf8_len(room_id)
    return n >= 0 and (not check_length or n <= MAX_ID_BYTES)
