"""Harness for the Synapse interoperability suite: real Synapse and matrixfed processes.

Both servers run as subprocesses on 127.0.0.1 with ports picked at start, server
names that are IP literals with a port (no well-known, no SRV), and federation
over TLS with certificates from one throwaway test CA that both sides trust
(Synapse through ``federation_custom_ca_list``, matrixfed through
``--federation-ca``).

Synapse comes from its own virtualenv, never from matrixfed's dependencies:
``MATRIXFED_SYNAPSE_PYTHON`` names its interpreter (``.ci/run`` installs one),
``/work/synapse-venv`` is the fallback on a development machine. Without
either, ``SKIP_REASON`` says why and the suite is skipped.

Guarantees: every process started here is stopped by its PID (SIGTERM, then
SIGKILL after ``STOP_TIMEOUT_S``) in the test's cleanup or, for processes shared
by a module, at interpreter exit. Each server keeps its log in the test's temp
directory; ``ServerProcess.describe_logs`` gives the paths to print on failure.

HTTP is plain ``urllib`` on a thread (``deferToThread``): no connection pool is
left in the reactor for trial to complain about.
"""

from __future__ import annotations

import abc
import atexit
import functools
import hashlib
import hmac
import itertools
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import yaml
from signedjson.key import generate_signing_key, get_verify_key, write_signing_keys
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import quoteStringArgument
from twisted.trial import unittest
from unpaddedbase64 import encode_base64

import matrixfed
from matrixfed.config import Config
from matrixfed.federation.xmatrix import sign_request
from tests.interop.client import (
    POLL_INTERVAL_S,
    ClientUser,
    free_port,
    http_json,
    http_ok,
    sleep,
)
from tests.tlsutil import TestCA

T = TypeVar("T")
quote_endpoint_arg: Callable[[str], str] = quoteStringArgument

SYNAPSE_VERSION = "1.163.2"
# Where a developer machine has Synapse installed (see the brief).
DEV_SYNAPSE_PYTHON = "/work/synapse-venv/bin/python"
# Synapse is ready in ~1.3 s when idle; the 2-core CI box runs other tests beside it.
START_TIMEOUT_S = 90.0
# A SIGTERM'd server gets this long to exit before SIGKILL.
STOP_TIMEOUT_S = 15.0
# Lines of a server's log shown when it dies during start-up.
LOG_TAIL_LINES = 40


# synapse.__version__ carries git details of the checkout around the venv; the
# package metadata is the installed version.
_PROBE = "import importlib.metadata as m, synapse; print(m.version('matrix-synapse'))"


