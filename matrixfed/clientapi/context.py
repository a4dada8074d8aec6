"""The dependencies of the room endpoints, as small interfaces.

Handlers talk to the join coordinator, the notifier and the federation client
through these Protocols, so unit tests can drive them with the real store and
a real engine while the network side is scripted. The room engine and the
notifier are used as their own types (``RoomEngine``, ``Notifier``): only the
real ones are ever passed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, Unpack

import attrs

from matrixfed.clientapi.accounts import Accounts
from matrixfed.clientapi.common import TokenAuth
from matrixfed.errors import MatrixError
from matrixfed.federation.client import RequestOptions
from matrixfed.rooms.engine import RoomEngine
from matrixfed.rooms.notifier import Notifier
from matrixfed.storage.store import Store
from matrixfed.storage.users import UserStore

# A request that needs the full member list of a partial-state room waits
# this long for the background resync before answering 503: clients give up
# on a request after about a minute, and a resync of a big room takes
# seconds, not minutes.
FULL_STATE_WAIT_SECONDS = 30.0
# Retry hint of that 503.
FULL_STATE_RETRY_AFTER_MS = 5000

__all__ = [
    "FULL_STATE_RETRY_AFTER_MS",
    "FULL_STATE_WAIT_SECONDS",
    "ClientContext",
    "FederationQueries",
    "Joiner",
    "MembershipOutcome",
]


class MembershipOutcome(Protocol):
    """What a join or leave returns (``JoinResult``/``LeaveResult``)."""

    @property
    def room_id(self) -> str: ...

    @property
    def event_id(self) -> str: ...


class Joiner(Protocol):
    """The part of the join coordinator the client API uses."""

    async def join(
        self,
        room_id_or_alias: str,
        user_id: str,
        *,
        servers: Sequence[str] = (),
        progress: Callable[[Any], None] | None = None,
    ) -> MembershipOutcome: ...

    async def leave(
        self, room_id: str, user_id: str, *, servers: Sequence[str] = ()
    ) -> MembershipOutcome: ...

    async def wait_for_full_state(self, room_id: str, timeout: float) -> bool:
        """True once a partial-state room has its full state (False: not in time)."""
        ...


class FederationQueries(Protocol):
    """The outbound federation calls the client API makes itself."""

    async def get_json(
        self,
        destination: str,
        path: str,
        args: Mapping[str, Any] | None = None,
        **options: Unpack[RequestOptions],
    ) -> Any: ...


@attrs.frozen(slots=True)
class ClientContext:
    """Everything the room endpoints need.

    Attributes:
        server_name: our server name.
        store: the event/state/room/profile store.
        users: users, tokens and client transactions.
        accounts: account creation and login.
        auth: access-token authentication.
        engine: the room engine (local appends, room creation).
        joiner: the join coordinator (joins and leaves, local or remote).
        notifier: wakes /sync long polls.
        federation: outbound queries (directory, profile, backfill).
        clock: ``seconds()``.
        backfill: optional ``async (room_id, limit) -> int`` that fetches older
            history from other servers; None when not available.
    """

    server_name: str
    store: Store
    users: UserStore
    accounts: Accounts
    auth: TokenAuth
    engine: RoomEngine
    joiner: Joiner
    notifier: Notifier
    federation: FederationQueries
    clock: Any
    backfill: Callable[[str, int], Any] | None = None

    async def require_full_state(self, room_id: str, what: str) -> None:
        """Wait (bounded) for a partial-state room's member list to be complete.

        A room joined with partial state lacks most members until the
        background resync ends: a member list must not be served from it,
        and a member event about someone else must not be judged by it (the
        auth rules would take an omitted member, even a banned one, for
        someone who never joined).

        Args:
            what: what is waiting, for the 503's message.

        Raises:
            MatrixError: 503 when the resync has not finished in time.
        """
        info = await self.store.get_room(room_id)
        if info is None or not info.partial_state:
            return
        if not await self.joiner.wait_for_full_state(room_id, FULL_STATE_WAIT_SECONDS):
            raise MatrixError(
                503,
                "M_UNKNOWN",
                f"{what}: the room's member list is still being fetched from other servers",
                retry_after_ms=FULL_STATE_RETRY_AFTER_MS,
            )
