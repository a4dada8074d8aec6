"""Outbound connections: SSRF guard, guarded TLS endpoints, capped body reads.

Every outbound federation and well-known connection goes through
``GuardedTLSEndpoint``: it resolves each target host with the injected
twisted.names resolver, drops addresses the SSRF guard forbids (loopback,
private, link-local, multicast, reserved... anything not globally routable,
including IPv4-mapped IPv6 forms of those) unless ``allow_private`` is set, and
connects over TLS to the remaining addresses in order until one answers.

How it fails: ``BlockedAddressError`` when every address was forbidden (the
caller must not retry), ``DiscoveryError`` when DNS had no answer, or the last
connection error (refused, timed out) when no address accepted.

``read_body_capped`` reads a response body up to a byte limit; it aborts the
connection when the limit is passed or when cancelled (timeouts).
``AgentWellKnownFetcher`` is the production ``WellKnownFetcher``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IAgentEndpointFactory
from zope.interface import implementer  # type: ignore[import-untyped]

from matrixfed.federation.discovery import (
    DiscoveryError,
    DNSResolver,
    Target,
    WellKnownFetchError,
    WellKnownResponse,
    lookup_addresses,
)
from matrixfed.federation.tls_policy import FederationTLSPolicy

__all__ = [
    "AgentWellKnownFetcher",
    "BlockedAddressError",
    "BodyTooLargeError",
    "FixedEndpointFactory",
    "GuardedTLSEndpoint",
    "HTTPSEndpointFactory",
    "is_forbidden_address",
    "read_body_capped",
]

log = Logger()

# A TCP connect that has not completed by then is to a dead or filtered host.
CONNECT_TIMEOUT_SECONDS = 10.0
# Whole well-known fetch (connect, TLS, headers, body): a few small round trips.
WELL_KNOWN_TIMEOUT_SECONDS = 15.0


class BlockedAddressError(Exception):
    """Every address of the destination is one the SSRF guard forbids."""


class BodyTooLargeError(Exception):
    """A response body was larger than the caller's limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"response body larger than {limit} bytes")
        self.limit = limit


def is_forbidden_address(ip: str) -> bool:
    """True if connecting to ``ip`` would reach a non-public network.

    Forbidden: loopback, private (RFC 1918, ULA), link-local, shared (CGNAT),
    multicast, unspecified, reserved and documentation ranges: everything
    Python's ``ipaddress`` does not consider globally routable, also when
    wrapped as an IPv4-mapped IPv6 address.

    Args:
        ip: an IPv4 or IPv6 address literal (no brackets).

    Returns:
        Whether the SSRF guard refuses it.
    """
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address):
        mapped = addr.ipv4_mapped or addr.sixtofour
        if mapped is not None:
            addr = mapped
    return not addr.is_global or addr.is_multicast


@implementer(IStreamClientEndpoint)
class GuardedTLSEndpoint:
    """A TLS client endpoint over a list of targets, with the SSRF guard applied."""

    def __init__(
        self,
        *,
        reactor: Any,
        dns_resolver: DNSResolver,
        targets: Sequence[Target],
        tls_creator: Any,
        allow_private: bool,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    ) -> None:
        """Create the endpoint.

        Args:
            reactor: provides IReactorTCP and IReactorTime.
            dns_resolver: resolves target host names to addresses.
            targets: where to try, in order.
            tls_creator: an IOpenSSLClientConnectionCreator checking the expected name.
            allow_private: let connections reach non-public addresses.
            connect_timeout: per-address TCP connect timeout in seconds.
        """
        self._reactor = reactor
        self._dns = dns_resolver
        self._targets = tuple(targets)
        self._tls_creator = tls_creator
        self._allow_private = allow_private
        self._connect_timeout = connect_timeout

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        """Connect to the first target address that accepts."""
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, factory: Any) -> Any:
        last_error: Exception | None = None
        blocked: list[str] = []
        for target in self._targets:
            try:
                addresses = await lookup_addresses(self._dns, target.host)
            except DiscoveryError as e:
                last_error = e
                continue
            for address in addresses:
                if not self._allow_private and is_forbidden_address(address):
                    blocked.append(address)
                    continue
                tcp: Any
                if ":" in address:
                    tcp = TCP6ClientEndpoint(  # type: ignore[no-untyped-call]
                        self._reactor, address, target.port, timeout=self._connect_timeout
                    )
                else:
                    tcp = TCP4ClientEndpoint(
                        self._reactor, address, target.port, timeout=self._connect_timeout
                    )
                endpoint: Any = wrapClientTLS(self._tls_creator, tcp, clock=self._reactor)
                try:
                    protocol = await endpoint.connect(factory)
                except Exception as e:
                    log.debug(
                        "connect to {address}:{port} failed: {error!r}",
                        address=address,
                        port=target.port,
                        error=e,
                    )
                    last_error = e
                    continue
                return protocol
        if last_error is None and blocked:
            log.warn(
                "refused outbound connection to non-public addresses {addresses}",
                addresses=blocked,
            )
            raise BlockedAddressError(
                f"refusing to connect to non-public address(es) {', '.join(blocked)}"
            )
        assert last_error is not None, "a resolved target always yields an address"
        raise last_error


