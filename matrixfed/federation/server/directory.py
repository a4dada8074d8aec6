"""Directory queries: ``query/directory``, ``query/profile``, ``publicRooms``.

- ``GET /v1/query/directory?room_alias=``: our aliases only; answers the room
  ID and the servers likely to hold the room (us first when we are joined,
  then the other joined servers, then the servers recorded with the alias).
  Unknown alias: 404 ``M_NOT_FOUND``.
- ``GET /v1/query/profile?user_id=[&field=]``: a local user's displayname and
  avatar_url. A user exists if it has a profile row or any membership in a
  room we hold (until the client API keeps users). Unset fields are left
  out. Unknown user or unknown field: 404; a user of another server: 400.
- ``GET``/``POST /v1/publicRooms``: the rooms published in our directory
  that we are still in, largest first (then by room ID), with the public room chunk fields read
  from current state; ``limit``/``since`` paginate with opaque offset tokens;
  ``filter.generic_search_term`` matches name, topic, canonical alias and
  room ID case-insensitively; ``filter.room_types`` as the spec says. We host
  no third-party networks: asking for one yields an empty list.

Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matrixfed.errors import MatrixError, bad_json, invalid_param, not_found
from matrixfed.events.identifiers import domain_of
from matrixfed.federation.server.endpoint import ApiRequest, Endpoint, JsonResponse
from matrixfed.storage.profiles import PROFILE_FIELDS
from matrixfed.storage.store import Store

__all__ = ["DirectoryQueries", "public_room_chunk"]

V1 = "/_matrix/federation/v1"
# publicRooms pages never exceed this many rooms, whatever the limit asked.
MAX_PUBLIC_ROOMS_PAGE = 500
_TOKEN_PREFIX = "o"

# (type, state_key) read for one public room chunk.
_CHUNK_STATE = (
    ("m.room.create", ""),
    ("m.room.name", ""),
    ("m.room.topic", ""),
    ("m.room.canonical_alias", ""),
    ("m.room.avatar", ""),
    ("m.room.join_rules", ""),
    ("m.room.history_visibility", ""),
    ("m.room.guest_access", ""),
)


def _plain_topic(content: Mapping[str, Any]) -> str | None:
    rich = content.get("m.topic")
    if isinstance(rich, dict) and isinstance(rich.get("m.text"), list):
        for entry in rich["m.text"]:
            if (
                isinstance(entry, dict)
                and entry.get("mimetype", "text/plain") == "text/plain"
                and isinstance(entry.get("body"), str)
            ):
                return str(entry["body"])
    topic = content.get("topic")
    return topic if isinstance(topic, str) else None


async def public_room_chunk(store: Store, room_id: str) -> dict[str, Any]:
    """The spec's PublishedRoomsChunk for a room, from its current state."""
    ids = {}
    for key in _CHUNK_STATE:
        eid = await store.get_current_state_event_id(room_id, key[0], key[1])
        if eid is not None:
            ids[key[0]] = eid
    events = await store.get_events(ids.values())
    content = {t: dict(events[e].content) for t, e in ids.items() if e in events}
    joined = await store.get_joined_users(room_id)
    chunk: dict[str, Any] = {
        "room_id": room_id,
        "num_joined_members": len(joined),
        "world_readable": content.get("m.room.history_visibility", {}).get("history_visibility")
        == "world_readable",
        "guest_can_join": content.get("m.room.guest_access", {}).get("guest_access") == "can_join",
        "join_rule": str(content.get("m.room.join_rules", {}).get("join_rule", "public")),
    }
    name = content.get("m.room.name", {}).get("name")
    if isinstance(name, str) and name:
        chunk["name"] = name
    topic = _plain_topic(content.get("m.room.topic", {}))
    if topic:
        chunk["topic"] = topic
    alias = content.get("m.room.canonical_alias", {}).get("alias")
    if isinstance(alias, str) and alias.startswith("#"):
        chunk["canonical_alias"] = alias
    avatar = content.get("m.room.avatar", {}).get("url")
    if isinstance(avatar, str) and avatar.startswith("mxc://"):
        chunk["avatar_url"] = avatar
    room_type = content.get("m.room.create", {}).get("type")
    if isinstance(room_type, str):
        chunk["room_type"] = room_type
    return chunk


def _matches(chunk: Mapping[str, Any], term: str | None, room_types: Sequence[Any] | None) -> bool:
    if room_types is not None and chunk.get("room_type") not in room_types:
        return False
    if term:
        needle = term.casefold()
        haystack = [chunk.get(k) for k in ("name", "topic", "canonical_alias", "room_id")]
        if not any(isinstance(h, str) and needle in h.casefold() for h in haystack):
            return False
    return True


def _parse_since(since: str | None) -> int:
    if since is None or since == "":
        return 0
    if not since.startswith(_TOKEN_PREFIX) or not since[1:].isdigit():
        raise invalid_param("Unknown pagination token")
    return int(since[1:])


