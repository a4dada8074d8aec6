"""Typed errors shared by every layer.

``MatrixError`` is what an HTTP handler raises to answer with the spec's
``{"errcode": ..., "error": ...}`` body; the resource wrapper renders it.
``RemoteError`` describes a failed outbound call and says whether it is worth
retrying, so backoff and the join coordinator decide on facts, not strings.

This module is pure: no Twisted imports, usable by the protocol core.
"""

from __future__ import annotations

from typing import Any


class MatrixError(Exception):
    """An error with an HTTP status and a Matrix errcode."""

    def __init__(
        self,
        code: int,
        errcode: str,
        message: str,
        **extra: Any,
    ) -> None:
        super().__init__(f"{code} {errcode}: {message}")
        self.code = code
        self.errcode = errcode
        self.message = message
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"errcode": self.errcode, "error": self.message}
        body.update(self.extra)
        return body


def forbidden(message: str) -> MatrixError:
    return MatrixError(403, "M_FORBIDDEN", message)


def not_found(message: str = "Not found") -> MatrixError:
    return MatrixError(404, "M_NOT_FOUND", message)


def bad_json(message: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", message)


def invalid_param(message: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", message)


def unrecognized(code: int = 404, message: str = "Unrecognized request") -> MatrixError:
    return MatrixError(code, "M_UNRECOGNIZED", message)


def unauthorized(message: str) -> MatrixError:
    return MatrixError(401, "M_UNAUTHORIZED", message)


class RemoteError(Exception):
    """An outbound federation request failed.

    Attributes:
        destination: the server name we were talking to.
        reachable: False when no HTTP answer came back (DNS, TCP, TLS, timeout).
        transient: True when trying the same server again later may succeed.
        code: the HTTP status if an HTTP answer came back.
        errcode: the Matrix errcode of the answer, if it had one.
    """

    def __init__(
        self,
        destination: str,
        message: str,
        *,
        reachable: bool,
        transient: bool,
        code: int | None = None,
        errcode: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(f"{destination}: {message}")
        self.destination = destination
        self.message = message
        self.reachable = reachable
        self.transient = transient
        self.code = code
        self.errcode = errcode
        self.body = body


class InvalidEventError(ValueError):
    """A PDU is malformed for its room version (format, limits, JSON)."""


class SignatureError(ValueError):
    """An event or object fails signature verification."""


class AuthError(ValueError):
    """An event is not allowed by the authorisation rules."""


class EventSizeError(InvalidEventError):
    """A PDU breaks a size limit (the whole PDU or one of its identifiers).

    Attributes:
        rejectable: True when the event must be kept and marked rejected instead
            of dropped. Room versions 1-10 measured the 255 limits in code points
            in practice (Synapse did until 2023), so an event there that fits in
            code points but not in bytes may already be part of a room's history:
            dropping it would break the room.
        event: for a rejectable error raised once the event's signatures and
            hash were checked (matrixfed.events.checks), the checked Event, so
            the caller can store it as rejected; otherwise None.
    """

    def __init__(self, message: str, *, rejectable: bool = False, event: Any = None) -> None:
        super().__init__(message)
        self.rejectable = rejectable
        self.event = event
