"""Whole servers built by make_service, in this process, on loopback with real TLS."""

from __future__ import annotations

import os
from typing import Any

import psycopg2
from signedjson.key import decode_verify_key_base64
from signedjson.sign import verify_signed_json
from twisted.application import service
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from matrixfed.config import Config, ConfigError
from matrixfed.errors import RemoteError
from matrixfed.federation.server.endpoint import ApiRequest, Endpoint, JsonResponse
from matrixfed.service import MatrixfedService, StartupError, make_service
from tests.servertestutil import free_port, http_get_json, https_get_json
from tests.tlsutil import TestCA


def ssl_endpoint(port: int, data_dir: str) -> str:
    return (
        f"ssl:{port}:interface=127.0.0.1"
        f":privateKey={os.path.join(data_dir, 'tls.key')}"
        f":certKey={os.path.join(data_dir, 'tls.crt')}"
    )


class ServiceTestCase(unittest.TestCase):
    async def start(self, config: Config) -> MatrixfedService:
        svc = make_service(config, reactor=reactor)
        svc.privilegedStartService()
        svc.startService()
        self.addCleanup(svc.stopService)
        await svc.when_ready()
        return svc

    def config(self, data_dir: str | None = None, **kwargs: Any) -> Config:
        data_dir = data_dir or self.mktemp()
        port = kwargs.pop("port", None) or free_port()
        kwargs.setdefault("federation_listen", ssl_endpoint(port, data_dir))
        kwargs.setdefault("client_listen", "tcp:0:interface=127.0.0.1")
        kwargs.setdefault("federation_allow_private", True)
        return Config(server_name=f"127.0.0.1:{port}", data_dir=data_dir, **kwargs)


def verify_key_response(body: dict[str, Any], server_name: str) -> str:
    """Verify a /key/v2/server response's self-signature; return its key ID."""
    [(kid, key)] = body["verify_keys"].items()
    alg, version = kid.split(":")
    verify_signed_json(body, server_name, decode_verify_key_base64(alg, version, key["key"]))
    return f"{kid} {key['key']}"


class SingleServerTests(ServiceTestCase):
    async def test_key_server_verifies_and_survives_restart(self) -> None:
        config = self.config()
        svc = await self.start(config)
        cert = open(config.tls_certificate_file, "rb").read()
        url = f"https://{config.server_name}/_matrix/key/v2/server"
        code, first = await https_get_json(url, trust_pem=cert)
        self.assertEqual(code, 200)
        self.assertEqual(first["server_name"], config.server_name)
        key_before = verify_key_response(first, config.server_name)
        now_ms = int(reactor.seconds() * 1000)
        self.assertGreaterEqual(first["valid_until_ts"], now_ms + 3600_000)
        await svc.stopService()

        await self.start(config)
        code, second = await https_get_json(url, trust_pem=cert)
        self.assertEqual(code, 200)
        self.assertEqual(verify_key_response(second, config.server_name), key_before)

    async def test_join_worker_processes_start_and_stop_with_the_service(self) -> None:
        svc = await self.start(self.config(join_verify_processes=2))
        pool = svc.verify_pool
        assert pool is not None
        self.assertEqual(pool.processes, 2)
        executor = pool._executor
        assert executor is not None
        workers = [executor._processes[pid] for pid in list(executor._processes)]  # type: ignore[attr-defined]
        self.assertEqual(len(workers), 2)
        await svc.stopService()
        self.assertIsNone(pool._executor)
        for worker in workers:
            worker.join(10)
            self.assertFalse(worker.is_alive())
        # 0: no worker processes, the join checks events on threads.
        threads_only = await self.start(self.config(join_verify_processes=0))
        self.assertIsNone(threads_only.verify_pool)

    async def test_client_listener_answers_unrecognized(self) -> None:
        svc = await self.start(self.config())
        port = svc.listening_port("client")
        assert port is not None
        for path in ["/_matrix/client/v3/no_such_endpoint", "/"]:
            code, body = await http_get_json(f"http://127.0.0.1:{port.getHost().port}{path}")
            self.assertEqual((code, body["errcode"]), (404, "M_UNRECOGNIZED"))

    async def test_federation_requires_auth(self) -> None:
        config = self.config()
        await self.start(config)
        cert = open(config.tls_certificate_file, "rb").read()
        base = f"https://{config.server_name}/_matrix/federation/v1"
        code, body = await https_get_json(base + "/version", trust_pem=cert)
        self.assertEqual((code, body["server"]["name"]), (200, "matrixfed"))
        code, body = await https_get_json(base + "/nope", trust_pem=cert)
        self.assertEqual((code, body["errcode"]), (404, "M_UNRECOGNIZED"))