class DirectoryQueries:
    """The directory and profile query endpoints."""

    def __init__(self, *, store: Store, server_name: str) -> None:
        """Args:
        store: the store.
        server_name: our server name (which aliases and users are ours).
        """
        self._store = store
        self._server_name = server_name

    def endpoints(self) -> list[Endpoint]:
        """The endpoints, for ``JsonResource.add_endpoints``."""
        return [
            Endpoint("GET", V1 + "/query/directory", self.on_query_directory),
            Endpoint("GET", V1 + "/query/profile", self.on_query_profile),
            Endpoint("GET", V1 + "/publicRooms", self.on_public_rooms_get),
            Endpoint("POST", V1 + "/publicRooms", self.on_public_rooms_post),
        ]

    async def on_query_directory(self, request: ApiRequest) -> JsonResponse:
        """``GET /query/directory?room_alias=``: ``{room_id, servers}``."""
        alias = request.arg("room_alias")
        if alias is None:
            raise MatrixError(400, "M_MISSING_PARAM", "Missing parameter: room_alias")
        if not alias.startswith("#") or domain_of(alias) is None:
            raise invalid_param("room_alias is not a room alias")
        found = (
            await self._store.get_alias(alias) if domain_of(alias) == self._server_name else None
        )
        if found is None:
            raise not_found("Room alias not found.")
        joined = await self._store.get_joined_servers(found.room_id)
        servers: list[str] = []
        if self._server_name in joined:
            servers.append(self._server_name)
        servers.extend(sorted(joined - {self._server_name}))
        servers.extend(s for s in found.servers if s not in servers)
        if not servers:
            servers.append(self._server_name)
        return 200, {"room_id": found.room_id, "servers": servers}

    async def on_query_profile(self, request: ApiRequest) -> JsonResponse:
        """``GET /query/profile?user_id=[&field=]``."""
        user_id = request.arg("user_id")
        if user_id is None:
            raise MatrixError(400, "M_MISSING_PARAM", "Missing parameter: user_id")
        field = request.arg("field")
        if domain_of(user_id) != self._server_name or not user_id.startswith("@"):
            raise invalid_param("User is not hosted on this homeserver")
        if field is not None and field not in PROFILE_FIELDS:
            raise not_found(f"Profile field {field!r} does not exist")
        profile = await self._store.get_profile(user_id)
        if profile is None and not await self._store.is_known_local_user(user_id):
            raise not_found("User does not exist.")
        values = {
            "displayname": profile.displayname if profile is not None else None,
            "avatar_url": profile.avatar_url if profile is not None else None,
        }
        wanted = (field,) if field is not None else PROFILE_FIELDS
        return 200, {k: values[k] for k in wanted if values[k] is not None}

    async def on_public_rooms_get(self, request: ApiRequest) -> JsonResponse:
        """``GET /publicRooms?limit=&since=&include_all_networks=``."""
        raw_limit = request.arg("limit")
        try:
            limit = int(raw_limit) if raw_limit not in (None, "") else 0
        except ValueError:
            raise invalid_param("limit must be an integer") from None
        return await self._public_rooms(
            limit=limit,
            since=request.arg("since"),
            third_party=request.arg("third_party_instance_id"),
            include_all_networks=request.arg("include_all_networks") == "true",
            term=None,
            room_types=None,
        )

    async def on_public_rooms_post(self, request: ApiRequest) -> JsonResponse:
        """``POST /publicRooms`` with ``{limit, since, filter, ...}``."""
        body = request.content
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise bad_json("Body must be a JSON object")
        limit = body.get("limit", 0)
        if limit is None:
            limit = 0
        if type(limit) is not int:
            raise bad_json("limit must be an integer")
        since = body.get("since")
        if since is not None and not isinstance(since, str):
            raise bad_json("since must be a string")
        flt = body.get("filter") or {}
        if not isinstance(flt, dict):
            raise bad_json("filter must be an object")
        term = flt.get("generic_search_term")
        if term is not None and not isinstance(term, str):
            raise bad_json("generic_search_term must be a string")
        room_types = flt.get("room_types")
        if room_types is not None and not (
            isinstance(room_types, list)
            and all(t is None or isinstance(t, str) for t in room_types)
        ):
            raise bad_json("room_types must be a list of strings or nulls")
        third_party = body.get("third_party_instance_id")
        return await self._public_rooms(
            limit=limit,
            since=since,
            third_party=third_party if isinstance(third_party, str) else None,
            include_all_networks=body.get("include_all_networks") is True,
            term=term,
            room_types=room_types,
        )

    async def _public_rooms(
        self,
        *,
        limit: int,
        since: str | None,
        third_party: str | None,
        include_all_networks: bool,
        term: str | None,
        room_types: Sequence[Any] | None,
    ) -> JsonResponse:
        if limit < 0:
            raise invalid_param("limit must not be negative")
        offset = _parse_since(since)
        if third_party is not None and not include_all_networks:
            # No application services here: that network has no rooms.
            return 200, {"chunk": [], "total_room_count_estimate": 0}
        chunks = [
            await public_room_chunk(self._store, room_id)
            for room_id in await self._store.get_public_room_ids()
            # A published room we have left is not ours to advertise.
            if await self._store.is_host_joined(room_id, self._server_name)
        ]
        chunks = [c for c in chunks if _matches(c, term, room_types)]
        chunks.sort(key=lambda c: (-int(c["num_joined_members"]), str(c["room_id"])))
        page = MAX_PUBLIC_ROOMS_PAGE if limit == 0 else min(limit, MAX_PUBLIC_ROOMS_PAGE)
        selected = chunks[offset : offset + page]
        out: dict[str, Any] = {"chunk": selected, "total_room_count_estimate": len(chunks)}
        if offset + page < len(chunks):
            out["next_batch"] = f"{_TOKEN_PREFIX}{offset + page}"
        if offset > 0:
            out["prev_batch"] = f"{_TOKEN_PREFIX}{max(0, offset - page)}"
        return 200, out
