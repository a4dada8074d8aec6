"""Client side of the interop harness: HTTP on a thread, a client-API user, polling.

HTTP is plain ``urllib`` on a thread (``deferToThread``): no connection pool is
left in the reactor for trial to complain about. ``ClientUser`` speaks the
spec's client-server API, so the same calls drive Synapse and matrixfed.
``wait_for`` polls until a condition holds, with a bound, and fails naming what
it waited for and the last thing it saw.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

T = TypeVar("T")

# One client-API request (sync long-polls are shorter than this).
HTTP_TIMEOUT_S = 60.0
# Federation is asynchronous: how long to wait for an event to cross over.
CONVERGE_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.25


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]


async def wait_for(
    what: str,
    check: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = CONVERGE_TIMEOUT_S,
) -> T:
    """Poll ``check`` until it returns something other than None (or False).

    Raises:
        AssertionError: naming ``what`` and the last value seen, on timeout.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = await check()
        except HttpError as e:
            result, last = None, e
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last}")
        await sleep(POLL_INTERVAL_S)


# ---------------------------------------------------------------------------
# HTTP


class HttpError(Exception):
    """A non-2xx answer: keeps the request and the response for the report."""

    def __init__(self, method: str, url: str, code: int, body: Any) -> None:
        super().__init__(f"{method} {url} -> {code} {json.dumps(body)[:800]}")
        self.method = method
        self.url = url
        self.code = code
        self.body = body

    @property
    def errcode(self) -> str | None:
        return self.body.get("errcode") if isinstance(self.body, dict) else None


