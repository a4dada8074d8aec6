"""Requests Synapse 1.163.2 really sent pass our authentication; those it refused, we refuse.

Replays the captured traffic to server A (shared/samples/synapse-1.163.2) through
the wrapper with A's server name and B's published key, exactly as captured:
raw request targets, headers and bodies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from signedjson.key import decode_verify_key_base64
from twisted.internet import reactor
from twisted.trial import unittest

from matrixfed.events.keys import ServerVerifyKey
from matrixfed.federation.server.auth import RequestAuthenticator
from matrixfed.federation.server.endpoint import ApiRequest, Endpoint, JsonResponse
from matrixfed.federation.server.resource import JsonResource
from tests.federation.server.helpers import FakeKeyRing, Listener

SAMPLES = Path(__file__).parents[2] / "fixtures" / "synapse-1.163.2"
TEMPLATES = [
    ("GET", "/_matrix/federation/v1/query/{queryType}"),
    ("GET", "/_matrix/federation/v1/make_join/{roomId}/{userId}"),
    ("PUT", "/_matrix/federation/v2/send_join/{roomId}/{eventId}"),
    ("GET", "/_matrix/federation/v1/state_ids/{roomId}"),
    ("GET", "/_matrix/federation/v1/backfill/{roomId}"),
    ("PUT", "/_matrix/federation/v1/send/{txnId}"),
]


class SynapseCapturedRequestTests(unittest.TestCase):
    def setUp(self) -> Any:
        meta = json.loads((SAMPLES / "meta.json").read_text())
        self.a, self.b = meta["A"], meta["B"]
        key_b = json.loads((SAMPLES / "key_v2_server_B.json").read_text())
        self.keyring = FakeKeyRing()
        for kid, key in key_b["verify_keys"].items():
            alg, version = kid.split(":")
            self.keyring.keys.setdefault(self.b, {})[kid] = ServerVerifyKey(
                server_name=self.b,
                key_id=kid,
                verify_key=decode_verify_key_base64(alg, version, key["key"]),
                # The capture is older than the test run: pretend the key is current.
                valid_until_ts=2**62,
            )
        self.seen: list[ApiRequest] = []
        resource = JsonResource(
            authenticator=RequestAuthenticator(
                server_name=self.a, keyring=self.keyring, clock=reactor
            )
        )
        resource.add_endpoints(Endpoint(m, p, self._handler) for m, p in TEMPLATES)
        self.listener = Listener(resource)
        self.addCleanup(self.listener.stop)
        self.rows = [
            json.loads(line)
            for line in (SAMPLES / "fedlog_inbound_to_A.jsonl").read_text().splitlines()
        ]
        return self.listener.start()

    async def _handler(self, request: ApiRequest) -> JsonResponse:
        self.seen.append(request)
        return 200, {}

    async def _replay(self, row: dict[str, Any]) -> tuple[int, Any]:
        headers = {k: [v] for k, v in row["request_headers"] if k.lower() in ("authorization",)}
        body = json.dumps(row["request_body"]).encode() if row["request_body"] is not None else None
        return await self.listener.request(row["method"], row["path"], body=body, headers=headers)

    async def test_synapse_requests_authenticate(self) -> None:
        replayed = 0
        for row in self.rows:
            auth = dict(row["request_headers"]).get("Authorization", "")
            if f'origin="{self.b}"' not in auth or not row["path"].startswith(
                "/_matrix/federation/"
            ):
                continue
            code, body = await self._replay(row)
            self.assertEqual(code, 200, (row["path"], body))
            self.assertEqual(self.seen[-1].origin, self.b)
            self.assertEqual(self.seen[-1].content, row["request_body"])
            replayed += 1
        self.assertGreaterEqual(replayed, 10)
        make_join = next(
            r for r in self.seen if "roomId" in r.path_params and "userId" in r.path_params
        )
        self.assertTrue(make_join.path_params["roomId"].startswith("!"))
        self.assertTrue(make_join.path_params["userId"].startswith("@"))
        self.assertIn("ver", make_join.query)

    async def test_requests_synapse_refused_are_refused(self) -> None:
        refused = [r for r in self.rows if r["status"] == 401]
        self.assertTrue(refused)
        for row in refused:
            code, body = await self._replay(row)
            self.assertEqual((code, body["errcode"]), (401, "M_UNAUTHORIZED"))
        self.assertEqual(self.seen, [])
