"""Fakes for discovery and the federation client: DNS, well-known server, TLS CA."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.names import dns
from twisted.names.common import ResolverBase
from twisted.names.error import DNSNameError, DNSServerError

from matrixfed.federation.discovery import WellKnownFetchError, WellKnownResponse
from matrixfed.tls import (
    build_certificate,
    certificate_pem,
    generate_private_key,
    key_pem,
)


class FakeDNS(ResolverBase):
    """A twisted.names resolver answering from dicts, recording every query.

    ``srv[name]`` is a list of (priority, weight, port, target); ``a``/``aaaa``
    map names to address lists; ``cname`` maps a name to its alias target;
    ``broken`` names fail with a server error (SERVFAIL). Unknown names are
    NXDOMAIN.
    """

    def __init__(self) -> None:
        super().__init__()
        self.srv: dict[str, list[tuple[int, int, int, str]]] = {}
        self.a: dict[str, list[str]] = {}
        self.aaaa: dict[str, list[str]] = {}
        self.cname: dict[str, str] = {}
        self.broken: set[str] = set()
        self.queries: list[tuple[str, str]] = []

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred[Any]:
        n = name.decode("ascii")
        kind = {dns.SRV: "SRV", dns.A: "A", dns.AAAA: "AAAA"}[type]
        self.queries.append((kind, n))
        if n in self.broken:
            return fail(DNSServerError(f"SERVFAIL {n}"))
        answers: list[dns.RRHeader] = []
        if n in self.cname:
            target = self.cname[n]
            answers.append(
                dns.RRHeader(name=n, type=dns.CNAME, payload=dns.Record_CNAME(name=target))
            )
        elif type == dns.SRV:
            for priority, weight, port, target in self.srv.get(n, []):
                answers.append(
                    dns.RRHeader(
                        name=n,
                        type=dns.SRV,
                        payload=dns.Record_SRV(priority, weight, port, target.encode()),
                    )
                )
        elif type == dns.A:
            for addr in self.a.get(n, []):
                answers.append(dns.RRHeader(name=n, type=dns.A, payload=dns.Record_A(addr)))
        elif type == dns.AAAA:
            for addr in self.aaaa.get(n, []):
                answers.append(dns.RRHeader(name=n, type=dns.AAAA, payload=dns.Record_AAAA(addr)))
        if not answers:
            return fail(DNSNameError(f"NXDOMAIN {n}"))
        return succeed((answers, [], []))


class FakeWellKnown:
    """A scripted well-known server: URL -> response or exception; records fetches."""

    def __init__(self) -> None:
        self.responses: dict[str, WellKnownResponse | Exception] = {}
        self.fetches: list[str] = []
        self.max_sizes: list[int] = []
        self.pending: dict[str, list[Deferred[WellKnownResponse]]] = {}
        self.hold = False

    def serve(
        self,
        host: str,
        body: Any,
        *,
        code: int = 200,
        headers: Mapping[str, Sequence[str]] | None = None,
        path: str = "/.well-known/matrix/server",
    ) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.responses[f"https://{host}{path}"] = WellKnownResponse(
            code=code, headers=dict(headers or {}), body=raw
        )

    def redirect(self, from_url: str, location: str, code: int = 302) -> None:
        self.responses[from_url] = WellKnownResponse(
            code=code, headers={"location": [location]}, body=b""
        )

    def down(self, host: str) -> None:
        self.responses[f"https://{host}/.well-known/matrix/server"] = WellKnownFetchError(
            "connection refused"
        )

    async def fetch(self, url: str, *, max_size: int) -> WellKnownResponse:
        self.fetches.append(url)
        self.max_sizes.append(max_size)
        if self.hold:
            d: Deferred[WellKnownResponse] = Deferred()
            self.pending.setdefault(url, []).append(d)
            return await d
        return self._answer(url)

    def _answer(self, url: str) -> WellKnownResponse:
        answer = self.responses.get(url)
        if answer is None:
            return WellKnownResponse(code=404, headers={}, body=b"not found")
        if isinstance(answer, Exception):
            raise answer
        return answer

    def release(self) -> None:
        self.hold = False
        for url, waiters in list(self.pending.items()):
            for d in waiters:
                try:
                    d.callback(self._answer(url))
                except Exception as e:
                    d.errback(e)
        self.pending.clear()


class TestCA:
    """A throwaway certificate authority writing PEM files to a temp directory."""

    def __init__(self, name: str = "matrixfed test CA") -> None:
        self.dir = tempfile.mkdtemp(prefix="matrixfed-ca-")
        self.key = generate_private_key()
        self.cert = build_certificate(
            subject_cn=name,
            public_key=self.key.public_key(),
            issuer=None,
            issuer_key=self.key,
            is_ca=True,
        )
        self.ca_file = self._write("ca.pem", certificate_pem(self.cert))

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def issue(self, *hosts: str) -> tuple[bytes, bytes]:
        """A leaf certificate for ``hosts``: (certificate PEM, key PEM)."""
        key = generate_private_key()
        cert = build_certificate(
            subject_cn=hosts[0] if hosts else "leaf",
            public_key=key.public_key(),
            issuer=self.cert,
            issuer_key=self.key,
            hosts=tuple(hosts),
        )
        return certificate_pem(cert), key_pem(key)
