"""The test harness itself: a real matrixfed server and a fake remote talk over TLS."""

from __future__ import annotations

from twisted.trial import unittest

from matrixfed.errors import RemoteError
from matrixfed.events.keys import ServerVerifyKey
from matrixfed.events.signing import verify_event_signatures
from tests.auth.roombuilder import signing_key_for
from tests.harness.fakeremote import CloseConnection, Garbage, Hang, RemoteRoom, Reply
from tests.harness.servers import TestNetwork

# Short deadline for the request the fake never answers (real seconds).
HANG_TIMEOUT_SECONDS = 0.5


class FakeRemoteTests(unittest.TestCase):
    async def test_server_fetches_keys_and_signs_requests_to_the_fake(self) -> None:
        net = TestNetwork(self)
        server = await net.start_server()
        remote = await net.start_fake_remote()
        remote.require_auth = True
        remote.on("GET", "/_matrix/federation/v1/thing/{name}", lambda r: Reply(200, {"n": 1}))

        keys = await server.service.keyring.get_keys(remote.server_name, {remote.key_id}, 0)
        self.assertEqual(set(keys), {remote.key_id})

        answer = await server.service.federation_client.get_json(
            remote.server_name, "/_matrix/federation/v1/thing/x%2Fy"
        )
        self.assertEqual(answer, {"n": 1})
        [req] = remote.received("GET", "/_matrix/federation/v1/thing")
        self.assertEqual((req.origin, req.auth_error), (server.name, None))
        self.assertEqual(req.path_params, {"name": "x/y"})

    async def test_unverified_requests_are_refused_when_auth_is_required(self) -> None:
        net = TestNetwork(self)
        server = await net.start_server()
        remote = await net.start_fake_remote()
        remote.trust(server.name, {})  # forget the real key
        remote.require_auth = True
        remote.on("GET", "/_matrix/federation/v1/thing", Reply(200, {}))
        with self.assertRaises(RemoteError) as cm:
            await server.service.federation_client.get_json(
                remote.server_name, "/_matrix/federation/v1/thing"
            )
        self.assertEqual(cm.exception.code, 401)
        self.assertIn("no key", remote.requests[-1].auth_error or "")

    async def test_misbehaviours_surface_as_remote_errors(self) -> None:
        net = TestNetwork(self)
        server = await net.start_server()
        remote = await net.start_fake_remote()
        client = server.service.federation_client
        remote.on("GET", "/garbage", Garbage())
        remote.on("GET", "/html", Garbage(b"<html></html>", content_type="text/html"))
        remote.on("GET", "/close", CloseConnection())
        remote.on("GET", "/hang", Hang())
        for path, reachable in [("/garbage", True), ("/html", True), ("/close", False)]:
            with self.assertRaises(RemoteError) as cm:
                await client.get_json(remote.server_name, path, ignore_backoff=True)
            self.assertEqual(cm.exception.reachable, reachable, path)
        with self.assertRaises(RemoteError) as cm:
            await client.get_json(
                remote.server_name, "/hang", timeout=HANG_TIMEOUT_SECONDS, ignore_backoff=True
            )
        self.assertTrue(cm.exception.transient)
        self.assertEqual(len(remote.received("GET", "/hang")), 1)

    async def test_fake_sends_signed_requests_to_a_server(self) -> None:
        net = TestNetwork(self)
        server = await net.start_server()
        remote = await net.start_fake_remote()
        answer = await remote.client.get_json(server.name, "/_matrix/federation/v1/version")
        self.assertEqual(answer["server"]["name"], "matrixfed")

    def test_remote_room_events_are_signed_by_the_fake(self) -> None:
        for version in ("1", "6", "10", "11", "12"):
            room = RemoteRoom.of(version)
            user = "@u:127.0.0.1:1234"
            room.standard_room(user)
            event = room.send("m.room.message", user, {"body": "hi"})
            key = signing_key_for("127.0.0.1:1234")
            vk = ServerVerifyKey("127.0.0.1:1234", "ed25519:k1", key.verify_key, 2**62, False)
            verify_event_signatures(event, {"127.0.0.1:1234": {"ed25519:k1": vk}})

    async def test_a_broken_handler_answers_500_and_is_reported(self) -> None:
        net = TestNetwork(self)
        server = await net.start_server()
        remote = await net.start_fake_remote()

        def broken(request: object) -> Reply:
            raise ZeroDivisionError("oops")

        remote.on("GET", "/broken", broken)
        with self.assertRaises(RemoteError) as cm:
            await server.service.federation_client.get_json(remote.server_name, "/broken")
        self.assertEqual(cm.exception.code, 500)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
