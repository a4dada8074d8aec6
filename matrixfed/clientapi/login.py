"""Versions, discovery, login, logout, whoami and registration.

- ``GET /_matrix/client/versions`` and ``GET /.well-known/matrix/client``;
- ``GET|POST /login`` (``m.login.password`` with ``identifier`` or the old
  ``user`` field), ``POST /logout``, ``GET /account/whoami``;
- ``POST /register``: open only with ``--enable-registration``, through the
  user-interactive flow with a single ``m.login.dummy`` stage (a request
  without ``auth`` gets 401 with the flows and a session); otherwise 403.

How it fails: the spec's errors (400 ``M_UNKNOWN`` for an unknown login type,
403 ``M_FORBIDDEN`` for bad credentials or closed registration, 400
``M_USER_IN_USE`` / ``M_INVALID_USERNAME``, 403 ``M_GUEST_ACCESS_FORBIDDEN``).
"""

from __future__ import annotations

import secrets
from typing import Any

from matrixfed.clientapi.accounts import Accounts
from matrixfed.clientapi.common import (
    Requester,
    TokenAuth,
    client_endpoints,
    get_bool,
    get_str,
    require_object,
)
from matrixfed.errors import MatrixError
from matrixfed.federation.server.endpoint import ApiRequest, AuthMode, Endpoint, JsonResponse
from matrixfed.storage.users import UserStore

__all__ = ["LoginServlets", "SUPPORTED_VERSIONS"]

# The spec versions whose subset we serve (clients pick v3 paths from these).
SUPPORTED_VERSIONS = ("r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.11")
PASSWORD_LOGIN = "m.login.password"
DUMMY_AUTH = "m.login.dummy"
# A registration session: random, only echoed back (the dummy stage has no state).
SESSION_BYTES = 16


class LoginServlets:
    """The account endpoints of one server."""

    def __init__(
        self,
        *,
        accounts: Accounts,
        users: UserStore,
        auth: TokenAuth,
        enable_registration: bool,
        public_base_url: str | None = None,
    ) -> None:
        self._accounts = accounts
        self._users = users
        self._auth = auth
        self._enable_registration = enable_registration
        self._public_base_url = public_base_url

    def endpoints(self) -> list[Endpoint]:
        """Every endpoint of this module."""
        eps = [
            Endpoint("GET", "/_matrix/client/versions", self._versions, auth=AuthMode.NONE),
            Endpoint("GET", "/.well-known/matrix/client", self._well_known, auth=AuthMode.NONE),
        ]
        eps += client_endpoints("GET", "/login", self._login_flows)
        eps += client_endpoints("POST", "/login", self._login)
        eps += client_endpoints("POST", "/logout", self._auth.required(self._logout))
        eps += client_endpoints("GET", "/account/whoami", self._auth.required(self._whoami))
        eps += client_endpoints("POST", "/register", self._register)
        eps += client_endpoints("GET", "/register/available", self._available)
        return eps

    async def _versions(self, request: ApiRequest) -> JsonResponse:
        return 200, {"versions": list(SUPPORTED_VERSIONS), "unstable_features": {}}

    async def _well_known(self, request: ApiRequest) -> JsonResponse:
        base = self._public_base_url
        if base is None:
            host = request.header("host")
            if host is None:
                raise MatrixError(404, "M_NOT_FOUND", "No well-known client configuration")
            base = f"http://{host}"
        return 200, {"m.homeserver": {"base_url": base}}

    async def _login_flows(self, request: ApiRequest) -> JsonResponse:
        return 200, {"flows": [{"type": PASSWORD_LOGIN}]}

    async def _login(self, request: ApiRequest) -> JsonResponse:
        body = require_object(request)
        login_type = get_str(body, "type", required=True)
        if login_type != PASSWORD_LOGIN:
            raise MatrixError(400, "M_UNKNOWN", "Unknown login type")
        name = _login_user(body)
        password = get_str(body, "password", required=True)
        assert password is not None
        user_id = await self._accounts.check_login(name, password)
        result = await self._accounts.issue_token(
            user_id,
            get_str(body, "device_id"),
            get_str(body, "initial_device_display_name"),
        )
        return 200, {
            "user_id": result.user_id,
            "access_token": result.access_token,
            "device_id": result.device_id,
            "home_server": self._accounts.server_name,
        }

    async def _logout(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        await self._users.delete_access_token(requester.token_hash)
        return 200, {}

    async def _whoami(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        return 200, {
            "user_id": requester.user_id,
            "device_id": requester.device_id,
            "is_guest": False,
        }

    async def _available(self, request: ApiRequest) -> JsonResponse:
        if not self._enable_registration:
            raise MatrixError(403, "M_FORBIDDEN", "Registration has been disabled")
        name = request.arg("username")
        if not name:
            raise MatrixError(400, "M_MISSING_PARAM", "Missing parameter: username")
        user_id = self._accounts.user_id_for(name)
        await self._accounts.check_available(user_id)
        return 200, {"available": True}

    async def _register(self, request: ApiRequest) -> JsonResponse:
        kind = request.arg("kind", "user")
        if kind == "guest":
            raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is disabled")
        if kind != "user":
            raise MatrixError(400, "M_INVALID_PARAM", f"Unknown kind {kind!r}")
        if not self._enable_registration:
            raise MatrixError(403, "M_FORBIDDEN", "Registration has been disabled")
        body = require_object(request, allow_empty=True)
        username = get_str(body, "username")
        password = get_str(body, "password")
        inhibit_login = get_bool(body, "inhibit_login")
        if username is not None:
            user_id = self._accounts.user_id_for(username)
            await self._accounts.check_available(user_id)
        else:
            user_id = self._accounts.user_id_for(self._accounts.generate_localpart())

        auth = body.get("auth")
        flows = {"flows": [{"stages": [DUMMY_AUTH]}], "params": {}}
        if not isinstance(auth, dict) or "type" not in auth:
            session = auth.get("session") if isinstance(auth, dict) else None
            return 401, {**flows, "session": session or secrets.token_urlsafe(SESSION_BYTES)}
        if auth.get("type") != DUMMY_AUTH:
            return 401, {
                **flows,
                "session": auth.get("session") or secrets.token_urlsafe(SESSION_BYTES),
                "errcode": "M_UNRECOGNIZED",
                "error": "Unsupported authentication stage",
            }

        await self._accounts.register(user_id, password)
        response: dict[str, Any] = {"user_id": user_id, "home_server": self._accounts.server_name}
        if not inhibit_login:
            result = await self._accounts.issue_token(
                user_id, get_str(body, "device_id"), get_str(body, "initial_device_display_name")
            )
            response["access_token"] = result.access_token
            response["device_id"] = result.device_id
        return 200, response


def _login_user(body: dict[str, Any]) -> str:
    identifier = body.get("identifier")
    if identifier is not None:
        if not isinstance(identifier, dict):
            raise MatrixError(400, "M_INVALID_PARAM", "identifier must be an object")
        if identifier.get("type") != "m.id.user":
            raise MatrixError(400, "M_UNKNOWN", "Unknown login identifier type")
        user = get_str(identifier, "user", required=True)
    else:
        user = get_str(body, "user", required=True)
    assert user is not None
    return user
