"""Shared-secret registration at ``/_synapse/admin/v1/register``, as Synapse does it.

So that ``register_new_matrix_user`` and scripts written for Synapse work
unchanged: ``GET`` returns a fresh ``nonce``; ``POST`` carries ``nonce``,
``username``, ``password``, ``admin`` and ``mac``, the hex HMAC-SHA1 keyed
with the shared secret over ``nonce \\0 username \\0 password \\0 admin|notadmin``
(plus ``\\0 user_type`` when a user_type is sent). A nonce is single-use and
expires after ``NONCE_TIMEOUT_S``.

How it fails: 400 ``M_UNKNOWN`` when no secret is configured or the nonce is
unknown/expired, 400 ``M_BAD_JSON``/``M_INVALID_PARAM`` for missing or
ill-typed fields, 403 ``M_FORBIDDEN`` "HMAC incorrect", 400 ``M_USER_IN_USE``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from matrixfed.clientapi.accounts import Accounts
from matrixfed.clientapi.common import require_object
from matrixfed.errors import MatrixError
from matrixfed.federation.server.auth import Clock
from matrixfed.federation.server.endpoint import ApiRequest, AuthMode, Endpoint, JsonResponse

__all__ = ["SharedSecretRegistration", "compute_registration_mac"]

ADMIN_REGISTER_PATH = "/_synapse/admin/v1/register"
# Synapse's NONCE_TIMEOUT: a nonce is good for a minute.
NONCE_TIMEOUT_S = 60
# Synapse's username length limit for this endpoint.
MAX_USERNAME_LENGTH = 512
# Outstanding nonces kept at most (an unauthenticated GET must not grow memory).
MAX_NONCES = 10_000


def compute_registration_mac(
    secret: str,
    nonce: str,
    username: str,
    password: str,
    *,
    admin: bool = False,
    user_type: str | None = None,
) -> str:
    """The hex HMAC-SHA1 a client sends with a shared-secret registration."""
    mac = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha1)
    mac.update(nonce.encode("utf-8"))
    mac.update(b"\x00")
    mac.update(username.encode("utf-8"))
    mac.update(b"\x00")
    mac.update(password.encode("utf-8"))
    mac.update(b"\x00")
    mac.update(b"admin" if admin else b"notadmin")
    if user_type is not None:
        mac.update(b"\x00")
        mac.update(user_type.encode("utf-8"))
    return mac.hexdigest()


class SharedSecretRegistration:
    """The nonce store and the two endpoints."""

    def __init__(self, *, accounts: Accounts, secret: str | None, clock: Clock) -> None:
        self._accounts = accounts
        self._secret = secret
        self._clock = clock
        self._nonces: dict[str, float] = {}

    def endpoints(self) -> list[Endpoint]:
        """GET and POST ``/_synapse/admin/v1/register``."""
        return [
            Endpoint("GET", ADMIN_REGISTER_PATH, self._get_nonce, auth=AuthMode.NONE),
            Endpoint("POST", ADMIN_REGISTER_PATH, self._register, auth=AuthMode.NONE),
        ]

    def _check_enabled(self) -> str:
        if self._secret is None:
            raise MatrixError(400, "M_UNKNOWN", "Shared secret registration is not enabled")
        return self._secret

    def _expire(self) -> None:
        now = self._clock.seconds()
        for nonce, ts in list(self._nonces.items()):
            if now - ts > NONCE_TIMEOUT_S:
                del self._nonces[nonce]

    async def _get_nonce(self, request: ApiRequest) -> JsonResponse:
        self._check_enabled()
        self._expire()
        if len(self._nonces) >= MAX_NONCES:
            raise MatrixError(429, "M_LIMIT_EXCEEDED", "Too many outstanding nonces")
        nonce = secrets.token_hex(32)
        self._nonces[nonce] = self._clock.seconds()
        return 200, {"nonce": nonce}

    async def _register(self, request: ApiRequest) -> JsonResponse:
        secret = self._check_enabled()
        self._expire()
        body = require_object(request)
        nonce = body.get("nonce")
        if not isinstance(nonce, str):
            raise MatrixError(400, "M_BAD_JSON", "nonce must be specified")
        if nonce not in self._nonces:
            raise MatrixError(400, "M_UNKNOWN", "unrecognised nonce")
        # Single use, even when the rest of the request is wrong.
        del self._nonces[nonce]

        username = body.get("username")
        if (
            not isinstance(username, str)
            or len(username) > MAX_USERNAME_LENGTH
            or "\x00" in username
        ):
            raise MatrixError(400, "M_INVALID_PARAM", "Invalid username")
        password = body.get("password")
        if (
            not isinstance(password, str)
            or len(password) > MAX_USERNAME_LENGTH
            or ("\x00" in password)
        ):
            raise MatrixError(400, "M_INVALID_PARAM", "Invalid password")
        admin = body.get("admin", False)
        if not isinstance(admin, bool):
            raise MatrixError(400, "M_INVALID_PARAM", "admin must be a boolean")
        user_type = body.get("user_type")
        if user_type is not None and not isinstance(user_type, str):
            raise MatrixError(400, "M_INVALID_PARAM", "Invalid user type")
        got = body.get("mac")
        if not isinstance(got, str):
            raise MatrixError(400, "M_BAD_JSON", "mac must be specified")

        want = compute_registration_mac(
            secret, nonce, username, password, admin=admin, user_type=user_type
        )
        if not hmac.compare_digest(want.encode("ascii"), got.encode("utf-8")):
            raise MatrixError(403, "M_FORBIDDEN", "HMAC incorrect")

        user_id = self._accounts.user_id_for(username)
        await self._accounts.register(user_id, password, admin=admin)
        result = await self._accounts.issue_token(user_id)
        return 200, {
            "access_token": result.access_token,
            "user_id": result.user_id,
            "home_server": self._accounts.server_name,
            "device_id": result.device_id,
        }