class StartupFailureTests(ServiceTestCase):
    def test_bad_values_are_config_errors(self) -> None:
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        with open(os.path.join(data_dir, "signing.key"), "w") as f:
            f.write("garbage\n")
        cases = [
            (Config(server_name="a.example", data_dir=data_dir), "signing key file"),
            (self.config(federation_listen="bogus:1"), "--federation-listen"),
            (self.config(client_listen="tcp:notaport"), "--client-listen"),
            (self.config(federation_ca="/nonexistent/ca.pem"), "--federation-ca"),
            (
                self.config(tls_certificate="/nonexistent/c", tls_private_key="/nonexistent/k"),
                "--tls-certificate",
            ),
        ]
        for config, label in cases:
            with self.assertRaises(ConfigError) as cm:
                make_service(config, reactor=reactor)
            self.assertIn(label, str(cm.exception))
            self.assertNotIn("\n", str(cm.exception))

    async def test_port_in_use_fails_start(self) -> None:
        first = await self.start(self.config())
        port = first.listening_port("federation")
        assert port is not None
        second = make_service(self.config(port=port.getHost().port), reactor=reactor)
        reasons: list[str] = []
        second.on_fatal = reasons.append
        second.privilegedStartService()
        second.startService()
        self.addCleanup(second.stopService)
        with self.assertRaises(StartupError):
            await second.when_ready()
        [reason] = reasons
        self.assertIn("--federation-listen: cannot listen on", reason)


class DatabaseFailureTests(ServiceTestCase):
    async def test_unreachable_database_fails_start(self) -> None:
        svc = make_service(
            self.config(database=f"postgresql://postgres@127.0.0.1:{free_port()}/none"),
            reactor=reactor,
        )
        reasons: list[str] = []
        svc.on_fatal = reasons.append
        svc.privilegedStartService()
        svc.startService()
        self.addCleanup(svc.stopService)
        with self.assertRaises(StartupError):
            await svc.when_ready()
        [reason] = reasons
        self.assertTrue(reason.startswith("start-up failed: "), reason)
        self.assertIn("Connection refused", reason)
        self.assertNotIn("\n", reason)
        # The traceback went to the log at debug level, for developers.
        self.assertEqual(len(self.flushLoggedErrors(psycopg2.OperationalError)), 1)
        # Requests that arrive meanwhile are answered, not left hanging.
        port = svc.listening_port("client")
        assert port is not None
        code, body = await http_get_json(f"http://127.0.0.1:{port.getHost().port}/x")
        self.assertEqual((code, body["errcode"]), (503, "M_UNKNOWN"))


class EchoOrigin:
    def __init__(self) -> None:
        self.origins: list[str | None] = []

    async def __call__(self, request: ApiRequest) -> JsonResponse:
        self.origins.append(request.origin)
        return 200, {"origin": request.origin, "content": request.content}


