"""``matrixfed`` subcommands that drive a running server through its client API.

``join ROOM``, ``rooms``, ``state ROOM``, ``send ROOM TEXT`` talk to
``--url`` (default ``http://127.0.0.1:8008``, the default client listener) with
an access token from ``--token`` or ``$MATRIXFED_TOKEN`` (``register-user``
prints one). ROOM is a room ID or an alias (resolved with the directory).

``join`` shows a progress bar on stderr: the join request runs in a worker
thread while the main thread polls the server's join progress endpoint
(``/_matrix/client/unstable/org.matrixfed/join_progress``) and redraws.

How it fails: an error answer is printed as ``matrixfed: <errcode>: <error>``
and the command exits 1; an unreachable server likewise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, TextIO

from matrixfed.config import ConfigError

__all__ = ["ClientApiClient", "add_client_commands", "render_progress"]

DEFAULT_URL = "http://127.0.0.1:8008"
TOKEN_ENV = "MATRIXFED_TOKEN"
# Seconds to wait for one client API answer; a join of a huge room takes minutes.
REQUEST_TIMEOUT_S = 60.0
JOIN_TIMEOUT_S = 3600.0
# How often the join progress is polled and the bar redrawn.
PROGRESS_POLL_S = 0.25
PROGRESS_BAR_WIDTH = 30
PROGRESS_PATH = "/_matrix/client/unstable/org.matrixfed/join_progress"


class ClientApiClient:
    """A tiny blocking client of the client-server API (stdlib HTTP)."""

    def __init__(self, base_url: str, token: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, Any] | None = None,
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> tuple[int, Any]:
        """(status, parsed JSON body). Raises ConfigError when unreachable."""
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, _json(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, _json(e.read())
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ConfigError(f"cannot reach {self.base_url}: {reason}") from None

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        """Like ``request`` but an error answer raises ConfigError (one line)."""
        code, answer = self.request(method, path, body, **kwargs)
        if code != 200:
            if isinstance(answer, dict) and "errcode" in answer:
                raise ConfigError(f"{answer['errcode']}: {answer.get('error', '')}")
            raise ConfigError(f"HTTP {code} from {self.base_url}{path}")
        return answer

    def resolve_room(self, room: str) -> str:
        """A room ID for a room ID or alias."""
        if room.startswith("#"):
            answer = self.call("GET", "/_matrix/client/v3/directory/room/" + _q(room))
            room_id: str = answer["room_id"]
            return room_id
        return room


def _json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _client(args: argparse.Namespace) -> ClientApiClient:
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise ConfigError(f"an access token is needed: --token or ${TOKEN_ENV}")
    return ClientApiClient(args.url, token)


def render_progress(report: dict[str, Any], width: int = PROGRESS_BAR_WIDTH) -> str:
    """One line of progress bar for a join progress report."""
    stage = str(report.get("stage", "?"))
    done = int(report.get("done", 0) or 0)
    total = int(report.get("total", 0) or 0)
    fraction = min(1.0, done / total) if total > 0 else 0.0
    filled = int(round(fraction * width))
    bar = "#" * filled + "-" * (width - filled)
    return f"[{bar}] {stage:<10} {done}/{total}"


def _join(args: argparse.Namespace) -> int:
    client = _client(args)
    out: TextIO = sys.stderr
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["answer"] = client.request(
                "POST",
                "/_matrix/client/v3/join/" + _q(args.room),
                {},
                query={"via": args.via} if args.via else None,
                timeout=JOIN_TIMEOUT_S,
            )
        except ConfigError as e:
            result["error"] = e

    worker = threading.Thread(target=run, name="matrixfed-join", daemon=True)
    worker.start()
    drawn = False
    while worker.is_alive():
        worker.join(PROGRESS_POLL_S)
        if not worker.is_alive() or args.no_progress:
            continue
        try:
            code, report = client.request("GET", PROGRESS_PATH, query={"room": args.room})
        except ConfigError:
            continue
        if code == 200 and isinstance(report, dict):
            out.write("\r" + render_progress(report))
            out.flush()
            drawn = True
    if drawn:
        out.write("\r" + render_progress({"stage": "joined", "done": 1, "total": 1}) + "\n")
    if "error" in result:
        raise result["error"]
    code, answer = result["answer"]
    if code != 200:
        if isinstance(answer, dict) and "errcode" in answer:
            raise ConfigError(f"{answer['errcode']}: {answer.get('error', '')}")
        raise ConfigError(f"HTTP {code}")
    print(answer["room_id"])
    return 0


def _rooms(args: argparse.Namespace) -> int:
    client = _client(args)
    joined = client.call("GET", "/_matrix/client/v3/joined_rooms")["joined_rooms"]
    for room_id in joined:
        code, name = client.request(
            "GET", f"/_matrix/client/v3/rooms/{_q(room_id)}/state/m.room.name"
        )
        label = name.get("name") if code == 200 and isinstance(name, dict) else None
        print(f"{room_id}\t{label}" if label else room_id)
    return 0


def _state(args: argparse.Namespace) -> int:
    client = _client(args)
    room_id = client.resolve_room(args.room)
    events = client.call("GET", f"/_matrix/client/v3/rooms/{_q(room_id)}/state")
    if args.json:
        print(json.dumps(events, indent=2, sort_keys=True))
        return 0
    for event in sorted(events, key=lambda e: (e["type"], e.get("state_key", ""))):
        content = json.dumps(event["content"], sort_keys=True, ensure_ascii=False)
        print(f"{event['type']}\t{event.get('state_key', '')}\t{content}")
    return 0


def _send(args: argparse.Namespace) -> int:
    client = _client(args)
    room_id = client.resolve_room(args.room)
    txn = uuid.uuid4().hex
    answer = client.call(
        "PUT",
        f"/_matrix/client/v3/rooms/{_q(room_id)}/send/m.room.message/{txn}",
        {"msgtype": "m.text", "body": args.text},
    )
    print(answer["event_id"])
    return 0


def _add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=DEFAULT_URL, help="the server's client API (default: %(default)s)"
    )
    parser.add_argument("--token", help=f"access token (default: ${TOKEN_ENV})")


def add_client_commands(sub: Any) -> None:
    """Add join, rooms, state and send to the ``matrixfed`` subparsers."""
    join = sub.add_parser(
        "join",
        help="join a room (shows progress)",
        description="Join a room by ID or alias through a running server, with a progress "
        "bar for large rooms.",
    )
    join.add_argument("room", metavar="ROOM", help="room ID or #alias:server")
    join.add_argument(
        "--via", action="append", default=[], help="a server to join through (repeatable)"
    )
    join.add_argument("--no-progress", action="store_true", help="do not draw a progress bar")
    _add_connection_args(join)
    join.set_defaults(func=_join)

    rooms = sub.add_parser(
        "rooms", help="list joined rooms", description="List the rooms the user is joined to."
    )
    _add_connection_args(rooms)
    rooms.set_defaults(func=_rooms)

    state = sub.add_parser(
        "state",
        help="show a room's current state",
        description="Print the current state of a room: type, state key, content.",
    )
    state.add_argument("room", metavar="ROOM", help="room ID or #alias:server")
    state.add_argument("--json", action="store_true", help="print the events as JSON")
    _add_connection_args(state)
    state.set_defaults(func=_state)

    send = sub.add_parser(
        "send", help="send a text message", description="Send an m.text message to a room."
    )
    send.add_argument("room", metavar="ROOM", help="room ID or #alias:server")
    send.add_argument("text", metavar="TEXT", help="the message")
    _add_connection_args(send)
    send.set_defaults(func=_send)
