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

# spec: appendices "Historical User IDs": "@", a localpart without ":" or NUL
# (possibly empty), ":", a server name. Lone surrogates are caught by utf8_len.
USER_ID_RE = re.compile(
    r"@[^:\x00]*:(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.\-]{1,255})(?::[0-9]{1,5})?"
)

# A SHA-256 reference hash in unpadded base64 is 43 characters.
_HASH_B64_LEN = 43
# spec: appendices "Room IDs" with a domain (room versions 1-11): "!", a
# localpart without ":" or NUL, ":", a domain (only used against collisions,
# never contacted: any non-empty text without NUL).
DOMAIN_ROOM_ID_RE = re.compile(r"![^:\x00]*:[^\x00]+")

# Event IDs of room version 3 (standard alphabet) and 4+ (URL-safe); v12 room IDs.
HASH_EVENT_ID_STD_RE = re.compile(rf"\$[A-Za-z0-9+/]{{{_HASH_B64_LEN}}}", re.ASCII)
HASH_EVENT_ID_URLSAFE_RE = re.compile(rf"\$[A-Za-z0-9_\-]{{{_HASH_B64_LEN}}}", re.ASCII)
HASH_ROOM_ID_RE = re.compile(rf"![A-Za-z0-9_\-]{{{_HASH_B64_LEN}}}", re.ASCII)


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
    if USER_ID_RE.fullmatch(user_id) is None:
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
    pattern = HASH_EVENT_ID_URLSAFE_RE if urlsafe else HASH_EVENT_ID_STD_RE
    return pattern.fullmatch(event_id) is not None


def is_valid_hash_room_id(room_id: str) -> bool:
    """Room version 12: ``!`` and the URL-safe unpadded base64 of a SHA-256 hash."""
    return HASH_ROOM_ID_RE.fullmatch(room_id) is not None


def is_valid_domain_room_id(room_id: str, *, check_length: bool = True) -> bool:
    """Room versions 1-11: ``!opaque_id:domain``, at most 255 bytes.

    Only the shape is checked: the domain is there to avoid collisions and is
    never contacted, so any non-empty string without NUL is accepted for it.

    Args:
        room_id: the candidate.
        check_length: False to skip the 255-byte limit.
    """
    if DOMAIN_ROOM_ID_RE.fullmatch(room_id) is None:
        return False
    n = utf8_len(room_id)
    return n >= 0 and (not check_length or n <= MAX_ID_BYTES)