@implementer(IAgentEndpointFactory)
class FixedEndpointFactory:
    """Hands the Agent one prepared endpoint, whatever the URI."""

    def __init__(self, endpoint: Any) -> None:
        self._endpoint = endpoint

    def endpointForURI(self, uri: Any) -> Any:
        return self._endpoint


@implementer(IAgentEndpointFactory)
class HTTPSEndpointFactory:
    """Guarded endpoints for plain ``https://host[:port]/`` URLs (the well-known)."""

    def __init__(
        self,
        *,
        reactor: Any,
        dns_resolver: DNSResolver,
        tls_policy: FederationTLSPolicy,
        allow_private: bool,
    ) -> None:
        self._reactor = reactor
        self._dns = dns_resolver
        self._tls = tls_policy
        self._allow_private = allow_private

    def endpointForURI(self, uri: Any) -> Any:
        if uri.scheme != b"https":
            raise SchemeNotSupported(f"unsupported scheme {uri.scheme!r}")
        host = uri.host.decode("ascii").strip("[]")
        return GuardedTLSEndpoint(
            reactor=self._reactor,
            dns_resolver=self._dns,
            targets=[Target(host, uri.port)],
            tls_creator=self._tls.creator_for(host),
            allow_private=self._allow_private,
        )


class _CappedBodyReader(Protocol):
    def __init__(self, finished: Deferred[bytes], max_size: int) -> None:
        self._finished: Deferred[bytes] | None = finished
        self._max_size = max_size
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._finished is None:
            return
        self._size += len(data)
        if self._size > self._max_size:
            self.fail_too_large()
            return
        self._chunks.append(data)

    def fail_too_large(self) -> None:
        if self._finished is None:
            return
        finished, self._finished = self._finished, None
        self._chunks = []
        self.abort()
        finished.errback(BodyTooLargeError(self._max_size))

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._finished is None:
            return
        finished, self._finished = self._finished, None
        done = reason is None or reason.check(ResponseDone, PotentialDataLoss)  # type: ignore[no-untyped-call]
        if done:
            finished.callback(b"".join(self._chunks))
        else:
            finished.errback(reason)

    def abort(self) -> None:
        transport: Any = self.transport
        if transport is None:
            return
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.stopProducing()


def read_body_capped(response: Any, max_size: int) -> Deferred[bytes]:
    """Read a whole response body, refusing more than ``max_size`` bytes.

    Args:
        response: the response whose body has not been delivered yet.
        max_size: the largest acceptable body in bytes.

    Returns:
        A Deferred firing with the body, failing with ``BodyTooLargeError``.
        Cancelling it closes the connection.
    """
    reader: _CappedBodyReader | None = None

    def cancel(_: Deferred[bytes]) -> None:
        if reader is not None:
            reader.abort()

    finished: Deferred[bytes] = Deferred(cancel)
    reader = _CappedBodyReader(finished, max_size)
    response.deliverBody(reader)
    if response.length is not UNKNOWN_LENGTH and response.length > max_size:
        # Refuse before reading: the server announced too much.
        reader.fail_too_large()
    return finished


class AgentWellKnownFetcher:
    """Fetches well-known documents over guarded HTTPS, without following redirects."""

    def __init__(
        self,
        *,
        reactor: Any,
        dns_resolver: DNSResolver,
        tls_policy: FederationTLSPolicy,
        allow_private: bool,
        clock: Any = None,
        timeout: float = WELL_KNOWN_TIMEOUT_SECONDS,
        pool: HTTPConnectionPool | None = None,
    ) -> None:
        """Create the fetcher.

        Args:
            reactor: provides IReactorTCP and IReactorTime.
            dns_resolver: resolves the hostname (SSRF guard applied).
            tls_policy: certificate checks (against the hostname).
            allow_private: let the fetch reach non-public addresses.
            clock: IReactorTime for the deadline (default: ``reactor``).
            timeout: seconds for the whole fetch.
            pool: connection pool (a non-persistent one by default).
        """
        self._clock: Any = clock if clock is not None else reactor
        self._timeout = timeout
        self._agent: Any = Agent.usingEndpointFactory(  # type: ignore[no-untyped-call]
            reactor,
            HTTPSEndpointFactory(
                reactor=reactor,
                dns_resolver=dns_resolver,
                tls_policy=tls_policy,
                allow_private=allow_private,
            ),
            pool=pool if pool is not None else HTTPConnectionPool(reactor, persistent=False),  # type: ignore[no-untyped-call]
        )

    async def fetch(self, url: str, *, max_size: int) -> WellKnownResponse:
        """GET ``url``; see ``WellKnownFetcher.fetch``."""
        d = Deferred.fromCoroutine(self._fetch(url, max_size))
        d.addTimeout(self._timeout, self._clock)
        try:
            return await d
        except WellKnownFetchError:
            raise
        except Exception as e:
            raise WellKnownFetchError(f"{url}: {e!r}") from e

    async def _fetch(self, url: str, max_size: int) -> WellKnownResponse:
        response: Any = await self._agent.request(b"GET", url.encode("ascii"))
        body = await read_body_capped(response, max_size)
        headers = {
            name.decode("latin-1").lower(): [v.decode("latin-1") for v in values]
            for name, values in response.headers.getAllRawHeaders()
        }
        return WellKnownResponse(code=response.code, headers=headers, body=body)
