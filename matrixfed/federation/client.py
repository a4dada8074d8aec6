"""The outbound federation client: every request this server makes to another.

``FederationClient`` sends JSON requests over treq to other servers' federation
and key APIs. For each request it resolves the destination (``discovery``),
connects through the SSRF-guarded TLS endpoint (``transport``) with the
certificate checked against the server name or its delegated name
(``tls_policy``), sends the ``Host`` header the spec asks for, and signs the
request with X-Matrix (``xmatrix``) using our server name and signing key.

Guarantees:
- Answers are JSON only (``application/json``), read up to a size cap
  (``MAX_RESPONSE_SIZE``, raised per call for big answers such as send_join).
- Each call has one deadline covering connection, request and body
  (``DEFAULT_TIMEOUT_SECONDS`` unless given), measured on the injected clock.
- After a failure to reach a destination (DNS, TCP, TLS, timeout) it is put in
  exponential backoff; until that ends calls to it fail at once with a
  transient ``RemoteError`` unless ``ignore_backoff`` is set. Any HTTP answer
  ends the backoff.

How it fails: every failure is a ``matrixfed.errors.RemoteError`` with
``reachable`` (an HTTP answer came back), ``transient`` (worth retrying later),
and ``code``/``errcode``/``body`` when the remote answered with an error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict, Unpack
from urllib.parse import quote, urlencode

import attrs
from canonicaljson import encode_canonical_json
from signedjson.types import SigningKey
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectError
from twisted.logger import Logger
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer  # type: ignore[import-untyped]

import matrixfed
from matrixfed.errors import RemoteError
from matrixfed.federation.discovery import (
    DiscoveryError,
    DNSResolver,
    DNSResult,
    ResolvedServer,
    ServerNameResolver,
)
from matrixfed.federation.tls_policy import FederationTLSPolicy
from matrixfed.federation.transport import (
    AgentWellKnownFetcher,
    BlockedAddressError,
    BodyTooLargeError,
    FixedEndpointFactory,
    GuardedTLSEndpoint,
    read_body_capped,
)
from matrixfed.federation.xmatrix import sign_request

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "MAX_RESPONSE_SIZE",
    "MAX_SEND_JOIN_RESPONSE_SIZE",
    "FederationClient",
    "QueryArgs",
    "RequestOptions",
    "SystemDNSResolver",
    "build_federation_client",
    "federation_path",
]

log = Logger()

# Default cap on a response body: far above ordinary federation answers (a /send
# reply, a key response, a make_join template are kilobytes).
MAX_RESPONSE_SIZE = 16 * 1024 * 1024
# Cap callers should pass for send_join/state: the largest public rooms answer with
# ~24 MB of state; leave ample room for growth.
MAX_SEND_JOIN_RESPONSE_SIZE = 512 * 1024 * 1024
# Deadline for a whole call (connect, send, headers, body) when the caller gives none.
DEFAULT_TIMEOUT_SECONDS = 60.0
# First backoff after a destination could not be reached; doubled per failure.
BACKOFF_INITIAL_SECONDS = 30.0
# Longest backoff: a dead server is probed at least hourly.
BACKOFF_MAX_SECONDS = 3600.0
# Idle keep-alive connections kept per destination.
MAX_PERSISTENT_PER_DESTINATION = 4

# The scheme of the URLs handed to the Agent. Their host is the hex-encoded
# server name: the pool keys connections by it, so two server names never share
# a connection, and it never reaches the wire (the Host header is set explicitly).
_SCHEME = "matrix-federation"

QueryArgs = Mapping[str, str | Sequence[str]]


class RequestOptions(TypedDict, total=False):
    """The keyword-only options every request method takes.

    Attributes:
        timeout: seconds for the whole call (default: the client's).
        ignore_backoff: try even if the destination is in backoff (default False).
        max_size: the largest acceptable response body in bytes (default: the
            client's).
    """

    timeout: float | None
    ignore_backoff: bool
    max_size: int | None


def federation_path(template: str, *segments: str) -> str:
    """Build a request path, percent-encoding each variable segment.

    Args:
        template: the path with ``{}`` for each segment, e.g.
            ``"/_matrix/federation/v1/make_join/{}/{}"``.
        segments: the raw values (room IDs, user IDs...).

    Returns:
        The path to pass to ``get_json`` and friends.
    """
    return template.format(*(quote(s, safe="") for s in segments))


def _encode_query(args: QueryArgs | None) -> str:
    if not args:
        return ""
    pairs: list[tuple[str, str]] = []
    for name, value in args.items():
        if isinstance(value, str):
            pairs.append((name, value))
        else:
            pairs.extend((name, v) for v in value)
    return urlencode(pairs, quote_via=quote)


@implementer(IBodyProducer)
class _BytesProducer:
    """A request body already in memory, written in one go."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _CallTimedOut(Exception):
    """The call's deadline passed (whatever error the cancellation caused inside)."""


def _raise_timed_out(result: object, timeout: float) -> None:
    raise _CallTimedOut(f"no answer within {timeout}s")


@attrs.define(slots=True)
class _Backoff:
    failures: int
    until: float


def _is_json_content_type(values: Sequence[bytes] | None) -> bool:
    if not values:
        return False
    media = values[-1].split(b";", 1)[0].strip().lower()
    return media == b"application/json"


class FederationClient:
    """Signed JSON requests to other homeservers. See the module docstring."""

    def __init__(
        self,
        *,
        reactor: Any,
        server_name: str,
        signing_key: SigningKey,
        dns_resolver: DNSResolver,
        tls_policy: FederationTLSPolicy,
        allow_private: bool = False,
        clock: Any = None,
        resolver: ServerNameResolver | None = None,
        default_timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_response_size: int = MAX_RESPONSE_SIZE,
        user_agent: str = f"matrixfed/{matrixfed.__version__}",
    ) -> None:
        """Create the client.

        Args:
            reactor: provides IReactorTCP and IReactorTime: connections, TLS
                and the keep-alive pool run on it (a MemoryReactorClock in tests).
            clock: provides IReactorTime for call deadlines, backoff and the
                well-known cache; defaults to ``reactor`` (a task.Clock in tests
                that use real sockets).
            server_name: our server name, the ``origin`` of every request.
            signing_key: our signedjson signing key.
            dns_resolver: twisted.names resolver (SRV and address lookups).
            tls_policy: how certificates are checked.
            allow_private: let requests reach loopback/private addresses
                (``--federation-allow-private``); refused otherwise.
            resolver: server name resolver; by default one using
                ``dns_resolver`` and a guarded HTTPS well-known fetcher.
            default_timeout: seconds per call when the caller gives none.
            max_response_size: bytes per response when the caller gives none.
            user_agent: the User-Agent header.
        """
        self._reactor = reactor
        self._clock: Any = clock if clock is not None else reactor
        self._server_name = server_name
        self._signing_key = signing_key
        self._dns = dns_resolver
        self._tls = tls_policy
        self._allow_private = allow_private
        self._default_timeout = default_timeout
        self._max_response_size = max_response_size
        self._user_agent = user_agent.encode("ascii")
        if resolver is None:
            resolver = ServerNameResolver(
                dns_resolver=dns_resolver,
                well_known_fetcher=AgentWellKnownFetcher(
                    reactor=reactor,
                    dns_resolver=dns_resolver,
                    tls_policy=tls_policy,
                    allow_private=allow_private,
                    clock=self._clock,
                ),
                clock=self._clock,
            )
        self.resolver = resolver
        self._pool: Any = HTTPConnectionPool(reactor, persistent=True)  # type: ignore[no-untyped-call]
        self._pool.maxPersistentPerHost = MAX_PERSISTENT_PER_DESTINATION
        self._backoff: dict[str, _Backoff] = {}
        self._close_hooks: list[Callable[[], None]] = []

    @property
    def server_name(self) -> str:
        """Our server name (the origin of requests)."""
        return self._server_name

    def close(self) -> Deferred[None]:
        """Close idle keep-alive connections and owned resources (shutdown, tests)."""
        for hook in self._close_hooks:
            hook()
        d: Deferred[None] = self._pool.closeCachedConnections()
        return d

    def add_close_hook(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` when the client is closed."""
        self._close_hooks.append(hook)

    # -- backoff ------------------------------------------------------------

    def backoff_remaining(self, destination: str) -> float:
        """Seconds until ``destination`` leaves backoff (0 when not backing off)."""
        entry = self._backoff.get(destination)
        if entry is None:
            return 0.0
        now: float = self._clock.seconds()
        return max(0.0, entry.until - now)

    def reset_backoff(self, destination: str) -> None:
        """Forget past failures to reach ``destination`` (e.g. it contacted us)."""
        self._backoff.pop(destination, None)

    def _record_unreachable(self, destination: str) -> None:
        now: float = self._clock.seconds()
        entry = self._backoff.get(destination)
        if entry is not None and now < entry.until:
            # A request started before the backoff began: already counted.
            return
        failures = (entry.failures if entry else 0) + 1
        interval = min(BACKOFF_INITIAL_SECONDS * 2 ** (failures - 1), BACKOFF_MAX_SECONDS)
        self._backoff[destination] = _Backoff(failures, now + interval)
        log.info(
            "cannot reach {destination}; backing off {seconds:.0f}s",
            destination=destination,
            seconds=interval,
        )

    # -- public API ---------------------------------------------------------

    async def get_json(
        self,
        destination: str,
        path: str,
        args: QueryArgs | None = None,
        **options: Unpack[RequestOptions],
    ) -> Any:
        """Signed GET; returns the parsed JSON answer.

        Args:
            destination: the server name to ask.
            path: the percent-encoded request path (see ``federation_path``).
            args: query parameters; a list value repeats the parameter.
            options: keyword-only ``timeout``, ``ignore_backoff`` and
                ``max_size`` (see ``RequestOptions``).

        Raises:
            RemoteError: the call failed (see the module docstring).
        """
        return await self._request("GET", destination, path, args, None, sign=True, **options)

    async def get_json_unsigned(
        self,
        destination: str,
        path: str,
        args: QueryArgs | None = None,
        **options: Unpack[RequestOptions],
    ) -> Any:
        """GET without an Authorization header (for ``/_matrix/key/v2/server``).

        Same arguments and errors as ``get_json``.
        """
        return await self._request("GET", destination, path, args, None, sign=False, **options)

    async def put_json(
        self,
        destination: str,
        path: str,
        data: Any,
        args: QueryArgs | None = None,
        **options: Unpack[RequestOptions],
    ) -> Any:
        """Signed PUT of the JSON value ``data``; see ``get_json``."""
        return await self._request("PUT", destination, path, args, data, sign=True, **options)

    async def post_json(
        self,
        destination: str,
        path: str,
        data: Any,
        args: QueryArgs | None = None,
        **options: Unpack[RequestOptions],
    ) -> Any:
        """Signed POST of the JSON value ``data``; see ``get_json``."""
        return await self._request("POST", destination, path, args, data, sign=True, **options)

    # -- the request --------------------------------------------------------

    async def _request(
        self,
        method: str,
        destination: str,
        path: str,
        args: QueryArgs | None,
        data: Any,
        *,
        sign: bool,
        timeout: float | None = None,
        ignore_backoff: bool = False,
        max_size: int | None = None,
    ) -> Any:
        if not path.startswith("/") or "?" in path or "#" in path or not path.isascii():
            raise ValueError(f"path must be an encoded absolute path without query: {path!r}")
        remaining = self.backoff_remaining(destination)
        if remaining > 0 and not ignore_backoff:
            raise RemoteError(
                destination,
                f"not trying: in backoff for {remaining:.0f}s after failing to connect",
                reachable=False,
                transient=True,
            )
        query = _encode_query(args)
        uri = path + ("?" + query if query else "")
        limit = max_size if max_size is not None else self._max_response_size
        d = Deferred.fromCoroutine(self._send(method, destination, uri, data, limit, sign))
        d.addTimeout(
            timeout if timeout is not None else self._default_timeout,
            self._clock,
            onTimeoutCancel=_raise_timed_out,
        )
        try:
            code, body = await d
        except RemoteError as e:
            if not e.reachable and e.transient:
                self._record_unreachable(destination)
            raise
        except Exception as e:
            error = self._map_exception(destination, e)
            if error.transient:
                self._record_unreachable(destination)
            raise error from e
        return self._parse_answer(destination, method, uri, code, body)

    async def _send(
        self, method: str, destination: str, uri: str, data: Any, limit: int, sign: bool
    ) -> tuple[int, tuple[Sequence[bytes] | None, bytes]]:
        try:
            resolved = await self.resolver.resolve(destination)
        except DiscoveryError as e:
            raise RemoteError(
                destination, f"cannot resolve: {e}", reachable=False, transient=e.transient
            ) from e
        headers = Headers(
            {
                b"Host": [resolved.host_header.encode("ascii")],
                b"User-Agent": [self._user_agent],
            }
        )
        body: bytes | None = None
        if data is not None:
            body = encode_canonical_json(data)
            headers.setRawHeaders(b"Content-Type", [b"application/json"])
        if sign:
            auth = sign_request(
                self._signing_key, self._server_name, destination, method, uri, data
            )
            headers.setRawHeaders(b"Authorization", [auth.encode("utf-8")])
        producer: Any = _BytesProducer
        http = HTTPClient(self._agent_for(resolved), data_to_body_producer=producer)
        url = f"{_SCHEME}://{destination.encode('utf-8').hex()}{uri}"
        log.debug("{method} {destination}{uri}", method=method, destination=destination, uri=uri)
        response: Any = await http.request(
            method,
            url,
            headers=headers,
            data=body,
            allow_redirects=False,
            unbuffered=True,
            reactor=self._reactor,
        )
        # An HTTP answer: the destination is up, whatever the status.
        self._backoff.pop(destination, None)
        content_type = response.headers.getRawHeaders(b"content-type")
        try:
            raw = await read_body_capped(response, limit)
        except BodyTooLargeError as e:
            raise RemoteError(
                destination,
                f"{method} {uri}: response larger than {e.limit} bytes",
                reachable=True,
                transient=False,
                code=response.code,
            ) from e
        return response.code, (content_type, raw)

    def _agent_for(self, resolved: ResolvedServer) -> Any:
        endpoint = GuardedTLSEndpoint(
            reactor=self._reactor,
            dns_resolver=self._dns,
            targets=resolved.targets,
            tls_creator=self._tls.creator_for(resolved.tls_name),
            allow_private=self._allow_private,
        )
        return Agent.usingEndpointFactory(  # type: ignore[no-untyped-call]
            self._reactor, FixedEndpointFactory(endpoint), pool=self._pool
        )

    def _parse_answer(
        self,
        destination: str,
        method: str,
        uri: str,
        code: int,
        answer: tuple[Sequence[bytes] | None, bytes],
    ) -> Any:
        content_type, raw = answer
        what = f"{method} {uri}"
        parsed: Any = None
        json_ok = False
        try:
            parsed = json.loads(raw)
            json_ok = True
        except ValueError:
            pass
        if 200 <= code < 300:
            if not _is_json_content_type(content_type):
                raise RemoteError(
                    destination,
                    f"{what}: answer is not application/json",
                    reachable=True,
                    transient=False,
                    code=code,
                )
            if not json_ok:
                raise RemoteError(
                    destination,
                    f"{what}: answer is not valid JSON",
                    reachable=True,
                    transient=False,
                    code=code,
                )
            return parsed
        errcode = None
        message = f"{what}: HTTP {code}"
        if json_ok and isinstance(parsed, dict):
            if isinstance(parsed.get("errcode"), str):
                errcode = parsed["errcode"]
                message += f" {errcode}"
            if isinstance(parsed.get("error"), str):
                message += f": {parsed['error'][:200]}"
        log.info("{destination} answered {message}", destination=destination, message=message)
        raise RemoteError(
            destination,
            message,
            reachable=True,
            # Server errors and rate limits pass; other client errors will not.
            transient=code >= 500 or code == 429,
            code=code,
            errcode=errcode,
            body=parsed if json_ok else None,
        )

    def _map_exception(self, destination: str, e: Exception) -> RemoteError:
        if isinstance(e, _CallTimedOut | defer.TimeoutError | defer.CancelledError):
            return RemoteError(destination, "timed out", reachable=False, transient=True)
        if isinstance(e, BlockedAddressError):
            return RemoteError(destination, str(e), reachable=False, transient=False)
        if isinstance(e, DiscoveryError):
            return RemoteError(destination, str(e), reachable=False, transient=e.transient)
        if isinstance(e, ResponseNeverReceived | ResponseFailed | RequestTransmissionFailed):
            reasons = "; ".join(f"{r.type.__name__}: {r.getErrorMessage()}" for r in e.reasons)
            return RemoteError(
                destination, f"connection failed: {reasons}", reachable=False, transient=True
            )
        if isinstance(e, ConnectError):
            return RemoteError(destination, f"cannot connect: {e}", reachable=False, transient=True)
        log.failure("unexpected error calling {destination}", destination=destination)
        return RemoteError(destination, f"request failed: {e!r}", reachable=False, transient=True)


class SystemDNSResolver:
    """twisted.names with /etc/hosts first, then the resolv.conf servers, cached.

    Built on first use, so a server that only talks to IP-literal names never
    starts twisted.names' periodic resolv.conf re-read; ``close`` stops it.
    """

    def __init__(
        self,
        *,
        reactor: Any,
        resolv_conf: bytes = b"/etc/resolv.conf",
        hosts_file: bytes = b"/etc/hosts",
    ) -> None:
        self._reactor = reactor
        self._resolv_conf = resolv_conf
        self._hosts_file = hosts_file
        self._network: Any = None
        self._chain: Any = None

    def _get(self) -> Any:
        if self._chain is None:
            from twisted.names import cache, hosts, resolve
            from twisted.names import client as names_client

            self._network = names_client.Resolver(  # type: ignore[no-untyped-call]
                resolv=self._resolv_conf, reactor=self._reactor
            )
            self._chain = resolve.ResolverChain(  # type: ignore[no-untyped-call]
                [
                    hosts.Resolver(self._hosts_file),  # type: ignore[no-untyped-call]
                    cache.CacheResolver(reactor=self._reactor),  # type: ignore[no-untyped-call]
                    self._network,
                ]
            )
        return self._chain

    def lookupService(self, name: str, timeout: Any = None) -> Deferred[DNSResult]:
        d: Deferred[DNSResult] = self._get().lookupService(name, timeout)
        return d

    def lookupAddress(self, name: str, timeout: Any = None) -> Deferred[DNSResult]:
        d: Deferred[DNSResult] = self._get().lookupAddress(name, timeout)
        return d

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> Deferred[DNSResult]:
        d: Deferred[DNSResult] = self._get().lookupIPV6Address(name, timeout)
        return d

    def close(self) -> None:
        """Stop the periodic resolv.conf re-read."""
        call = getattr(self._network, "_parseCall", None)
        if call is not None and call.active():
            call.cancel()


def build_federation_client(
    *,
    reactor: Any,
    server_name: str,
    signing_key: SigningKey,
    ca_file: str | None = None,
    verify_tls: bool = True,
    allow_private: bool = False,
    dns_resolver: DNSResolver | None = None,
) -> FederationClient:
    """Build the production client from configuration values.

    Args:
        reactor: the reactor.
        server_name: our server name.
        signing_key: our signing key.
        ca_file: extra trusted CA (``--federation-ca``).
        verify_tls: False only for testing (``--no-federation-verify-tls``).
        allow_private: ``--federation-allow-private``.
        dns_resolver: default: a ``SystemDNSResolver`` (closed with the client).

    Raises:
        ValueError: ``ca_file`` is unreadable or holds no certificate.
    """
    owned = None
    if dns_resolver is None:
        owned = dns_resolver = SystemDNSResolver(reactor=reactor)
    client = FederationClient(
        reactor=reactor,
        server_name=server_name,
        signing_key=signing_key,
        dns_resolver=dns_resolver,
        tls_policy=FederationTLSPolicy(extra_ca_file=ca_file, verify=verify_tls),
        allow_private=allow_private,
    )
    if owned is not None:
        client.add_close_hook(owned.close)
    return client
