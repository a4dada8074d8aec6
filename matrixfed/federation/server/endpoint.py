"""Declarative HTTP endpoints: what a handler sees and what it declares.

An ``Endpoint`` names its method, a path template such as
``/_matrix/federation/v1/make_join/{roomId}/{userId}``, how it is authenticated
and an async handler. The handler receives an ``ApiRequest`` whose ``origin``
is already authenticated, whose path parameters are percent-decoded and whose
body is already parsed JSON, and returns ``(status, json_body)``. Everything
else (routing, size limits, parsing, X-Matrix, error rendering) is done once,
in ``matrixfed.federation.server.resource.JsonResource``.

This module holds plain data and matching logic; no I/O.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

import attrs

__all__ = [
    "ApiRequest",
    "AuthMode",
    "Endpoint",
    "Handler",
    "JsonResponse",
]

# (HTTP status, JSON-serialisable body). Bodies are usually objects; v1
# send_join/send_leave answer with an array, hence Any.
JsonResponse = tuple[int, Any]

_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class AuthMode(enum.Enum):
    """How a request to an endpoint is authenticated."""

    # An X-Matrix header must be present and valid; ``origin`` is set.
    REQUIRED = "required"
    # Verified if present (invalid -> 401); ``origin`` is None when absent.
    OPTIONAL = "optional"
    # Never looked at, even if sent (the key endpoints: Synapse signs its key
    # requests and they must not fail because of it).
    NONE = "none"


@attrs.frozen(slots=True)
class ApiRequest:
    """One request as a handler sees it.

    Attributes:
        method: "GET", "PUT", ...
        uri: the raw request target (path and query exactly as sent).
        path: the raw path (percent-encoded, no query).
        origin: the authenticated server name, or None when not authenticated.
        path_params: template parameters, percent-decoded.
        query: query parameters, decoded; every value of a repeated parameter.
        content: the parsed JSON body, or None when there was no body.
        headers: lower-cased header name -> values.
    """

    method: str
    uri: str
    path: str
    origin: str | None
    path_params: Mapping[str, str]
    query: Mapping[str, Sequence[str]]
    content: Any
    headers: Mapping[str, Sequence[str]] = attrs.field(factory=dict)

    def arg(self, name: str, default: str | None = None) -> str | None:
        """The first value of query parameter ``name``, or ``default``."""
        values = self.query.get(name)
        return values[0] if values else default

    def args(self, name: str) -> Sequence[str]:
        """All values of query parameter ``name`` (empty if absent)."""
        return self.query.get(name, ())

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        values = self.headers.get(name.lower())
        return values[0] if values else None


Handler = Callable[[ApiRequest], Awaitable[JsonResponse]]


def _upper(method: str) -> str:
    return method.upper()


def _compile(template: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    if not template.startswith("/"):
        raise ValueError(f"path template {template!r} must start with '/'")
    names: list[str] = []
    pattern = ""
    pos = 0
    for m in _PARAM_RE.finditer(template):
        literal = template[pos : m.start()]
        if "{" in literal or "}" in literal:
            raise ValueError(f"malformed path template {template!r}")
        pattern += re.escape(literal)
        name = m.group(1)
        if name in names:
            raise ValueError(f"path template {template!r} repeats {{{name}}}")
        names.append(name)
        # One path segment: parameters are percent-encoded, so '/' never appears.
        pattern += f"(?P<{name}>[^/]+)"
        pos = m.end()
    tail = template[pos:]
    if "{" in tail or "}" in tail:
        raise ValueError(f"malformed path template {template!r}")
    pattern += re.escape(tail.rstrip("/"))
    # A trailing slash is tolerated: some servers send one (Synapse accepts it).
    return re.compile(pattern + "/?"), tuple(names)


@attrs.frozen(slots=True)
class Endpoint:
    """One HTTP endpoint.

    Attributes:
        method: the HTTP method, upper case.
        path: the path template; ``{name}`` matches one percent-encoded segment.
        handler: ``async (ApiRequest) -> (status, json)``.
        auth: how requests are authenticated (default: X-Matrix required).
        name: a label for logs (default: the handler's qualified name).
    """

    method: str = attrs.field(converter=_upper)
    path: str
    handler: Handler
    auth: AuthMode = AuthMode.REQUIRED
    name: str = attrs.field(
        default=attrs.Factory(
            lambda self: getattr(self.handler, "__qualname__", repr(self.handler)),
            takes_self=True,
        )
    )
    _pattern: re.Pattern[str] = attrs.field(init=False, repr=False, eq=False)
    param_names: tuple[str, ...] = attrs.field(init=False, eq=False)

    def __attrs_post_init__(self) -> None:
        pattern, names = _compile(self.path)
        object.__setattr__(self, "_pattern", pattern)
        object.__setattr__(self, "param_names", names)

    def match(self, raw_path: str) -> dict[str, str] | None:
        """Match a raw (percent-encoded) path.

        Returns:
            The percent-decoded parameters, or None if the path does not match.

        Raises:
            UnicodeDecodeError: a parameter does not decode to UTF-8.
        """
        m = self._pattern.fullmatch(raw_path)
        if m is None:
            return None
        return {k: unquote(v, errors="strict") for k, v in m.groupdict().items()}
