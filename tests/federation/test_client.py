"""The federation client against real TLS servers on loopback and an in-memory reactor."""

from __future__ import annotations

import json
from collections.abc import Coroutine
from typing import Any, TypeVar

from signedjson.key import generate_signing_key, get_verify_key
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.test.proto_helpers import MemoryReactorClock
from twisted.trial import unittest

from matrixfed.errors import RemoteError
from matrixfed.federation.client import (
    BACKOFF_INITIAL_SECONDS,
    BACKOFF_MAX_SECONDS,
    DEFAULT_TIMEOUT_SECONDS,
    FederationClient,
    federation_path,
)
from matrixfed.federation.discovery import ServerNameResolver
from matrixfed.federation.tls_policy import FederationTLSPolicy
from matrixfed.federation.transport import is_forbidden_address
from matrixfed.federation.xmatrix import parse_xmatrix_header, verify_request_signature
from tests.federation.fakes import FakeDNS, FakeWellKnown, TestCA
from tests.federation.loopback import LoopbackServer, Recorded, Reply

reactor: Any = _reactor
T = TypeVar("T")

ORIGIN = "origin.example"


class LoopbackTestCase(unittest.TestCase):
    """Real sockets and TLS on the real reactor; deadlines and backoff on a fake clock."""

    def setUp(self) -> None:
        self.ca = TestCA()
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.key = generate_signing_key("k1")
        self.dns = FakeDNS()
        self.wk = FakeWellKnown()

    async def start_server(
        self, hosts: tuple[str, ...] = ("127.0.0.1",), ca: TestCA | None = None, port: int = 0
    ) -> LoopbackServer:
        server = LoopbackServer(ca or self.ca, hosts)
        await server.start(port)
        self.addCleanup(server.stop)
        return server

    def make_client(
        self,
        *,
        allow_private: bool = True,
        verify: bool = True,
        max_response_size: int | None = None,
    ) -> FederationClient:
        kwargs: dict[str, Any] = {}
        if max_response_size is not None:
            kwargs["max_response_size"] = max_response_size
        client = FederationClient(
            reactor=reactor,
            clock=self.clock,
            server_name=ORIGIN,
            signing_key=self.key,
            dns_resolver=self.dns,
            tls_policy=FederationTLSPolicy(extra_ca_file=self.ca.ca_file, verify=verify),
            allow_private=allow_private,
            resolver=ServerNameResolver(
                dns_resolver=self.dns, well_known_fetcher=self.wk, clock=self.clock
            ),
            **kwargs,
        )
        # After a reactor turn: a refused body may put its connection back in the
        # pool once the current read finishes.
        self.addCleanup(lambda: deferLater(reactor, 0, client.close))
        return client

    async def fails(self, coro: Coroutine[Any, Any, Any]) -> RemoteError:
        try:
            await coro
        except RemoteError as e:
            return e
        self.fail("expected a RemoteError")

    def verify_signed(self, recorded: Recorded, destination: str) -> None:
        auth = parse_xmatrix_header(recorded.headers["authorization"][0])
        self.assertEqual(auth.origin, ORIGIN)
        self.assertEqual(auth.destination, destination)
        self.assertEqual(auth.key_id, "ed25519:k1")
        content = json.loads(recorded.body) if recorded.body else None
        verify_request_signature(
            auth,
            get_verify_key(self.key),
            method=recorded.method,
            uri=recorded.uri,
            destination=destination,
            content=content,
        )


