"""A scriptable fake remote homeserver: the test double of "another server".

``FakeRemote`` listens with real TLS on ``127.0.0.1`` (port 0, certificate from
a test CA), so its server name is ``127.0.0.1:<port>``. It has its own ed25519
signing key (``signing_key_for(name)`` from the auth room builder, so events
built with ``RemoteRoom``/``RoomBuilder`` for users ``@x:<name>`` carry valid
signatures) and serves a properly self-signed ``/_matrix/key/v2/server``.

Everything else is scripted by the test::

    remote = await FakeRemote.start(self, ca)          # stopped in cleanup
    remote.on("PUT", "/_matrix/federation/v1/send/{txnId}",
              lambda req: Reply(200, {"pdus": {}}))
    remote.on("GET", "/_matrix/federation/v1/state_ids/{roomId}", Hang())
    remote.on("GET", "/_matrix/federation/v1/event/{eventId}", Garbage(b"<html>"))
    remote.on("GET", "/_matrix/federation/v1/version", CloseConnection())
    remote.trust(server_name, verify_keys)               # then check requests' X-Matrix
    await remote.client.put_json(dest, path, body)       # signed requests to a real server
    await remote.send_transaction(dest, pdus=[...])

A handler is a ``Reply``, a misbehaviour (``Hang``, ``Garbage``,
``CloseConnection``) or a callable taking the ``ReceivedRequest`` and returning
one of those (or an awaitable of one). Unscripted paths answer 404
``M_UNRECOGNIZED``. Every request is recorded in ``remote.requests`` (and can be
awaited with ``remote.wait_for``); when the origin's keys were given with
``trust`` the X-Matrix signature is verified and the result recorded in
``ReceivedRequest.auth_error`` (None when valid); with ``require_auth=True``
an unverifiable request is answered 401 like a real server would.
"""

from __future__ import annotations

import inspect
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
from nacl.signing import SigningKey
from signedjson.key import encode_verify_key_base64
from signedjson.sign import sign_json
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.ssl import PrivateCertificate
from twisted.logger import Logger
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from matrixfed.events.hashing import add_content_hash, compute_event_id
from matrixfed.events.model import Event
from matrixfed.events.redaction import redact
from matrixfed.events.room_versions import KNOWN_ROOM_VERSIONS, EventFormat, RoomVersion
from matrixfed.federation.client import FederationClient, build_federation_client, federation_path
from matrixfed.federation.xmatrix import (
    XMatrixError,
    parse_xmatrix_header,
    verify_request_signature,
)
from tests.auth.roombuilder import RoomBuilder, signing_key_for
from tests.federation.fakes import FakeDNS, TestCA
from tests.federation.loopback import TrackingChannel

reactor: Any = _reactor
log = Logger()

__all__ = [
    "CloseConnection",
    "FakeRemote",
    "Garbage",
    "Hang",
    "ReceivedRequest",
    "RemoteRoom",
    "Reply",
    "sign_pdu_as",
]

# How long the key response published by the fake stays valid: a day, like a
# real server's default.
KEY_VALIDITY_MS = 24 * 3600 * 1000


# --- scripted behaviours ------------------------------------------------------


@attrs.frozen
class Reply:
    """Answer with ``status`` and ``body`` serialised as JSON (or raw bytes)."""

    status: int = 200
    body: Any = attrs.field(factory=dict)
    content_type: str = "application/json"


@attrs.frozen
class Hang:
    """Never answer (the connection stays open until the client gives up)."""


@attrs.frozen
class Garbage:
    """Answer with a body that is not what the protocol expects."""

    body: bytes = b"\x00not json{"
    status: int = 200
    content_type: str = "application/json"


@attrs.frozen
class CloseConnection:
    """Drop the TCP connection without answering."""


Behaviour = Reply | Hang | Garbage | CloseConnection
Handler = Behaviour | Callable[["ReceivedRequest"], "Behaviour | Awaitable[Behaviour]"]


