"""User ID and server name checks as the auth rules need them.

Two strengths, because the network holds history that the current grammar
forbids (appendices.md, "Historical User IDs"):

- ``is_user_id_shaped``: "@", a localpart without ":" or NUL, ":" and a
  non-empty domain. This is what ``m.room.power_levels`` ``users`` keys are held
  to, so rooms with historical user IDs keep working.
- ``is_valid_user_id``: the same, plus the domain must be a valid server name
  and the whole ID at most 255 bytes; used for v12 ``additional_creators``,
  which the spec holds to the validation applied to ``sender``.

Neither function raises.
"""

from __future__ import annotations

import re

# appendices.md: "The length of a user ID ... MUST NOT exceed 255 bytes."
MAX_USER_ID_BYTES = 255
# appendices.md, Server Name: dns-name = 1*255dns-char.
MAX_DNS_NAME_CHARS = 255

_SERVER_NAME_RE = re.compile(
    r"""
    (?:
        (?P<ipv6>\[[0-9A-Fa-f:.]{2,45}\])
      | (?P<dns>[0-9A-Za-z.\-]{1,255})
    )
    (?::(?P<port>[0-9]{1,5}))?
    """,
    re.VERBOSE | re.ASCII,
)
_IPV4_RE = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}", re.ASCII)


def is_valid_server_name(server_name: str) -> bool:
    """True if ``server_name`` matches the appendices' server name grammar."""
    match = _SERVER_NAME_RE.fullmatch(server_name)
    if match is None:
        return False
    dns = match.group("dns")
    if dns is not None and _IPV4_RE.fullmatch(dns):
        # A dotted quad is an IPv4 literal: each part must be 0-255.
        return all(int(part) <= 255 for part in dns.split("."))
    return True


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def is_user_id_shaped(user_id: object) -> bool:
    """True for "@localpart:domain" with any historical localpart.

    The localpart may be empty or hold any non-surrogate code point except ":"
    and NUL; the domain must be non-empty.
    """
    if not isinstance(user_id, str) or not user_id.startswith("@"):
        return False
    localpart, sep, domain = user_id[1:].partition(":")
    if not sep or not domain:
        return False
    return "\x00" not in localpart and not _has_surrogate(localpart)


def is_valid_user_id(user_id: object) -> bool:
    """True for a user ID acceptable as an event ``sender``.

    Historical localparts are accepted (see the module note); the domain must be
    a valid server name and the encoded ID at most 255 bytes.
    """
    if not isinstance(user_id, str) or not is_user_id_shaped(user_id):
        return False
    if _has_surrogate(user_id) or len(user_id.encode("utf-8")) > MAX_USER_ID_BYTES:
        return False
    return is_valid_server_name(user_id.split(":", 1)[1])
