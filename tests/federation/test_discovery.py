"""Server name resolution, branch by branch, against a fake DNS and well-known server."""

from __future__ import annotations

import random
from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from matrixfed.federation.discovery import (
    WELL_KNOWN_MAX_SIZE,
    DiscoveryError,
    ResolvedServer,
    ServerNameResolver,
    Target,
    lookup_addresses,
    parse_server_name,
)
from tests.federation.fakes import FakeDNS, FakeWellKnown

T = TypeVar("T")

WK = "/.well-known/matrix/server"
HOUR = 3600.0


class DiscoveryTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.dns = FakeDNS()
        self.wk = FakeWellKnown()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.resolver = ServerNameResolver(
            dns_resolver=self.dns,
            well_known_fetcher=self.wk,
            clock=self.clock,
            rng=random.Random(4),
        )

    def run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.successResultOf(Deferred.fromCoroutine(coro))

    def resolve(self, name: str) -> ResolvedServer:
        return self.run_sync(self.resolver.resolve(name))

    def resolve_fails(self, name: str) -> DiscoveryError:
        failure = self.failureResultOf(
            Deferred.fromCoroutine(self.resolver.resolve(name)), DiscoveryError
        )
        error = failure.value
        assert isinstance(error, DiscoveryError)
        return error

    def srv_queries(self) -> list[str]:
        return [n for kind, n in self.dns.queries if kind == "SRV"]


class IPLiteralTests(DiscoveryTestCase):
    """Step 1: IP literals are used as they are; no DNS, no well-known."""

    def test_ipv4_without_port_uses_8448(self) -> None:
        r = self.resolve("1.2.3.4")
        self.assertEqual(r.targets, (Target("1.2.3.4", 8448),))
        self.assertEqual(r.host_header, "1.2.3.4")
        self.assertEqual(r.tls_name, "1.2.3.4")
        self.assertEqual((r.host, r.port), ("1.2.3.4", 8448))
        self.assertEqual(self.wk.fetches, [])
        self.assertEqual(self.dns.queries, [])

    def test_ipv4_with_port(self) -> None:
        r = self.resolve("127.0.0.1:18448")
        self.assertEqual(r.targets, (Target("127.0.0.1", 18448),))
        self.assertEqual(r.host_header, "127.0.0.1:18448")
        self.assertEqual(r.tls_name, "127.0.0.1")
        self.assertEqual(self.wk.fetches, [])

    def test_ipv6_without_port(self) -> None:
        r = self.resolve("[2001:db8::1]")
        self.assertEqual(r.targets, (Target("2001:db8::1", 8448),))
        self.assertEqual(r.host_header, "[2001:db8::1]")
        self.assertEqual(r.tls_name, "2001:db8::1")

    def test_ipv6_with_port(self) -> None:
        r = self.resolve("[::1]:8009")
        self.assertEqual(r.targets, (Target("::1", 8009),))
        self.assertEqual(r.host_header, "[::1]:8009")
        self.assertEqual(r.tls_name, "::1")
        self.assertEqual(self.dns.queries, [])


class ExplicitPortTests(DiscoveryTestCase):
    """Step 2: a hostname with a port skips well-known and SRV."""

    def test_hostname_with_port(self) -> None:
        self.wk.serve("example.org", {"m.server": "elsewhere.example:443"})
        self.dns.srv["_matrix-fed._tcp.example.org"] = [(10, 0, 1, "srv.example")]
        r = self.resolve("example.org:8888")
        self.assertEqual(r.targets, (Target("example.org", 8888),))
        self.assertEqual(r.host_header, "example.org:8888")
        self.assertEqual(r.tls_name, "example.org")
        self.assertEqual(self.wk.fetches, [])
        self.assertEqual(self.srv_queries(), [])