class SigningTests(LoopbackTestCase):
    async def test_get_is_signed_and_verifiable_by_the_receiver(self) -> None:
        server = await self.start_server()
        server.handler = lambda r: Reply(body=b'{"ok": true}')
        client = self.make_client()
        path = federation_path("/_matrix/federation/v1/query/{}/{}", "!room:a.b", "@u s/er:x")
        result = await client.get_json(server.name, path, {"q": "a b&c", "multi": ["1", "é"]})
        self.assertEqual(result, {"ok": True})
        [recorded] = server.requests
        self.assertEqual(recorded.method, "GET")
        self.assertEqual(
            recorded.uri,
            "/_matrix/federation/v1/query/%21room%3Aa.b/%40u%20s%2Fer%3Ax"
            "?q=a%20b%26c&multi=1&multi=%C3%A9",
        )
        self.assertEqual(recorded.headers["host"], [server.name])
        self.verify_signed(recorded, server.name)

    async def test_put_and_post_sign_the_body(self) -> None:
        server = await self.start_server()
        client = self.make_client()
        body = {"pdus": [{"content": {"body": "héllo"}}], "n": 1}
        await client.put_json(server.name, "/_matrix/federation/v1/send/1", body)
        await client.post_json(server.name, "/_matrix/key/v2/query", {"server_keys": {}})
        put, post = server.requests
        self.assertEqual((put.method, post.method), ("PUT", "POST"))
        self.assertEqual(json.loads(put.body), body)
        self.assertEqual(put.headers["content-type"], ["application/json"])
        self.verify_signed(put, server.name)
        self.verify_signed(post, server.name)

    async def test_tampered_body_does_not_verify(self) -> None:
        server = await self.start_server()
        client = self.make_client()
        await client.put_json(server.name, "/_matrix/federation/v1/send/1", {"a": 1})
        [recorded] = server.requests
        tampered = Recorded(recorded.method, recorded.uri, recorded.headers, b'{"a": 2}')
        self.assertRaises(ValueError, self.verify_signed, tampered, server.name)

    async def test_unsigned_get_has_no_authorization(self) -> None:
        server = await self.start_server()
        client = self.make_client()
        await client.get_json_unsigned(server.name, "/_matrix/key/v2/server")
        [recorded] = server.requests
        self.assertNotIn("authorization", recorded.headers)

    async def test_connections_are_reused(self) -> None:
        server = await self.start_server()
        client = self.make_client()
        for _ in range(3):
            await client.get_json(server.name, "/_matrix/federation/v1/version")
        self.assertEqual(len(server.requests), 3)
        self.assertEqual(len(server.site.channels), 1)  # type: ignore[attr-defined]


class TLSTests(LoopbackTestCase):
    async def test_certificate_from_an_untrusted_ca_is_refused(self) -> None:
        server = await self.start_server(ca=TestCA("some other CA"))
        client = self.make_client()
        error = await self.fails(client.get_json(server.name, "/x"))
        self.assertIn("certificate verify failed", error.message)
        self.assertFalse(error.reachable)
        self.assertTrue(error.transient)
        self.assertEqual(server.requests, [])

    async def test_certificate_for_another_name_is_refused(self) -> None:
        server = await self.start_server(hosts=("127.0.0.2", "other.example"))
        client = self.make_client()
        error = await self.fails(client.get_json(server.name, "/x"))
        self.assertIn("IPAddressMismatch", error.message)
        self.assertFalse(error.reachable)
        self.assertEqual(server.requests, [])

    async def test_no_verify_accepts_any_certificate(self) -> None:
        server = await self.start_server(ca=TestCA("some other CA"), hosts=("other.example",))
        client = self.make_client(verify=False)
        self.assertEqual(await client.get_json(server.name, "/x"), {})
        self.assertEqual(len(server.requests), 1)

    async def test_certificate_is_checked_against_the_delegated_name(self) -> None:
        # example.org delegates to matrix.example.net:PORT, which resolves to
        # loopback; the certificate must be for matrix.example.net.
        server = await self.start_server(hosts=("matrix.example.net",))
        port = server.port.getHost().port
        self.wk.serve("example.org", {"m.server": f"matrix.example.net:{port}"})
        self.dns.a["matrix.example.net"] = ["127.0.0.1"]
        client = self.make_client()
        self.assertEqual(await client.get_json("example.org", "/x"), {})
        [recorded] = server.requests
        self.assertEqual(recorded.headers["host"], [f"matrix.example.net:{port}"])
        # Signed for the server name, not the delegated one.
        self.verify_signed(recorded, "example.org")

    async def test_certificate_is_checked_against_the_name_not_the_srv_target(self) -> None:
        server = await self.start_server(hosts=("example.org",))
        port = server.port.getHost().port
        self.dns.srv["_matrix-fed._tcp.example.org"] = [(10, 0, port, "target.example.org")]
        self.dns.a["target.example.org"] = ["127.0.0.1"]
        client = self.make_client()
        self.assertEqual(await client.get_json("example.org", "/x"), {})
        self.assertEqual(server.requests[0].headers["host"], ["example.org"])

    async def test_certificate_for_the_srv_target_only_is_refused(self) -> None:
        server = await self.start_server(hosts=("target.example.org",))
        port = server.port.getHost().port
        self.dns.srv["_matrix-fed._tcp.example.org"] = [(10, 0, port, "target.example.org")]
        self.dns.a["target.example.org"] = ["127.0.0.1"]
        client = self.make_client()
        error = await self.fails(client.get_json("example.org", "/x"))
        self.assertIn("DNSMismatch", error.message)
        self.assertFalse(error.reachable)
        self.assertEqual(server.requests, [])


