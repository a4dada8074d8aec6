"""The common wrapper: routing, parsing, size limits, X-Matrix auth, error rendering."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest
from twisted.web.client import Agent, PartialDownloadError, ResponseFailed, readBody
from twisted.web.http_headers import Headers

from matrixfed.errors import MatrixError
from matrixfed.federation.server.auth import RequestAuthenticator
from matrixfed.federation.server.endpoint import ApiRequest, AuthMode, Endpoint, JsonResponse
from matrixfed.federation.server.keys import LocalKeyServer
from matrixfed.federation.server.rawjson import StreamedJsonArray
from matrixfed.federation.server.resource import JsonResource, _write_streamed
from matrixfed.federation.server.version import version_endpoints
from matrixfed.keys.signing_key import ServerSigningKeys
from tests.federation.server.helpers import FakeKeyRing, FakeRemoteServer, Listener

OURS = "127.0.0.1:8448"


class Recorder:
    """A handler that records what it was called with."""

    def __init__(self, response: JsonResponse = (200, {"ok": True})) -> None:
        self.calls: list[ApiRequest] = []
        self.response = response

    async def __call__(self, request: ApiRequest) -> JsonResponse:
        self.calls.append(request)
        return self.response


class ResourceTestCase(unittest.TestCase):
    def setUp(self) -> Any:
        self.remote = FakeRemoteServer("remote.example:8448")
        self.keyring = FakeKeyRing()
        self.keyring.add(self.remote)
        self.resource = JsonResource(
            authenticator=RequestAuthenticator(
                server_name=OURS, keyring=self.keyring, clock=reactor
            )
        )
        self.handler = Recorder()
        self.resource.add_endpoints(
            [
                Endpoint("PUT", "/_matrix/federation/v1/test/{roomId}/{userId}", self.handler),
                Endpoint("GET", "/_matrix/federation/v1/test/{roomId}/{userId}", self.handler),
            ]
        )
        self.listener = Listener(self.resource, max_body_size=64 * 1024)
        self.addCleanup(self.listener.stop)
        return self.listener.start()

    async def signed(
        self,
        method: str,
        uri: str,
        content: Any = None,
        *,
        sign_uri: str | None = None,
        sign_content: Any = None,
        destination: str = OURS,
        remote: FakeRemoteServer | None = None,
    ) -> tuple[int, Any]:
        remote = remote or self.remote
        header = remote.auth_header(
            destination,
            method,
            sign_uri if sign_uri is not None else uri,
            sign_content if sign_content is not None else content,
        )
        return await self.listener.request(
            method, uri, json_body=content, headers={"Authorization": [header]}
        )


URI = "/_matrix/federation/v1/test/%21room%3Aexample.org/%40u%3Aremote.example?x=1&x=2&y=%C3%A9"


class AuthenticatedRequestTests(ResourceTestCase):
    async def test_valid_request_reaches_handler_with_decoded_params(self) -> None:
        code, body = await self.signed("PUT", URI, {"hello": "world"})
        self.assertEqual((code, body), (200, {"ok": True}))
        [req] = self.handler.calls
        self.assertEqual(req.origin, self.remote.name)
        self.assertEqual(
            dict(req.path_params), {"roomId": "!room:example.org", "userId": "@u:remote.example"}
        )
        self.assertEqual(req.args("x"), ["1", "2"])
        self.assertEqual(req.arg("y"), "é")
        self.assertEqual(req.content, {"hello": "world"})
        self.assertEqual(req.uri, URI)
        self.assertEqual(
            self.keyring.get_keys_calls[0][:2], (self.remote.name, {self.remote.key_id})
        )

    async def test_query_comes_from_the_target_only(self) -> None:
        self.resource.add_endpoints([Endpoint("POST", "/_matrix/federation/v1/post", self.handler)])
        uri = "/_matrix/federation/v1/post?x=1&empty="
        # Twisted parses a POST body with this content type into request.args.
        header = self.remote.auth_header(OURS, "POST", uri, {"a": "x=2"})
        code, _ = await self.listener.request(
            "POST",
            uri,
            body=b'{"a": "x=2"}',
            headers={
                "Authorization": [header],
                "Content-Type": ["application/x-www-form-urlencoded"],
            },
        )
        self.assertEqual(code, 200)
        self.assertEqual(dict(self.handler.calls[0].query), {"x": ["1"], "empty": [""]})

    async def test_invalid_utf8_query(self) -> None:
        code, body = await self.signed("GET", "/_matrix/federation/v1/test/a/b?x=%FF")
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"))
        self.assertEqual(self.handler.calls, [])

    async def test_get_without_body(self) -> None:
        code, _ = await self.signed("GET", URI)
        self.assertEqual(code, 200)
        self.assertIsNone(self.handler.calls[0].content)

    async def test_trailing_slash_tolerated(self) -> None:
        code, _ = await self.signed("GET", "/_matrix/federation/v1/test/a/b/")
        self.assertEqual(code, 200)

    async def _assert_refused(self, code: int, body: Any) -> None:
        self.assertEqual(code, 401, body)
        self.assertEqual(body["errcode"], "M_UNAUTHORIZED")
        self.assertEqual(self.handler.calls, [])

    async def test_missing_header(self) -> None:
        code, body = await self.listener.request("PUT", URI, json_body={"a": 1})
        await self._assert_refused(code, body)
        self.assertEqual(body["error"], "Missing Authorization headers")

    async def test_other_auth_scheme(self) -> None:
        code, body = await self.listener.request(
            "GET", URI, headers={"Authorization": ["Bearer abc"]}
        )
        await self._assert_refused(code, body)

    async def test_malformed_header(self) -> None:
        code, body = await self.listener.request(
            "GET", URI, headers={"Authorization": ['X-Matrix origin="unterminated']}
        )
        await self._assert_refused(code, body)

    async def test_wrong_signature(self) -> None:
        # Same server name and key ID, different private key.
        impostor = FakeRemoteServer(self.remote.name, version="k1")
        code, body = await self.signed("PUT", URI, {"a": 1}, remote=impostor)
        await self._assert_refused(code, body)

    async def test_unknown_key(self) -> None:
        stranger = FakeRemoteServer("stranger.example")
        code, body = await self.signed("PUT", URI, {"a": 1}, remote=stranger)
        await self._assert_refused(code, body)
        self.assertIn("Failed to find any key", body["error"])

    async def test_unreachable_origin(self) -> None:
        self.keyring.unreachable.add(self.remote.name)
        code, body = await self.signed("PUT", URI, {"a": 1})
        await self._assert_refused(code, body)

    async def test_expired_key(self) -> None:
        self.keyring.add(self.remote, valid_until_ts=1000)
        code, body = await self.signed("PUT", URI, {"a": 1})
        await self._assert_refused(code, body)

    async def test_old_verify_key_refused(self) -> None:
        self.keyring.add(self.remote, expired=True)
        code, body = await self.signed("PUT", URI, {"a": 1})
        await self._assert_refused(code, body)

    async def test_wrong_destination(self) -> None:
        code, body = await self.signed("PUT", URI, {"a": 1}, destination="other.example")
        await self._assert_refused(code, body)
        self.assertIn("other.example", body["error"])

    async def test_tampered_body(self) -> None:
        code, body = await self.signed("PUT", URI, {"a": 2}, sign_content={"a": 1})
        await self._assert_refused(code, body)

    async def test_tampered_query(self) -> None:
        code, body = await self.signed("PUT", URI + "&z=1", {"a": 1}, sign_uri=URI)
        await self._assert_refused(code, body)

    async def test_tampered_method(self) -> None:
        header = self.remote.auth_header(OURS, "GET", URI)
        code, body = await self.listener.request("PUT", URI, headers={"Authorization": [header]})
        await self._assert_refused(code, body)

    async def test_origin_mismatch_between_headers(self) -> None:
        other = FakeRemoteServer("other.example")
        self.keyring.add(other)
        h1 = self.remote.auth_header(OURS, "GET", URI)
        h2 = other.auth_header(OURS, "GET", URI)
        code, body = await self.listener.request("GET", URI, headers={"Authorization": [h1, h2]})
        await self._assert_refused(code, body)


class RoutingAndParsingTests(ResourceTestCase):
    async def test_unknown_path(self) -> None:
        for path in ["/_matrix/federation/v1/nope", "/", "/favicon.ico", "/_matrix/key/v2/x"]:
            code, body = await self.listener.request("GET", path)
            self.assertEqual((code, body["errcode"]), (404, "M_UNRECOGNIZED"), path)

    async def test_wrong_method(self) -> None:
        code, body = await self.signed("POST", "/_matrix/federation/v1/test/a/b", {})
        self.assertEqual((code, body["errcode"]), (405, "M_UNRECOGNIZED"))
        self.assertEqual(self.handler.calls, [])

    async def test_not_json(self) -> None:
        header = self.remote.auth_header(OURS, "PUT", URI)
        for raw in [b"{not json", b"\xff\xfe", b"[NaN]", b'{"a": Infinity}']:
            code, body = await self.listener.request(
                "PUT", URI, body=raw, headers={"Authorization": [header]}
            )
            self.assertEqual((code, body["errcode"]), (400, "M_NOT_JSON"), raw)
        self.assertEqual(self.handler.calls, [])

    async def test_body_too_large(self) -> None:
        big = {"x": "a" * (65 * 1024)}
        code, body = await self.signed("PUT", URI, big)
        self.assertEqual((code, body["errcode"]), (413, "M_TOO_LARGE"))
        self.assertEqual(self.handler.calls, [])

    async def test_invalid_utf8_path_param(self) -> None:
        code, body = await self.signed("GET", "/_matrix/federation/v1/test/%FF/b")
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"))


class HandlerErrorTests(ResourceTestCase):
    async def test_matrix_error_rendered(self) -> None:
        async def fail(request: ApiRequest) -> JsonResponse:
            raise MatrixError(403, "M_FORBIDDEN", "nope", extra_field=1)

        self.resource.add_endpoints([Endpoint("GET", "/_matrix/federation/v1/fail", fail)])
        code, body = await self.signed("GET", "/_matrix/federation/v1/fail")
        self.assertEqual(
            (code, body), (403, {"errcode": "M_FORBIDDEN", "error": "nope", "extra_field": 1})
        )

    async def test_unexpected_exception_is_500_and_logged(self) -> None:
        async def crash(request: ApiRequest) -> JsonResponse:
            raise RuntimeError("boom")

        self.resource.add_endpoints([Endpoint("GET", "/_matrix/federation/v1/crash", crash)])
        code, body = await self.signed("GET", "/_matrix/federation/v1/crash")
        self.assertEqual((code, body["errcode"]), (500, "M_UNKNOWN"))
        self.assertNotIn("boom", body["error"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_response_array(self) -> None:
        async def arr(request: ApiRequest) -> JsonResponse:
            return 200, [200, {"state": []}]

        self.resource.add_endpoints([Endpoint("GET", "/_matrix/federation/v1/arr", arr)])
        self.assertEqual(
            await self.signed("GET", "/_matrix/federation/v1/arr"), (200, [200, {"state": []}])
        )


async def _batches(
    *batches: list[str], fail_after: int | None = None
) -> AsyncGenerator[list[str], None]:
    for i, batch in enumerate(batches):
        if fail_after is not None and i == fail_after:
            raise RuntimeError("store gone")
        await deferLater(reactor, 0, lambda: None)
        yield batch


class StreamedAnswerTests(ResourceTestCase):
    async def _serve(self, body: Any) -> None:
        async def streamed(request: ApiRequest) -> JsonResponse:
            return 200, body

        self.resource.add_endpoints([Endpoint("GET", "/_matrix/federation/v1/big", streamed)])

    async def test_batches_arrive_as_one_answer(self) -> None:
        items = [{"n": i, "s": "caf\u00e9"} for i in range(5)]
        texts = [json.dumps(i, separators=(",", ":")) for i in items]
        state = StreamedJsonArray(_batches(texts[:2], [], texts[2:]))
        chain = StreamedJsonArray(_batches())
        await self._serve([200, {"origin": "o", "state": state, "chain": chain, "x": [1]}])
        header = self.remote.auth_header(OURS, "GET", "/_matrix/federation/v1/big", None)
        response = await Agent(reactor).request(
            b"GET",
            (self.listener.base + "/_matrix/federation/v1/big").encode(),
            Headers({"Authorization": [header]}),
        )
        self.assertEqual(response.code, 200)
        # Sent before its end was read: no content-length (chunked instead).
        self.assertIsNone(response.headers.getRawHeaders(b"content-length"))
        decoded = json.loads(await readBody(response))
        self.assertEqual(decoded, [200, {"origin": "o", "state": items, "chain": [], "x": [1]}])

    async def test_failure_before_the_first_batch_is_a_500(self) -> None:
        await self._serve({"state": StreamedJsonArray(_batches(["1"], fail_after=0))})
        code, body = await self.signed("GET", "/_matrix/federation/v1/big")
        self.assertEqual((code, body["errcode"]), (500, "M_UNKNOWN"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_failure_after_the_first_batch_cuts_the_answer(self) -> None:
        # The status is out already: the client must not get a complete-looking answer.
        await self._serve({"state": StreamedJsonArray(_batches(["1"], ["2"], fail_after=1))})
        with self.assertRaises((ResponseFailed, PartialDownloadError)):
            await self.signed("GET", "/_matrix/federation/v1/big")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class _Sink:
    """The parts of a request ``_write_streamed`` uses; the client leaves
    after the first write."""

    path = b"/big"

    def __init__(self, finished: list[bool]) -> None:
        self.finished = finished
        self.written: list[bytes] = []
        self.done = False

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self.finished[0] = True

    def finish(self) -> None:
        self.done = True


class StreamedAnswerClientGoneTests(unittest.TestCase):
    async def test_reading_stops_when_the_client_goes_away(self) -> None:
        read: list[int] = []
        closed: list[bool] = []

        async def source() -> AsyncGenerator[list[str], None]:
            try:
                for i in range(5):
                    read.append(i)
                    yield [str(i)]
            finally:
                closed.append(True)

        finished = [False]
        sink = _Sink(finished)
        await _write_streamed(sink, 200, {"state": StreamedJsonArray(source())}, finished)
        self.assertEqual((sink.written, sink.done), ([b'{"state":[0'], False))
        self.assertEqual((read, closed), ([0], [True]))


class RegistrationTests(unittest.TestCase):
    def test_federation_endpoint_cannot_skip_auth(self) -> None:
        resource = JsonResource(
            authenticator=RequestAuthenticator(
                server_name=OURS, keyring=FakeKeyRing(), clock=reactor
            )
        )
        self.assertRaises(
            ValueError,
            resource.add_endpoints,
            [Endpoint("GET", "/_matrix/federation/v1/open", Recorder(), auth=AuthMode.NONE)],
        )

    def test_duplicate_refused(self) -> None:
        resource = JsonResource(authenticator=None)
        resource.add_endpoints([Endpoint("GET", "/a/{x}", Recorder(), auth=AuthMode.NONE)])
        self.assertRaises(
            ValueError,
            resource.add_endpoints,
            [Endpoint("get", "/a/{x}/", Recorder(), auth=AuthMode.NONE)],
        )

    def test_auth_needs_authenticator(self) -> None:
        resource = JsonResource(authenticator=None)
        self.assertRaises(ValueError, resource.add_endpoints, [Endpoint("GET", "/a", Recorder())])

    def test_bad_templates(self) -> None:
        for template in ["no/slash", "/a/{x}/{x}", "/a/{x", "/a/x}"]:
            self.assertRaises(ValueError, Endpoint, "GET", template, Recorder())


class OptionalAndNoAuthTests(ResourceTestCase):
    def setUp(self) -> Any:
        d = super().setUp()
        keys = ServerSigningKeys(signing_keys=(FakeRemoteServer(OURS).key,))
        local = LocalKeyServer(server_name=OURS, keys=keys, clock=reactor, validity_ms=3600_000)
        self.resource.add_endpoints(version_endpoints() + local.endpoints())
        return d

    async def test_version_without_auth(self) -> None:
        code, body = await self.listener.request("GET", "/_matrix/federation/v1/version")
        self.assertEqual(code, 200)
        self.assertEqual(body["server"]["name"], "matrixfed")

    async def test_version_with_valid_auth(self) -> None:
        code, _ = await self.signed("GET", "/_matrix/federation/v1/version")
        self.assertEqual(code, 200)
        self.assertEqual(len(self.keyring.get_keys_calls), 1)

    async def test_version_with_bad_auth(self) -> None:
        stranger = FakeRemoteServer("stranger.example")
        code, body = await self.signed("GET", "/_matrix/federation/v1/version", remote=stranger)
        self.assertEqual((code, body["errcode"]), (401, "M_UNAUTHORIZED"))

    async def test_key_endpoints_ignore_xmatrix(self) -> None:
        for header in ['X-Matrix origin="garbage', self.remote.auth_header(OURS, "GET", "/x")]:
            for path in ["/_matrix/key/v2/server", "/_matrix/key/v2/server/ed25519:k1"]:
                code, body = await self.listener.request(
                    "GET", path, headers={"Authorization": [header]}
                )
                self.assertEqual(code, 200)
                self.assertEqual(body["server_name"], OURS)
        self.assertEqual(self.keyring.get_keys_calls, [])
