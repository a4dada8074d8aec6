"""The production well-known fetcher, the TLS policy and the system DNS resolver."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from matrixfed.federation.client import SystemDNSResolver
from matrixfed.federation.discovery import WellKnownFetchError
from matrixfed.federation.tls_policy import FederationTLSPolicy, load_ca_certificates
from matrixfed.federation.transport import (
    WELL_KNOWN_TIMEOUT_SECONDS,
    AgentWellKnownFetcher,
)
from tests.federation.fakes import FakeDNS, TestCA
from tests.federation.loopback import LoopbackServer, Recorded, Reply

reactor: Any = _reactor


class WellKnownFetcherTests(unittest.TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.ca = TestCA()
        self.clock = Clock()
        self.dns = FakeDNS()
        self.dns.a["wk.example"] = ["127.0.0.1"]
        self.server = LoopbackServer(self.ca, hosts=("wk.example",))
        await self.server.start()
        self.addCleanup(self.server.stop)
        self.url = f"https://wk.example:{self.server.port.getHost().port}/.well-known/matrix/server"

    def fetcher(self, *, allow_private: bool = True) -> AgentWellKnownFetcher:
        return AgentWellKnownFetcher(
            reactor=reactor,
            clock=self.clock,
            dns_resolver=self.dns,
            tls_policy=FederationTLSPolicy(extra_ca_file=self.ca.ca_file),
            allow_private=allow_private,
        )

    async def test_fetches_over_https_with_the_hostname_checked(self) -> None:
        self.server.handler = lambda r: Reply(body=b'{"m.server": "x.example:443"}')
        response = await self.fetcher().fetch(self.url, max_size=1000)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.body, b'{"m.server": "x.example:443"}')
        self.assertEqual(response.headers["content-type"], ["application/json"])
        [request] = self.server.requests
        self.assertEqual(request.method, "GET")
        self.assertEqual(request.uri, "/.well-known/matrix/server")
        self.assertNotIn("authorization", request.headers)

    async def test_redirects_are_returned_not_followed(self) -> None:
        def redirect(r: Recorded) -> Reply:
            return Reply(302, b"", None)

        self.server.handler = redirect
        response = await self.fetcher().fetch(self.url, max_size=1000)
        self.assertEqual(response.code, 302)
        self.assertEqual(len(self.server.requests), 1)

    async def test_body_over_the_cap_fails(self) -> None:
        self.server.handler = lambda r: Reply(body=b"x" * 5000)
        with self.assertRaises(WellKnownFetchError):
            await self.fetcher().fetch(self.url, max_size=1000)

    async def test_ssrf_guard_applies(self) -> None:
        with self.assertRaises(WellKnownFetchError):
            await self.fetcher(allow_private=False).fetch(self.url, max_size=1000)
        self.assertEqual(self.server.requests, [])

    async def test_wrong_certificate_fails(self) -> None:
        self.dns.a["other.example"] = ["127.0.0.1"]
        url = self.url.replace("wk.example", "other.example")
        with self.assertRaises(WellKnownFetchError):
            await self.fetcher().fetch(url, max_size=1000)
        self.assertEqual(self.server.requests, [])

    async def test_times_out(self) -> None:
        arrived: Deferred[None] = Deferred()

        def hang(r: Recorded) -> None:
            arrived.callback(None)

        self.server.handler = hang
        d = Deferred.fromCoroutine(self.fetcher().fetch(self.url, max_size=1000))
        await arrived
        self.assertNoResult(d)
        self.clock.advance(WELL_KNOWN_TIMEOUT_SECONDS)
        with self.assertRaises(WellKnownFetchError):
            await d


class TLSPolicyTests(unittest.TestCase):
    def test_ca_file_with_several_certificates(self) -> None:
        a, b = TestCA("a"), TestCA("b")
        path = os.path.join(a.dir, "both.pem")
        with open(path, "wb") as f, open(a.ca_file, "rb") as fa, open(b.ca_file, "rb") as fb:
            f.write(fa.read() + fb.read())
        self.assertEqual(len(load_ca_certificates(path)), 2)

    def test_unusable_ca_files_are_refused(self) -> None:
        ca = TestCA()
        empty = os.path.join(ca.dir, "empty.pem")
        with open(empty, "w") as f:
            f.write("no certificate here\n")
        for path in (empty, os.path.join(ca.dir, "missing.pem"), ca.dir):
            with self.assertRaises(ValueError):
                FederationTLSPolicy(extra_ca_file=path)

    def test_disabling_verification_is_logged_loudly(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        FederationTLSPolicy(verify=False)
        warnings = [
            e
            for e in events
            if e.get("log_level") is not None and "DISABLED" in e.get("log_format", "")
        ]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["log_level"].name, "warn")
        events.clear()
        FederationTLSPolicy()
        self.assertEqual([e for e in events if "DISABLED" in e.get("log_format", "")], [])

    def test_creators_are_reused_per_name(self) -> None:
        policy = FederationTLSPolicy()
        self.assertIs(policy.creator_for("a.example"), policy.creator_for("a.example"))
        self.assertIsNot(policy.creator_for("a.example"), policy.creator_for("b.example"))


class SystemDNSResolverTests(unittest.TestCase):
    def files(self) -> tuple[bytes, bytes]:
        base = self.mktemp()
        os.makedirs(base)
        hosts = os.path.join(base, "hosts")
        resolv = os.path.join(base, "resolv.conf")
        with open(hosts, "w") as f:
            f.write("127.0.0.1 myhost.test\n::1 myhost.test\n")
        with open(resolv, "w") as f:
            f.write("nameserver 127.0.0.1\n")
        return hosts.encode(), resolv.encode()

    async def test_hosts_file_answers_and_close_stops_timers(self) -> None:
        hosts, resolv = self.files()
        resolver = SystemDNSResolver(reactor=reactor, resolv_conf=resolv, hosts_file=hosts)
        answers, _auth, _add = await resolver.lookupAddress("myhost.test")
        self.assertEqual([rr.payload.dottedQuad() for rr in answers], ["127.0.0.1"])
        # Without close() the resolv.conf re-read timer would leave the reactor dirty.
        resolver.close()

    def test_nothing_is_started_before_first_use(self) -> None:
        hosts, resolv = self.files()
        SystemDNSResolver(reactor=reactor, resolv_conf=resolv, hosts_file=hosts)
        self.assertEqual(
            [c for c in reactor.getDelayedCalls() if "maybeParseConfig" in repr(c)], []
        )