class SSRFGuardTests(LoopbackTestCase):
    async def test_well_known_delegating_to_loopback_is_refused(self) -> None:
        server = await self.start_server()
        self.wk.serve("example.org", {"m.server": server.name})
        client = self.make_client(allow_private=False)
        error = await self.fails(client.get_json("example.org", "/x"))
        self.assertFalse(error.reachable)
        self.assertFalse(error.transient)
        self.assertIn("127.0.0.1", error.message)
        self.assertEqual(server.requests, [])
        self.assertEqual(server.site.channels, set())  # type: ignore[attr-defined]

    async def test_well_known_delegating_to_loopback_is_allowed_when_configured(self) -> None:
        server = await self.start_server()
        self.wk.serve("example.org", {"m.server": server.name})
        client = self.make_client(allow_private=True)
        self.assertEqual(await client.get_json("example.org", "/x"), {})
        [recorded] = server.requests
        self.assertEqual(recorded.headers["host"], [server.name])

    async def test_ip_literal_destination_on_loopback_is_refused(self) -> None:
        server = await self.start_server()
        client = self.make_client(allow_private=False)
        error = await self.fails(client.get_json(server.name, "/x"))
        self.assertFalse(error.transient)
        self.assertEqual(server.requests, [])

    async def test_hostname_resolving_to_private_address_is_refused(self) -> None:
        server = await self.start_server(hosts=("sneaky.example",))
        port = server.port.getHost().port
        self.dns.a["sneaky.example"] = ["127.0.0.1"]
        error = await self.fails(
            self.make_client(allow_private=False).get_json(f"sneaky.example:{port}", "/x")
        )
        self.assertFalse(error.transient)
        self.assertEqual(server.requests, [])
        allowed = self.make_client(allow_private=True)
        self.assertEqual(await allowed.get_json(f"sneaky.example:{port}", "/x"), {})

    async def test_refused_destination_does_not_enter_backoff(self) -> None:
        server = await self.start_server()
        client = self.make_client(allow_private=False)
        await self.fails(client.get_json(server.name, "/x"))
        self.assertEqual(client.backoff_remaining(server.name), 0)

    def test_forbidden_ranges(self) -> None:
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2002:7f00:1::",
        ]:
            self.assertTrue(is_forbidden_address(ip), ip)
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]:
            self.assertFalse(is_forbidden_address(ip), ip)


class ErrorMappingTests(LoopbackTestCase):
    async def test_connection_refused(self) -> None:
        server = await self.start_server()
        name = server.name
        await server.stop()
        error = await self.fails(self.make_client().get_json(name, "/x"))
        self.assertFalse(error.reachable)
        self.assertTrue(error.transient)
        self.assertIsNone(error.code)
        self.assertEqual(error.destination, name)

    async def test_404_unrecognized(self) -> None:
        server = await self.start_server()
        server.handler = lambda r: Reply(
            404, b'{"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}'
        )
        error = await self.fails(self.make_client().get_json(server.name, "/x"))
        self.assertTrue(error.reachable)
        self.assertFalse(error.transient)
        self.assertEqual(error.code, 404)
        self.assertEqual(error.errcode, "M_UNRECOGNIZED")
        self.assertEqual(error.body, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})

    async def test_403_forbidden_is_not_transient(self) -> None:
        server = await self.start_server()
        server.handler = lambda r: Reply(403, b'{"errcode": "M_FORBIDDEN", "error": "no"}')
        error = await self.fails(self.make_client().put_json(server.name, "/x", {}))
        self.assertEqual((error.code, error.errcode, error.transient), (403, "M_FORBIDDEN", False))

    async def test_server_errors_and_rate_limits_are_transient(self) -> None:
        server = await self.start_server()
        client = self.make_client()
        for code in (500, 502, 503, 429):
            server.handler = lambda r, code=code: Reply(code, b"<html>oops</html>", "text/html")
            error = await self.fails(client.get_json(server.name, "/x"))
            self.assertTrue(error.reachable)
            self.assertTrue(error.transient, code)
            self.assertEqual(error.code, code)
            self.assertIsNone(error.errcode)

    async def test_invalid_json_is_an_error(self) -> None:
        server = await self.start_server()
        server.handler = lambda r: Reply(200, b"{not json")
        error = await self.fails(self.make_client().get_json(server.name, "/x"))
        self.assertTrue(error.reachable)
        self.assertEqual(error.code, 200)
        self.assertIn("JSON", error.message)

    async def test_non_json_content_type_is_an_error(self) -> None:
        server = await self.start_server()
        server.handler = lambda r: Reply(200, b"{}", "text/html")
        error = await self.fails(self.make_client().get_json(server.name, "/x"))
        self.assertTrue(error.reachable)
        self.assertEqual(error.code, 200)

    async def test_json_with_charset_is_accepted(self) -> None:
        server = await self.start_server()
        server.handler = lambda r: Reply(200, b"[200, {}]", "application/json; charset=utf-8")
        self.assertEqual(await self.make_client().get_json(server.name, "/x"), [200, {}])

    async def test_unresolvable_name(self) -> None:
        error = await self.fails(self.make_client().get_json("nowhere.example:8448", "/x"))
        self.assertFalse(error.reachable)
        self.assertIn("nowhere.example", error.message)

    async def test_invalid_server_name(self) -> None:
        error = await self.fails(self.make_client().get_json("bad name", "/x"))
        self.assertFalse(error.reachable)
        self.assertFalse(error.transient)

    async def test_path_must_be_encoded_and_without_query(self) -> None:
        client = self.make_client()
        for bad in ["relative", "/a?b=c", "/caf\u00e9"]:
            with self.assertRaises(ValueError):
                await client.get_json("1.2.3.4", bad)


