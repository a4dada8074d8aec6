"""The keyring: direct and notary fetches, verification, caching, coalescing."""

from __future__ import annotations

import copy
from typing import Any

from signedjson.key import generate_signing_key
from signedjson.sign import sign_json
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from matrixfed.federation.client import FederationClient
from matrixfed.federation.discovery import ServerNameResolver
from matrixfed.federation.tls_policy import FederationTLSPolicy
from matrixfed.keys.keyring import MAX_KEY_VALIDITY_MS, REFETCH_MIN_INTERVAL_MS, KeyRing
from matrixfed.keys.signing_key import OldVerifyKey, ServerSigningKeys
from matrixfed.storage.keys_store import KeysStore
from tests.federation.fakes import FakeDNS, FakeWellKnown, TestCA
from tests.federation.loopback import LoopbackServer, Reply
from tests.keys.fakenet import FakeKeyNetwork, FakeRemote
from tests.storage.harness import SqliteMixin

reactor: Any = _reactor

HOUR_MS = 3600 * 1000
OURS = "ours.example"


class KeyRingTestCase(SqliteMixin, unittest.TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.now = int(self.clock.seconds() * 1000)
        self.net = FakeKeyNetwork()
        db = await self.make_database()
        self.store = KeysStore(db=db)
        self.our_key = generate_signing_key("ours1")

    def make_keyring(self, notaries: tuple[str, ...] = (), **kwargs: Any) -> KeyRing:
        return KeyRing(
            client=self.net,
            store=self.store,
            clock=self.clock,
            server_name=OURS,
            signing_key=self.our_key,
            trusted_key_servers=notaries,
            **kwargs,
        )

    def advance_ms(self, ms: int) -> None:
        self.clock.advance(ms / 1000)
        self.now = int(self.clock.seconds() * 1000)


class DirectFetchTests(KeyRingTestCase):
    async def test_fetches_verifies_and_caches(self) -> None:
        remote = self.net.add(FakeRemote("a.example"), self.now + 24 * HOUR_MS)
        keyring = self.make_keyring()
        keys = await keyring.get_keys("a.example", [remote.key_id], self.now)
        key = keys[remote.key_id]
        self.assertEqual(bytes(key.verify_key), bytes(remote.key.verify_key))
        self.assertEqual(key.valid_until_ts, self.now + 24 * HOUR_MS)
        self.assertFalse(key.expired)
        await keyring.get_keys("a.example", [remote.key_id], self.now + HOUR_MS)
        self.assertEqual(self.net.get_count("a.example"), 1)

    async def test_keys_survive_a_restart(self) -> None:
        remote = self.net.add(FakeRemote("a.example"), self.now + 24 * HOUR_MS)
        await self.make_keyring().get_keys("a.example", [remote.key_id], self.now)
        self.net.down.add("a.example")
        keys = await self.make_keyring().get_keys("a.example", [remote.key_id], self.now)
        self.assertIn(remote.key_id, keys)
        self.assertEqual(self.net.get_count("a.example"), 1)

    async def test_keys_are_refetched_when_their_validity_ends(self) -> None:
        remote = self.net.add(FakeRemote("a.example"), self.now + HOUR_MS)
        first_until = self.now + HOUR_MS
        keyring = self.make_keyring()
        await keyring.get_keys("a.example", [remote.key_id], self.now)
        self.advance_ms(2 * HOUR_MS)
        self.net.responses["a.example"] = remote.key_response(self.now + HOUR_MS)
        keys = await keyring.get_keys("a.example", [remote.key_id], self.now)
        self.assertEqual(keys[remote.key_id].valid_until_ts, self.now + HOUR_MS)
        self.assertEqual(self.net.get_count("a.example"), 2)
        self.assertGreater(keys[remote.key_id].valid_until_ts, first_until)

    async def test_expired_key_is_not_returned_when_the_server_is_down(self) -> None:
        remote = self.net.add(FakeRemote("a.example"), self.now + HOUR_MS)
        signed_at = self.now
        keyring = self.make_keyring()
        await keyring.get_keys("a.example", [remote.key_id], self.now)
        self.advance_ms(2 * HOUR_MS)
        self.net.down.add("a.example")
        self.assertEqual(await keyring.get_keys("a.example", [remote.key_id], self.now), {})
        # Still good for something signed while the key was valid.
        old = await keyring.get_keys("a.example", [remote.key_id], signed_at)
        self.assertIn(remote.key_id, old)

    async def test_validity_is_capped_at_seven_days(self) -> None:
        remote = self.net.add(FakeRemote("a.example"), self.now + 365 * 24 * HOUR_MS)
        keys = await self.make_keyring().get_keys("a.example", [remote.key_id], self.now)
        self.assertEqual(keys[remote.key_id].valid_until_ts, self.now + MAX_KEY_VALIDITY_MS)

    async def test_old_verify_keys_are_valid_until_they_expired(self) -> None:
        remote = FakeRemote("a.example", "v1")
        old_id = remote.key_id
        remote.rotate("v2", expired_ts=self.now - HOUR_MS)
        self.net.add(remote, self.now + 24 * HOUR_MS)
        keyring = self.make_keyring()
        before = await keyring.get_keys("a.example", [old_id], self.now - 2 * HOUR_MS)
        self.assertTrue(before[old_id].expired)
        self.assertEqual(before[old_id].valid_until_ts, self.now - HOUR_MS)
        after = await keyring.get_keys("a.example", [old_id, "ed25519:v2"], self.now)
        self.assertEqual(sorted(after), ["ed25519:v2"])

    async def test_unreachable_server_gives_no_keys_and_no_error(self) -> None:
        self.net.down.add("a.example")
        self.assertEqual(await self.make_keyring().get_keys("a.example", ["ed25519:x"], 0), {})

    async def test_missing_key_is_not_refetched_immediately(self) -> None:
        self.net.add(FakeRemote("a.example"), self.now + 24 * HOUR_MS)
        keyring = self.make_keyring()
        self.assertEqual(await keyring.get_keys("a.example", ["ed25519:unknown"], 0), {})
        self.assertEqual(await keyring.get_keys("a.example", ["ed25519:unknown"], 0), {})
        self.assertEqual(self.net.get_count("a.example"), 1)
        self.advance_ms(REFETCH_MIN_INTERVAL_MS)
        await keyring.get_keys("a.example", ["ed25519:unknown"], 0)
        self.assertEqual(self.net.get_count("a.example"), 2)

    async def test_rotated_key_is_found_by_refetching(self) -> None:
        remote = self.net.add(FakeRemote("a.example", "v1"), self.now + 24 * HOUR_MS)
        keyring = self.make_keyring()
        await keyring.get_keys("a.example", ["ed25519:v1"], self.now)
        remote.rotate("v2", expired_ts=self.now + 1)
        self.net.responses["a.example"] = remote.key_response(self.now + 48 * HOUR_MS)
        self.advance_ms(REFETCH_MIN_INTERVAL_MS)
        keys = await keyring.get_keys("a.example", ["ed25519:v2", "ed25519:v1"], 0)
        self.assertEqual(sorted(keys), ["ed25519:v1", "ed25519:v2"])
        self.assertTrue(keys["ed25519:v1"].expired)
        self.assertEqual(keys["ed25519:v1"].valid_until_ts, self.now - REFETCH_MIN_INTERVAL_MS + 1)


class VerificationTests(KeyRingTestCase):
    async def fetch_with(
        self, response: dict[str, Any], key_id: str = "ed25519:k1"
    ) -> dict[str, Any]:
        self.net.responses["a.example"] = response
        return await self.make_keyring().get_keys("a.example", [key_id], 0)

    async def test_bad_self_signature_is_rejected(self) -> None:
        response = FakeRemote("a.example").key_response(self.now + HOUR_MS)
        response["valid_until_ts"] += 1  # tampered after signing
        self.assertEqual(await self.fetch_with(response), {})

    async def test_unsigned_response_is_rejected(self) -> None:
        response = FakeRemote("a.example").key_response(self.now + HOUR_MS)
        del response["signatures"]
        self.assertEqual(await self.fetch_with(response), {})

    async def test_response_signed_by_a_key_it_does_not_publish_is_rejected(self) -> None:
        remote = FakeRemote("a.example")
        response = remote.key_response(self.now + HOUR_MS)
        del response["signatures"]
        resigned = sign_json(response, "a.example", generate_signing_key("other"))
        self.assertEqual(await self.fetch_with(resigned), {})

    async def test_response_for_another_server_is_rejected(self) -> None:
        response = FakeRemote("b.example").key_response(self.now + HOUR_MS)
        self.assertEqual(await self.fetch_with(response), {})

    async def test_malformed_responses_are_rejected(self) -> None:
        good = FakeRemote("a.example").key_response(self.now + HOUR_MS)
        for broken in (
            {**good, "valid_until_ts": "soon"},
            {**good, "verify_keys": []},
            {**good, "verify_keys": {"ed25519:k1": {"key": "!!notbase64!!"}}},
            {**good, "old_verify_keys": {"ed25519:o": {"key": "AAAA"}}},
        ):
            self.assertEqual(await self.fetch_with(broken), {}, broken)
            self.advance_ms(REFETCH_MIN_INTERVAL_MS)

    async def test_rejected_response_is_not_stored(self) -> None:
        response = FakeRemote("a.example").key_response(self.now + HOUR_MS)
        response["valid_until_ts"] += 1
        await self.fetch_with(response)
        self.assertEqual(await self.store.get_server_keys(["a.example"]), {})
        self.assertIsNone(await self.store.get_key_response("a.example"))


class OwnKeysTests(KeyRingTestCase):
    async def test_own_keys_are_answered_locally(self) -> None:
        old = generate_signing_key("old")
        own = ServerSigningKeys(
            signing_keys=(self.our_key,),
            old_verify_keys=(OldVerifyKey("ed25519:old", old.verify_key, self.now - 5),),
        )
        keyring = self.make_keyring(own_keys=own)
        keys = await keyring.get_keys(OURS, ["ed25519:ours1", "ed25519:old"], 0)
        self.assertEqual(bytes(keys["ed25519:ours1"].verify_key), bytes(self.our_key.verify_key))
        self.assertTrue(keys["ed25519:old"].expired)
        self.assertEqual(keys["ed25519:old"].valid_until_ts, self.now - 5)
        self.assertEqual(self.net.requests, [])

    async def test_own_key_response_for_the_notary_endpoint(self) -> None:
        keyring = self.make_keyring(own_key_response=lambda: {"server_name": OURS})
        self.assertEqual(await keyring.get_server_key_responses(OURS, 0), [{"server_name": OURS}])
        self.assertEqual(await self.make_keyring().get_server_key_responses(OURS, 0), [])


class CoalescingTests(KeyRingTestCase):
    async def test_concurrent_requests_for_one_server_share_one_fetch(self) -> None:
        remote = self.net.add(FakeRemote("a.example"), self.now + HOUR_MS)
        keyring = self.make_keyring()
        self.net.hold = True
        d1 = Deferred.fromCoroutine(keyring.get_keys("a.example", [remote.key_id], self.now))
        d2 = Deferred.fromCoroutine(keyring.get_keys("a.example", [remote.key_id], self.now))
        while not self.net.requests:
            await deferLater(reactor, 0.001)
        await deferLater(reactor, 0.01)
        self.assertNoResult(d1)
        self.assertNoResult(d2)
        self.net.release()
        self.assertIn(remote.key_id, await d1)
        self.assertIn(remote.key_id, await d2)
        self.assertEqual(self.net.get_count("a.example"), 1)

    async def test_batch_fetches_directly_in_parallel(self) -> None:
        servers = [self.net.add(FakeRemote(f"s{i}.example"), self.now + HOUR_MS) for i in range(5)]
        keyring = self.make_keyring()
        self.net.hold = True
        d = Deferred.fromCoroutine(
            keyring.get_keys_batch({r.name: {r.key_id: self.now} for r in servers})
        )
        while len(self.net.requests) < 5:
            await deferLater(reactor, 0.001)
        # All five requests are out before any answer came back.
        self.assertEqual(len(self.net.requests), 5)
        self.net.release()
        result = await d
        self.assertEqual(
            {s: sorted(k) for s, k in result.items()}, {r.name: [r.key_id] for r in servers}
        )


class NotaryTests(KeyRingTestCase):
    async def setUpNotary(self) -> FakeRemote:
        notary = self.net.add(FakeRemote("notary.example", "n1"), self.now + 24 * HOUR_MS)
        return notary

    async def test_notary_is_used_when_the_origin_is_unreachable(self) -> None:
        notary = await self.setUpNotary()
        remote = FakeRemote("a.example")
        self.net.notary_knows(notary, remote.key_response(self.now + HOUR_MS))
        self.net.down.add("a.example")
        keyring = self.make_keyring(notaries=("notary.example",))
        keys = await keyring.get_keys("a.example", [remote.key_id], self.now)
        self.assertEqual(bytes(keys[remote.key_id].verify_key), bytes(remote.key.verify_key))
        self.assertEqual(self.net.get_count("a.example"), 1)
        [(dest, body)] = self.net.posts()
        self.assertEqual(dest, "notary.example")
        self.assertEqual(
            body,
            {"server_keys": {"a.example": {remote.key_id: {"minimum_valid_until_ts": self.now}}}},
        )
        stored = await self.store.get_key_response("a.example")
        assert stored is not None
        self.assertEqual(stored.fetched_from, "notary.example")

    async def test_notary_is_not_asked_when_the_origin_answers(self) -> None:
        notary = await self.setUpNotary()
        remote = self.net.add(FakeRemote("a.example"), self.now + HOUR_MS)
        self.net.notary_knows(notary, remote.key_response(self.now + HOUR_MS))
        keyring = self.make_keyring(notaries=("notary.example",))
        await keyring.get_keys("a.example", [remote.key_id], self.now)
        self.assertEqual(self.net.posts(), [])

    async def test_batch_sends_one_query_per_notary(self) -> None:
        notary = await self.setUpNotary()
        up = self.net.add(FakeRemote("up.example"), self.now + HOUR_MS)
        downs = [FakeRemote(f"down{i}.example") for i in range(3)]
        for r in downs:
            self.net.notary_knows(notary, r.key_response(self.now + HOUR_MS))
            self.net.down.add(r.name)
        keyring = self.make_keyring(notaries=("notary.example",))
        requests = {r.name: {r.key_id: self.now} for r in [up, *downs]}
        result = await keyring.get_keys_batch(requests)
        self.assertTrue(all(result[r.name] for r in [up, *downs]))
        [(dest, body)] = self.net.posts()
        self.assertEqual(sorted(body["server_keys"]), [r.name for r in downs])

    async def test_notaries_are_tried_in_order(self) -> None:
        first = await self.setUpNotary()
        second = self.net.add(FakeRemote("second.example", "n2"), self.now + 24 * HOUR_MS)
        remote = FakeRemote("a.example")
        self.net.down.add("a.example")
        self.net.notary_knows(second, remote.key_response(self.now + HOUR_MS))
        self.net.notary_copies.setdefault(first.name, {})
        keyring = self.make_keyring(notaries=("notary.example", "second.example"))
        keys = await keyring.get_keys("a.example", [remote.key_id], self.now)
        self.assertIn(remote.key_id, keys)
        self.assertEqual([d for d, _ in self.net.posts()], ["notary.example", "second.example"])

    async def test_response_without_the_notary_signature_is_rejected(self) -> None:
        notary = await self.setUpNotary()
        remote = FakeRemote("a.example")
        self.net.notary_copies[notary.name] = {"a.example": remote.key_response(self.now + HOUR_MS)}
        self.net.down.add("a.example")
        keyring = self.make_keyring(notaries=("notary.example",))
        self.assertEqual(await keyring.get_keys("a.example", [remote.key_id], self.now), {})

    async def test_forged_response_signed_by_the_notary_is_rejected(self) -> None:
        # The notary vouches, but the response is not signed by the origin itself.
        notary = await self.setUpNotary()
        forged = FakeRemote("a.example")
        response = forged.key_response(self.now + HOUR_MS)
        response["verify_keys"] = {
            "ed25519:k1": {"key": "ZZZZ" + response["verify_keys"]["ed25519:k1"]["key"][4:]}
        }
        self.net.notary_knows(notary, response)
        self.net.down.add("a.example")
        keyring = self.make_keyring(notaries=("notary.example",))
        self.assertEqual(await keyring.get_keys("a.example", ["ed25519:k1"], self.now), {})

    async def test_notary_signature_with_a_wrong_key_is_rejected(self) -> None:
        notary = await self.setUpNotary()
        remote = FakeRemote("a.example")
        impostor = FakeRemote("notary.example", "n1")  # same name and key ID, other key
        self.net.notary_knows(impostor, remote.key_response(self.now + HOUR_MS))
        self.net.down.add("a.example")
        keyring = self.make_keyring(notaries=(notary.name,))
        self.assertEqual(await keyring.get_keys("a.example", [remote.key_id], self.now), {})

    async def test_notary_whose_own_keys_cannot_be_fetched_is_not_trusted(self) -> None:
        notary = await self.setUpNotary()
        remote = FakeRemote("a.example")
        self.net.notary_knows(notary, remote.key_response(self.now + HOUR_MS))
        self.net.down.add("a.example")
        del self.net.responses["notary.example"]
        keyring = self.make_keyring(notaries=("notary.example",))
        self.assertEqual(await keyring.get_keys("a.example", [remote.key_id], self.now), {})


class NotaryEndpointTests(KeyRingTestCase):
    async def test_serves_fetched_then_cached_responses(self) -> None:
        remote = self.net.add(FakeRemote("a.example"), self.now + HOUR_MS)
        keyring = self.make_keyring()
        [response] = await keyring.get_server_key_responses("a.example", self.now)
        self.assertEqual(response, self.net.responses["a.example"])
        await keyring.get_server_key_responses("a.example", self.now + HOUR_MS - 1)
        self.assertEqual(self.net.get_count("a.example"), 1)
        # The keys it learned serve get_keys too.
        await keyring.get_keys("a.example", [remote.key_id], self.now)
        self.assertEqual(self.net.get_count("a.example"), 1)

    async def test_refreshes_a_response_that_is_not_valid_long_enough(self) -> None:
        remote = self.net.add(FakeRemote("a.example"), self.now + HOUR_MS)
        keyring = self.make_keyring()
        await keyring.get_server_key_responses("a.example", self.now)
        self.net.responses["a.example"] = remote.key_response(self.now + 10 * HOUR_MS)
        self.advance_ms(REFETCH_MIN_INTERVAL_MS)
        [response] = await keyring.get_server_key_responses("a.example", self.now + 5 * HOUR_MS)
        self.assertEqual(
            response["valid_until_ts"], self.now - REFETCH_MIN_INTERVAL_MS + 10 * HOUR_MS
        )

    async def test_serves_the_last_response_when_the_server_is_down(self) -> None:
        self.net.add(FakeRemote("a.example"), self.now + HOUR_MS)
        keyring = self.make_keyring()
        [first] = await keyring.get_server_key_responses("a.example", self.now)
        self.net.down.add("a.example")
        self.advance_ms(2 * HOUR_MS)
        self.assertEqual(await keyring.get_server_key_responses("a.example", self.now), [first])

    async def test_unknown_unreachable_server_gives_nothing(self) -> None:
        self.net.down.add("a.example")
        self.assertEqual(await self.make_keyring().get_server_key_responses("a.example", 0), [])

    async def test_notary_endpoint_never_asks_other_notaries(self) -> None:
        notary = self.net.add(FakeRemote("notary.example", "n1"), self.now + HOUR_MS)
        remote = FakeRemote("a.example")
        self.net.notary_knows(notary, remote.key_response(self.now + HOUR_MS))
        self.net.down.add("a.example")
        keyring = self.make_keyring(notaries=("notary.example",))
        self.assertEqual(await keyring.get_server_key_responses("a.example", 0), [])
        self.assertEqual(self.net.posts(), [])


class OverTheWireTests(SqliteMixin, unittest.TestCase):
    """The keyring with the real FederationClient against an HTTPS key server."""

    async def test_fetches_keys_over_tls(self) -> None:
        ca = TestCA()
        server = LoopbackServer(ca)
        await server.start()
        self.addCleanup(server.stop)
        remote = FakeRemote(server.name)
        clock = Clock()
        clock.advance(1_700_000_000)
        now = int(clock.seconds() * 1000)
        body = remote.key_response(now + HOUR_MS)
        import json

        server.handler = lambda r: Reply(body=json.dumps(body).encode())
        dns = FakeDNS()
        client = FederationClient(
            reactor=reactor,
            clock=clock,
            server_name=OURS,
            signing_key=generate_signing_key("ours1"),
            dns_resolver=dns,
            tls_policy=FederationTLSPolicy(extra_ca_file=ca.ca_file),
            allow_private=True,
            resolver=ServerNameResolver(
                dns_resolver=dns, well_known_fetcher=FakeWellKnown(), clock=clock
            ),
        )
        self.addCleanup(lambda: deferLater(reactor, 0, client.close))
        keyring = KeyRing(
            client=client,
            store=KeysStore(db=await self.make_database()),
            clock=clock,
            server_name=OURS,
            signing_key=generate_signing_key("ours1"),
        )
        keys = await keyring.get_keys(server.name, [remote.key_id], now)
        self.assertEqual(bytes(keys[remote.key_id].verify_key), bytes(remote.key.verify_key))
        [request] = server.requests
        self.assertEqual(request.uri, "/_matrix/key/v2/server")
        self.assertEqual(copy.deepcopy(body)["server_name"], server.name)