class WellKnownDelegationTests(DiscoveryTestCase):
    """Step 3: a valid well-known delegates; the delegated name is resolved again."""

    def test_fetches_the_right_url_with_a_size_cap(self) -> None:
        self.resolve("example.org")
        self.assertEqual(self.wk.fetches, [f"https://example.org{WK}"])
        self.assertEqual(self.wk.max_sizes, [WELL_KNOWN_MAX_SIZE])

    def test_delegated_ip_literal_without_port(self) -> None:
        # 3.1: IP, port 8448, Host is the IP.
        self.wk.serve("example.org", {"m.server": "5.6.7.8"})
        r = self.resolve("example.org")
        self.assertEqual(r.targets, (Target("5.6.7.8", 8448),))
        self.assertEqual(r.host_header, "5.6.7.8")
        self.assertEqual(r.tls_name, "5.6.7.8")
        self.assertEqual(self.srv_queries(), [])

    def test_delegated_ip_literal_with_port(self) -> None:
        self.wk.serve("example.org", {"m.server": "[2001:db8::5]:9000"})
        r = self.resolve("example.org")
        self.assertEqual(r.targets, (Target("2001:db8::5", 9000),))
        self.assertEqual(r.host_header, "[2001:db8::5]:9000")
        self.assertEqual(r.tls_name, "2001:db8::5")

    def test_delegated_hostname_with_port(self) -> None:
        # 3.2: no SRV; Host is delegated_hostname:port; cert for the delegated host.
        self.wk.serve("example.org", {"m.server": "matrix.example.net:443"})
        self.dns.srv["_matrix-fed._tcp.matrix.example.net"] = [(1, 1, 5555, "x.example")]
        r = self.resolve("example.org")
        self.assertEqual(r.targets, (Target("matrix.example.net", 443),))
        self.assertEqual(r.host_header, "matrix.example.net:443")
        self.assertEqual(r.tls_name, "matrix.example.net")
        self.assertEqual(self.srv_queries(), [])

    def test_delegated_hostname_with_matrix_fed_srv(self) -> None:
        # 3.3: SRV target and port are used, but Host and the certificate name
        # are the delegated hostname, never the SRV target.
        self.wk.serve("example.org", {"m.server": "matrix.example.net"})
        self.dns.srv["_matrix-fed._tcp.matrix.example.net"] = [(10, 0, 8443, "fed1.example.net")]
        self.dns.srv["_matrix._tcp.matrix.example.net"] = [(10, 0, 1111, "old.example.net")]
        r = self.resolve("example.org")
        self.assertEqual(r.targets, (Target("fed1.example.net", 8443),))
        self.assertEqual(r.host_header, "matrix.example.net")
        self.assertEqual(r.tls_name, "matrix.example.net")
        self.assertEqual(self.srv_queries(), ["_matrix-fed._tcp.matrix.example.net"])

    def test_delegated_hostname_with_deprecated_matrix_srv(self) -> None:
        # 3.4: no _matrix-fed record, so the deprecated _matrix one is used.
        self.wk.serve("example.org", {"m.server": "matrix.example.net"})
        self.dns.srv["_matrix._tcp.matrix.example.net"] = [(10, 0, 1111, "old.example.net")]
        r = self.resolve("example.org")
        self.assertEqual(r.targets, (Target("old.example.net", 1111),))
        self.assertEqual(r.host_header, "matrix.example.net")
        self.assertEqual(r.tls_name, "matrix.example.net")
        self.assertEqual(
            self.srv_queries(),
            ["_matrix-fed._tcp.matrix.example.net", "_matrix._tcp.matrix.example.net"],
        )

    def test_delegated_hostname_without_srv_uses_8448(self) -> None:
        # 3.5
        self.wk.serve("example.org", {"m.server": "matrix.example.net"})
        r = self.resolve("example.org")
        self.assertEqual(r.targets, (Target("matrix.example.net", 8448),))
        self.assertEqual(r.host_header, "matrix.example.net")
        self.assertEqual(r.tls_name, "matrix.example.net")

    def test_srv_of_the_original_hostname_is_not_used_after_delegation(self) -> None:
        self.wk.serve("example.org", {"m.server": "matrix.example.net"})
        self.dns.srv["_matrix-fed._tcp.example.org"] = [(10, 0, 1, "wrong.example")]
        r = self.resolve("example.org")
        self.assertEqual(r.targets, (Target("matrix.example.net", 8448),))

    def test_content_type_is_not_required(self) -> None:
        self.wk.serve(
            "example.org",
            b'{"m.server": "m.example.net:8448"}',
            headers={"content-type": ["text/plain"]},
        )
        self.assertEqual(self.resolve("example.org").host_header, "m.example.net:8448")


