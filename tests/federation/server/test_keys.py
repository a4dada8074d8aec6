"""The key server (/_matrix/key/v2/server) and the notary (/_matrix/key/v2/query)."""

from __future__ import annotations

from typing import Any

from signedjson.key import decode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import SignatureVerifyException, verify_signed_json
from twisted.internet.task import Clock
from twisted.trial import unittest

from matrixfed.federation.server.keys import LocalKeyServer, NotaryServer
from matrixfed.federation.server.resource import JsonResource
from matrixfed.keys.signing_key import OldVerifyKey, ServerSigningKeys
from tests.federation.server.helpers import FakeKeyRing, FakeRemoteServer, Listener

OURS = "notary.example:8448"
HOUR_MS = 3600_000


def verify_key_from_response(response: dict[str, Any], kid: str) -> Any:
    alg, version = kid.split(":")
    return decode_verify_key_base64(alg, version, response["verify_keys"][kid]["key"])


class KeyServerTestCase(unittest.TestCase):
    def setUp(self) -> Any:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.our_key = generate_signing_key("a_ours")
        retired = get_verify_key(generate_signing_key("a_old"))
        self.keys = ServerSigningKeys(
            signing_keys=(self.our_key,),
            old_verify_keys=(OldVerifyKey("ed25519:a_old", retired, 1_600_000_000_000),),
        )
        self.local = LocalKeyServer(
            server_name=OURS, keys=self.keys, clock=self.clock, validity_ms=2 * HOUR_MS
        )
        self.keyring = FakeKeyRing()
        self.notary = NotaryServer(local=self.local, keyring=self.keyring, clock=self.clock)
        resource = JsonResource(authenticator=None)
        resource.add_endpoints(self.local.endpoints() + self.notary.endpoints())
        self.listener = Listener(resource)
        self.addCleanup(self.listener.stop)
        return self.listener.start()

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)


class LocalKeyServerTests(KeyServerTestCase):
    async def test_response_is_self_signed_and_complete(self) -> None:
        code, body = await self.listener.request("GET", "/_matrix/key/v2/server")
        self.assertEqual(code, 200)
        self.assertEqual(body["server_name"], OURS)
        self.assertEqual(body["valid_until_ts"], self.now_ms() + 2 * HOUR_MS)
        self.assertEqual(list(body["verify_keys"]), ["ed25519:a_ours"])
        self.assertEqual(body["old_verify_keys"]["ed25519:a_old"]["expired_ts"], 1_600_000_000_000)
        vk = verify_key_from_response(body, "ed25519:a_ours")
        self.assertEqual(bytes(vk), bytes(get_verify_key(self.our_key)))
        verify_signed_json(body, OURS, vk)

    async def test_valid_until_follows_clock(self) -> None:
        _, first = await self.listener.request("GET", "/_matrix/key/v2/server")
        self.clock.advance(600)
        _, second = await self.listener.request("GET", "/_matrix/key/v2/server")
        self.assertEqual(second["valid_until_ts"] - first["valid_until_ts"], 600_000)

    async def test_tampered_response_fails_verification(self) -> None:
        _, body = await self.listener.request("GET", "/_matrix/key/v2/server")
        body["valid_until_ts"] += 1
        vk = verify_key_from_response(body, "ed25519:a_ours")
        self.assertRaises(SignatureVerifyException, verify_signed_json, body, OURS, vk)

    async def test_legacy_key_id_path(self) -> None:
        code, body = await self.listener.request("GET", "/_matrix/key/v2/server/ed25519%3Aa_ours")
        self.assertEqual((code, body["server_name"]), (200, OURS))


