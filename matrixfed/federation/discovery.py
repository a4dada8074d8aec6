"""Server name resolution: where to connect for a Matrix server name.

Implements server-server-api.md, "Resolving server names", step by step:

1. IP literal (``1.2.3.4``, ``[::1]``), with or without a port: connect there
   (port 8448 by default); ``Host`` is the server name; the certificate must
   name the IP.
2. Hostname with an explicit port: connect to the hostname's A/AAAA addresses
   on that port; ``Host`` is the server name; the certificate names the host.
3. Otherwise fetch ``https://<hostname>/.well-known/matrix/server``. A valid
   answer delegates to ``<delegated_hostname>[:<delegated_port>]``, which is
   resolved again (3.1 IP literal, 3.2 explicit port, 3.3 SRV
   ``_matrix-fed._tcp``, 3.4 deprecated SRV ``_matrix._tcp``, 3.5 port 8448);
   ``Host`` and the certificate name are then the delegated name.
4-6. No valid well-known: SRV ``_matrix-fed._tcp.<hostname>``, then
   ``_matrix._tcp.<hostname>``, then ``<hostname>:8448``.

Guarantees: the name the TLS certificate is checked against (``tls_name``) is
always the server name's host or the delegated host, never an SRV target.
Well-known answers are cached per hostname (Cache-Control max-age honoured and
clamped; 24 h default, 48 h maximum); failures are cached briefly with
exponential backoff (up to the spec's hour), and a recently expired good answer
keeps being used for a grace period while the well-known server is unreachable.
Concurrent lookups of one hostname share one fetch.

How it fails: ``DiscoveryError`` (with ``transient``) when a name is invalid or
DNS cannot answer. A bad or unreachable well-known is not an error: the
algorithm falls through to SRV and port 8448, as the spec says.

Every dependency is injected (a twisted.names resolver, a well-known fetcher, a
clock), so each branch is testable with fakes.
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
import socket
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, cast
from urllib.parse import urljoin, urlsplit

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import DNSNameError, DomainError

__all__ = [
    "DEFAULT_FEDERATION_PORT",
    "DNSResolver",
    "DiscoveryError",
    "ResolvedServer",
    "ServerNameResolver",
    "Target",
    "WellKnownFetchError",
    "WellKnownFetcher",
    "WellKnownResponse",
    "is_ip_literal",
    "lookup_addresses",
    "parse_server_name",
]

log = Logger()

# spec: the port used when neither the name, the well-known nor SRV give one.
DEFAULT_FEDERATION_PORT = 8448
# spec: recommended default cache time of a well-known answer without cache headers.
WELL_KNOWN_DEFAULT_CACHE_SECONDS = 24 * 3600
# spec: recommended maximum cache time whatever the headers say.
WELL_KNOWN_MAX_CACHE_SECONDS = 48 * 3600
# A server answering max-age=0 would otherwise cost a well-known fetch per request.
WELL_KNOWN_MIN_CACHE_SECONDS = 5 * 60
# First failure cached this long: short, so a fixed well-known is picked up soon.
WELL_KNOWN_ERROR_CACHE_INITIAL_SECONDS = 2 * 60
# spec: errors are recommended to be cached for up to an hour.
WELL_KNOWN_ERROR_CACHE_MAX_SECONDS = 3600
# An expired good answer is kept this long while the well-known server is down,
# rather than falling back to SRV/8448 on a transient outage.
WELL_KNOWN_GRACE_SECONDS = 3600
# A well-known document is a few dozen bytes; anything bigger is not one.
WELL_KNOWN_MAX_SIZE = 50 * 1024
# spec: follow 30x redirects but avoid loops; browsers stop at about this many.
WELL_KNOWN_MAX_REDIRECTS = 5
# Hostnames with a cached well-known answer; bounds memory under many destinations.
WELL_KNOWN_CACHE_MAX_ENTRIES = 10_000
# CNAME chains longer than this are treated as a loop.
MAX_CNAME_DEPTH = 8

_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_DNS_NAME_RE = re.compile(r"^[A-Za-z0-9.\-]{1,255}$")
_IPV4_RE = re.compile(r"^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$")
_IPV6_CHARS_RE = re.compile(r"^[0-9A-Fa-f:.]{2,45}$")
_PORT_RE = re.compile(r"^[0-9]{1,5}$")


class DiscoveryError(Exception):
    """A server name could not be resolved to somewhere to connect.

    Attributes:
        transient: True when asking again later may succeed (DNS timeouts), False
            when the name itself is unusable.
    """

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class WellKnownFetchError(Exception):
    """The well-known document could not be fetched (network, TLS, size, timeout)."""


@attrs.frozen(slots=True)
class Target:
    """One place to try to connect: a host (name or IP literal, no brackets) and port."""

    host: str
    port: int


@attrs.frozen(slots=True)
class ResolvedServer:
    """Where and how to reach a server name.

    Attributes:
        server_name: the server name that was resolved.
        targets: hosts and ports to try, in order (several only after SRV).
            Hosts may still be DNS names that need A/AAAA resolution.
        host_header: the ``Host`` header value the spec asks for.
        tls_name: the DNS name or IP address the certificate must be valid for.
    """

    server_name: str
    targets: tuple[Target, ...]
    host_header: str
    tls_name: str

    @property
    def host(self) -> str:
        """The first host to connect to."""
        return self.targets[0].host

    @property
    def port(self) -> int:
        """The first port to connect to."""
        return self.targets[0].port


@attrs.frozen(slots=True)
class WellKnownResponse:
    """An HTTP answer to a well-known request, as the fetcher saw it.

    Attributes:
        code: the HTTP status.
        headers: header names lower-cased to their values.
        body: the body (the fetcher enforces its size cap).
    """

    code: int
    headers: Mapping[str, Sequence[str]]
    body: bytes


class WellKnownFetcher(Protocol):
    """Performs one HTTPS GET, without following redirects."""

    async def fetch(self, url: str, *, max_size: int) -> WellKnownResponse:
        """GET ``url``.

        Raises:
            WellKnownFetchError: no HTTP answer, or a body over ``max_size``.
        """
        ...


DNSResult = tuple[list[dns.RRHeader], list[dns.RRHeader], list[dns.RRHeader]]


class DNSResolver(Protocol):
    """The parts of a twisted.names resolver (``IResolver``) discovery uses."""

    def lookupService(self, name: str, timeout: Any = None) -> Deferred[DNSResult]: ...

    def lookupAddress(self, name: str, timeout: Any = None) -> Deferred[DNSResult]: ...

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> Deferred[DNSResult]: ...


class SecondsClock(Protocol):
    def seconds(self) -> float: ...


def is_ip_literal(host: str) -> bool:
    """True if ``host`` (without brackets) is an IPv4 or IPv6 address literal."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_server_name(server_name: str) -> tuple[str, int | None]:
    """Split a server name into host and optional port, validating the grammar.

    The host of an IPv6 literal is returned without its brackets.

    Args:
        server_name: e.g. ``matrix.org``, ``1.2.3.4:8448``, ``[::1]:8448``.

    Returns:
        ``(host, port or None)``.

    Raises:
        ValueError: the name does not match the appendices' server name grammar.
    """
    if server_name.startswith("["):
        end = server_name.find("]")
        if end < 0:
            raise ValueError(f"Unterminated IPv6 literal in {server_name!r}")
        host = server_name[1:end]
        rest = server_name[end + 1 :]
        if not _IPV6_CHARS_RE.fullmatch(host):
            raise ValueError(f"Invalid IPv6 literal in {server_name!r}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"Invalid IPv6 literal in {server_name!r}") from None
    else:
        host, sep, port_s = server_name.partition(":")
        rest = sep + port_s
        if _IPV4_RE.fullmatch(host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"Invalid IPv4 literal in {server_name!r}") from None
        elif not _DNS_NAME_RE.fullmatch(host):
            raise ValueError(f"Invalid hostname in server name {server_name!r}")
    if not rest:
        return host, None
    if not rest.startswith(":") or not _PORT_RE.fullmatch(rest[1:]):
        raise ValueError(f"Invalid port in server name {server_name!r}")
    port = int(rest[1:])
    if not 0 < port < 65536:
        raise ValueError(f"Port out of range in server name {server_name!r}")
    return host, port


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _address_records(answers: Sequence[dns.RRHeader]) -> tuple[list[str], list[str]]:
    addrs: list[str] = []
    cnames: list[str] = []
    for rr in answers:
        payload: Any = rr.payload
        if rr.type == dns.A:
            addrs.append(payload.dottedQuad())
        elif rr.type == dns.AAAA:
            addrs.append(socket.inet_ntop(socket.AF_INET6, payload.address))
        elif rr.type == dns.CNAME:
            cnames.append(str(payload.name))
    return addrs, cnames


def _is_no_such_record(e: Exception) -> bool:
    # NXDOMAIN, or a resolver chain where no resolver had the name (a bare
    # DomainError); DomainError subclasses such as SERVFAIL are real failures.
    return isinstance(e, DNSNameError) or type(e) is DomainError


async def _lookup_one_family(
    resolver: DNSResolver, host: str, v6: bool
) -> tuple[list[str], Exception | None]:
    name = host
    for _ in range(MAX_CNAME_DEPTH):
        try:
            if v6:
                answers, _auth, _add = await resolver.lookupIPV6Address(name)
            else:
                answers, _auth, _add = await resolver.lookupAddress(name)
        except Exception as e:  # twisted.names raises many types; all mean "no answer"
            return [], e
        addrs, cnames = _address_records(answers)
        if addrs or not cnames:
            return addrs, None
        # A CNAME without the records it points at (a non-recursive answer).
        name = cnames[0]
    return [], DiscoveryError(f"CNAME chain too long for {host}", transient=False)


async def lookup_addresses(resolver: DNSResolver, host: str) -> list[str]:
    """Resolve a host to IP addresses with AAAA then A records (following CNAMEs).

    An IP literal resolves to itself.

    Args:
        resolver: a twisted.names resolver.
        host: a DNS name or an IP literal (without brackets).

    Returns:
        The addresses, IPv6 first, without duplicates; never empty.

    Raises:
        DiscoveryError: neither family gave an address.
    """
    if is_ip_literal(host):
        return [host]
    # Both families are asked at once so a slow AAAA answer does not delay A.
    d6 = Deferred.fromCoroutine(_lookup_one_family(resolver, host, True))
    d4 = Deferred.fromCoroutine(_lookup_one_family(resolver, host, False))
    v6, err6 = await d6
    v4, err4 = await d4
    addrs = list(dict.fromkeys(v6 + v4))
    if addrs:
        return addrs
    errors = [e for e in (err6, err4) if e is not None]
    missing = all(_is_no_such_record(e) for e in errors)
    raise DiscoveryError(
        f"No address for {host}" + (f": {errors[-1]!r}" if errors else ""),
        # NXDOMAIN or no records: the name is wrong until its owner fixes DNS.
        transient=not missing,
    )


@attrs.define(slots=True)
class _WellKnownEntry:
    delegated: str | None  # None: the last fetch failed or was invalid
    expires_at: float
    failures: int = 0
    last_good: str | None = None
    last_good_until: float = 0.0


def _cache_seconds(headers: Mapping[str, Sequence[str]]) -> float:
    directives: dict[str, str] = {}
    for value in headers.get("cache-control", ()):
        for part in value.split(","):
            name, _, arg = part.strip().partition("=")
            directives[name.strip().lower()] = arg.strip().strip('"')
    if "no-store" in directives or "no-cache" in directives:
        return WELL_KNOWN_MIN_CACHE_SECONDS
    max_age = directives.get("max-age")
    if max_age is not None and max_age.isdigit():
        return float(
            min(max(int(max_age), WELL_KNOWN_MIN_CACHE_SECONDS), WELL_KNOWN_MAX_CACHE_SECONDS)
        )
    return float(WELL_KNOWN_DEFAULT_CACHE_SECONDS)


def _parse_well_known(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    delegated = doc.get("m.server")
    if not isinstance(delegated, str):
        raise ValueError("no string m.server")
    parse_server_name(delegated)
    return delegated


def _order_srv(records: list[dns.Record_SRV], rng: random.Random) -> list[Target]:
    """RFC 2782 order: ascending priority, weighted random within a priority."""
    targets: list[Target] = []
    for priority in sorted({r.priority for r in records}):
        group = [r for r in records if r.priority == priority]
        while group:
            total = sum(r.weight for r in group)
            pick = rng.randint(0, total) if total else 0
            running = 0
            chosen = group[0]
            for r in group:
                running += r.weight
                if running >= pick:
                    chosen = r
                    break
            group.remove(chosen)
            targets.append(Target(str(chosen.target).rstrip("."), chosen.port))
    return targets


class ServerNameResolver:
    """Resolves server names per the spec (see the module docstring)."""

    def __init__(
        self,
        *,
        dns_resolver: DNSResolver,
        well_known_fetcher: WellKnownFetcher,
        clock: SecondsClock,
        rng: random.Random | None = None,
    ) -> None:
        """Create a resolver.

        Args:
            dns_resolver: twisted.names resolver used for SRV lookups.
            well_known_fetcher: does the HTTPS GET of the well-known document.
            clock: supplies ``seconds()`` for the cache.
            rng: orders equal-priority SRV records by weight (seedable in tests).
        """
        self._dns = dns_resolver
        self._fetcher = well_known_fetcher
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._cache: dict[str, _WellKnownEntry] = {}
        self._inflight: dict[str, list[Deferred[str | None]]] = {}

    async def resolve(self, server_name: str) -> ResolvedServer:
        """Resolve a server name to targets, Host header and certificate name.

        Args:
            server_name: the remote server's name.

        Returns:
            Where and how to connect.

        Raises:
            DiscoveryError: the name is invalid or SRV lookup failed in a way
                that does not mean "no record".
        """
        try:
            host, port = parse_server_name(server_name)
        except ValueError as e:
            raise DiscoveryError(str(e), transient=False) from None
        if is_ip_literal(host):
            # Step 1.
            return ResolvedServer(
                server_name, (Target(host, port or DEFAULT_FEDERATION_PORT),), server_name, host
            )
        if port is not None:
            # Step 2.
            return ResolvedServer(server_name, (Target(host, port),), server_name, host)
        # Step 3.
        delegated = await self.get_delegated_name(host)
        if delegated is not None:
            d_host, d_port = parse_server_name(delegated)
            if is_ip_literal(d_host):
                # Step 3.1.
                targets: tuple[Target, ...] = (Target(d_host, d_port or DEFAULT_FEDERATION_PORT),)
                return ResolvedServer(server_name, targets, delegated, d_host)
            if d_port is not None:
                # Step 3.2.
                return ResolvedServer(server_name, (Target(d_host, d_port),), delegated, d_host)
            # Steps 3.3 - 3.5.
            targets = await self._srv_or_default(d_host)
            return ResolvedServer(server_name, targets, d_host, d_host)
        # Steps 4 - 6.
        targets = await self._srv_or_default(host)
        return ResolvedServer(server_name, targets, host, host)

    async def _srv_or_default(self, host: str) -> tuple[Target, ...]:
        for service in ("_matrix-fed._tcp", "_matrix._tcp"):
            found = await self._lookup_srv(f"{service}.{host}")
            if found:
                return tuple(found)
        return (Target(host, DEFAULT_FEDERATION_PORT),)

    async def _lookup_srv(self, name: str) -> list[Target]:
        try:
            answers, _auth, _add = await self._dns.lookupService(name)
        except Exception as e:
            if _is_no_such_record(e):
                return []
            raise DiscoveryError(f"SRV lookup of {name} failed: {e!r}", transient=True) from e
        records = [cast(dns.Record_SRV, rr.payload) for rr in answers if rr.type == dns.SRV]
        if len(records) == 1 and str(records[0].target) in ("", "."):
            # RFC 2782: a target of "." means the service is decidedly not available.
            raise DiscoveryError(f"SRV {name} says the service is not available", transient=False)
        return _order_srv(records, self._rng)

    async def get_delegated_name(self, hostname: str) -> str | None:
        """The delegated server name from ``hostname``'s well-known, or None.

        Uses the cache; concurrent calls for one hostname share one fetch.

        Args:
            hostname: the host part of a server name without a port.

        Returns:
            ``m.server`` of a valid well-known document, or None when there is
            none (error, invalid, unreachable).
        """
        now = self._clock.seconds()
        entry = self._cache.get(hostname)
        if entry is not None and now < entry.expires_at:
            return entry.delegated
        waiters = self._inflight.get(hostname)
        if waiters is not None:
            d: Deferred[str | None] = Deferred()
            waiters.append(d)
            return await d
        self._inflight[hostname] = []
        result: str | None = None
        try:
            result = await self._refresh(hostname, entry)
        finally:
            for waiter in self._inflight.pop(hostname):
                waiter.callback(result)
        return result

    async def _refresh(self, hostname: str, previous: _WellKnownEntry | None) -> str | None:
        try:
            delegated, cache_for = await self._fetch_well_known(hostname)
        except (WellKnownFetchError, ValueError) as e:
            failures = (previous.failures if previous else 0) + 1
            backoff = min(
                WELL_KNOWN_ERROR_CACHE_INITIAL_SECONDS * 2 ** (failures - 1),
                WELL_KNOWN_ERROR_CACHE_MAX_SECONDS,
            )
            now = self._clock.seconds()
            last_good = previous.last_good if previous else None
            last_good_until = previous.last_good_until if previous else 0.0
            use = None
            if (
                isinstance(e, WellKnownFetchError)
                and last_good is not None
                and now < last_good_until + WELL_KNOWN_GRACE_SECONDS
            ):
                use = last_good
            log.info(
                "well-known for {hostname} failed ({error}); cached {seconds}s, using {use}",
                hostname=hostname,
                error=str(e),
                seconds=backoff,
                use=use,
            )
            self._store(
                hostname,
                _WellKnownEntry(use, now + backoff, failures, last_good, last_good_until),
            )
            return use
        now = self._clock.seconds()
        log.debug(
            "well-known for {hostname} delegates to {delegated} for {seconds}s",
            hostname=hostname,
            delegated=delegated,
            seconds=cache_for,
        )
        self._store(
            hostname, _WellKnownEntry(delegated, now + cache_for, 0, delegated, now + cache_for)
        )
        return delegated

    def _store(self, hostname: str, entry: _WellKnownEntry) -> None:
        self._cache.pop(hostname, None)
        self._cache[hostname] = entry
        while len(self._cache) > WELL_KNOWN_CACHE_MAX_ENTRIES:
            del self._cache[next(iter(self._cache))]

    async def _fetch_well_known(self, hostname: str) -> tuple[str, float]:
        url = f"https://{hostname}/.well-known/matrix/server"
        seen = {url}
        for _ in range(WELL_KNOWN_MAX_REDIRECTS + 1):
            response = await self._fetcher.fetch(url, max_size=WELL_KNOWN_MAX_SIZE)
            if response.code in _REDIRECT_CODES:
                locations = response.headers.get("location", ())
                if not locations:
                    raise ValueError(f"redirect {response.code} without Location")
                url = urljoin(url, locations[0])
                if urlsplit(url).scheme != "https":
                    raise ValueError(f"redirect to a non-HTTPS URL {url}")
                if url in seen:
                    raise ValueError(f"redirect loop at {url}")
                seen.add(url)
                continue
            if response.code != 200:
                raise ValueError(f"HTTP {response.code}")
            if len(response.body) > WELL_KNOWN_MAX_SIZE:
                raise ValueError("document too large")
            return _parse_well_known(response.body), _cache_seconds(response.headers)
        raise ValueError("too many redirects")
