"""Build a running matrixfed server from a ``Config``: the public embedding API.

``make_service(config)`` returns a ``MatrixfedService`` (a ``MultiService``)
that any Twisted application can own::

    from twisted.application import service
    from matrixfed.config import Config
    from matrixfed.service import make_service

    application = service.Application("my-app")
    make_service(Config(server_name="example.org")).setServiceParent(application)

``twistd matrixfed`` (twisted/plugins/matrixfed_plugin.py) is a thin shell over
``make_twistd_service``, which adds one-line error reporting.

What happens when:
- ``make_service``: cheap, synchronous preparation that can fail on bad
  configuration: the data dir is created, the signing key loaded (generated on
  first start), the TLS certificate generated if needed, endpoint strings
  parsed. Failures raise ``ConfigError`` (one line).
- ``privilegedStartService``: the listeners bind (synchronously, so a port in
  use is reported at once).
- ``startService``: the database opens and migrates; requests that arrive
  before that finishes wait for it. ``when_ready()`` fires once serving.
- ``stopService``: listeners stop, outbound connections close, database closes.
  A stopped service is not restarted; build a new one with ``make_service``.

How it fails after start-up began: the failure is logged as one critical line,
requests are answered 503, and ``on_fatal`` (set by ``make_twistd_service`` to
stop the process) is called.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.server import Site

from matrixfed.clientapi.api import install_client_api
from matrixfed.config import Config, ConfigError
from matrixfed.errors import MatrixError
from matrixfed.federation.client import FederationClient, build_federation_client
from matrixfed.federation.sender import OutboundSender
from matrixfed.federation.server.auth import RequestAuthenticator
from matrixfed.federation.server.directory import DirectoryQueries
from matrixfed.federation.server.keys import LocalKeyServer, NotaryServer
from matrixfed.federation.server.membership import MembershipHandshakes
from matrixfed.federation.server.queries import ResidentQueries
from matrixfed.federation.server.resource import JsonResource, make_site
from matrixfed.federation.server.transactions import TransactionHandler
from matrixfed.federation.server.version import version_endpoints
from matrixfed.joins import FederationJoinClient, JoinCoordinator, PoolRunner
from matrixfed.joins.procpool import ProcessCheckPool
from matrixfed.keys.keyring import KeyRing
from matrixfed.keys.signing_key import ServerSigningKeys, load_server_signing_keys
from matrixfed.rooms.engine import RoomEngine
from matrixfed.rooms.notifier import Notifier
from matrixfed.storage.database import Database
from matrixfed.storage.keys_store import KeysStore
from matrixfed.storage.store import Store
from matrixfed.tls import ensure_self_signed_certificate

__all__ = ["MatrixfedService", "StartupError", "make_service", "make_twistd_service"]

log = Logger()


class StartupError(Exception):
    """Start-up failed after the service began starting (one-line message)."""


class _StartGate:
    """Lets callers wait until start-up has finished, or learn that it failed."""

    def __init__(self) -> None:
        self._waiters: list[Deferred[None]] = []
        self._error: str | None = None
        self._open = False

    def open(self) -> None:
        self._open = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def fail(self, message: str) -> None:
        self._error = message
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(StartupError(message))

    async def wait(self) -> None:
        """Return once started; raise StartupError if start-up failed."""
        if self._open:
            return
        if self._error is not None:
            raise StartupError(self._error)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        await d

    async def wait_for_request(self) -> None:
        """Like wait(), for HTTP requests: a failed start-up answers 503."""
        try:
            await self.wait()
        except StartupError:
            raise MatrixError(
                503, "M_UNKNOWN", "Server is not available: start-up failed"
            ) from None


class _Listener:
    def __init__(self, name: str, option: str, description: str, endpoint: Any, site: Site):
        self.name = name
        self.option = option
        self.description = description
        self.endpoint = endpoint
        self.site = site
        self.port: IListeningPort | None = None


class MatrixfedService(MultiService):
    """A whole matrixfed server. Build it with ``make_service``.

    Attributes (for embedding and for modules that plug into the server):
        config: the Config it was built from.
        signing_keys: our keys.
        database: the store's Database.
        federation_client: the outbound client (signs with our key).
        keyring: fetches and caches other servers' keys.
        key_server: our own key publication.
        federation_resource: the federation listener's endpoint registry; add
            endpoints with ``federation_resource.add_endpoints([...])``.
        client_resource: the client listener's registry (empty for now: 404s).
        on_fatal: called with a one-line reason when start-up fails after
            binding (twistd uses it to stop the process).
    """

    def __init__(
        self,
        *,
        config: Config,
        reactor: Any,
        signing_keys: ServerSigningKeys,
        database: Database,
        federation_client: FederationClient,
        keyring: KeyRing,
        key_server: LocalKeyServer,
        federation_resource: JsonResource,
        client_resource: JsonResource,
        gate: _StartGate,
        store: Store | None = None,
        engine: RoomEngine | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        MultiService.__init__(self)  # type: ignore[no-untyped-call]
        self.setName("matrixfed")  # type: ignore[no-untyped-call]
        self.config = config
        self.reactor = reactor
        self.signing_keys = signing_keys
        self.database = database
        self.federation_client = federation_client
        self.keyring = keyring
        self.key_server = key_server
        self.federation_resource = federation_resource
        self.client_resource = client_resource
        # The event/state store, the room engine and the /sync notifier.
        self.store = store
        self.engine = engine
        # The outbound federation sender (set by make_service; started after the
        # database, stopped before it closes).
        self.sender: OutboundSender | None = None
        # Inbound /send (``register_edu_handler`` for typing, receipts...).
        self.transactions: TransactionHandler | None = None
        # Remote joins and leaves (set by make_service).
        self.join_coordinator: JoinCoordinator | None = None
        # Worker processes checking big joins' events (None: threads only).
        self.verify_pool: ProcessCheckPool | None = None
        self.joiner: JoinCoordinator | None = None
        self.notifier = notifier
        self.on_fatal: Callable[[str], None] | None = None
        self._gate = gate
        self._listeners: list[_Listener] = []
        self._bound = False
        self._failed_message: str | None = None

    def _add_listener(self, listener: _Listener) -> None:
        self._listeners.append(listener)

    # -- introspection -----------------------------------------------------

    def listening_port(self, name: str) -> IListeningPort | None:
        """The bound port of listener ``name`` ("federation" or "client"), once bound."""
        for listener in self._listeners:
            if listener.name == name:
                return listener.port
        return None

    def when_ready(self) -> Deferred[None]:
        """Fires when the server is serving; fails with StartupError if start-up failed."""
        return Deferred.fromCoroutine(self._gate.wait())

    # -- IService ----------------------------------------------------------

    def privilegedStartService(self) -> None:
        """Bind the listeners (before privileges are dropped, under twistd)."""
        MultiService.privilegedStartService(self)  # type: ignore[no-untyped-call]
        try:
            self._bind()
        except ConfigError as e:
            self._failed(str(e))

    def _bind(self) -> None:
        if self._bound:
            return
        self._bound = True
        for listener in self._listeners:
            result: list[Any] = []
            listener.endpoint.listen(listener.site).addBoth(result.append)
            if not result:
                # Every endpoint type we document (tcp, ssl, unix) binds at once;
                # one that cannot must not leave us half-started.
                raise ConfigError(
                    f"{listener.option}: {listener.description!r} did not bind synchronously"
                )
            outcome = result[0]
            if isinstance(outcome, Failure):
                raise ConfigError(
                    f"{listener.option}: cannot listen on {listener.description}: "
                    f"{outcome.getErrorMessage()}"
                )
            listener.port = outcome
            log.info("{name} listener on {address}", name=listener.name, address=outcome.getHost())

    def startService(self) -> None:
        MultiService.startService(self)  # type: ignore[no-untyped-call]
        if self._failed_message is not None:
            return
        try:
            self._bind()
        except ConfigError as e:
            self._failed(str(e))
            return
        d = Deferred.fromCoroutine(self._start())
        d.addErrback(lambda f: self._failed(f"start-up failed: {f.getErrorMessage()}", f))

    async def _start(self) -> None:
        await self.database.start()
        if self.verify_pool is not None:
            # Started now, in the background: the first big join does not wait.
            self.verify_pool.start()
        if self.sender is not None:
            await self.sender.start()
        if self.join_coordinator is not None:
            # Partial-state rooms left by the last run fetch their members again.
            await self.join_coordinator.resume_partial_state_rooms()
        self._gate.open()
        log.info("matrixfed serving as {server_name}", server_name=self.config.server_name)

    def _failed(self, message: str, failure: Failure | None = None) -> None:
        # One line for the operator, whatever the library's message looked like.
        message = " ".join(message.split())
        if failure is not None:
            # The traceback is for developers; operators get the one line below.
            log.failure("matrixfed: {message}", failure, message=message, level=LogLevel.debug)
        log.critical("matrixfed: {message}", message=message)
        self._failed_message = message
        if self.on_fatal is not None:
            self.on_fatal(message)
        self._gate.fail(message)

    def stopService(self) -> Deferred[None]:
        children: Any = MultiService.stopService(self)  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._stop(children))

    async def _stop(self, children: Any) -> None:
        if children is not None:
            await children
        if self.sender is not None:
            await self.sender.stop()
        if self.join_coordinator is not None:
            self.join_coordinator.stop()
        if self.verify_pool is not None:
            self.verify_pool.stop()
        stops = [
            Deferred.fromCoroutine(_stop_port(listener.port))
            for listener in self._listeners
            if listener.port is not None
        ]
        for listener in self._listeners:
            listener.port = None
        self._bound = False
        await DeferredList(stops, consumeErrors=True)
        await self.federation_client.close()
        self.database.close()


async def _stop_port(port: Any) -> None:
    await port.stopListening()


def _prepare_data_dir(config: Config) -> None:
    try:
        os.makedirs(config.data_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"--data-dir: cannot create {config.data_dir}: {e.strerror or e}"
        ) from None
    if not os.access(config.data_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"--data-dir: {config.data_dir} is not writable")


def _check_readable(option: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ConfigError(f"{option}: cannot read {path}: {e.strerror or e}") from None


def _endpoint(reactor: Any, option: str, description: str) -> Any:
    try:
        return serverFromString(reactor, description)  # type: ignore[no-untyped-call]
    except Exception as e:
        # Twisted raises ValueError/KeyError/OpenSSL errors/OSError for bad strings
        # and unreadable certificate files; all mean "fix this option".
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise ConfigError(f"{option}: {description!r}: {reason}") from None


def make_service(config: Config, *, reactor: Any = None) -> MatrixfedService:
    """Build the server's service tree from a Config.

    Args:
        config: the configuration.
        reactor: the reactor (default: the global one).

    Returns:
        The service, not yet started: add it to an Application or a running
        MultiService (``setServiceParent``), or start it yourself.

    Raises:
        ConfigError: a value in ``config`` cannot be used (one line).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor

    _prepare_data_dir(config)
    keys = load_server_signing_keys(config.signing_key_file, config.old_signing_keys_path)
    if config.uses_generated_tls:
        if ensure_self_signed_certificate(
            config.tls_certificate_file, config.tls_private_key_file, config.server_name
        ):
            log.info(
                "Generated a self-signed TLS certificate for {server_name} in {path}",
                server_name=config.server_name,
                path=config.tls_certificate_file,
            )
    elif config.tls_certificate is not None and config.tls_private_key is not None:
        _check_readable("--tls-certificate", config.tls_certificate)
        _check_readable("--tls-private-key", config.tls_private_key)
    if config.federation_ca is not None:
        _check_readable("--federation-ca", config.federation_ca)
    if not config.federation_verify_tls:
        log.warn(
            "TLS CERTIFICATES OF OTHER SERVERS ARE NOT VERIFIED (--no-federation-verify-tls): "
            "for testing only, never in production"
        )

    try:
        database = Database.from_uri(config.database_uri, reactor=reactor)
    except ValueError as e:
        raise ConfigError(f"--database: {e}") from None
    try:
        client = build_federation_client(
            reactor=reactor,
            server_name=config.server_name,
            signing_key=keys.primary,
            ca_file=config.federation_ca,
            verify_tls=config.federation_verify_tls,
            allow_private=config.federation_allow_private,
        )
    except ValueError as e:
        raise ConfigError(f"--federation-ca: {e}") from None
    key_server = LocalKeyServer(
        server_name=config.server_name,
        keys=keys,
        clock=reactor,
        validity_ms=config.key_validity_period,
    )
    keyring = KeyRing(
        client=client,
        store=KeysStore(db=database),
        clock=reactor,
        server_name=config.server_name,
        signing_key=keys.primary,
        trusted_key_servers=config.trusted_key_servers,
        own_keys=keys,
        own_key_response=key_server.signed_response,
    )

    gate = _StartGate()
    authenticator = RequestAuthenticator(
        server_name=config.server_name, keyring=keyring, clock=reactor
    )
    notary = NotaryServer(local=key_server, keyring=keyring, clock=reactor)
    federation_resource = JsonResource(
        authenticator=authenticator, wait_ready=gate.wait_for_request
    )
    federation_resource.add_endpoints(
        version_endpoints() + key_server.endpoints() + notary.endpoints()
    )
    client_resource = JsonResource(authenticator=None, wait_ready=gate.wait_for_request)
    store = Store(db=database, clock=reactor)
    notifier = Notifier(clock=reactor, store=store)
    engine = RoomEngine(
        store=store,
        clock=reactor,
        server_name=config.server_name,
        signing_key=keys.primary,
        keyring=keyring,
        federation_client=client,
        notifier=notifier,
    )
    transactions = TransactionHandler(engine=engine, clock=reactor)
    federation_resource.add_endpoints(transactions.endpoints())
    federation_resource.add_endpoints(
        MembershipHandshakes(engine=engine).endpoints()
        + ResidentQueries(store=store, server_name=config.server_name, clock=reactor).endpoints()
        + DirectoryQueries(store=store, server_name=config.server_name).endpoints()
    )

    svc = MatrixfedService(
        config=config,
        reactor=reactor,
        signing_keys=keys,
        database=database,
        federation_client=client,
        keyring=keyring,
        key_server=key_server,
        federation_resource=federation_resource,
        client_resource=client_resource,
        gate=gate,
        store=store,
        engine=engine,
        notifier=notifier,
    )
    sender = OutboundSender(
        db=database,
        store=store,
        federation_client=client,
        clock=reactor,
        server_name=config.server_name,
    )
    engine.set_sender(sender)
    svc.sender = sender
    svc.transactions = transactions
    description = config.federation_listen_endpoint
    if description is not None:
        svc._add_listener(
            _Listener(
                "federation",
                "--federation-listen",
                description,
                _endpoint(reactor, "--federation-listen", description),
                make_site(federation_resource, max_body_size=config.max_request_body_size),
            )
        )
    # Remote joins and leaves (matrixfed.joins); the client API uses it as ``joiner``.
    processes = config.join_verify_processes
    if processes is None:
        processes = os.cpu_count() or 1
    svc.verify_pool = ProcessCheckPool(reactor=reactor, processes=processes) if processes else None
    svc.join_coordinator = JoinCoordinator(
        store=store,
        engine=engine,
        federation_client=FederationJoinClient(client=client),
        keyring=keyring,
        clock=reactor,
        server_name=config.server_name,
        signing_key=keys.primary,
        runner=PoolRunner(reactor=reactor, threadpool=reactor.getThreadPool()),
        partial_state=config.join_partial_state,
        verify_workers=os.cpu_count() or 2,
        process_pool=svc.verify_pool,
    )
    svc.joiner = svc.join_coordinator
    # The client-server API (matrixfed.clientapi): users, rooms, sync.
    install_client_api(svc)
    client_description = config.client_listen_endpoint
    if client_description is not None:
        svc._add_listener(
            _Listener(
                "client",
                "--client-listen",
                client_description,
                _endpoint(reactor, "--client-listen", client_description),
                make_site(client_resource, max_body_size=config.max_request_body_size),
            )
        )
    return svc


def make_twistd_service(options: Any) -> MatrixfedService:
    """Build the service for ``twistd matrixfed`` from parsed ``MatrixfedOptions``.

    A bad option exits at once with one ``matrixfed: ...`` line on stderr and
    status 1. A failure after the reactor started (a port in use, the database
    unreachable) is logged as one critical line and stops the process through
    twistd's own SIGTERM handling, so the pid file is cleaned up and the exit
    status is non-zero.
    """
    try:
        config = Config.from_options(options)
        svc = make_service(config)
    except ConfigError as e:
        raise SystemExit(f"matrixfed: {e}") from None

    def fatal(message: str) -> None:
        from twisted.internet import reactor

        reactor.callWhenRunning(os.kill, os.getpid(), signal.SIGTERM)

    svc.on_fatal = fatal
    return svc
