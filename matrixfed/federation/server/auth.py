"""Inbound X-Matrix authentication: who sent this request, proven by signature.

``RequestAuthenticator.authenticate`` runs before any handler of an endpoint
that needs auth. It parses every ``Authorization: X-Matrix`` header, refuses a
``destination`` that is not our server name, fetches the origin's keys through
the keyring (which tries the origin, then trusted notaries) and verifies the
signature over method, uri, origin, destination and content.

How it fails: every problem raises ``MatrixError(401, "M_UNAUTHORIZED", ...)``
with a message saying what was wrong (missing header, bad syntax, wrong
destination, unknown key, bad signature), as Synapse does. Unexpected keyring
failures other than ``RemoteError``/``MatrixError`` propagate and become 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Collection, Sequence
from typing import Any, Protocol

from twisted.logger import Logger

from matrixfed.config import split_server_name
from matrixfed.errors import MatrixError, RemoteError, unauthorized
from matrixfed.events.keys import ServerVerifyKey
from matrixfed.federation.xmatrix import (
    XMatrixAuth,
    XMatrixError,
    parse_xmatrix_header,
    verify_request_signature,
)

__all__ = ["Clock", "KeyLookup", "RequestAuthenticator"]

log = Logger()

# Synapse sends one header per signing key; more than this is an attack, not a
# key rotation.
MAX_AUTHORIZATION_HEADERS = 8


class Clock(Protocol):
    """What we need of an IReactorTime: the current time in seconds."""

    def seconds(self) -> float: ...


class KeyLookup(Protocol):
    """The part of the keyring request authentication needs."""

    def get_keys(
        self, server_name: str, key_ids: Collection[str], min_valid_until_ts: int, /
    ) -> Awaitable[dict[str, ServerVerifyKey]]:
        """Keys of ``server_name`` among ``key_ids`` valid at least until the given
        time (ms); missing keys are omitted."""
        ...


class RequestAuthenticator:
    """Checks X-Matrix signatures on requests addressed to this server."""

    def __init__(self, *, server_name: str, keyring: KeyLookup, clock: Clock) -> None:
        """Args:
        server_name: our server name; requests must be addressed to it.
        keyring: where the origin's verify keys come from.
        clock: for "is the key still valid now".
        """
        self._server_name = server_name
        self._keyring = keyring
        self._clock = clock

    async def authenticate(
        self,
        *,
        method: str,
        uri: str,
        authorization: Sequence[bytes | str],
        content: Any,
    ) -> str:
        """Authenticate one request.

        Args:
            method: the request method as received.
            uri: the raw request target as received.
            authorization: every ``Authorization`` header value of the request.
            content: the parsed JSON body, or None when there was none.

        Returns:
            The origin server name.

        Raises:
            MatrixError: 401 M_UNAUTHORIZED when authentication fails.
        """
        xmatrix = [
            h
            for h in authorization
            if (h[:9].lower() if isinstance(h, str) else h[:9].lower().decode("latin-1"))
            == "x-matrix "
        ]
        if not xmatrix:
            raise unauthorized("Missing Authorization headers")
        if len(xmatrix) > MAX_AUTHORIZATION_HEADERS:
            raise unauthorized("Too many Authorization headers")
        parsed: list[XMatrixAuth] = []
        for header in xmatrix:
            try:
                parsed.append(parse_xmatrix_header(header))
            except XMatrixError as e:
                raise unauthorized(str(e)) from None
        origin = parsed[0].origin
        if any(a.origin != origin for a in parsed):
            raise unauthorized("Authorization headers name different origins")
        try:
            split_server_name(origin)
        except ValueError:
            raise unauthorized(f"Invalid origin {origin!r} in Authorization header") from None
        for auth in parsed:
            if auth.destination is not None and auth.destination != self._server_name:
                raise unauthorized(
                    f"Request is addressed to {auth.destination!r}, not to this server"
                )

        now_ms = int(self._clock.seconds() * 1000)
        key_ids = {a.key_id for a in parsed}
        try:
            keys = await self._keyring.get_keys(origin, key_ids, now_ms)
        except (RemoteError, MatrixError) as e:
            log.info(
                "Could not fetch keys {key_ids} of {origin}: {error}",
                key_ids=sorted(key_ids),
                origin=origin,
                error=e,
            )
            keys = {}
        for auth in parsed:
            key = keys.get(auth.key_id)
            if key is None or key.expired or key.valid_until_ts < now_ms:
                raise unauthorized(f"Failed to find any key to satisfy {auth.key_id} for {origin}")
            try:
                verify_request_signature(
                    auth,
                    key.verify_key,
                    method=method,
                    uri=uri,
                    destination=self._server_name,
                    content=content,
                )
            except XMatrixError as e:
                raise unauthorized(str(e)) from None
        return origin