class NoWellKnownTests(DiscoveryTestCase):
    """Steps 4 to 6: no valid well-known, SRV on the server's own hostname."""

    def test_matrix_fed_srv(self) -> None:
        # Step 4.
        self.dns.srv["_matrix-fed._tcp.example.org"] = [(10, 0, 8448, "fed.example.org")]
        r = self.resolve("example.org")
        self.assertEqual(r.targets, (Target("fed.example.org", 8448),))
        self.assertEqual(r.host_header, "example.org")
        self.assertEqual(r.tls_name, "example.org")

    def test_deprecated_matrix_srv(self) -> None:
        # Step 5.
        self.dns.srv["_matrix._tcp.example.org"] = [(10, 0, 443, "old.example.org")]
        r = self.resolve("example.org")
        self.assertEqual(r.targets, (Target("old.example.org", 443),))
        self.assertEqual(r.host_header, "example.org")
        self.assertEqual(r.tls_name, "example.org")

    def test_no_srv_uses_hostname_and_8448(self) -> None:
        # Step 6.
        r = self.resolve("example.org")
        self.assertEqual(r.targets, (Target("example.org", 8448),))
        self.assertEqual(r.host_header, "example.org")
        self.assertEqual(r.tls_name, "example.org")
        self.assertEqual(
            self.srv_queries(), ["_matrix-fed._tcp.example.org", "_matrix._tcp.example.org"]
        )

    def test_invalid_documents_fall_through_to_srv(self) -> None:
        bad_bodies: list[Any] = [
            b"this is not json",
            b"[1, 2]",
            {"m.server": 12},
            {"other": "x"},
            {"m.server": "bad host name!"},
            {"m.server": "example.net:99999"},
            {"m.server": "example.net:"},
        ]
        self.dns.srv["_matrix-fed._tcp.example.org"] = [(10, 0, 8448, "fed.example.org")]
        for i, body in enumerate(bad_bodies):
            host = f"h{i}.example.org"
            self.dns.srv[f"_matrix-fed._tcp.{host}"] = [(10, 0, 8448, "fed.example.org")]
            self.wk.serve(host, body)
            r = self.resolve(host)
            self.assertEqual(r.host_header, host, body)
            self.assertEqual(r.tls_name, host, body)

    def test_error_status_falls_through(self) -> None:
        self.wk.serve("example.org", {"m.server": "x.example:1"}, code=500)
        r = self.resolve("example.org")
        self.assertEqual(r.targets, (Target("example.org", 8448),))

    def test_unreachable_well_known_falls_through(self) -> None:
        self.wk.down("example.org")
        r = self.resolve("example.org")
        self.assertEqual(r.targets, (Target("example.org", 8448),))

    def test_oversized_document_is_invalid(self) -> None:
        padding = " " * WELL_KNOWN_MAX_SIZE
        self.wk.serve("example.org", ('{"m.server": "a.example:1"}' + padding).encode())
        self.assertEqual(self.resolve("example.org").host_header, "example.org")