class TwoServerTests(ServiceTestCase):
    """Two servers with certificates from one test CA (``federation_ca``) talk to each other."""

    async def asyncSetUp(self) -> None:
        ca = TestCA(self.mktemp())
        servers = []
        for _ in range(2):
            port = free_port()
            name = f"127.0.0.1:{port}"
            crt, key = ca.issue(name)
            config = Config(
                server_name=name,
                data_dir=self.mktemp(),
                federation_listen=f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={crt}",
                client_listen="none",
                tls_certificate=crt,
                tls_private_key=key,
                federation_ca=ca.ca_path,
                federation_allow_private=True,
            )
            servers.append(await self.start(config))
        self.a, self.b = servers
        self.echo = EchoOrigin()
        self.b.federation_resource.add_endpoints(
            [Endpoint("PUT", "/_matrix/federation/v1/test_echo/{x}", self.echo)]
        )

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.asyncSetUp())

    async def test_authenticated_request(self) -> None:
        b_name = self.b.config.server_name
        body = await self.a.federation_client.put_json(
            b_name, "/_matrix/federation/v1/test_echo/x%2Fy", {"hello": 1}
        )
        self.assertEqual(body, {"origin": self.a.config.server_name, "content": {"hello": 1}})
        self.assertEqual(self.echo.origins, [self.a.config.server_name])
        version = await self.a.federation_client.get_json(b_name, "/_matrix/federation/v1/version")
        self.assertEqual(version["server"]["name"], "matrixfed")

    async def test_keys_fetched_both_ways(self) -> None:
        a_name, b_name = self.a.config.server_name, self.b.config.server_name
        keys_of_b = await self.a.keyring.get_keys(
            b_name, list(self.b.signing_keys.verify_keys()), int(reactor.seconds() * 1000)
        )
        self.assertEqual(set(keys_of_b), set(self.b.signing_keys.verify_keys()))
        keys_of_a = await self.b.keyring.get_keys(
            a_name, list(self.a.signing_keys.verify_keys()), int(reactor.seconds() * 1000)
        )
        self.assertEqual(set(keys_of_a), set(self.a.signing_keys.verify_keys()))

    async def test_notary_countersigns(self) -> None:
        a_name, b_name = self.a.config.server_name, self.b.config.server_name
        # Ask B's notary (as a plain client would) for A's keys.
        body = await self.a.federation_client.get_json(b_name, f"/_matrix/key/v2/query/{a_name}")
        [response] = body["server_keys"]
        self.assertEqual(response["server_name"], a_name)
        self.assertEqual(set(response["signatures"]), {a_name, b_name})
        for name, svc in [(a_name, self.a), (b_name, self.b)]:
            [(kid, vk)] = svc.signing_keys.verify_keys().items()
            verify_signed_json(response, name, vk)

    async def test_forged_origin_refused(self) -> None:
        # A signs with its own key but claims to be a third server: B cannot
        # fetch that server's keys and refuses; the handler never runs.
        forged = make_service(
            Config(
                server_name="127.0.0.1:1",
                data_dir=self.mktemp(),
                federation_listen="none",
                client_listen="none",
                federation_ca=self.a.config.federation_ca,
                federation_allow_private=True,
            ),
            reactor=reactor,
        )
        forged.startService()
        self.addCleanup(forged.stopService)
        await forged.when_ready()
        with self.assertRaises(RemoteError) as cm:
            await forged.federation_client.put_json(
                self.b.config.server_name, "/_matrix/federation/v1/test_echo/x", {}
            )
        self.assertEqual((cm.exception.code, cm.exception.errcode), (401, "M_UNAUTHORIZED"))
        self.assertEqual(self.echo.origins, [])


class EmbeddingTests(ServiceTestCase):
    async def test_added_to_another_application(self) -> None:
        application = service.Application("host-app")
        config = self.config()
        svc = make_service(config, reactor=reactor)
        svc.setServiceParent(application)
        top = service.IService(application)
        top.privilegedStartService()
        top.startService()
        self.addCleanup(top.stopService)
        await svc.when_ready()
        self.assertIs(top.getServiceNamed("matrixfed"), svc)
        cert = open(config.tls_certificate_file, "rb").read()
        code, body = await https_get_json(
            f"https://{config.server_name}/_matrix/key/v2/server", trust_pem=cert
        )
        self.assertEqual((code, body["server_name"]), (200, config.server_name))