def _find_synapse_python() -> tuple[str | None, str]:
    env = os.environ.get("MATRIXFED_SYNAPSE_PYTHON")
    candidates = [env] if env else [DEV_SYNAPSE_PYTHON]
    for python in candidates:
        if not python or not os.path.exists(python):
            continue
        probe = subprocess.run(
            [python, "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=60,
            env=_clean_env(),
        )
        if probe.returncode == 0:
            return python, probe.stdout.strip()
        return None, f"{python} cannot import synapse: {probe.stderr.strip()[-300:]}"
    where = env or DEV_SYNAPSE_PYTHON
    return None, (
        f"Synapse is not installed ({where} missing): set MATRIXFED_SYNAPSE_PYTHON to the "
        f"python of a virtualenv with matrix-synapse=={SYNAPSE_VERSION} (.ci/run does this)"
    )


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


SYNAPSE_PYTHON, _probe = _find_synapse_python()
SYNAPSE_FOUND_VERSION = _probe if SYNAPSE_PYTHON else None
SKIP_REASON: str | None = None if SYNAPSE_PYTHON else _probe
if SKIP_REASON:
    print(f"interop: skipped: {SKIP_REASON}", file=sys.stderr)
elif SYNAPSE_FOUND_VERSION != SYNAPSE_VERSION:
    print(
        f"interop: running against Synapse {SYNAPSE_FOUND_VERSION}, not the pinned {SYNAPSE_VERSION}",
        file=sys.stderr,
    )


# ---------------------------------------------------------------------------
# Processes


@attrs.define(eq=False)
class ServerProcess(abc.ABC):
    """A server subprocess with its own directory, ports and log files."""

    directory: str
    server_name: str
    client_port: int
    federation_port: int
    ca: TestCA
    registration_secret: str = attrs.field(factory=lambda: os.urandom(16).hex())
    proc: subprocess.Popen[bytes] | None = None
    _user_counter: Any = attrs.field(factory=itertools.count)

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def federation_url(self) -> str:
        return f"https://127.0.0.1:{self.federation_port}"

    @property
    def log_files(self) -> list[str]:
        return [os.path.join(self.directory, n) for n in ("server.log", "stdout.log")]

    def describe_logs(self) -> str:
        return f"{self.server_name} logs: " + ", ".join(self.log_files)

    def tls_context(self) -> ssl.SSLContext:
        """A client TLS context trusting only the test CA."""
        ctx = ssl.create_default_context(cafile=self.ca.ca_path)
        return ctx

    @property
    @abc.abstractmethod
    def signing_key_path(self) -> str:
        """Where the server's signing key (Synapse's format) is."""

    def verify_key(self) -> tuple[str, str]:
        """(key ID, unpadded base64 verify key) of the server's signing key."""
        return verify_key_of(self.signing_key_path)

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The argv that starts this server."""

    def env(self) -> dict[str, str]:
        return _clean_env()

    async def start(self) -> None:
        """Start the process and wait until it serves; raise with the log tail if not."""
        out = open(os.path.join(self.directory, "stdout.log"), "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.directory,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()
        _live.add(self)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.server_name} exited with {self.proc.returncode} during start-up; "
                    f"{self.describe_logs()}\n{self.log_tail()}"
                )
            try:
                if await self.is_ready():
                    return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.server_name} not ready after {START_TIMEOUT_S:.0f}s; "
                    f"{self.describe_logs()}\n{self.log_tail()}"
                )
            await sleep(POLL_INTERVAL_S)

    @abc.abstractmethod
    async def is_ready(self) -> bool:
        """True once the server answers requests."""

    def log_tail(self) -> str:
        lines: list[str] = []
        for path in self.log_files:
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    lines += [f"[{os.path.basename(path)}] {ln}" for ln in f.read().splitlines()]
            except OSError:
                pass
        return "\n".join(lines[-LOG_TAIL_LINES:])

    def stop(self) -> None:
        """Stop the process by its PID: SIGTERM, then SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        _live.discard(self)
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT_S)

    async def register(self, localpart: str | None = None, *, admin: bool = False) -> ClientUser:
        """Register a user through the shared-secret admin API (Synapse's HMAC-SHA1 flow)."""
        localpart = localpart or f"u{next(self._user_counter)}"
        password = "pw-" + localpart
        url = self.client_url + "/_synapse/admin/v1/register"
        nonce = (await http_ok("GET", url))["nonce"]
        signed = "\x00".join([nonce, localpart, password, "admin" if admin else "notadmin"])
        mac = hmac.new(self.registration_secret.encode(), signed.encode(), hashlib.sha1)
        body = {
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac.hexdigest(),
        }
        result = await http_ok("POST", url, body)
        return ClientUser(self.client_url, result["user_id"], result["access_token"])

    async def server_keys(self) -> Any:
        """This server's own ``GET /_matrix/key/v2/server`` over TLS."""
        return await http_ok(
            "GET", self.federation_url + "/_matrix/key/v2/server", context=self.tls_context()
        )

    def signing_key(self) -> Any:
        """The server's signing key (to forge nothing: to speak as it when it is gone)."""
        from signedjson.key import read_signing_keys

        with open(self.signing_key_path) as f:
            return read_signing_keys(f)[0]

    async def signed_get(self, destination: ServerProcess, path: str) -> tuple[int, Any]:
        """A GET to ``destination``'s federation API signed with this server's key."""
        auth = sign_request(
            self.signing_key(), self.server_name, destination.server_name, "GET", path
        )
        return await http_json(
            "GET",
            destination.federation_url + path,
            headers={"Authorization": auth},
            context=destination.tls_context(),
        )

    async def notary_query(self, server_keys: Mapping[str, Mapping[str, Any]]) -> Any:
        """``POST /_matrix/key/v2/query`` on this server: ask it as a notary."""
        return await http_ok(
            "POST",
            self.federation_url + "/_matrix/key/v2/query",
            {"server_keys": server_keys},
            context=self.tls_context(),
        )


_live: set[ServerProcess] = set()


def _stop_all() -> None:
    for server in list(_live):
        server.stop()


atexit.register(_stop_all)


# Synapse's default ip_range_blacklist without loopback: the whitelist alone does
# not let IP-literal destinations through (see INTEROP.md).
_SYNAPSE_BLACKLIST = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "192.0.0.0/24",
    "169.254.0.0/16",
    "192.88.99.0/24",
    "198.18.0.0/15",
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "fe80::/10",
    "fc00::/7",
    "2001:db8::/32",
    "ff00::/8",
    "fec0::/10",
]
_RELAXED = {"per_second": 10000, "burst_count": 100000}