class RedirectTests(DiscoveryTestCase):
    def test_redirect_is_followed(self) -> None:
        self.wk.redirect(f"https://example.org{WK}", "https://www.example.org/wk", code=301)
        self.wk.serve("www.example.org", {"m.server": "m.example.org:443"}, path="/wk")
        r = self.resolve("example.org")
        self.assertEqual(r.host_header, "m.example.org:443")
        self.assertEqual(
            self.wk.fetches, [f"https://example.org{WK}", "https://www.example.org/wk"]
        )

    def test_relative_redirect(self) -> None:
        self.wk.redirect(f"https://example.org{WK}", "/other", code=307)
        self.wk.serve("example.org", {"m.server": "m.example.org:443"}, path="/other")
        self.assertEqual(self.resolve("example.org").host_header, "m.example.org:443")

    def test_redirect_loop_is_an_error(self) -> None:
        self.wk.redirect(f"https://example.org{WK}", "https://a.example.org/x")
        self.wk.redirect("https://a.example.org/x", f"https://example.org{WK}")
        r = self.resolve("example.org")
        self.assertEqual(r.targets, (Target("example.org", 8448),))
        self.assertEqual(len(self.wk.fetches), 2)

    def test_redirect_chain_is_limited(self) -> None:
        for i in range(20):
            src = f"https://example.org{WK}" if i == 0 else f"https://example.org/r{i}"
            self.wk.redirect(src, f"https://example.org/r{i + 1}")
        r = self.resolve("example.org")
        self.assertEqual(r.host_header, "example.org")
        self.assertEqual(len(self.wk.fetches), 6)

    def test_redirect_to_plain_http_is_refused(self) -> None:
        self.wk.redirect(f"https://example.org{WK}", "http://example.org/wk")
        self.wk.responses["http://example.org/wk"] = self.wk.responses[f"https://example.org{WK}"]
        self.assertEqual(self.resolve("example.org").host_header, "example.org")
        self.assertEqual(self.wk.fetches, [f"https://example.org{WK}"])


