"""FederationJoinClient: the paths, parameters, limits and the v1 fallback."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from matrixfed.errors import RemoteError
from matrixfed.federation.client import MAX_SEND_JOIN_RESPONSE_SIZE
from matrixfed.joins.api import SEND_JOIN_TIMEOUT_SECONDS
from matrixfed.joins.fedclient import FederationJoinClient

ROOM = "!room:resident.example"
USER = "@bob:ours.example"
EVENT = "$abc"
BODY = {"state": [], "auth_chain": [], "origin": "resident.example"}


def _unrecognized(code: int = 404, errcode: str | None = "M_UNRECOGNIZED") -> RemoteError:
    return RemoteError(
        "resident.example",
        f"HTTP {code}",
        reachable=True,
        transient=False,
        code=code,
        errcode=errcode,
    )


class ScriptedClient:
    """Answers by (method, path prefix); records every call."""

    def __init__(self, answers: dict[tuple[str, str], Any]) -> None:
        self.answers = answers
        self.calls: list[dict[str, Any]] = []

    def _answer(self, method: str, path: str) -> Any:
        for (m, prefix), answer in self.answers.items():
            if m == method and path.startswith(prefix):
                if isinstance(answer, Exception):
                    raise answer
                return answer
        raise _unrecognized()

    async def get_json(self, destination: str, path: str, args: Any = None, **kw: Any) -> Any:
        self.calls.append({"method": "GET", "path": path, "args": args, **kw})
        return self._answer("GET", path)

    async def put_json(
        self, destination: str, path: str, data: Any, args: Any = None, **kw: Any
    ) -> Any:
        self.calls.append({"method": "PUT", "path": path, "args": args, "data": data, **kw})
        return self._answer("PUT", path)


class SendJoinTests(unittest.TestCase):
    async def test_v2_with_omit_members_big_limit_long_timeout(self) -> None:
        client = ScriptedClient({("PUT", "/_matrix/federation/v2/send_join/"): BODY})
        fed = FederationJoinClient(client=client)
        body = await fed.send_join("resident.example", ROOM, EVENT, {"x": 1}, omit_members=True)
        self.assertEqual(body, BODY)
        (call,) = client.calls
        self.assertEqual(
            call["path"], "/_matrix/federation/v2/send_join/%21room%3Aresident.example/%24abc"
        )
        self.assertEqual(call["args"], {"omit_members": "true"})
        self.assertEqual(call["max_size"], MAX_SEND_JOIN_RESPONSE_SIZE)
        self.assertEqual(call["timeout"], SEND_JOIN_TIMEOUT_SECONDS)

    async def test_falls_back_to_v1_and_unwraps_its_answer(self) -> None:
        for error in (_unrecognized(404), _unrecognized(405), _unrecognized(404, None)):
            client = ScriptedClient(
                {
                    ("PUT", "/_matrix/federation/v2/send_join/"): error,
                    ("PUT", "/_matrix/federation/v1/send_join/"): [200, BODY],
                }
            )
            fed = FederationJoinClient(client=client)
            body = await fed.send_join("resident.example", ROOM, EVENT, {}, omit_members=False)
            self.assertEqual(body, BODY)
            self.assertEqual([c["path"].split("/")[3] for c in client.calls], ["v2", "v1"])
            self.assertEqual(client.calls[1]["max_size"], MAX_SEND_JOIN_RESPONSE_SIZE)

    async def test_other_errors_do_not_fall_back(self) -> None:
        forbidden = RemoteError(
            "resident.example",
            "HTTP 403",
            reachable=True,
            transient=False,
            code=403,
            errcode="M_FORBIDDEN",
        )
        client = ScriptedClient({("PUT", "/_matrix/federation/v2/send_join/"): forbidden})
        fed = FederationJoinClient(client=client)
        with self.assertRaises(RemoteError) as caught:
            await fed.send_join("resident.example", ROOM, EVENT, {}, omit_members=False)
        self.assertEqual(caught.exception.code, 403)
        self.assertEqual(len(client.calls), 1)

    async def test_non_object_answer_is_a_remote_error(self) -> None:
        client = ScriptedClient({("PUT", "/_matrix/federation/v2/send_join/"): "garbage"})
        fed = FederationJoinClient(client=client)
        with self.assertRaises(RemoteError):
            await fed.send_join("resident.example", ROOM, EVENT, {}, omit_members=False)


class OtherCallsTests(unittest.TestCase):
    async def test_make_join_asks_for_every_version(self) -> None:
        client = ScriptedClient({("GET", "/_matrix/federation/v1/make_join/"): {"event": {}}})
        fed = FederationJoinClient(client=client)
        await fed.make_join("resident.example", ROOM, USER, ["1", "2", "12"])
        (call,) = client.calls
        self.assertEqual(
            call["path"],
            "/_matrix/federation/v1/make_join/%21room%3Aresident.example/%40bob%3Aours.example",
        )
        self.assertEqual(call["args"], {"ver": ["1", "2", "12"]})

    async def test_send_leave_falls_back_to_v1(self) -> None:
        client = ScriptedClient({("PUT", "/_matrix/federation/v1/send_leave/"): [200, {}]})
        fed = FederationJoinClient(client=client)
        await fed.send_leave("resident.example", ROOM, EVENT, {})
        self.assertEqual([c["path"].split("/")[3] for c in client.calls], ["v2", "v1"])

    async def test_query_directory(self) -> None:
        client = ScriptedClient(
            {("GET", "/_matrix/federation/v1/query/directory"): {"room_id": ROOM, "servers": ["a"]}}
        )
        fed = FederationJoinClient(client=client)
        self.assertEqual(
            await fed.query_directory("resident.example", "#a:resident.example"), (ROOM, ["a"])
        )
        self.assertEqual(client.calls[0]["args"], {"room_alias": "#a:resident.example"})

    async def test_query_directory_without_room_id(self) -> None:
        client = ScriptedClient({("GET", "/_matrix/federation/v1/query/directory"): {}})
        fed = FederationJoinClient(client=client)
        with self.assertRaises(RemoteError):
            await fed.query_directory("resident.example", "#a:resident.example")

    async def test_get_event_takes_the_one_pdu(self) -> None:
        client = ScriptedClient(
            {("GET", "/_matrix/federation/v1/event/"): {"origin": "r", "pdus": [{"a": 1}]}}
        )
        fed = FederationJoinClient(client=client)
        self.assertEqual(await fed.get_event("resident.example", EVENT), {"a": 1})
        client.answers[("GET", "/_matrix/federation/v1/event/")] = {"pdus": []}
        with self.assertRaises(RemoteError):
            await fed.get_event("resident.example", EVENT)