class SizeCapTests(LoopbackTestCase):
    async def test_body_over_the_cap_is_refused(self) -> None:
        server = await self.start_server()
        big = json.dumps({"x": "a" * 5000}).encode()
        server.handler = lambda r: Reply(body=big)
        client = self.make_client(max_response_size=1000)
        error = await self.fails(client.get_json(server.name, "/x"))
        self.assertTrue(error.reachable)
        self.assertFalse(error.transient)
        self.assertIn("1000", error.message)
        # A caller expecting a big answer raises the cap for its call.
        self.assertEqual(await client.get_json(server.name, "/x", max_size=10_000), json.loads(big))

    async def test_streamed_body_over_the_cap_is_refused(self) -> None:
        server = await self.start_server()
        big = json.dumps({"x": "a" * 50_000}).encode()
        server.handler = lambda r: Reply(body=big, chunked=True)
        client = self.make_client()
        error = await self.fails(client.get_json(server.name, "/x", max_size=20_000))
        self.assertTrue(error.reachable)
        self.assertEqual(await client.get_json(server.name, "/x", max_size=60_000), json.loads(big))

    async def test_error_bodies_are_capped_too(self) -> None:
        server = await self.start_server()
        server.handler = lambda r: Reply(500, b"x" * 5000, "text/plain")
        client = self.make_client(max_response_size=1000)
        error = await self.fails(client.get_json(server.name, "/x"))
        self.assertIn("larger than 1000", error.message)


class TimeoutTests(LoopbackTestCase):
    async def hanging_server(self) -> tuple[LoopbackServer, Deferred[None]]:
        server = await self.start_server()
        arrived: Deferred[None] = Deferred()

        def hang(r: Recorded) -> None:
            if not arrived.called:
                arrived.callback(None)

        server.handler = hang
        return server, arrived

    async def test_call_times_out_after_the_given_timeout(self) -> None:
        server, arrived = await self.hanging_server()
        client = self.make_client()
        d = Deferred.fromCoroutine(self.fails(client.get_json(server.name, "/x", timeout=5)))
        await arrived
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        error = await d
        self.assertEqual(error.message, "timed out")
        self.assertFalse(error.reachable)
        self.assertTrue(error.transient)

    async def test_default_timeout(self) -> None:
        server, arrived = await self.hanging_server()
        client = self.make_client()
        d = Deferred.fromCoroutine(self.fails(client.get_json(server.name, "/x")))
        await arrived
        self.clock.advance(DEFAULT_TIMEOUT_SECONDS - 1)
        self.assertNoResult(d)
        self.clock.advance(2)
        self.assertEqual((await d).message, "timed out")


