"""Server ACLs (``m.room.server_acl``): which servers may take part in a room.

``server_is_allowed(acl_content, server_name)`` applies the spec's order
(client-server API, ``m.room.server_acl``):

1. no ACL event in the room state: allow (callers pass ``None``);
2. an IP literal server name when ``allow_ip_literals`` is ``false``: deny;
3. a match in ``deny``: deny;
4. a match in ``allow``: allow;
5. otherwise deny.

Globs (appendices "Glob-style matching": ``*`` any run, ``?`` one character)
match case-insensitively against the server name without its port. Malformed
content is read leniently the way the spec's defaults say: a non-list
``allow``/``deny`` is empty, a non-boolean ``allow_ip_literals`` is ``true``,
non-string entries are ignored.

``check_server_acl(store, room_id, server_name)`` reads the room's current ACL
and raises ``403 M_FORBIDDEN`` for a denied server; the resident endpoints and
``/send`` (per PDU and per room-scoped EDU) use it. Pure apart from that one
store read.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping
from typing import Any, Protocol

from matrixfed.errors import MatrixError
from matrixfed.events.model import Event

__all__ = [
    "SERVER_ACL",
    "AclStore",
    "check_server_acl",
    "server_allowed_in_room",
    "server_is_allowed",
    "strip_port",
]

SERVER_ACL = "m.room.server_acl"
# Compiled globs kept per process; rooms share a handful of ACL patterns.
GLOB_CACHE_SIZE = 1024


class AclStore(Protocol):
    """The part of the store the ACL check reads."""

    async def get_current_state_event_id(
        self, room_id: str, event_type: str, state_key: str
    ) -> str | None: ...

    async def get_event(self, event_id: str) -> Event | None: ...


def strip_port(server_name: str) -> str:
    """The host part of a server name (IPv6 brackets kept), lower-cased."""
    host = server_name
    if host.startswith("["):
        end = host.find("]")
        if end != -1:
            host = host[: end + 1]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.lower()


def _is_ip_literal(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=GLOB_CACHE_SIZE)
def _glob_re(pattern: str) -> re.Pattern[str]:
    parts = []
    for ch in pattern.lower():
        if ch == "*":
            parts.append(".*")
        elif ch == "?":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def _matches_any(host: str, patterns: Any) -> bool:
    if not isinstance(patterns, list):
        return False
    return any(isinstance(p, str) and _glob_re(p).fullmatch(host) for p in patterns)


def server_is_allowed(acl_content: Mapping[str, Any] | None, server_name: str) -> bool:
    """Whether ``server_name`` passes the ACL whose content is ``acl_content``.

    Args:
        acl_content: the ``content`` of the room's ``m.room.server_acl`` event,
            or None when the room has none (everyone allowed).
        server_name: the server asking (a port, if any, is ignored).

    Returns:
        True if allowed.
    """
    if acl_content is None:
        return True
    host = strip_port(server_name)
    allow_ip = acl_content.get("allow_ip_literals", True)
    if allow_ip is False and _is_ip_literal(host):
        return False
    if _matches_any(host, acl_content.get("deny")):
        return False
    return _matches_any(host, acl_content.get("allow"))


async def server_allowed_in_room(store: AclStore, room_id: str, server_name: str) -> bool:
    """Whether the room's current server ACL allows ``server_name``."""
    event_id = await store.get_current_state_event_id(room_id, SERVER_ACL, "")
    if event_id is None:
        return True
    event = await store.get_event(event_id)
    if event is None:
        return True
    return server_is_allowed(event.content, server_name)


async def check_server_acl(store: AclStore, room_id: str, server_name: str) -> None:
    """Raise ``403 M_FORBIDDEN`` if the room's server ACL denies ``server_name``.

    Raises:
        MatrixError: 403 M_FORBIDDEN when denied.
    """
    if not await server_allowed_in_room(store, room_id, server_name):
        raise MatrixError(403, "M_FORBIDDEN", f"Server {server_name} is banned from this room")
