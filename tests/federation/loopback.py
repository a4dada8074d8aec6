"""A small scriptable HTTPS server on 127.0.0.1 for client tests (real TLS, test CA)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.ssl import PrivateCertificate
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.federation.fakes import TestCA

reactor: Any = _reactor


@attrs.frozen
class Recorded:
    method: str
    uri: str
    headers: dict[str, list[str]]
    body: bytes


@attrs.frozen
class Reply:
    code: int = 200
    body: bytes = b"{}"
    content_type: str | None = "application/json"
    chunked: bool = False


Handler = Callable[[Recorded], "Reply | None"]


class TrackingChannel(HTTPChannel):
    """Keeps its factory's ``channels`` set current, so servers can close open connections."""

    lost: Deferred[None]

    def connectionMade(self) -> None:
        self.lost = Deferred()
        self.factory.channels.add(self)  # type: ignore[attr-defined]
        super().connectionMade()

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.factory.channels.discard(self)  # type: ignore[attr-defined]
        self.lost.callback(None)


class _Resource(Resource):
    isLeaf = True

    def __init__(self, server: LoopbackServer) -> None:
        super().__init__()
        self._server = server

    def render(self, request: Request) -> Any:
        headers = {
            name.decode().lower(): [v.decode() for v in values]
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        assert request.content is not None
        recorded = Recorded(
            method=request.method.decode(),
            uri=request.uri.decode(),
            headers=headers,
            body=request.content.read(),
        )
        self._server.requests.append(recorded)
        reply = self._server.handler(recorded)
        if reply is None:
            # Hang: answer never comes.
            self._server.hanging.append(request)
            return NOT_DONE_YET
        request.setResponseCode(reply.code)
        if reply.content_type is not None:
            request.setHeader(b"content-type", reply.content_type.encode())
        if reply.chunked:
            # No Content-Length: the body is streamed in pieces.
            for i in range(0, len(reply.body), 4096):
                request.write(reply.body[i : i + 4096])
            request.finish()
            return NOT_DONE_YET
        return reply.body


class LoopbackServer:
    """HTTPS on 127.0.0.1:<random port> with a certificate from ``ca`` for ``hosts``."""

    def __init__(self, ca: TestCA, hosts: tuple[str, ...] = ("127.0.0.1",)) -> None:
        cert_pem, key_pem = ca.issue(*hosts)
        self._options = PrivateCertificate.loadPEM(key_pem + cert_pem).options()
        self.requests: list[Recorded] = []
        self.hanging: list[Request] = []
        self.handler: Handler = lambda r: Reply()
        self.site = Site(_Resource(self), timeout=None)
        self.site.protocol = TrackingChannel  # type: ignore[assignment]
        self.site.channels = set()  # type: ignore[attr-defined]
        self.port: Any = None

    async def start(self, port: int = 0) -> int:
        endpoint = SSL4ServerEndpoint(reactor, port, self._options, interface="127.0.0.1")
        self.port = await endpoint.listen(self.site)
        number: int = self.port.getHost().port
        return number

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port.getHost().port}"

    async def stop(self) -> None:
        if self.port is not None:
            await self.port.stopListening()
            self.port = None
        channels = list(self.site.channels)  # type: ignore[attr-defined]
        for channel in channels:
            channel.transport.abortConnection()
        await DeferredList([c.lost for c in channels])
