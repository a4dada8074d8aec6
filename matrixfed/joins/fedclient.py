"""``JoinFederationClient`` over HTTPS: the join/leave endpoints of the federation API.

Wraps the signed ``FederationClient`` (``get_json``/``put_json``). It adds
what is specific to these endpoints: the ``ver=`` list of make_join, the v2
send_join/send_leave with a fallback to v1 when an old server does not know
v2 (404 or 405 with ``M_UNRECOGNIZED``, or a bare 404/405 without errcode),
v1's ``[200, {...}]`` answer unwrapped, the big size limit and long timeout
of send_join and /state, and shape checks that turn a malformed answer into a
``RemoteError`` (so the coordinator moves to the next server).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from matrixfed.errors import RemoteError
from matrixfed.federation.client import MAX_SEND_JOIN_RESPONSE_SIZE, QueryArgs, federation_path
from matrixfed.joins.api import (
    MAKE_JOIN_TIMEOUT_SECONDS,
    SEND_JOIN_TIMEOUT_SECONDS,
    STATE_FETCH_TIMEOUT_SECONDS,
)

V1 = "/_matrix/federation/v1"
V2 = "/_matrix/federation/v2"


class SignedJsonClient(Protocol):
    """The subset of ``FederationClient`` used here."""

    async def get_json(
        self,
        destination: str,
        path: str,
        args: QueryArgs | None = None,
        *,
        timeout: float | None = None,
        ignore_backoff: bool = False,
        max_size: int | None = None,
    ) -> Any: ...

    async def put_json(
        self,
        destination: str,
        path: str,
        data: Any,
        args: QueryArgs | None = None,
        *,
        timeout: float | None = None,
        ignore_backoff: bool = False,
        max_size: int | None = None,
    ) -> Any: ...


def _v2_unknown(e: RemoteError) -> bool:
    """An old server that has no v2 of the endpoint (spec: fall back to v1)."""
    return e.code in (404, 405) and e.errcode in ("M_UNRECOGNIZED", None)


def _object(server: str, what: str, body: Any) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise RemoteError(
            server, f"{what}: answer is not a JSON object", reachable=True, transient=False
        )
    return body


def _unwrap_v1(server: str, what: str, body: Any) -> Mapping[str, Any]:
    # v1 send_join/send_leave answer [200, {...}] (a historical accident).
    if isinstance(body, list) and len(body) == 2 and isinstance(body[1], dict):
        return body[1]
    return _object(server, what, body)


class FederationJoinClient:
    """Implements ``matrixfed.joins.api.JoinFederationClient`` over HTTPS."""

    def __init__(self, *, client: SignedJsonClient) -> None:
        """Args:
        client: the signed federation client.
        """
        self._client = client

    async def query_directory(self, server: str, room_alias: str) -> tuple[str, list[str]]:
        body = _object(
            server,
            "query/directory",
            await self._client.get_json(
                server,
                f"{V1}/query/directory",
                {"room_alias": room_alias},
                timeout=MAKE_JOIN_TIMEOUT_SECONDS,
            ),
        )
        room_id = body.get("room_id")
        servers = body.get("servers", [])
        if not isinstance(room_id, str) or not isinstance(servers, list):
            raise RemoteError(
                server, "query/directory: answer lacks room_id", reachable=True, transient=False
            )
        return room_id, [s for s in servers if isinstance(s, str)]

    async def make_join(
        self, server: str, room_id: str, user_id: str, versions: Sequence[str]
    ) -> Mapping[str, Any]:
        path = federation_path(V1 + "/make_join/{}/{}", room_id, user_id)
        body = await self._client.get_json(
            server, path, {"ver": list(versions)}, timeout=MAKE_JOIN_TIMEOUT_SECONDS
        )
        return _object(server, "make_join", body)

    async def send_join(
        self,
        server: str,
        room_id: str,
        event_id: str,
        pdu: Mapping[str, Any],
        *,
        omit_members: bool,
    ) -> Mapping[str, Any]:
        args: dict[str, str] = {"omit_members": "true"} if omit_members else {}
        try:
            body = await self._client.put_json(
                server,
                federation_path(V2 + "/send_join/{}/{}", room_id, event_id),
                pdu,
                args,
                timeout=SEND_JOIN_TIMEOUT_SECONDS,
                max_size=MAX_SEND_JOIN_RESPONSE_SIZE,
            )
            return _object(server, "send_join", body)
        except RemoteError as e:
            if not _v2_unknown(e):
                raise
        body = await self._client.put_json(
            server,
            federation_path(V1 + "/send_join/{}/{}", room_id, event_id),
            pdu,
            timeout=SEND_JOIN_TIMEOUT_SECONDS,
            max_size=MAX_SEND_JOIN_RESPONSE_SIZE,
        )
        return _unwrap_v1(server, "send_join (v1)", body)

    async def make_leave(self, server: str, room_id: str, user_id: str) -> Mapping[str, Any]:
        path = federation_path(V1 + "/make_leave/{}/{}", room_id, user_id)
        body = await self._client.get_json(server, path, timeout=MAKE_JOIN_TIMEOUT_SECONDS)
        return _object(server, "make_leave", body)

    async def send_leave(
        self, server: str, room_id: str, event_id: str, pdu: Mapping[str, Any]
    ) -> None:
        try:
            await self._client.put_json(
                server,
                federation_path(V2 + "/send_leave/{}/{}", room_id, event_id),
                pdu,
                timeout=MAKE_JOIN_TIMEOUT_SECONDS,
            )
            return
        except RemoteError as e:
            if not _v2_unknown(e):
                raise
        await self._client.put_json(
            server,
            federation_path(V1 + "/send_leave/{}/{}", room_id, event_id),
            pdu,
            timeout=MAKE_JOIN_TIMEOUT_SECONDS,
        )

    async def get_state_ids(self, server: str, room_id: str, event_id: str) -> Mapping[str, Any]:
        body = await self._client.get_json(
            server,
            federation_path(V1 + "/state_ids/{}", room_id),
            {"event_id": event_id},
            timeout=STATE_FETCH_TIMEOUT_SECONDS,
            max_size=MAX_SEND_JOIN_RESPONSE_SIZE,
        )
        return _object(server, "state_ids", body)

    async def get_state(self, server: str, room_id: str, event_id: str) -> Mapping[str, Any]:
        body = await self._client.get_json(
            server,
            federation_path(V1 + "/state/{}", room_id),
            {"event_id": event_id},
            timeout=STATE_FETCH_TIMEOUT_SECONDS,
            max_size=MAX_SEND_JOIN_RESPONSE_SIZE,
        )
        return _object(server, "state", body)

    async def get_event(self, server: str, event_id: str) -> Mapping[str, Any]:
        body = _object(
            server,
            "event",
            await self._client.get_json(
                server,
                federation_path(V1 + "/event/{}", event_id),
                timeout=MAKE_JOIN_TIMEOUT_SECONDS,
            ),
        )
        pdus = body.get("pdus")
        if not isinstance(pdus, list) or len(pdus) != 1 or not isinstance(pdus[0], dict):
            raise RemoteError(
                server, "event: answer does not hold one PDU", reachable=True, transient=False
            )
        pdu: Mapping[str, Any] = pdus[0]
        return pdu