@attrs.define
class ReceivedRequest:
    """One request the fake received.

    Attributes:
        method: e.g. "PUT".
        uri: the raw request target (as signed by X-Matrix).
        path: the decoded path without the query string.
        raw_path: the path as sent (percent-encoded); patterns match this.
        query: query parameters, name -> values.
        path_params: values of the ``{name}`` segments of the matched pattern.
        headers: lower-case header name -> values.
        body: the raw body.
        json: the parsed body (None if empty or not JSON).
        origin: the X-Matrix origin claimed (None without an X-Matrix header).
        auth_error: None when the X-Matrix signature verified against a trusted
            key; otherwise why not ("no key", "unsigned", the verification error).
    """

    method: str
    uri: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, list[str]]
    body: bytes
    json: Any
    raw_path: str = ""
    path_params: dict[str, str] = attrs.field(factory=dict)
    origin: str | None = None
    auth_error: str | None = "unsigned"


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[A-Za-z_]+\})", template)
    regex = "".join(
        f"(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") and p.endswith("}") else re.escape(p)
        for p in parts
    )
    return re.compile(regex + "$")


class _Root(Resource):
    isLeaf = True

    def __init__(self, remote: FakeRemote) -> None:
        super().__init__()
        self._remote = remote

    def render(self, request: Request) -> Any:
        ensureDeferred(self._remote._handle(request))
        return NOT_DONE_YET


