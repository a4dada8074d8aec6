"""What every client-server endpoint shares: access-token auth, paths, body checks.

Access-token authentication is declared by the handler, like X-Matrix auth is
declared by federation endpoints: ``auth.required(handler)`` wraps an
``async (ApiRequest, Requester) -> (status, json)`` handler into a plain
endpoint handler that first reads the token (``Authorization: Bearer`` or
``?access_token=``), hashes it and looks the hash up. A request without a token
is answered 401 ``M_MISSING_TOKEN``, an unknown token 401 ``M_UNKNOWN_TOKEN``
(both as the client-server spec says); the handler never runs.

``client_endpoints`` registers one handler under the ``v3`` prefix and the
older ``r0`` prefix, which some tools still use.

The body helpers raise the spec's 400 errors (``M_NOT_JSON``, ``M_BAD_JSON``,
``M_MISSING_PARAM``, ``M_INVALID_PARAM``) so handlers stay short.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from matrixfed.errors import MatrixError
from matrixfed.events.model import Event
from matrixfed.federation.server.endpoint import ApiRequest, AuthMode, Endpoint, JsonResponse
from matrixfed.storage.users import UserStore, hash_token

__all__ = [
    "CLIENT_PREFIXES",
    "AuthedHandler",
    "Requester",
    "TokenAuth",
    "client_endpoints",
    "format_client_event",
    "generate_device_id",
    "generate_token",
    "get_bool",
    "get_str",
    "require_object",
]

# v3 is current; r0 is what older scripts and bots still call.
CLIENT_PREFIXES = ("/_matrix/client/v3", "/_matrix/client/r0")
# 32 random bytes: far beyond guessing.
TOKEN_BYTES = 32
# Device IDs like Synapse's: ten upper-case letters.
DEVICE_ID_LENGTH = 10


@attrs.frozen(slots=True)
class Requester:
    """The authenticated user of a client request.

    Attributes:
        user_id: the user the token belongs to.
        device_id: the device the token was issued to.
        token_hash: the stored hash of the token (scope of client transactions).
    """

    user_id: str
    device_id: str
    token_hash: str


AuthedHandler = Callable[[ApiRequest, Requester], Awaitable[JsonResponse]]


def _token_from_request(request: ApiRequest) -> str | None:
    header = request.header("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.arg("access_token")


class TokenAuth:
    """Checks access tokens against the user store."""

    def __init__(self, *, users: UserStore) -> None:
        self._users = users

    async def authenticate(self, request: ApiRequest) -> Requester:
        """The requester of ``request``.

        Raises:
            MatrixError: 401 M_MISSING_TOKEN (no token) or M_UNKNOWN_TOKEN.
        """
        token = _token_from_request(request)
        if token is None:
            raise MatrixError(401, "M_MISSING_TOKEN", "Missing access token")
        token_hash = hash_token(token)
        owner = await self._users.get_token_owner(token_hash)
        if owner is None:
            raise MatrixError(
                401, "M_UNKNOWN_TOKEN", "Unrecognised access token", soft_logout=False
            )
        return Requester(owner.user_id, owner.device_id, token_hash)

    def required(self, handler: AuthedHandler) -> Callable[[ApiRequest], Awaitable[JsonResponse]]:
        """Wrap ``handler`` so it only runs for requests with a valid token."""

        async def wrapped(request: ApiRequest) -> JsonResponse:
            requester = await self.authenticate(request)
            return await handler(request, requester)

        wrapped.__qualname__ = getattr(handler, "__qualname__", "handler")
        return wrapped


def client_endpoints(
    method: str, suffix: str, handler: Callable[[ApiRequest], Awaitable[JsonResponse]]
) -> list[Endpoint]:
    """One endpoint per client API prefix for ``suffix`` (e.g. "/account/whoami")."""
    return [
        Endpoint(method, prefix + suffix, handler, auth=AuthMode.NONE) for prefix in CLIENT_PREFIXES
    ]


def generate_token() -> str:
    """A new random access token."""
    return "mfd_" + secrets.token_urlsafe(TOKEN_BYTES)


def generate_device_id() -> str:
    """A new random device ID."""
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(DEVICE_ID_LENGTH))


# --- request bodies ------------------------------------------------------------


def require_object(request: ApiRequest, *, allow_empty: bool = False) -> dict[str, Any]:
    """The request body as a JSON object.

    Raises:
        MatrixError: 400 M_NOT_JSON when there is no body (unless
            ``allow_empty``), M_BAD_JSON when it is not an object.
    """
    content = request.content
    if content is None:
        if allow_empty:
            return {}
        raise MatrixError(400, "M_NOT_JSON", "Content not JSON.")
    if not isinstance(content, dict):
        raise MatrixError(400, "M_BAD_JSON", "Content must be a JSON object.")
    return content


def get_str(body: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    """``body[key]`` as a string.

    Raises:
        MatrixError: 400 M_MISSING_PARAM when required and absent, M_INVALID_PARAM
            when present but not a string.
    """
    value = body.get(key)
    if value is None:
        if required:
            raise MatrixError(400, "M_MISSING_PARAM", f"Missing parameter: {key}")
        return None
    if not isinstance(value, str):
        raise MatrixError(400, "M_INVALID_PARAM", f"Parameter {key} must be a string")
    return value


def get_bool(body: dict[str, Any], key: str, default: bool = False) -> bool:
    """``body[key]`` as a boolean (400 M_INVALID_PARAM if not one)."""
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise MatrixError(400, "M_INVALID_PARAM", f"Parameter {key} must be a boolean")
    return value


# --- events as clients see them --------------------------------------------------


def format_client_event(
    event: Event, *, include_room_id: bool = True, unsigned: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The client-server "ClientEvent" form of a PDU.

    Args:
        event: the event.
        include_room_id: False for /sync timelines (ClientEventWithoutRoomID).
        unsigned: extra ``unsigned`` data (e.g. ``transaction_id``).
    """
    pdu = event.pdu
    out: dict[str, Any] = {
        "event_id": event.event_id,
        "type": event.type,
        "sender": event.sender,
        "content": event.content,
        "origin_server_ts": pdu.get("origin_server_ts", 0),
    }
    if include_room_id:
        out["room_id"] = event.room_id
    if event.state_key is not None:
        out["state_key"] = event.state_key
    if event.redacts is not None:
        out["redacts"] = event.redacts
    extra: dict[str, Any] = {}
    pdu_unsigned = pdu.get("unsigned")
    if isinstance(pdu_unsigned, dict):
        for key in ("age", "prev_content", "redacted_because"):
            if key in pdu_unsigned:
                extra[key] = pdu_unsigned[key]
    if unsigned:
        extra.update(unsigned)
    if extra:
        out["unsigned"] = extra
    return out