class WellKnownCacheTests(DiscoveryTestCase):
    def test_default_cache_is_24_hours(self) -> None:
        self.wk.serve("example.org", {"m.server": "m.example.org:443"})
        self.resolve("example.org")
        self.clock.advance(24 * HOUR - 1)
        self.resolve("example.org")
        self.assertEqual(len(self.wk.fetches), 1)
        self.clock.advance(2)
        self.resolve("example.org")
        self.assertEqual(len(self.wk.fetches), 2)

    def test_max_age_is_honoured(self) -> None:
        self.wk.serve(
            "example.org",
            {"m.server": "m.example.org:443"},
            headers={"cache-control": ["public, max-age=3600"]},
        )
        self.resolve("example.org")
        self.clock.advance(3599)
        self.resolve("example.org")
        self.assertEqual(len(self.wk.fetches), 1)
        self.clock.advance(2)
        self.resolve("example.org")
        self.assertEqual(len(self.wk.fetches), 2)

    def test_max_age_is_capped_at_48_hours(self) -> None:
        self.wk.serve(
            "example.org",
            {"m.server": "m.example.org:443"},
            headers={"cache-control": ["max-age=31536000"]},
        )
        self.resolve("example.org")
        self.clock.advance(48 * HOUR - 1)
        self.resolve("example.org")
        self.assertEqual(len(self.wk.fetches), 1)
        self.clock.advance(2)
        self.resolve("example.org")
        self.assertEqual(len(self.wk.fetches), 2)

    def test_new_delegation_is_picked_up_after_expiry(self) -> None:
        self.wk.serve("example.org", {"m.server": "old.example.org:443"})
        self.assertEqual(self.resolve("example.org").host_header, "old.example.org:443")
        self.wk.serve("example.org", {"m.server": "new.example.org:443"})
        self.clock.advance(24 * HOUR + 1)
        self.assertEqual(self.resolve("example.org").host_header, "new.example.org:443")

    def test_errors_are_cached_with_exponential_backoff(self) -> None:
        self.wk.serve("example.org", b"garbage")
        self.resolve("example.org")
        self.assertEqual(len(self.wk.fetches), 1)
        # First error: cached for two minutes.
        self.clock.advance(119)
        self.resolve("example.org")
        self.assertEqual(len(self.wk.fetches), 1)
        self.clock.advance(2)
        self.resolve("example.org")
        self.assertEqual(len(self.wk.fetches), 2)
        # Second consecutive error: four minutes.
        self.clock.advance(239)
        self.resolve("example.org")
        self.assertEqual(len(self.wk.fetches), 2)
        self.clock.advance(2)
        self.resolve("example.org")
        self.assertEqual(len(self.wk.fetches), 3)
        # Many errors later, never more than an hour.
        for _ in range(10):
            self.clock.advance(HOUR + 1)
            self.resolve("example.org")
        fetched = len(self.wk.fetches)
        self.clock.advance(HOUR + 1)
        self.resolve("example.org")
        self.assertEqual(len(self.wk.fetches), fetched + 1)

    def test_success_resets_error_backoff(self) -> None:
        self.wk.down("example.org")
        for _ in range(4):
            self.resolve("example.org")
            self.clock.advance(HOUR + 1)
        self.wk.serve("example.org", {"m.server": "m.example.org:443"}, headers={})
        self.wk.serve(
            "example.org",
            {"m.server": "m.example.org:443"},
            headers={"cache-control": ["max-age=600"]},
        )
        self.assertEqual(self.resolve("example.org").host_header, "m.example.org:443")
        self.wk.serve("example.org", b"garbage")
        self.clock.advance(601)
        self.resolve("example.org")
        n = len(self.wk.fetches)
        # Back to the first error's two minutes.
        self.clock.advance(121)
        self.resolve("example.org")
        self.assertEqual(len(self.wk.fetches), n + 1)

    def test_good_answer_survives_an_outage_for_a_grace_period(self) -> None:
        self.wk.serve(
            "example.org",
            {"m.server": "m.example.org:443"},
            headers={"cache-control": ["max-age=600"]},
        )
        self.resolve("example.org")
        self.wk.down("example.org")
        self.clock.advance(601)
        self.assertEqual(self.resolve("example.org").host_header, "m.example.org:443")
        # Well past the grace period the outage wins.
        self.clock.advance(2 * HOUR)
        self.assertEqual(self.resolve("example.org").host_header, "example.org")

    def test_invalid_answer_does_not_use_the_grace_period(self) -> None:
        self.wk.serve(
            "example.org",
            {"m.server": "m.example.org:443"},
            headers={"cache-control": ["max-age=600"]},
        )
        self.resolve("example.org")
        self.wk.serve("example.org", {"m.server": 1})
        self.clock.advance(601)
        self.assertEqual(self.resolve("example.org").host_header, "example.org")

    def test_concurrent_lookups_share_one_fetch(self) -> None:
        self.wk.serve("example.org", {"m.server": "m.example.org:443"})
        self.wk.hold = True
        d1 = Deferred.fromCoroutine(self.resolver.resolve("example.org"))
        d2 = Deferred.fromCoroutine(self.resolver.resolve("example.org"))
        self.assertNoResult(d1)
        self.assertNoResult(d2)
        self.wk.release()
        self.assertEqual(self.successResultOf(d1).host_header, "m.example.org:443")
        self.assertEqual(self.successResultOf(d2).host_header, "m.example.org:443")
        self.assertEqual(len(self.wk.fetches), 1)


class SRVTests(DiscoveryTestCase):
    def test_srv_records_are_ordered_by_priority(self) -> None:
        self.dns.srv["_matrix-fed._tcp.example.org"] = [
            (20, 0, 3, "c.example.org"),
            (10, 0, 1, "a.example.org"),
            (30, 0, 4, "d.example.org"),
        ]
        r = self.resolve("example.org")
        self.assertEqual(
            [t.host for t in r.targets], ["a.example.org", "c.example.org", "d.example.org"]
        )

    def test_weights_decide_within_a_priority(self) -> None:
        self.dns.srv["_matrix-fed._tcp.example.org"] = [
            (10, 1, 1, "light.example.org"),
            (10, 1000, 2, "heavy.example.org"),
        ]
        firsts = []
        for seed in range(50):
            resolver = ServerNameResolver(
                dns_resolver=self.dns,
                well_known_fetcher=self.wk,
                clock=self.clock,
                rng=random.Random(seed),
            )
            r = self.run_sync(resolver.resolve("example.org"))
            self.assertEqual(len(r.targets), 2)
            firsts.append(r.targets[0].host)
        self.assertGreater(firsts.count("heavy.example.org"), 40)

    def test_srv_dot_target_means_no_service(self) -> None:
        self.dns.srv["_matrix-fed._tcp.example.org"] = [(0, 0, 0, ".")]
        error = self.resolve_fails("example.org")
        self.assertFalse(error.transient)

    def test_srv_server_failure_is_a_transient_error(self) -> None:
        self.dns.broken.add("_matrix-fed._tcp.example.org")
        error = self.resolve_fails("example.org")
        self.assertTrue(error.transient)


