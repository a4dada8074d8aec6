"""A client API over HTTP on 127.0.0.1, backed by a real store, engine and joiner.

``ClientApiCase.make_api()`` builds the whole client API of server
``a.example`` (the room engine and join coordinator of the real code; remote
servers are scripted with tests.rooms.helpers.FakeFederation) behind the real
``JsonResource`` on a loopback listener. Time is a ``task.Clock`` so /sync long
polls end when the test advances it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from matrixfed.clientapi.api import ClientApi
from matrixfed.federation.server.resource import JsonResource
from matrixfed.joins.coordinator import JoinCoordinator
from matrixfed.joins.fedclient import FederationJoinClient
from matrixfed.rooms.engine import RoomEngine
from matrixfed.storage.store import Store
from tests.auth.roombuilder import signing_key_for
from tests.federation.server.helpers import Listener
from tests.rooms.helpers import LOCAL, FakeFederation, FakeKeyRing, make_engine
from tests.storage.harness import SqliteMixin

if TYPE_CHECKING:
    _Base = unittest.TestCase
else:
    _Base = object

SECRET = "s3cret"


class InlineRunner:
    """Runs 'thread pool' work inline (the data is tiny in these tests)."""

    async def run(self, func: Any, *args: Any) -> Any:
        return func(*args)


class Api:
    """One client API under test and ways to call it."""

    def __init__(
        self,
        api: ClientApi,
        listener: Listener,
        store: Store,
        engine: RoomEngine,
        clock: Clock,
        federation: FakeFederation,
    ) -> None:
        self.api = api
        self.listener = listener
        self.store = store
        self.engine = engine
        self.clock = clock
        self.federation = federation

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        """Call ``/_matrix/client/v3`` + ``path`` (or an absolute ``/...`` path)."""
        if not path.startswith(("/_", "/.")):
            path = "/_matrix/client/v3" + path
        headers = {"Authorization": [f"Bearer {token}"]} if token else None
        return await self.listener.request(method, path, json_body=body, body=raw, headers=headers)

    async def register(self, localpart: str, password: str = "pw") -> tuple[str, str]:
        """Register a user through open registration; (user_id, access_token)."""
        code, body = await self.call(
            "POST",
            "/register",
            {"username": localpart, "password": password, "auth": {"type": "m.login.dummy"}},
        )
        assert code == 200, body
        return body["user_id"], body["access_token"]


class ClientApiCase(SqliteMixin, _Base):
    async def make_api(
        self,
        *,
        enable_registration: bool = True,
        secret: str | None = SECRET,
        wrap_joiner: Any = None,
    ) -> Api:
        """The API of a.example; ``wrap_joiner(coordinator)`` may wrap the joiner."""
        case: Any = self
        store = await self.make_store()
        clock = Clock()
        clock.advance(1_700_000_000)
        federation = FakeFederation()
        keyring = FakeKeyRing()
        engine = make_engine(store, federation=federation, keyring=keyring, clock=clock)
        joiner = JoinCoordinator(
            store=store,
            engine=engine,
            federation_client=FederationJoinClient(client=federation),
            keyring=keyring,
            clock=clock,
            server_name=LOCAL,
            signing_key=signing_key_for(LOCAL),
            runner=InlineRunner(),
        )
        api = ClientApi(
            server_name=LOCAL,
            store=store,
            engine=engine,
            joiner=joiner if wrap_joiner is None else wrap_joiner(joiner),
            notifier=engine.notifier,
            federation=federation,
            clock=clock,
            enable_registration=enable_registration,
            registration_shared_secret=secret,
        )
        resource = JsonResource(authenticator=None)
        resource.add_endpoints(api.endpoints())
        listener = Listener(resource)
        await listener.start()
        case.addCleanup(listener.stop)
        return Api(api, listener, store, engine, clock, federation)