class FakeRemote:
    """A fake homeserver on 127.0.0.1 with its own keys; see the module docstring."""

    def __init__(self, ca: TestCA) -> None:
        self.ca = ca
        cert_pem, key_pem = ca.issue("127.0.0.1")
        self._tls_options = PrivateCertificate.loadPEM(key_pem + cert_pem).options()
        self.site = Site(_Root(self), timeout=None)
        self.site.protocol = TrackingChannel  # type: ignore[assignment]
        self.site.channels = set()  # type: ignore[attr-defined]
        self.port: Any = None
        self.server_name = ""
        self.signing_key: SigningKey | None = None
        self.requests: list[ReceivedRequest] = []
        self.require_auth = False
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._trusted: dict[str, dict[str, Any]] = {}
        self._waiters: list[
            tuple[Callable[[ReceivedRequest], bool], Deferred[ReceivedRequest]]
        ] = []
        self._hanging: list[Request] = []
        self._client: FederationClient | None = None
        self._txn_counter = 0

    # -- lifecycle -------------------------------------------------------------

    @classmethod
    async def start(cls, case: unittest.TestCase, ca: TestCA) -> FakeRemote:
        """Listen on 127.0.0.1 port 0; stopped in ``case``'s cleanup."""
        remote = cls(ca)
        await remote.listen()
        case.addCleanup(remote.stop)
        return remote

    async def listen(self) -> None:
        endpoint = SSL4ServerEndpoint(reactor, 0, self._tls_options, interface="127.0.0.1")
        self.port = await endpoint.listen(self.site)
        self.server_name = f"127.0.0.1:{self.port.getHost().port}"
        self.signing_key = signing_key_for(self.server_name)

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        for request in self._hanging:
            if request.channel is not None and request.channel.transport is not None:
                request.channel.transport.abortConnection()
        self._hanging.clear()
        if self.port is not None:
            await self.port.stopListening()
            self.port = None
        channels = list(self.site.channels)  # type: ignore[attr-defined]
        for channel in channels:
            channel.transport.abortConnection()
        await DeferredList([c.lost for c in channels])

    # -- keys --------------------------------------------------------------------

    @property
    def key_id(self) -> str:
        assert self.signing_key is not None
        return f"ed25519:{self.signing_key.version}"  # type: ignore[attr-defined]

    def key_response(self) -> dict[str, Any]:
        """Our self-signed ``/_matrix/key/v2/server`` body."""
        assert self.signing_key is not None
        body: dict[str, Any] = {
            "server_name": self.server_name,
            "valid_until_ts": int(time.time() * 1000) + KEY_VALIDITY_MS,
            "verify_keys": {
                self.key_id: {"key": encode_verify_key_base64(self.signing_key.verify_key)}
            },
            "old_verify_keys": {},
        }
        return sign_json(body, self.server_name, self.signing_key)

    def trust(self, server_name: str, verify_keys: Mapping[str, Any]) -> None:
        """Verify X-Matrix requests from ``server_name`` with these keys (key_id -> key)."""
        self._trusted[server_name] = dict(verify_keys)

    # -- scripting ----------------------------------------------------------------

    def on(self, method: str, path_template: str, handler: Handler) -> None:
        """Script the answer to ``method`` on paths matching ``path_template``.

        Later registrations for the same pattern win over earlier ones.
        """
        self._routes.insert(0, (method.upper(), _compile(path_template), handler))

    def received(self, method: str | None = None, path_prefix: str = "") -> list[ReceivedRequest]:
        """Recorded requests, filtered by method and path prefix."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and r.path.startswith(path_prefix)
        ]

    def wait_for(
        self, predicate: Callable[[ReceivedRequest], bool] | str, *, count: int = 1
    ) -> Deferred[ReceivedRequest]:
        """Fires with the ``count``-th request matching ``predicate`` (a path prefix
        or a function), including requests already received."""
        match: Callable[[ReceivedRequest], bool]
        if isinstance(predicate, str):
            prefix = predicate

            def match(r: ReceivedRequest) -> bool:
                return r.path.startswith(prefix)
        else:
            match = predicate
        seen = [r for r in self.requests if match(r)]
        d: Deferred[ReceivedRequest] = Deferred()
        if len(seen) >= count:
            d.callback(seen[count - 1])
            return d
        remaining = count - len(seen)

        def counting(r: ReceivedRequest) -> bool:
            nonlocal remaining
            if match(r):
                remaining -= 1
            return remaining == 0

        self._waiters.append((counting, d))
        return d

    # -- serving -------------------------------------------------------------------

    def _record(self, request: Request) -> ReceivedRequest:
        uri = request.uri.decode("utf-8", "replace")
        split = urlsplit(uri)
        headers = {
            name.decode().lower(): [v.decode("utf-8", "replace") for v in values]
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        assert request.content is not None
        body = request.content.read()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        received = ReceivedRequest(
            method=request.method.decode(),
            uri=uri,
            path=unquote(split.path),
            query=parse_qs(split.query),
            headers=headers,
            body=body,
            json=parsed,
            raw_path=split.path,
        )
        self._check_auth(received)
        return received

    def _check_auth(self, received: ReceivedRequest) -> None:
        values = received.headers.get("authorization", [])
        if not values:
            return
        try:
            auth = parse_xmatrix_header(values[0])
        except XMatrixError as e:
            received.auth_error = str(e)
            return
        received.origin = auth.origin
        key = self._trusted.get(auth.origin, {}).get(auth.key_id)
        if key is None:
            received.auth_error = f"no key {auth.key_id} for {auth.origin}"
            return
        if auth.destination not in (None, self.server_name):
            received.auth_error = f"wrong destination {auth.destination}"
            return
        try:
            verify_request_signature(
                auth,
                key,
                method=received.method,
                uri=received.uri,
                destination=self.server_name,
                content=received.json if received.body else None,
            )
        except XMatrixError as e:
            received.auth_error = str(e)
            return
        received.auth_error = None

    def _route(self, received: ReceivedRequest) -> Handler | None:
        for method, pattern, handler in self._routes:
            if method != received.method:
                continue
            m = pattern.match(received.raw_path)
            if m is not None:
                received.path_params = {k: unquote(v) for k, v in m.groupdict().items()}
                return handler
        if received.method == "GET" and (
            received.path == "/_matrix/key/v2/server"
            or received.path.startswith("/_matrix/key/v2/server/")
        ):
            return Reply(200, self.key_response())
        return None

    async def _handle(self, request: Request) -> None:
        received = self._record(request)
        self.requests.append(received)
        handler = self._route(received)
        for waiter in list(self._waiters):
            if waiter[0](received):
                self._waiters.remove(waiter)
                waiter[1].callback(received)
        behaviour: Behaviour
        if self.require_auth and received.auth_error is not None and handler is not None:
            behaviour = Reply(401, {"errcode": "M_UNAUTHORIZED", "error": received.auth_error})
        elif handler is None:
            behaviour = Reply(404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})
        elif callable(handler):
            try:
                result = handler(received)
                behaviour = await result if inspect.isawaitable(result) else result
            except Exception as e:
                # A broken test handler: answer 500 at once (no client timeout) and
                # log the traceback, which makes trial fail the test.
                log.failure("fake remote handler for {path} failed", path=received.path)
                behaviour = Reply(500, {"errcode": "M_UNKNOWN", "error": repr(e)})
        else:
            behaviour = handler
        self._answer(request, behaviour)

    def _answer(self, request: Request, behaviour: Behaviour) -> None:
        if request.finished or request._disconnected:
            return
        if isinstance(behaviour, Hang):
            self._hanging.append(request)
            return
        if isinstance(behaviour, CloseConnection):
            assert request.channel is not None
            request.channel.transport.abortConnection()  # type: ignore[union-attr]
            return
        if isinstance(behaviour, Garbage):
            body = behaviour.body
        else:
            body = (
                behaviour.body
                if isinstance(behaviour.body, bytes)
                else json.dumps(behaviour.body).encode()
            )
        request.setResponseCode(behaviour.status)
        request.setHeader(b"content-type", behaviour.content_type.encode())
        request.setHeader(b"content-length", str(len(body)).encode())
        request.write(body)
        request.finish()

    # -- acting as a server that sends -------------------------------------------------

    @property
    def client(self) -> FederationClient:
        """A federation client signing as this fake (trusting the test CA)."""
        if self._client is None:
            assert self.signing_key is not None
            self._client = build_federation_client(
                reactor=reactor,
                server_name=self.server_name,
                signing_key=self.signing_key,
                ca_file=self.ca.ca_file,
                allow_private=True,
                dns_resolver=FakeDNS(),
            )
        return self._client

    def next_txn_id(self) -> str:
        self._txn_counter += 1
        return f"fake{self._txn_counter}"

    async def send_transaction(
        self,
        destination: str,
        pdus: Iterable[Event | Mapping[str, Any]] = (),
        edus: Sequence[Mapping[str, Any]] = (),
        *,
        txn_id: str | None = None,
    ) -> Any:
        """PUT /send/{txnId} to ``destination``; returns the parsed answer.

        Raises:
            RemoteError: the destination answered an error or could not be reached.
        """
        txn_id = txn_id or self.next_txn_id()
        body = {
            "origin": self.server_name,
            "origin_server_ts": int(time.time() * 1000),
            "pdus": [dict(p.pdu) if isinstance(p, Event) else dict(p) for p in pdus],
            "edus": [dict(e) for e in edus],
        }
        return await self.client.put_json(
            destination, federation_path("/_matrix/federation/v1/send/{}", txn_id), body
        )


# --- events signed as the fake ---------------------------------------------------------


def sign_pdu_as(pdu: dict[str, Any], rv: RoomVersion, server_name: str) -> Event:
    """Hash and sign ``pdu`` (in place) as ``server_name``; returns the Event.

    For room versions with v1 event IDs the pdu must already carry ``event_id``.
    """
    pdu.pop("signatures", None)
    pdu.pop("hashes", None)
    add_content_hash(pdu)
    signed = sign_json(redact(pdu, rv), server_name, signing_key_for(server_name))
    pdu["signatures"] = signed["signatures"]
    event_id = pdu["event_id"] if rv.event_format is EventFormat.V1 else compute_event_id(pdu, rv)
    return Event(pdu, rv, event_id=event_id)


class RemoteRoom(RoomBuilder):
    """A ``RoomBuilder`` that can also follow a room hosted elsewhere.

    Use ``RoomBuilder`` methods (``standard_room``, ``send``, ``member``,
    ``make``...) to build a room created by the fake; use ``load`` to take the
    state and auth chain of a room the fake joined (from a send_join answer)
    and ``from_template`` to turn a make_join/make_leave/make_knock template
    into a signed event. ``receive`` adds events that arrived over /send.
    """

    def __init__(self, version: str) -> None:
        super().__init__(version)
        # prev_events of the next event when several (see ``follow``)
        self.tips: list[str] = []

    @classmethod
    def of(cls, version: str) -> RemoteRoom:
        if version not in KNOWN_ROOM_VERSIONS:
            raise ValueError(f"unknown room version {version}")
        return cls(version)

    def receive(self, pdu: Mapping[str, Any], *, as_state: bool = True) -> Event:
        """Record a PDU received from elsewhere (trusted) as the room's latest event."""
        event = Event(dict(pdu), self.rv, event_id=self._event_id_of(pdu))
        if as_state:
            return self.apply(event)
        self.events[event.event_id] = event
        return event

    def load(
        self,
        room_id: str,
        state: Iterable[Mapping[str, Any]],
        auth_chain: Iterable[Mapping[str, Any]] = (),
        latest: Mapping[str, Any] | None = None,
    ) -> None:
        """Adopt a room's state (e.g. from send_join) so new events build on it."""
        self.room_id = room_id
        for pdu in auth_chain:
            self.receive(pdu, as_state=False)
        for pdu in state:
            event = self.receive(pdu, as_state=False)
            if event.is_state():
                self.state[event.state_tuple] = event
        if latest is not None:
            self.apply(Event(dict(latest), self.rv, event_id=self._event_id_of(latest)))

    @classmethod
    async def follow(cls, store: Any, room_id: str) -> RemoteRoom:
        """A builder at the current state and forward extremities of a room held in a
        matrixfed ``store`` (in-process), so the fake can add events to that room
        (e.g. its own user's join of a public room, sent over /send)."""
        rv = await store.get_room_version(room_id)
        if rv is None:
            raise ValueError(f"{room_id} is not known to the store")
        room = cls(rv.identifier)
        room.room_id = room_id
        state_ids = await store.get_current_state_ids(room_id)
        extremities = await store.get_forward_extremities(room_id)
        events = await store.get_events([*state_ids.values(), *extremities])
        for event in await store.get_auth_chain(list(events)):
            room.events[event.event_id] = event
        room.events.update(events)
        room.state = {key: events[eid] for key, eid in state_ids.items()}
        room.tips = list(extremities)
        room.last = events[extremities[0]]
        return room

    def make(self, *args: Any, **kwargs: Any) -> Event:
        """``RoomBuilder.make``; after ``follow`` the first event's prev_events are
        all the followed room's forward extremities."""
        if kwargs.get("prev_events") is None and self.tips:
            kwargs["prev_events"] = list(self.tips)
        return super().make(*args, **kwargs)

    def apply(self, event: Event) -> Event:
        self.tips = []
        return super().apply(event)

    def from_template(
        self, template: Mapping[str, Any], server_name: str, **overrides: Any
    ) -> Event:
        """Complete and sign a make_join/make_leave/make_knock ``event`` template."""
        pdu = dict(template)
        pdu.setdefault("origin_server_ts", int(time.time() * 1000))
        if not self.rv.v11_top_level_keys:
            pdu.setdefault("origin", server_name)
        if self.rv.event_format is EventFormat.V1:
            pdu.setdefault("event_id", f"$tpl{int(time.time() * 1e6)}:{server_name}")
        pdu.update(overrides)
        return sign_pdu_as(pdu, self.rv, server_name)

    def _event_id_of(self, pdu: Mapping[str, Any]) -> str:
        if self.rv.event_format is EventFormat.V1:
            event_id: str = pdu["event_id"]
            return event_id
        return compute_event_id(dict(pdu), self.rv)