class InvalidNameTests(DiscoveryTestCase):
    def test_invalid_names_are_refused_without_lookups(self) -> None:
        for name in [
            "",
            "exa mple.org",
            "example.org:",
            "example.org:0",
            "example.org:65536",
            "example.org:123456",
            "[::1",
            "[not:an:ip]",
            "1.2.3.999",
            "ex_ample.org",
            "example.org:80:80",
        ]:
            error = self.resolve_fails(name)
            self.assertFalse(error.transient, name)
        self.assertEqual(self.wk.fetches, [])
        self.assertEqual(self.dns.queries, [])

    def test_parse_server_name(self) -> None:
        self.assertEqual(parse_server_name("matrix.org"), ("matrix.org", None))
        self.assertEqual(parse_server_name("matrix.org:8888"), ("matrix.org", 8888))
        self.assertEqual(parse_server_name("1.2.3.4:1234"), ("1.2.3.4", 1234))
        self.assertEqual(parse_server_name("[1234:5678::abcd]"), ("1234:5678::abcd", None))
        self.assertEqual(parse_server_name("[1234:5678::abcd]:5678"), ("1234:5678::abcd", 5678))

    def test_parse_server_name_refuses_trailing_newline(self) -> None:
        # A "$" anchor would let a trailing newline through into Host headers.
        for bad in ("example.org\n", "example.org:8448\n", "1.2.3.4\n", "[::1]\n", "[::1\n]"):
            with self.assertRaises(ValueError, msg=repr(bad)):
                parse_server_name(bad)


class AddressLookupTests(DiscoveryTestCase):
    def lookup(self, host: str) -> list[str]:
        return self.run_sync(lookup_addresses(self.dns, host))

    def test_ip_literal_needs_no_dns(self) -> None:
        self.assertEqual(self.lookup("10.0.0.1"), ["10.0.0.1"])
        self.assertEqual(self.lookup("::1"), ["::1"])
        self.assertEqual(self.dns.queries, [])

    def test_aaaa_then_a(self) -> None:
        self.dns.a["h.example"] = ["192.0.2.1", "192.0.2.2"]
        self.dns.aaaa["h.example"] = ["2001:db8::1"]
        self.assertEqual(self.lookup("h.example"), ["2001:db8::1", "192.0.2.1", "192.0.2.2"])

    def test_only_a(self) -> None:
        self.dns.a["h.example"] = ["192.0.2.1"]
        self.assertEqual(self.lookup("h.example"), ["192.0.2.1"])

    def test_cname_is_followed(self) -> None:
        self.dns.cname["alias.example"] = "real.example"
        self.dns.a["real.example"] = ["192.0.2.7"]
        self.assertEqual(self.lookup("alias.example"), ["192.0.2.7"])

    def test_cname_loop_fails(self) -> None:
        self.dns.cname["a.example"] = "b.example"
        self.dns.cname["b.example"] = "a.example"
        d = Deferred.fromCoroutine(lookup_addresses(self.dns, "a.example"))
        self.failureResultOf(d, DiscoveryError)

    def test_nxdomain_is_not_transient(self) -> None:
        d = Deferred.fromCoroutine(lookup_addresses(self.dns, "nowhere.example"))
        error = self.failureResultOf(d, DiscoveryError).value
        assert isinstance(error, DiscoveryError)
        self.assertFalse(error.transient)

    def test_server_failure_is_transient(self) -> None:
        self.dns.broken.add("h.example")
        d = Deferred.fromCoroutine(lookup_addresses(self.dns, "h.example"))
        error = self.failureResultOf(d, DiscoveryError).value
        assert isinstance(error, DiscoveryError)
        self.assertTrue(error.transient)
