"""Real matrixfed servers in the test reactor, on loopback, with real TLS.

Each server is built by ``matrixfed.service.make_service`` from a ``Config``:
server name ``127.0.0.1:<free port>``, federation over TLS with a certificate
from one test CA (shared with any ``FakeRemote``), ``federation_ca`` set to that
CA, ``federation_allow_private=True``, a client listener on a random port, and a
temporary data dir. Usage::

    net = TestNetwork(self)                  # one CA; everything stopped in cleanup
    a = await net.start_server()
    b = await net.start_server()
    remote = await net.start_fake_remote()   # tests.harness.fakeremote.FakeRemote
    a.name, a.service, a.store, a.engine, a.client_url, a.federation_url
    a2 = await net.restart(a)                # stop, then a new service on the same data dir

``store``/``engine``/``sender``/``joiner`` are whatever the service exposes under those
attribute names (None while a part is not wired in).
"""

from __future__ import annotations

import inspect
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.internet import reactor as _reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from matrixfed.config import Config
from matrixfed.service import MatrixfedService, StartupError, make_service
from tests.federation.fakes import TestCA
from tests.harness.fakeremote import FakeRemote
from tests.storage.harness import POSTGRES_URI, _pg_admin, _with_search_path

reactor: Any = _reactor

__all__ = ["ServerHandle", "TestNetwork", "eventually", "free_port"]

# Polling step and budget of ``eventually`` (real reactor turns, for work
# running on other servers and database threads; not a timing assertion).
POLL_SECONDS = 0.02
POLL_LIMIT = 1000
# Tries to start a server when the port picked for it was taken meanwhile.
PORT_ATTEMPTS = 3


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], what: str = "condition"
) -> None:
    """Wait until ``condition()`` (sync or async) holds; fail after POLL_LIMIT tries."""
    for _ in range(POLL_LIMIT):
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await deferLater(reactor, POLL_SECONDS)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the server name needs it
    before the listener binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@attrs.define
class ServerHandle:
    """One running matrixfed server."""

    config: Config
    service: MatrixfedService

    @property
    def name(self) -> str:
        return self.config.server_name

    @property
    def store(self) -> Any:
        return getattr(self.service, "store", None)

    @property
    def engine(self) -> Any:
        return getattr(self.service, "engine", None)

    @property
    def sender(self) -> Any:
        return getattr(self.service, "sender", None)

    @property
    def joiner(self) -> Any:
        """The service's join coordinator (``service.joiner``, set up by the client
        API), or one built here the same way when the service has none."""
        joiner = getattr(self.service, "joiner", None)
        if joiner is None:
            from matrixfed.joins.coordinator import JoinCoordinator
            from matrixfed.joins.fedclient import FederationJoinClient
            from matrixfed.joins.threads import PoolRunner

            svc = self.service
            joiner = JoinCoordinator(
                store=svc.store,
                engine=svc.engine,
                federation_client=FederationJoinClient(client=svc.federation_client),
                keyring=svc.keyring,
                clock=reactor,
                server_name=self.name,
                signing_key=svc.signing_keys.primary,
                runner=PoolRunner(reactor=reactor, threadpool=reactor.getThreadPool()),
            )
            svc.joiner = joiner  # type: ignore[attr-defined]
        return joiner

    @property
    def verify_keys(self) -> dict[str, Any]:
        """key_id -> VerifyKey of the server's current signing keys."""
        return dict(self.service.signing_keys.verify_keys())

    @property
    def federation_url(self) -> str:
        return f"https://{self.name}"

    @property
    def client_url(self) -> str:
        port = self.service.listening_port("client")
        assert port is not None, "client listener disabled"
        return f"http://127.0.0.1:{port.getHost().port}"

    def user(self, localpart: str) -> str:
        return f"@{localpart}:{self.name}"


