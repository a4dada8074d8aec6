"""Scenario 6: key fetching both ways, directly and through the other as notary;
``/query/directory`` and ``/query/profile`` both ways.

How a fetch is observed from outside: ``POST /_matrix/key/v2/query`` asks a
server as a notary, which makes it fetch the named server's keys itself. A
notary chain is proved by a server that is stopped before the question: its keys
can then only have come from the notary that cached them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from signedjson.key import decode_verify_key_bytes
from signedjson.sign import verify_signed_json
from unpaddedbase64 import decode_base64

from tests.interop.synapse import (
    InteropTestCase,
    shared_pair,
    with_logs,
)


def by_key_ids(origin: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """A /query body naming each key ID of ``origin``'s key response.

    Synapse 1.163.2 answers an empty ``server_keys`` for ``{server: {}}`` when it
    has nothing cached, where the spec says a notary "should query for all keys";
    naming the key IDs makes it fetch. It also refuses (400 ``M_MISSING_PARAM``) a
    criteria object without ``minimum_valid_until_ts``, which the spec makes
    optional (default: the notary's current time).
    """
    now_ms = int(time.time() * 1000)
    criteria = {"minimum_valid_until_ts": now_ms}
    return {origin["server_name"]: {key_id: criteria for key_id in origin["verify_keys"]}}


def response_for(answer: Mapping[str, Any], server_name: str) -> Mapping[str, Any] | None:
    for response in answer.get("server_keys", []):
        if response.get("server_name") == server_name:
            return response  # type: ignore[no-any-return]
    return None


class KeyFetchTests(InteropTestCase):
    def assert_keys_of(
        self,
        answer: Mapping[str, Any],
        origin: Mapping[str, Any],
        *,
        notary: str,
        notary_keys: Mapping[str, Any],
    ) -> None:
        """``answer`` (a notary's /query reply) carries ``origin``'s keys, signed
        by the origin and by the notary."""
        server_name = origin["server_name"]
        response = response_for(answer, server_name)
        self.assertIsNotNone(response, f"no keys of {server_name} in {answer}")
        assert response is not None
        self.assertEqual(
            {k: v["key"] for k, v in response["verify_keys"].items()},
            {k: v["key"] for k, v in origin["verify_keys"].items()},
        )
        for signer, keys in ((server_name, origin["verify_keys"]), (notary, notary_keys)):
            self.assertIn(signer, response.get("signatures", {}), f"not signed by {signer}")
            for key_id, key in keys.items():
                verify_key = decode_verify_key_bytes(key_id, decode_base64(key["key"]))
                verify_signed_json(dict(response), signer, verify_key)

    @with_logs
    async def test_synapse_fetches_matrixfed_keys_directly(self) -> None:
        synapse, mf = await shared_pair()
        own = await mf.server_keys()
        answer = await synapse.notary_query(by_key_ids(own))
        synapse_own = await synapse.server_keys()
        self.assert_keys_of(
            answer, own, notary=synapse.server_name, notary_keys=synapse_own["verify_keys"]
        )

    @with_logs
    async def test_matrixfed_fetches_synapse_keys_directly(self) -> None:
        synapse, mf = await shared_pair()
        own = await synapse.server_keys()
        answer = await mf.notary_query({synapse.server_name: {}})
        mf_own = await mf.server_keys()
        self.assert_keys_of(answer, own, notary=mf.server_name, notary_keys=mf_own["verify_keys"])

    @with_logs
    async def test_matrixfed_fetches_through_synapse_as_notary(self) -> None:
        synapse, mf = await shared_pair()
        gone = await self.start_matrixfed()
        gone_keys = await gone.server_keys()
        # Synapse learns the keys, then the server goes away for good.
        cached = await synapse.notary_query(by_key_ids(gone_keys))
        self.assertIsNotNone(response_for(cached, gone.server_name))
        gone.stop()
        # A request signed with the gone server's key: matrixfed cannot reach the
        # server, so it authenticates the request only if its notary, Synapse,
        # hands over the keys.
        code, body = await gone.signed_get(mf, "/_matrix/federation/v1/version")
        self.assertEqual(code, 200, body)

    @with_logs
    async def test_synapse_fetches_through_matrixfed_as_notary(self) -> None:
        _, mf = await shared_pair()
        gone = await self.start_matrixfed()
        cached = await mf.notary_query({gone.server_name: {}})
        self.assertIsNotNone(response_for(cached, gone.server_name))
        gone.stop()
        key_id, key = mf.verify_key()
        asker = await self.start_synapse(
            trusted_key_servers=[{"server_name": mf.server_name, "verify_keys": {key_id: key}}]
        )
        # Synapse's own notary endpoint only ever fetches directly, so the
        # keyring that verifies requests is what uses its trusted key servers.
        code, body = await gone.signed_get(asker, "/_matrix/federation/v1/publicRooms")
        self.assertEqual(code, 200, body)

    @with_logs
    async def test_unreachable_server_without_notary_is_refused(self) -> None:
        """The control for the two notary tests: with no notary that has the keys,
        a request from a gone server is refused by both."""
        synapse, mf = await shared_pair()
        gone = await self.start_matrixfed()
        gone.stop()
        code, body = await gone.signed_get(mf, "/_matrix/federation/v1/version")
        self.assertEqual((code, body.get("errcode")), (401, "M_UNAUTHORIZED"), body)
        code, body = await gone.signed_get(synapse, "/_matrix/federation/v1/publicRooms")
        self.assertEqual((code, body.get("errcode")), (401, "M_UNAUTHORIZED"), body)