class NotaryTests(KeyServerTestCase):
    def setUp(self) -> Any:
        d = super().setUp()
        self.remote = FakeRemoteServer("remote.example")
        self.keyring.responses[self.remote.name] = [
            self.remote.key_response(self.now_ms() + 10 * HOUR_MS)
        ]
        return d

    def assert_countersigned(self, response: dict[str, Any]) -> None:
        verify_signed_json(response, self.remote.name, get_verify_key(self.remote.key))
        verify_signed_json(response, OURS, get_verify_key(self.our_key))

    async def test_get_query_countersigns(self) -> None:
        code, body = await self.listener.request("GET", "/_matrix/key/v2/query/remote.example")
        self.assertEqual(code, 200)
        [response] = body["server_keys"]
        self.assertEqual(response["server_name"], self.remote.name)
        self.assertEqual(set(response["signatures"]), {self.remote.name, OURS})
        self.assert_countersigned(response)
        # The keyring's copy is untouched: countersigning works on a copy.
        self.assertEqual(
            set(self.keyring.responses[self.remote.name][0]["signatures"]), {self.remote.name}
        )

    async def test_minimum_valid_until_ts_passed_on(self) -> None:
        await self.listener.request("GET", "/_matrix/key/v2/query/remote.example")
        await self.listener.request(
            "GET", "/_matrix/key/v2/query/remote.example?minimum_valid_until_ts=123"
        )
        self.assertEqual(
            self.keyring.response_calls,
            [(self.remote.name, self.now_ms()), (self.remote.name, 123)],
        )
        code, body = await self.listener.request(
            "GET", "/_matrix/key/v2/query/remote.example?minimum_valid_until_ts=soon"
        )
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"))

    async def test_unreachable_and_unknown_give_empty_list(self) -> None:
        self.keyring.unreachable.add("down.example")
        for name in ["down.example", "unknown.example", "not a server name!"]:
            code, body = await self.listener.request(
                "GET", "/_matrix/key/v2/query/" + name.replace(" ", "%20")
            )
            self.assertEqual((code, body), (200, {"server_keys": []}), name)

    async def test_own_keys_served(self) -> None:
        code, body = await self.listener.request(
            "GET", "/_matrix/key/v2/query/notary.example%3A8448"
        )
        self.assertEqual(code, 200)
        [response] = body["server_keys"]
        verify_signed_json(response, OURS, get_verify_key(self.our_key))
        self.assertEqual(self.keyring.response_calls, [])

    async def test_post_query_many(self) -> None:
        self.keyring.unreachable.add("down.example")
        criteria = {
            "server_keys": {
                "remote.example": {
                    "ed25519:k1": {"minimum_valid_until_ts": self.now_ms() + 5 * HOUR_MS}
                },
                "down.example": {},
                OURS: {},
            }
        }
        code, body = await self.listener.request(
            "POST", "/_matrix/key/v2/query", json_body=criteria
        )
        self.assertEqual(code, 200)
        by_name = {r["server_name"]: r for r in body["server_keys"]}
        self.assertEqual(set(by_name), {self.remote.name, OURS})
        self.assert_countersigned(by_name[self.remote.name])
        self.assertIn((self.remote.name, self.now_ms() + 5 * HOUR_MS), self.keyring.response_calls)

    async def test_post_query_response_too_short_lived_is_omitted(self) -> None:
        criteria = {
            "server_keys": {
                "remote.example": {
                    "ed25519:k1": {"minimum_valid_until_ts": self.now_ms() + 20 * HOUR_MS}
                }
            }
        }
        _, body = await self.listener.request("POST", "/_matrix/key/v2/query", json_body=criteria)
        self.assertEqual(body, {"server_keys": []})

    async def test_post_query_bad_bodies(self) -> None:
        for bad in [
            {},
            {"server_keys": []},
            {"server_keys": {"a": []}},
            {"server_keys": {"a": {"k": 1}}},
        ]:
            code, body = await self.listener.request("POST", "/_matrix/key/v2/query", json_body=bad)
            self.assertEqual((code, body["errcode"]), (400, "M_BAD_JSON"), bad)
        too_many = {"server_keys": {f"s{i}.example": {} for i in range(101)}}
        code, body = await self.listener.request(
            "POST", "/_matrix/key/v2/query", json_body=too_many
        )
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"))
