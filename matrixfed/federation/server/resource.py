"""The one wrapper every JSON endpoint goes through.

``JsonResource`` is a leaf resource serving a registry of ``Endpoint`` objects.
For each request, in this order:

1. wait until the server has finished starting (database, keys);
2. refuse a body over the size limit (413 ``M_TOO_LARGE``; the body is never
   buffered past the limit, see ``LimitedRequest``);
3. route: unknown path -> 404 ``M_UNRECOGNIZED``, known path with another
   method -> 405 ``M_UNRECOGNIZED``;
4. parse the body as JSON (400 ``M_NOT_JSON``) and the query as UTF-8;
5. authenticate (X-Matrix) as the endpoint declares; every path under
   ``/_matrix/federation/`` must declare REQUIRED or OPTIONAL, so nothing there
   runs unauthenticated (checked when endpoints are added);
6. run the handler and render ``(status, json)``; a ``MatrixError`` renders as
   the spec's error JSON, any other exception as 500 ``M_UNKNOWN``, logged.

Handlers never see an unauthenticated request, malformed JSON or an oversized
body.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from matrixfed import __version__
from matrixfed.errors import MatrixError, unrecognized
from matrixfed.federation.server.auth import RequestAuthenticator
from matrixfed.federation.server.endpoint import ApiRequest, AuthMode, Endpoint, JsonResponse
from matrixfed.federation.server.rawjson import encode_body, encoded_chunks, has_streams

__all__ = ["JsonResource", "LimitedRequest", "make_site"]

log = Logger()

# Paths under this prefix are federation requests: never served without X-Matrix.
FEDERATION_PREFIX = "/_matrix/federation/"
# Idle connections are closed after this many seconds (slow-loris guard; long
# enough for a client long-poll).
IDLE_CONNECTION_TIMEOUT_S = 180
SERVER_HEADER = f"matrixfed/{__version__}".encode()


def _reject_constant(name: str) -> Any:
    # JSON in Matrix has no NaN/Infinity (canonical JSON cannot encode them).
    raise ValueError(f"{name} is not valid JSON")


class LimitedRequest(server.Request):
    """A request that stops buffering its body once it exceeds ``max_body_size``.

    The surplus is discarded as it arrives and ``body_too_large`` is set, so the
    resource answers 413 without ever holding more than the limit in memory.
    """

    max_body_size: int = 0  # set per site by make_site
    body_too_large: bool = False
    _body_received: int = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body_size:
            self.body_too_large = True
            length = 0
        server.Request.gotLength(self, length)  # type: ignore[no-untyped-call]

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._body_received += len(data)
        if self._body_received > self.max_body_size:
            self.body_too_large = True
            content: Any = self.content
            content.seek(0)
            content.truncate()
            return
        server.Request.handleContentChunk(self, data)  # type: ignore[no-untyped-call]


def make_site(resource: Resource, *, max_body_size: int) -> server.Site:
    """A Site serving ``resource`` with a body size limit and an idle timeout."""
    request_factory = type("LimitedRequest", (LimitedRequest,), {"max_body_size": max_body_size})
    site = server.Site(  # type: ignore[no-untyped-call]
        resource,
        requestFactory=request_factory,
        timeout=IDLE_CONNECTION_TIMEOUT_S,
        # Bodies are JSON; never spend memory parsing them as HTML forms.
        parsePOSTFormSubmission=False,
    )
    site.displayTracebacks = False
    return site


class JsonResource(Resource):
    """Serves a registry of declarative endpoints behind the common wrapper."""

    isLeaf = True

    def __init__(
        self,
        *,
        authenticator: RequestAuthenticator | None,
        wait_ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Args:
        authenticator: verifies X-Matrix; None for listeners without
            federation auth (then only AuthMode.NONE endpoints may be added).
        wait_ready: awaited before handling each request until start-up is done.
        """
        Resource.__init__(self)  # type: ignore[no-untyped-call]
        self._authenticator = authenticator
        self._wait_ready = wait_ready
        self._endpoints: list[Endpoint] = []

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The registered endpoints, in registration order."""
        return tuple(self._endpoints)

    def add_endpoints(self, endpoints: Iterable[Endpoint]) -> None:
        """Register endpoints.

        Raises:
            ValueError: a method and path template is registered twice, an
                endpoint under /_matrix/federation/ declares AuthMode.NONE, or
                an endpoint needs auth on a resource without an authenticator.
        """
        new = list(endpoints)
        seen = {(e.method, e.path.rstrip("/")) for e in self._endpoints}
        for e in new:
            key = (e.method, e.path.rstrip("/"))
            if key in seen:
                raise ValueError(f"endpoint {e.method} {e.path} registered twice")
            seen.add(key)
            if e.path.startswith(FEDERATION_PREFIX) and e.auth is AuthMode.NONE:
                raise ValueError(f"{e.path}: federation endpoints must be authenticated")
            if e.auth is not AuthMode.NONE and self._authenticator is None:
                raise ValueError(f"{e.path}: needs auth but this listener has no authenticator")
        self._endpoints.extend(new)

    # -- twisted.web -------------------------------------------------------

    def render(self, request: server.Request) -> Any:
        finished = [False]

        def _gone(_: object) -> None:
            finished[0] = True

        request.notifyFinish().addBoth(_gone)
        d = Deferred.fromCoroutine(self._handle(request))
        d.addCallback(lambda resp: self._send(request, resp, finished))
        d.addErrback(self._send_failure, request, finished)
        return server.NOT_DONE_YET

    # -- the wrapper -------------------------------------------------------

    def _route(self, raw_path: str, method: str) -> tuple[Endpoint, dict[str, str]]:
        path_matched = False
        for endpoint in self._endpoints:
            try:
                params = endpoint.match(raw_path)
            except UnicodeDecodeError:
                raise MatrixError(
                    400, "M_INVALID_PARAM", "Path parameter is not valid UTF-8"
                ) from None
            if params is None:
                continue
            if endpoint.method == method:
                return endpoint, params
            path_matched = True
        if path_matched:
            raise unrecognized(405, "Unrecognized request: method not allowed")
        raise unrecognized(404, "Unrecognized request")

    async def _handle(self, request: server.Request) -> JsonResponse:
        if self._wait_ready is not None:
            await self._wait_ready()
        if getattr(request, "body_too_large", False):
            raise MatrixError(413, "M_TOO_LARGE", "Request body too large")
        try:
            method = request.method.decode("ascii")
            uri = request.uri.decode("utf-8")
            raw_path = request.path.decode("utf-8")
        except UnicodeDecodeError:
            raise MatrixError(400, "M_UNRECOGNIZED", "Request target is not valid UTF-8") from None

        endpoint, params = self._route(raw_path, method)

        try:
            # From the request target only: Twisted's request.args would also
            # hold form fields parsed from a urlencoded or multipart body.
            query = parse_qs(uri.partition("?")[2], keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise MatrixError(
                400, "M_INVALID_PARAM", "Query parameter is not valid UTF-8"
            ) from None

        content = _parse_body(request)
        headers = {
            k.decode("latin-1").lower(): [v.decode("latin-1") for v in vs]
            for k, vs in request.requestHeaders.getAllRawHeaders()
        }

        origin: str | None = None
        authorization = request.requestHeaders.getRawHeaders(b"authorization") or []
        if endpoint.auth is AuthMode.REQUIRED or (
            endpoint.auth is AuthMode.OPTIONAL and authorization
        ):
            assert self._authenticator is not None  # enforced by add_endpoints
            origin = await self._authenticator.authenticate(
                method=method, uri=uri, authorization=authorization, content=content
            )

        api_request = ApiRequest(
            method=method,
            uri=uri,
            path=raw_path,
            origin=origin,
            path_params=params,
            query=query,
            content=content,
            headers=headers,
        )
        return await endpoint.handler(api_request)

    def _send(self, request: server.Request, resp: JsonResponse, finished: list[bool]) -> None:
        code, body = resp
        if has_streams(body):
            # Written as its parts are read (send_join of a big room); the
            # request's Deferred chain is done with this answer either way.
            Deferred.fromCoroutine(_write_streamed(request, code, body, finished))
            return
        _write_json(request, code, body, finished)

    def _send_failure(
        self, failure: Failure, request: server.Request, finished: list[bool]
    ) -> None:
        err = failure.value
        if isinstance(err, MatrixError):
            if err.code >= 500:
                log.warn(
                    "{method} {path}: {code} {errcode}: {message}",
                    method=request.method,
                    path=request.path,
                    code=err.code,
                    errcode=err.errcode,
                    message=err.message,
                )
            _write_json(request, err.code, err.to_json(), finished)
            return
        log.failure(
            "Unhandled error answering {method} {path}",
            failure,
            method=request.method,
            path=request.path,
        )
        _write_json(
            request, 500, {"errcode": "M_UNKNOWN", "error": "Internal server error"}, finished
        )


def _parse_body(request: Any) -> Any:
    request.content.seek(0)
    raw = request.content.read()
    if not raw:
        return None
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MatrixError(400, "M_NOT_JSON", "Content not JSON.") from None


def _set_headers(request: Any, code: int) -> None:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-cache, no-store, must-revalidate")
    request.setHeader(b"server", SERVER_HEADER)
    if getattr(request, "body_too_large", False):
        # The rest of an oversized body may still be arriving: don't reuse the connection.
        request.setHeader(b"connection", b"close")


async def _write_streamed(request: Any, code: int, body: Any, finished: list[bool]) -> None:
    """Write an answer holding ``StreamedJsonArray`` values as they come.

    No content-length (HTTP/1.1 chunked encoding). A failure before the
    first chunk answers 500 like any handler failure; after it, the
    connection is dropped so the client sees a cut-off answer, never a
    complete-looking wrong one.
    """
    chunks = encoded_chunks(body)
    started = False
    try:
        if finished[0]:
            return
        async for data in chunks:
            if not started:
                _set_headers(request, code)
                started = True
            request.write(data)
            if finished[0]:
                # The client went away; stop reading.
                return
    except Exception:
        log.failure("Streaming the answer of {path} failed", path=request.path)
        if not started:
            _write_json(
                request, 500, {"errcode": "M_UNKNOWN", "error": "Internal server error"}, finished
            )
        elif not finished[0]:
            request.loseConnection()
        return
    finally:
        await chunks.aclose()
    if not finished[0]:
        request.finish()


def _write_json(request: Any, code: int, body: Any, finished: list[bool]) -> None:
    if finished[0]:
        # The client went away; nothing to answer.
        return
    try:
        # Splices pre-encoded event arrays (big send_join answers) as they are.
        data = encode_body(body)
    except (TypeError, ValueError):
        log.failure("Response body of {path} is not JSON-serialisable", path=request.path)
        code = 500
        data = b'{"errcode":"M_UNKNOWN","error":"Internal server error"}'
    _set_headers(request, code)
    request.setHeader(b"content-length", str(len(data)).encode("ascii"))
    request.write(data)
    request.finish()
