"""Account operations shared by the HTTP endpoints and the command line.

``Accounts`` creates users (checking the localpart grammar and that the ID is
free), checks passwords and issues access tokens. Password hashing runs
through ``run_blocking`` (a thread pool in the server, inline in tests), never
on the reactor thread.

How it fails: ``MatrixError`` with the spec's errcode: 400
``M_INVALID_USERNAME``, 400 ``M_USER_IN_USE``, 403 ``M_FORBIDDEN`` for a wrong
user or password (the same answer for both, so user IDs cannot be probed).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import attrs
from twisted.logger import Logger

from matrixfed.clientapi.common import generate_device_id, generate_token
from matrixfed.clientapi.passwords import check_password, hash_password
from matrixfed.errors import MatrixError
from matrixfed.events.identifiers import MAX_ID_BYTES, utf8_len
from matrixfed.storage.users import UserStore, hash_token

__all__ = ["Accounts", "LoginResult", "ProfileWriter", "RunBlocking", "run_inline"]

log = Logger()

T = TypeVar("T")
# Runs a CPU-bound function off the reactor thread and returns its result.
RunBlocking = Callable[[Callable[[], Any]], Awaitable[Any]]

# spec: appendices "User Identifiers": localparts of new users use only these.
_LOCALPART_RE = re.compile(r"[a-z0-9._=\-/+]+", re.ASCII)
# Generated localparts: 12 random lower-case letters and digits.
GENERATED_LOCALPART_BYTES = 8


class ProfileWriter(Protocol):
    """``Store.set_profile``: a new user gets a profile (their display name)."""

    async def set_profile(self, user_id: str, *, displayname: str | None = ...) -> None: ...


async def run_inline(fn: Callable[[], T]) -> T:
    """A ``RunBlocking`` that runs ``fn`` on the calling thread (tests, CLI)."""
    return fn()


@attrs.frozen(slots=True)
class LoginResult:
    """A new session: the token is only ever known here and to the client."""

    user_id: str
    device_id: str
    access_token: str


class Accounts:
    """User creation, password checks and token issuing for one server."""

    def __init__(
        self,
        *,
        server_name: str,
        users: UserStore,
        run_blocking: RunBlocking = run_inline,
        profiles: ProfileWriter | None = None,
    ) -> None:
        """Args:
        server_name: the domain of local users.
        users: the user store.
        run_blocking: runs password hashing (a thread pool in the server).
        profiles: where a new user's profile is created (None: nowhere).
        """
        self._server_name = server_name
        self._users = users
        self._profiles = profiles
        self._run_blocking = run_blocking

    async def _blocking(self, fn: Callable[[], T]) -> T:
        result: T = await self._run_blocking(fn)
        return result

    @property
    def server_name(self) -> str:
        """The server's name (the domain of local user IDs)."""
        return self._server_name

    def user_id_for(self, name: str) -> str:
        """The local user ID for a localpart or full user ID.

        Raises:
            MatrixError: 400 M_INVALID_USERNAME when ``name`` is not a valid new
                localpart or is a user ID of another server.
        """
        if name.startswith("@"):
            localpart, sep, domain = name[1:].partition(":")
            if not sep or domain != self._server_name:
                raise MatrixError(
                    400, "M_INVALID_USERNAME", "User ID does not belong to this server"
                )
        else:
            localpart = name
        if not _LOCALPART_RE.fullmatch(localpart):
            raise MatrixError(
                400,
                "M_INVALID_USERNAME",
                "User ID can only contain characters a-z, 0-9, or '=_-./+'",
            )
        user_id = f"@{localpart}:{self._server_name}"
        if utf8_len(user_id) > MAX_ID_BYTES:
            raise MatrixError(400, "M_INVALID_USERNAME", "User ID is too long")
        return user_id

    def generate_localpart(self) -> str:
        """A random free-looking localpart for registrations without a username."""
        return "u" + secrets.token_hex(GENERATED_LOCALPART_BYTES)

    async def check_available(self, user_id: str) -> None:
        """Raise 400 M_USER_IN_USE when ``user_id`` exists."""
        if await self._users.get_user(user_id) is not None:
            raise MatrixError(400, "M_USER_IN_USE", "User ID already taken.")

    async def register(self, user_id: str, password: str | None, *, admin: bool = False) -> None:
        """Create the account ``user_id`` (a full, already checked local ID).

        Raises:
            MatrixError: 400 M_USER_IN_USE when the ID is taken.
        """
        hashed = None
        if password is not None:
            hashed = await self._blocking(lambda: hash_password(password))
        if not await self._users.create_user(user_id, hashed, admin=admin):
            raise MatrixError(400, "M_USER_IN_USE", "User ID already taken.")
        log.info("registered {user_id} (admin: {admin})", user_id=user_id, admin=admin)
        if self._profiles is not None:
            # The localpart as display name, as Synapse does; the row also
            # makes the user known to federation profile queries and invites.
            await self._profiles.set_profile(user_id, displayname=user_id[1:].split(":")[0])

    async def issue_token(
        self, user_id: str, device_id: str | None = None, display_name: str | None = None
    ) -> LoginResult:
        """A new access token for ``user_id`` on ``device_id`` (new device if None)."""
        device = device_id or generate_device_id()
        token = generate_token()
        await self._users.add_access_token(
            user_id, device, hash_token(token), device_display_name=display_name
        )
        return LoginResult(user_id, device, token)

    async def check_login(self, name: str, password: str) -> str:
        """The user ID if ``password`` is right for the user named ``name``.

        Raises:
            MatrixError: 403 M_FORBIDDEN for an unknown user or a wrong password.
        """
        denied = MatrixError(403, "M_FORBIDDEN", "Invalid username or password")
        try:
            user_id = self.user_id_for(name.lower() if not name.startswith("@") else name)
        except MatrixError:
            raise denied from None
        user = await self._users.get_user(user_id)
        if user is None or user.password_hash is None:
            raise denied
        stored = user.password_hash
        if not await self._blocking(lambda: check_password(password, stored)):
            log.info("failed password login for {user_id}", user_id=user_id)
            raise denied
        log.info("{user_id} logged in", user_id=user_id)
        return user_id