def _request_sync(
    method: str,
    url: str,
    body: Any,
    headers: Mapping[str, str],
    context: ssl.SSLContext | None,
    timeout: float,
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    for k, v in headers.items():
        req.add_header(k, v)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            raw = resp.read()
            code = resp.status
    except urllib.error.HTTPError as e:
        raw = e.read()
        code = e.code
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode("utf-8", "replace")
    return code, parsed


async def http_json(
    method: str,
    url: str,
    body: Any = None,
    *,
    headers: Mapping[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = HTTP_TIMEOUT_S,
) -> tuple[int, Any]:
    """One HTTP request on a thread: (status, parsed JSON). Connection errors raise."""
    result: tuple[int, Any] = await deferToThread(
        _request_sync, method, url, body, dict(headers or {}), context, timeout
    )
    return result


async def http_ok(method: str, url: str, body: Any = None, **kw: Any) -> Any:
    """Like ``http_json`` but raises ``HttpError`` unless the status is 2xx."""
    code, parsed = await http_json(method, url, body, **kw)
    if not 200 <= code < 300:
        raise HttpError(method, url, code, parsed)
    return parsed


def q(value: str) -> str:
    """Percent-encode one path segment (room IDs, aliases, user IDs)."""
    return urllib.parse.quote(value, safe="")


_txn_counter = itertools.count()


class ClientUser:
    """A logged-in user on either server, driven through the client-server API."""

    def __init__(self, base_url: str, user_id: str, access_token: str) -> None:
        self.base_url = base_url
        self.user_id = user_id
        self.access_token = access_token

    def __repr__(self) -> str:
        return f"<ClientUser {self.user_id}>"

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        args: Mapping[str, str | Sequence[str]] | None = None,
        *,
        timeout: float = HTTP_TIMEOUT_S,
    ) -> Any:
        url = self.base_url + path
        if args:
            url += "?" + urllib.parse.urlencode(args, doseq=True)
        return await http_ok(
            method,
            url,
            body,
            headers={"Authorization": f"Bearer {self.access_token}"},
            timeout=timeout,
        )

    async def create_room(self, **body: Any) -> str:
        result = await self.call("POST", "/_matrix/client/v3/createRoom", body)
        room_id: str = result["room_id"]
        return room_id

    async def join(self, room_id_or_alias: str, via: Sequence[str] = ()) -> str:
        args = {"server_name": list(via), "via": list(via)} if via else None
        result = await self.call("POST", f"/_matrix/client/v3/join/{q(room_id_or_alias)}", {}, args)
        room_id: str = result["room_id"]
        return room_id

    async def send(self, room_id: str, body: str, event_type: str = "m.room.message") -> str:
        txn = f"t{os.getpid()}.{next(_txn_counter)}"
        result = await self.call(
            "PUT",
            f"/_matrix/client/v3/rooms/{q(room_id)}/send/{q(event_type)}/{txn}",
            {"msgtype": "m.text", "body": body},
        )
        event_id: str = result["event_id"]
        return event_id

    async def set_state(
        self, room_id: str, event_type: str, content: Mapping[str, Any], state_key: str = ""
    ) -> str:
        result = await self.call(
            "PUT",
            f"/_matrix/client/v3/rooms/{q(room_id)}/state/{q(event_type)}/{q(state_key)}",
            dict(content),
        )
        event_id: str = result["event_id"]
        return event_id

    async def get_state_event(self, room_id: str, event_type: str, state_key: str = "") -> Any:
        return await self.call(
            "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/state/{q(event_type)}/{q(state_key)}"
        )

    async def state(self, room_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.call(
            "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/state"
        )
        return result

    async def messages(
        self, room_id: str, *, direction: str = "b", limit: int = 100
    ) -> list[dict[str, Any]]:
        result = await self.call(
            "GET",
            f"/_matrix/client/v3/rooms/{q(room_id)}/messages",
            args={"dir": direction, "limit": str(limit)},
        )
        chunk: list[dict[str, Any]] = result["chunk"]
        return chunk

    async def sync(self, since: str | None = None, timeout_ms: int = 0) -> Any:
        args = {"timeout": str(timeout_ms)}
        if since:
            args["since"] = since
        return await self.call("GET", "/_matrix/client/v3/sync", args=args)

    async def membership_op(self, op: str, room_id: str, **body: Any) -> None:
        await self.call("POST", f"/_matrix/client/v3/rooms/{q(room_id)}/{op}", body)

    async def invite(self, room_id: str, user_id: str) -> None:
        await self.membership_op("invite", room_id, user_id=user_id)

    async def leave(self, room_id: str) -> None:
        await self.membership_op("leave", room_id)

    async def kick(self, room_id: str, user_id: str, reason: str = "interop") -> None:
        await self.membership_op("kick", room_id, user_id=user_id, reason=reason)

    async def ban(self, room_id: str, user_id: str, reason: str = "interop") -> None:
        await self.membership_op("ban", room_id, user_id=user_id, reason=reason)

    async def resolve_alias(self, alias: str) -> Any:
        return await self.call("GET", f"/_matrix/client/v3/directory/room/{q(alias)}")

    async def profile(self, user_id: str) -> Any:
        return await self.call("GET", f"/_matrix/client/v3/profile/{q(user_id)}")

    async def set_displayname(self, name: str) -> None:
        await self.call(
            "PUT",
            f"/_matrix/client/v3/profile/{q(self.user_id)}/displayname",
            {"displayname": name},
        )

    async def membership(self, room_id: str, user_id: str) -> str | None:
        """The user's current membership as this server sees it (None: no member event)."""
        try:
            content = await self.get_state_event(room_id, "m.room.member", user_id)
        except HttpError as e:
            if e.code == 404:
                return None
            raise
        m: str = content.get("membership")
        return m


# ---------------------------------------------------------------------------
# Room observations shared by the scenarios


async def wait_membership(
    observer: ClientUser, room_id: str, user_id: str, membership: str | None
) -> None:
    """Wait until ``observer``'s server shows ``user_id`` with ``membership``."""

    async def check() -> bool:
        return await observer.membership(room_id, user_id) == membership

    await wait_for(f"{observer.user_id} to see {user_id} {membership} in {room_id}", check)


def state_summary(events: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], Any]:
    """A /state answer as (type, state_key) -> (event_id, sender, content)."""
    return {(e["type"], e["state_key"]): (e["event_id"], e["sender"], e["content"]) for e in events}


async def wait_same_state(room_id: str, observers: Sequence[ClientUser]) -> dict[Any, Any]:
    """Wait until every observer's server reports the same current state of the room.

    Returns:
        The common state summary (see ``state_summary``).

    Raises:
        AssertionError: on timeout, with the entries where the servers differ.
    """
    last: list[dict[Any, Any]] = []

    async def check() -> dict[Any, Any] | None:
        summaries = [state_summary(await o.state(room_id)) for o in observers]
        last[:] = summaries
        return summaries[0] if all(s == summaries[0] for s in summaries[1:]) else None

    try:
        return await wait_for(f"the same state of {room_id} on every server", check)
    except AssertionError:
        if not last:
            raise
        keys = set().union(*last)
        diff = {
            k: [s.get(k, (None,))[0] for s in last]
            for k in sorted(keys)
            if len({json.dumps(s.get(k), sort_keys=True) for s in last}) > 1
        }
        names = [o.user_id for o in observers]
        raise AssertionError(f"state of {room_id} differs ({names}): {diff}") from None


async def timeline_bodies(observer: ClientUser, room_id: str) -> list[str]:
    """Bodies of the m.room.message events ``observer`` sees, oldest first."""
    chunk = await observer.messages(room_id, direction="b", limit=200)
    return [
        e["content"].get("body")
        for e in reversed(chunk)
        if e.get("type") == "m.room.message" and "body" in e.get("content", {})
    ]


async def wait_bodies(observer: ClientUser, room_id: str, expected: Sequence[str]) -> None:
    """Wait until ``observer`` sees exactly ``expected`` messages, in that order."""
    seen: list[list[str]] = [[]]

    async def check() -> bool:
        seen[0] = await timeline_bodies(observer, room_id)
        return seen[0] == list(expected)

    try:
        await wait_for(f"{observer.user_id} to see {list(expected)}", check)
    except AssertionError:
        raise AssertionError(
            f"{observer.user_id} sees {seen[0]} in {room_id}, expected {list(expected)}"
        ) from None


async def wait_invited(user: ClientUser, room_id: str) -> None:
    """Wait until ``user``'s /sync lists an invite to ``room_id`` (what a client shows)."""

    async def check() -> bool:
        result = await user.sync()
        return room_id in result.get("rooms", {}).get("invite", {})

    await wait_for(f"{user.user_id} to be shown the invite to {room_id}", check)