def _signing_key_file(path: str) -> None:
    key = generate_signing_key("a_" + os.urandom(3).hex())
    with open(path, "w") as f:
        write_signing_keys(f, [key])


def verify_key_of(signing_key_path: str) -> tuple[str, str]:
    """(key ID, unpadded base64 verify key) of a Synapse-format signing key file."""
    from signedjson.key import read_signing_keys

    with open(signing_key_path) as f:
        key = read_signing_keys(f)[0]
    return f"{key.alg}:{key.version}", encode_base64(get_verify_key(key).encode())


@attrs.define(eq=False)
class SynapseServer(ServerProcess):
    """A Synapse homeserver configured for loopback federation (see INTEROP.md)."""

    trusted_key_servers: list[dict[str, Any]] = attrs.field(factory=list)

    @classmethod
    def create(
        cls, directory: str, ca: TestCA, *, trusted_key_servers: Sequence[Mapping[str, Any]] = ()
    ) -> SynapseServer:
        os.makedirs(directory, exist_ok=True)
        fed, client = free_port(), free_port()
        server = cls(
            directory=directory,
            server_name=f"127.0.0.1:{fed}",
            client_port=client,
            federation_port=fed,
            ca=ca,
            trusted_key_servers=[dict(t) for t in trusted_key_servers],
        )
        server.write_config()
        return server

    def write_config(self) -> None:
        d = self.directory
        cert, key = self.ca.issue(self.server_name)
        _signing_key_file(os.path.join(d, "signing.key"))
        log_config = {
            "version": 1,
            "formatters": {
                "f": {"format": "%(asctime)s %(name)s %(levelname)s %(request)s %(message)s"}
            },
            "filters": {"ctx": {"()": "synapse.logging.context.LoggingContextFilter"}},
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "filename": os.path.join(d, "server.log"),
                    "formatter": "f",
                    "filters": ["ctx"],
                }
            },
            "loggers": {"synapse.storage.SQL": {"level": "INFO"}},
            "root": {"level": "INFO", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }
        with open(os.path.join(d, "log.yaml"), "w") as f:
            yaml.safe_dump(log_config, f)
        config = {
            "server_name": self.server_name,
            "pid_file": os.path.join(d, "homeserver.pid"),
            "public_baseurl": self.client_url + "/",
            "report_stats": False,
            "listeners": [
                {
                    "port": self.federation_port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": True,
                    "resources": [{"names": ["federation"], "compress": False}],
                },
                {
                    "port": self.client_port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "resources": [{"names": ["client"], "compress": False}],
                },
            ],
            "tls_certificate_path": cert,
            "tls_private_key_path": key,
            "federation_verify_certificates": True,
            "federation_custom_ca_list": [self.ca.ca_path],
            "ip_range_whitelist": ["127.0.0.1/32", "::1/128"],
            "ip_range_blacklist": _SYNAPSE_BLACKLIST,
            "trusted_key_servers": self.trusted_key_servers,
            "suppress_key_server_warning": True,
            "database": {
                "name": "sqlite3",
                "args": {"database": os.path.join(d, "homeserver.db")},
            },
            "log_config": os.path.join(d, "log.yaml"),
            "media_store_path": os.path.join(d, "media_store"),
            "signing_key_path": os.path.join(d, "signing.key"),
            "registration_shared_secret": self.registration_secret,
            "macaroon_secret_key": os.urandom(16).hex(),
            "form_secret": os.urandom(16).hex(),
            "room_list_publication_rules": [{"action": "allow"}],
            "alias_creation_rules": [{"action": "allow"}],
            "allow_public_rooms_over_federation": True,
            "enable_metrics": False,
            "url_preview_enabled": False,
            "presence": {"enabled": False},
            "rc_message": _RELAXED,
            "rc_registration": _RELAXED,
            "rc_room_creation": _RELAXED,
            "rc_login": {"address": _RELAXED, "account": _RELAXED, "failed_attempts": _RELAXED},
            "rc_joins": {"local": _RELAXED, "remote": _RELAXED},
            "rc_joins_per_room": _RELAXED,
            "rc_invites": {"per_room": _RELAXED, "per_user": _RELAXED, "per_issuer": _RELAXED},
            "rc_key_requests": _RELAXED,
            "rc_admin_redaction": _RELAXED,
            "rc_presence": {"per_user": _RELAXED},
            "rc_federation": {
                "window_size": 1000,
                "sleep_limit": 10000,
                "sleep_delay": 0,
                "reject_limit": 100000,
                "concurrent": 100,
            },
            "federation_rr_transactions_per_room_per_second": 10000,
            # A matrixfed that was restarted is retried within seconds, not 10 min.
            "federation": {
                "destination_min_retry_interval": "1s",
                "destination_max_retry_interval": "5s",
            },
        }
        with open(os.path.join(d, "homeserver.yaml"), "w") as f:
            yaml.safe_dump(config, f)

    def command(self) -> list[str]:
        assert SYNAPSE_PYTHON is not None, SKIP_REASON
        return [
            SYNAPSE_PYTHON,
            "-m",
            "synapse.app.homeserver",
            "-c",
            os.path.join(self.directory, "homeserver.yaml"),
        ]

    async def is_ready(self) -> bool:
        code, _ = await http_json("GET", self.client_url + "/health", timeout=5)
        return code == 200

    @property
    def signing_key_path(self) -> str:
        return os.path.join(self.directory, "signing.key")