class BackoffWithServerTests(LoopbackTestCase):
    async def test_backoff_fails_fast_then_resets_after_success(self) -> None:
        server = await self.start_server()
        name = server.name
        port = server.port.getHost().port
        await server.stop()
        client = self.make_client()

        await self.fails(client.get_json(name, "/x"))
        self.assertEqual(client.backoff_remaining(name), BACKOFF_INITIAL_SECONDS)

        server = await self.start_server(port=port)
        error = await self.fails(client.get_json(name, "/x"))
        self.assertFalse(error.reachable)
        self.assertTrue(error.transient)
        self.assertIn("backoff", error.message)
        self.assertEqual(server.requests, [])

        # ignore_backoff tries anyway; success ends the backoff.
        self.assertEqual(await client.get_json(name, "/x", ignore_backoff=True), {})
        self.assertEqual(client.backoff_remaining(name), 0)
        self.assertEqual(await client.get_json(name, "/x"), {})

        # The next failure starts again from the initial interval.
        await server.stop()
        await client.close()
        await self.fails(client.get_json(name, "/x"))
        self.assertEqual(client.backoff_remaining(name), BACKOFF_INITIAL_SECONDS)

    async def test_http_errors_do_not_cause_backoff(self) -> None:
        server = await self.start_server()
        server.handler = lambda r: Reply(500, b"{}")
        client = self.make_client()
        await self.fails(client.get_json(server.name, "/x"))
        self.assertEqual(client.backoff_remaining(server.name), 0)


class InMemoryTests(unittest.TestCase):
    """Connection attempts on a MemoryReactorClock: deterministic, no sockets."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_000_000)
        self.client = FederationClient(
            reactor=self.reactor,
            server_name=ORIGIN,
            signing_key=generate_signing_key("k1"),
            dns_resolver=FakeDNS(),
            tls_policy=FederationTLSPolicy(),
            resolver=ServerNameResolver(
                dns_resolver=FakeDNS(), well_known_fetcher=FakeWellKnown(), clock=self.reactor
            ),
        )

    def call(self, **kwargs: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(self.client.get_json("93.184.216.34:8448", "/x", **kwargs))

    def refuse_last_attempt(self) -> None:
        _host, _port, factory, _timeout, _bind = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))

    def test_connection_attempt_goes_to_the_resolved_target(self) -> None:
        d = self.call()
        [(host, port, _f, _t, _b)] = self.reactor.tcpClients
        self.assertEqual((host, port), ("93.184.216.34", 8448))
        self.refuse_last_attempt()
        error = self.failureResultOf(d, RemoteError).value
        assert isinstance(error, RemoteError)
        self.assertEqual((error.reachable, error.transient), (False, True))

    def test_connect_phase_times_out(self) -> None:
        d = self.call(timeout=10)
        self.reactor.advance(9)
        self.assertNoResult(d)
        self.reactor.advance(2)
        error = self.failureResultOf(d, RemoteError).value
        assert isinstance(error, RemoteError)
        self.assertEqual(error.message, "timed out")
        self.assertEqual(
            self.client.backoff_remaining("93.184.216.34:8448"), BACKOFF_INITIAL_SECONDS
        )

    def test_backoff_grows_exponentially_and_is_capped(self) -> None:
        dest = "93.184.216.34:8448"
        interval = BACKOFF_INITIAL_SECONDS
        for _ in range(12):
            attempts = len(self.reactor.tcpClients)
            d = self.call()
            self.assertEqual(len(self.reactor.tcpClients), attempts + 1)
            self.refuse_last_attempt()
            self.failureResultOf(d, RemoteError)
            self.assertEqual(self.client.backoff_remaining(dest), interval)
            # In backoff: fails at once without a connection attempt.
            self.reactor.advance(interval - 1)
            d = self.call()
            error = self.failureResultOf(d, RemoteError).value
            assert isinstance(error, RemoteError)
            self.assertTrue(error.transient)
            self.assertEqual(len(self.reactor.tcpClients), attempts + 1)
            self.reactor.advance(1)
            interval = min(interval * 2, BACKOFF_MAX_SECONDS)
        self.assertEqual(interval, BACKOFF_MAX_SECONDS)

    def test_ignore_backoff_attempts_anyway(self) -> None:
        d = self.call()
        self.refuse_last_attempt()
        self.failureResultOf(d, RemoteError)
        d = self.call(ignore_backoff=True)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.refuse_last_attempt()
        self.failureResultOf(d, RemoteError)

    def test_reset_backoff(self) -> None:
        d = self.call()
        self.refuse_last_attempt()
        self.failureResultOf(d, RemoteError)
        self.client.reset_backoff("93.184.216.34:8448")
        self.call()
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_other_destinations_are_not_affected(self) -> None:
        d = self.call()
        self.refuse_last_attempt()
        self.failureResultOf(d, RemoteError)
        Deferred.fromCoroutine(self.client.get_json("93.184.216.35:8448", "/x"))
        self.assertEqual(self.reactor.tcpClients[-1][0], "93.184.216.35")