class TestNetwork:
    """Servers and fake remotes sharing one test CA, stopped in the test's cleanup."""

    def __init__(self, case: unittest.TestCase) -> None:
        self.case = case
        self.ca = TestCA()
        self.servers: list[ServerHandle] = []

    def postgres_database(self) -> str:
        """A database URI on a fresh PostgreSQL schema (dropped in cleanup);
        needs MATRIXFED_TEST_POSTGRES (check ``POSTGRES_URI`` and skip otherwise)."""
        if POSTGRES_URI is None:
            raise unittest.SkipTest("PostgreSQL not available (MATRIXFED_TEST_POSTGRES unset)")
        schema = "test_" + uuid.uuid4().hex[:16]
        _pg_admin(f"CREATE SCHEMA {schema}")
        # Cleanups run last-in first-out: this runs after the server stopped.
        self.case.addCleanup(_pg_admin, f"DROP SCHEMA {schema} CASCADE")
        return _with_search_path(POSTGRES_URI, schema)

    def make_config(self, *, postgres: bool = False, **overrides: Any) -> Config:
        """A Config for a new server (not started); ``overrides`` go to ``Config``.

        With ``postgres=True`` the server uses a fresh PostgreSQL schema (the
        test is skipped when MATRIXFED_TEST_POSTGRES is unset).
        """
        if postgres:
            overrides.setdefault("database", self.postgres_database())
        port = free_port()
        name = f"127.0.0.1:{port}"
        data_dir = self.case.mktemp()
        os.makedirs(data_dir)
        cert_pem, key_pem = self.ca.issue("127.0.0.1")
        cert_path = os.path.join(data_dir, "tls.crt")
        key_path = os.path.join(data_dir, "tls.key")
        with open(cert_path, "wb") as f:
            f.write(cert_pem)
        with open(key_path, "wb") as f:
            f.write(key_pem)
        values: dict[str, Any] = {
            "server_name": name,
            "data_dir": data_dir,
            "federation_listen": (
                f"ssl:{port}:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}"
            ),
            "client_listen": "tcp:0:interface=127.0.0.1",
            "tls_certificate": cert_path,
            "tls_private_key": key_path,
            "federation_ca": self.ca.ca_file,
            "federation_allow_private": True,
        }
        values.update(overrides)
        return Config(**values)

    async def start_config(self, config: Config) -> ServerHandle:
        """Start a server from ``config``; it is stopped in cleanup."""
        svc = make_service(config, reactor=reactor)
        svc.privilegedStartService()
        svc.startService()
        handle = ServerHandle(config=config, service=svc)
        self.servers.append(handle)
        self.case.addCleanup(self._stop, handle)
        await svc.when_ready()
        return handle

    async def start_server(self, *, postgres: bool = False, **overrides: Any) -> ServerHandle:
        """Start a new server; ``overrides`` are Config fields.

        The free port is picked before binding, so another process may take it
        in between: then the server is started again on another port.
        """
        for attempt in range(PORT_ATTEMPTS):
            config = self.make_config(postgres=postgres, **overrides)
            try:
                return await self.start_config(config)
            except StartupError as e:
                if "cannot listen" not in str(e) or attempt == PORT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def stop(self, handle: ServerHandle) -> None:
        """Stop a server (its data dir stays)."""
        await self._stop(handle)

    async def _stop(self, handle: ServerHandle) -> None:
        if handle.service.running:
            await handle.service.stopService()

    async def restart(self, handle: ServerHandle) -> ServerHandle:
        """Stop ``handle`` and start a new service on the same config and data dir."""
        await self._stop(handle)
        return await self.start_config(handle.config)

    async def start_fake_remote(self) -> FakeRemote:
        """A ``FakeRemote`` trusted by every server of this network (same CA)."""
        remote = await FakeRemote.start(self.case, self.ca)
        for server in self.servers:
            remote.trust(server.name, server.verify_keys)
        return remote

    def trust_all(self, remote: FakeRemote) -> None:
        """Let ``remote`` verify requests from every server started so far."""
        for server in self.servers:
            remote.trust(server.name, server.verify_keys)