def _matrixfed_options() -> set[str]:
    return {f.name for f in attrs.fields(Config)}


@attrs.define(eq=False)
class MatrixfedServer(ServerProcess):
    """matrixfed run as ``twistd -n matrixfed`` from the venv of the tests."""

    trusted_key_servers: list[str] = attrs.field(factory=list)
    default_room_version: str | None = None

    @classmethod
    def create(
        cls,
        directory: str,
        ca: TestCA,
        *,
        trusted_key_servers: Sequence[str] = (),
    ) -> MatrixfedServer:
        os.makedirs(directory, exist_ok=True)
        fed, client = free_port(), free_port()
        return cls(
            directory=directory,
            server_name=f"127.0.0.1:{fed}",
            client_port=client,
            federation_port=fed,
            ca=ca,
            trusted_key_servers=list(trusted_key_servers),
        )

    @property
    def log_files(self) -> list[str]:
        return [os.path.join(self.directory, n) for n in ("matrixfed.log", "stdout.log")]

    def command(self) -> list[str]:
        cert, key = self.ca.issue(self.server_name)
        data_dir = os.path.join(self.directory, "data")
        args = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "--logfile=" + os.path.join(self.directory, "matrixfed.log"),
            "matrixfed",
            "--server-name",
            self.server_name,
            "--data-dir",
            data_dir,
            "--federation-listen",
            f"ssl:{self.federation_port}:interface=127.0.0.1"
            f":privateKey={quote_endpoint_arg(key)}:certKey={quote_endpoint_arg(cert)}",
            "--client-listen",
            f"tcp:{self.client_port}:interface=127.0.0.1",
            "--federation-ca",
            self.ca.ca_path,
            "--federation-allow-private",
        ]
        for notary in self.trusted_key_servers:
            args += ["--trusted-key-server", notary]
        options = _matrixfed_options()
        if "registration_shared_secret" in options:
            args += ["--registration-shared-secret", self.registration_secret]
        return args

    def env(self) -> dict[str, str]:
        # twistd finds the plugin of the matrixfed under test through sys.path.
        root = os.path.dirname(os.path.dirname(os.path.abspath(matrixfed.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        return env

    async def is_ready(self) -> bool:
        code, _ = await http_json(
            "GET",
            self.federation_url + "/_matrix/federation/v1/version",
            context=self.tls_context(),
            timeout=5,
        )
        return code == 200

    @property
    def signing_key_path(self) -> str:
        return os.path.join(self.directory, "data", "signing.key")


# ---------------------------------------------------------------------------
# Servers shared by the tests of one module (one trial worker process)


_ca: list[TestCA] = []


def process_ca() -> TestCA:
    """The one test CA of this process: every server here trusts every other."""
    if not _ca:
        _ca.append(TestCA(tempfile.mkdtemp(prefix="interop-ca-", dir=os.getcwd())))
    return _ca[0]


class SharedServers:
    """Lazily started servers reused by every test of a module; stopped at exit by PID."""

    def __init__(self) -> None:
        self._base_dir: str | None = None
        self._servers: dict[str, ServerProcess] = {}

    @property
    def base_dir(self) -> str:
        if self._base_dir is None:
            # Under the trial temp dir (the cwd once tests run), so logs stay readable.
            self._base_dir = tempfile.mkdtemp(prefix="interop-shared-", dir=os.getcwd())
        return self._base_dir

    def _ca(self) -> TestCA:
        return process_ca()

    async def get(self, name: str, factory: Callable[[str, TestCA], ServerProcess]) -> Any:
        server = self._servers.get(name)
        if server is not None and server.proc is not None and server.proc.poll() is None:
            return server
        server = factory(os.path.join(self.base_dir, name), self._ca())
        await server.start()
        self._servers[name] = server
        return server

    def describe_logs(self) -> str:
        return "\n".join(s.describe_logs() for s in self._servers.values())


SHARED = SharedServers()


async def shared_pair() -> tuple[SynapseServer, MatrixfedServer]:
    """This process's shared Synapse, and a matrixfed that trusts it as its notary."""
    synapse: SynapseServer = await SHARED.get("synapse", SynapseServer.create)
    mf: MatrixfedServer = await SHARED.get(
        "matrixfed",
        lambda d, ca: MatrixfedServer.create(d, ca, trusted_key_servers=[synapse.server_name]),
    )
    return synapse, mf


async def shared_trio() -> tuple[SynapseServer, MatrixfedServer, MatrixfedServer]:
    """The shared pair and a second matrixfed (for three-server rooms)."""
    synapse, mf = await shared_pair()
    mf2: MatrixfedServer = await SHARED.get(
        "matrixfed2",
        lambda d, ca: MatrixfedServer.create(d, ca, trusted_key_servers=[synapse.server_name]),
    )
    return synapse, mf, mf2


def state_by_key(events: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """A /state answer keyed by (type, state_key)."""
    return {(e["type"], e["state_key"]): dict(e) for e in events}


class InteropTestCase(unittest.TestCase):
    """Base for interop tests: skipped without Synapse; failures name the log files."""

    skip = SKIP_REASON
    # Trial's default is 120 s; a three-server scenario on a loaded 2-core box
    # can take longer, and every wait inside has its own bound.
    timeout = 600
    # Per-test servers are added here and stopped in cleanup; shared ones are not.
    shared: SharedServers | None = SHARED

    def setUp(self) -> None:
        self.servers: list[ServerProcess] = []
        self.ca = process_ca()

    def tearDown(self) -> None:
        for server in self.servers:
            server.stop()

    async def start_synapse(self, **kw: Any) -> SynapseServer:
        server = SynapseServer.create(os.path.abspath(self.mktemp()), self.ca, **kw)
        self.servers.append(server)
        await server.start()
        return server

    async def start_matrixfed(self, **kw: Any) -> MatrixfedServer:
        server = MatrixfedServer.create(os.path.abspath(self.mktemp()), self.ca, **kw)
        self.servers.append(server)
        await server.start()
        return server

    def logs(self) -> str:
        parts = [s.describe_logs() for s in self.servers]
        if self.shared is not None:
            parts.append(self.shared.describe_logs())
        return "\n".join(p for p in parts if p)


def with_logs(
    test: Callable[[Any], Awaitable[None]],
) -> Callable[[Any], Deferred[None]]:
    """Decorate an async test: any failure is reported with the servers' log paths."""

    @functools.wraps(test)
    def run(self: InteropTestCase) -> Deferred[None]:
        async def body() -> None:
            try:
                await test(self)
            except unittest.SkipTest:
                raise
            except Exception as e:
                raise self.failureException(f"{traceback.format_exc()}\n{self.logs()}") from e

        return Deferred.fromCoroutine(body())

    return run


# Every room version the issue names. If the suite must shrink, keep 1, 10, 11, 12.
ROOM_VERSIONS = ("1", "2", "6", "9", "10", "11", "12")


def for_room_versions(
    versions: Sequence[str],
) -> Callable[[type[InteropTestCase]], type[InteropTestCase]]:
    """Class decorator: each ``async def check_NAME(self, room_version)`` becomes
    one test ``test_NAME_vN`` per room version (with ``with_logs``)."""

    def bind(impl: Callable[[Any, str], Awaitable[None]], version: str) -> Any:
        async def test(self: InteropTestCase) -> None:
            await impl(self, version)

        test.__name__ = impl.__name__.replace("check_", "test_", 1) + f"_v{version}"
        test.__doc__ = (impl.__doc__ or "").strip() + f" (room version {version})"
        return with_logs(test)

    def decorate(cls: type[InteropTestCase]) -> type[InteropTestCase]:
        for name, impl in list(vars(cls).items()):
            if name.startswith("check_") and callable(impl):
                for version in versions:
                    test = bind(impl, version)
                    setattr(cls, test.__name__, test)
        return cls

    return decorate
