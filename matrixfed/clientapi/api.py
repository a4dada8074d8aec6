"""Assemble the client-server API: one call from the server's wiring.

``ClientApi`` owns the user store, the token checker and the endpoint groups
(one module each: login, admin, rooms, events, sync, directory) and lists their
endpoints for ``JsonResource.add_endpoints``. It holds no other state than the
shared-secret nonces and the in-flight send transactions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from matrixfed.clientapi.accounts import Accounts, RunBlocking, run_inline
from matrixfed.clientapi.admin import SharedSecretRegistration
from matrixfed.clientapi.backfill import Backfiller
from matrixfed.clientapi.common import TokenAuth
from matrixfed.clientapi.context import (
    ClientContext,
    FederationQueries,
    Joiner,
)
from matrixfed.clientapi.directory import DirectoryServlets
from matrixfed.clientapi.events import EventServlets
from matrixfed.clientapi.login import LoginServlets
from matrixfed.clientapi.rooms import RoomServlets
from matrixfed.clientapi.sync import SyncServlets
from matrixfed.federation.server.endpoint import Endpoint
from matrixfed.rooms.engine import RoomEngine
from matrixfed.rooms.notifier import Notifier
from matrixfed.storage.store import Store
from matrixfed.storage.users import UserStore

__all__ = ["ClientApi"]


class ClientApi:
    """The client-server API of one server."""

    def __init__(
        self,
        *,
        server_name: str,
        store: Store,
        engine: RoomEngine,
        joiner: Joiner,
        notifier: Notifier,
        federation: FederationQueries,
        clock: Any,
        enable_registration: bool = False,
        registration_shared_secret: str | None = None,
        run_blocking: RunBlocking = run_inline,
        backfill: Callable[[str, int], Any] | None = None,
        public_base_url: str | None = None,
    ) -> None:
        """Build the API.

        Args:
            server_name: our server name.
            store: the event/room/profile store (its database holds the users).
            engine: the room engine.
            joiner: the join coordinator.
            notifier: wakes /sync long polls.
            federation: the outbound federation client.
            clock: IReactorTime.
            enable_registration: open registration (``m.login.dummy``).
            registration_shared_secret: enables ``/_synapse/admin/v1/register``.
            run_blocking: runs password hashing off the reactor thread.
            backfill: ``async (room_id, limit) -> number of events fetched``.
            public_base_url: announced in ``/.well-known/matrix/client``.
        """
        self.users = UserStore(db=store.db, clock=clock)
        self.auth = TokenAuth(users=self.users)
        self.accounts = Accounts(
            server_name=server_name, users=self.users, run_blocking=run_blocking, profiles=store
        )
        self.context = ClientContext(
            server_name=server_name,
            store=store,
            users=self.users,
            accounts=self.accounts,
            auth=self.auth,
            engine=engine,
            joiner=joiner,
            notifier=notifier,
            federation=federation,
            clock=clock,
            backfill=backfill,
        )
        self._groups: list[Any] = [
            LoginServlets(
                accounts=self.accounts,
                users=self.users,
                auth=self.auth,
                enable_registration=enable_registration,
                public_base_url=public_base_url,
            ),
            SharedSecretRegistration(
                accounts=self.accounts, secret=registration_shared_secret, clock=clock
            ),
            RoomServlets(self.context),
            EventServlets(self.context),
            SyncServlets(self.context),
            DirectoryServlets(self.context),
        ]

    def endpoints(self) -> list[Endpoint]:
        """Every client API endpoint, for ``client_resource.add_endpoints``."""
        out: list[Endpoint] = []
        for group in self._groups:
            out.extend(group.endpoints())
        return out


def install_client_api(svc: Any) -> ClientApi:
    """Build the client API for a ``MatrixfedService`` and register its endpoints.

    Uses the service's store, engine, notifier and federation client, and its
    join coordinator (``svc.joiner``) when the service has one; otherwise one is
    built here. Password hashing runs on the reactor's thread pool.

    Returns:
        The ClientApi (also set as ``svc.client_api``).
    """
    from twisted.internet.threads import deferToThreadPool

    reactor = svc.reactor
    config = svc.config

    async def run_blocking(fn: Callable[[], Any]) -> Any:
        return await deferToThreadPool(reactor, reactor.getThreadPool(), fn)

    joiner = getattr(svc, "joiner", None)
    if joiner is None:
        from matrixfed.joins.coordinator import JoinCoordinator
        from matrixfed.joins.fedclient import FederationJoinClient
        from matrixfed.joins.threads import PoolRunner

        joiner = JoinCoordinator(
            store=svc.store,
            engine=svc.engine,
            federation_client=FederationJoinClient(client=svc.federation_client),
            keyring=svc.keyring,
            clock=reactor,
            server_name=config.server_name,
            signing_key=svc.signing_keys.primary,
            runner=PoolRunner(reactor=reactor, threadpool=reactor.getThreadPool()),
            partial_state=getattr(config, "join_partial_state", True),
        )
        svc.joiner = joiner
    api = ClientApi(
        server_name=config.server_name,
        store=svc.store,
        engine=svc.engine,
        joiner=joiner,
        notifier=svc.notifier,
        federation=svc.federation_client,
        clock=reactor,
        enable_registration=config.enable_registration,
        registration_shared_secret=config.registration_shared_secret,
        run_blocking=run_blocking,
        backfill=Backfiller(engine=svc.engine, server_name=config.server_name).backfill,
    )
    svc.client_resource.add_endpoints(api.endpoints())
    svc.client_api = api
    return api
