"""Room aliases and profiles, local or asked of the owning server.

- ``PUT|GET|DELETE /directory/room/{roomAlias}``: local aliases live in the
  store; ``GET`` of another server's alias asks it (``/query/directory``).
- ``GET /profile/{userId}[/displayname|/avatar_url]``, ``PUT`` of one's own
  field: local profiles live in the store (shared with ``/query/profile``);
  another server's user is asked of it (``/query/profile``). Changing one's
  profile also updates one's member event in every joined room, as clients
  read names from there.

How it fails: 404 ``M_NOT_FOUND`` for unknown aliases/profiles (also when the
owning server says so), 409 ``M_UNKNOWN`` for an alias that exists, 400
``M_INVALID_PARAM`` for a foreign alias on PUT/DELETE, 403 ``M_FORBIDDEN`` to
change someone else's profile or delete someone else's alias, 502 when the
owning server cannot be reached.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from matrixfed.clientapi.common import Requester, client_endpoints, require_object
from matrixfed.clientapi.context import ClientContext
from matrixfed.errors import MatrixError, RemoteError
from matrixfed.events.identifiers import domain_of, is_valid_user_id
from matrixfed.federation.server.endpoint import ApiRequest, Endpoint, JsonResponse
from matrixfed.storage.profiles import PROFILE_FIELDS

__all__ = ["DirectoryServlets"]

log = Logger()

# Seconds to wait for another server to answer a directory or profile query.
QUERY_TIMEOUT_S = 30.0
# Longest profile field value accepted (Synapse's limit for display names).
MAX_PROFILE_FIELD_LENGTH = 256


def _remote_error(e: RemoteError, what: str) -> MatrixError:
    if e.code == 404:
        return MatrixError(404, "M_NOT_FOUND", f"{what} not found")
    if e.code is not None and 400 <= e.code < 500 and e.errcode is not None:
        return MatrixError(e.code, e.errcode, f"{e.destination}: {e.message}")
    return MatrixError(502, "M_UNKNOWN", f"Could not ask {e.destination}: {e.message}")


class DirectoryServlets:
    """Aliases and profiles."""

    def __init__(self, ctx: ClientContext) -> None:
        self._ctx = ctx

    def endpoints(self) -> list[Endpoint]:
        """Every endpoint of this module."""
        req = self._ctx.auth.required
        eps: list[Endpoint] = []
        eps += client_endpoints("GET", "/directory/room/{roomAlias}", self._get_alias)
        eps += client_endpoints("PUT", "/directory/room/{roomAlias}", req(self._put_alias))
        eps += client_endpoints("DELETE", "/directory/room/{roomAlias}", req(self._delete_alias))
        eps += client_endpoints("GET", "/profile/{userId}", self._get_profile)
        eps += client_endpoints("GET", "/profile/{userId}/{field}", self._get_profile)
        eps += client_endpoints("PUT", "/profile/{userId}/{field}", req(self._put_profile))
        return eps

    # --- aliases -----------------------------------------------------------

    def _alias_param(self, request: ApiRequest) -> str:
        alias = request.path_params["roomAlias"]
        if not alias.startswith("#") or not domain_of(alias):
            raise MatrixError(400, "M_INVALID_PARAM", f"{alias!r} is not a room alias")
        return alias

    async def _get_alias(self, request: ApiRequest) -> JsonResponse:
        alias = self._alias_param(request)
        server = domain_of(alias)
        assert server is not None
        if server == self._ctx.server_name:
            found = await self._ctx.store.get_alias(alias)
            if found is None:
                raise MatrixError(404, "M_NOT_FOUND", f"Room alias {alias} not found")
            servers = list(found.servers) or [self._ctx.server_name]
            return 200, {"room_id": found.room_id, "servers": servers}
        try:
            answer = await self._ctx.federation.get_json(
                server,
                "/_matrix/federation/v1/query/directory",
                {"room_alias": alias},
                timeout=QUERY_TIMEOUT_S,
            )
        except RemoteError as e:
            raise _remote_error(e, f"Room alias {alias}") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("room_id"), str):
            raise MatrixError(502, "M_UNKNOWN", f"{server} sent a malformed directory answer")
        servers = [s for s in answer.get("servers", []) if isinstance(s, str)]
        return 200, {"room_id": answer["room_id"], "servers": servers or [server]}

    async def _put_alias(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        alias = self._alias_param(request)
        if domain_of(alias) != self._ctx.server_name:
            raise MatrixError(400, "M_INVALID_PARAM", "Room alias must be local")
        body = require_object(request)
        room_id = body.get("room_id")
        if not isinstance(room_id, str) or not room_id.startswith("!"):
            raise MatrixError(400, "M_INVALID_PARAM", "room_id must be a room ID")
        if await self._ctx.store.get_room(room_id) is None:
            raise MatrixError(404, "M_NOT_FOUND", f"Unknown room {room_id}")
        created = await self._ctx.store.create_alias(
            alias, room_id, creator=requester.user_id, servers=[self._ctx.server_name]
        )
        if not created:
            raise MatrixError(409, "M_UNKNOWN", f"Room alias {alias} already exists")
        return 200, {}

    async def _delete_alias(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        alias = self._alias_param(request)
        if domain_of(alias) != self._ctx.server_name:
            raise MatrixError(400, "M_INVALID_PARAM", "Room alias must be local")
        found = await self._ctx.store.get_alias(alias)
        if found is None:
            raise MatrixError(404, "M_NOT_FOUND", f"Room alias {alias} not found")
        if found.creator != requester.user_id:
            user = await self._ctx.users.get_user(requester.user_id)
            if user is None or not user.admin:
                raise MatrixError(403, "M_FORBIDDEN", "You may not delete this alias")
        await self._ctx.store.delete_alias(alias)
        return 200, {}

    # --- profiles ----------------------------------------------------------

    def _field_param(self, request: ApiRequest) -> str | None:
        field = request.path_params.get("field")
        if field is not None and field not in PROFILE_FIELDS:
            raise MatrixError(400, "M_INVALID_PARAM", f"Unknown profile field {field!r}")
        return field

    async def _get_profile(self, request: ApiRequest) -> JsonResponse:
        user_id = request.path_params["userId"]
        field = self._field_param(request)
        if not is_valid_user_id(user_id):
            raise MatrixError(400, "M_INVALID_PARAM", f"Invalid user ID {user_id!r}")
        server = domain_of(user_id)
        assert server is not None
        profile: dict[str, Any]
        if server == self._ctx.server_name:
            found = await self._ctx.store.get_profile(user_id)
            if found is None:
                if await self._ctx.users.get_user(user_id) is None:
                    raise MatrixError(404, "M_NOT_FOUND", "Profile was not found")
                profile = {}
            else:
                profile = {"displayname": found.displayname, "avatar_url": found.avatar_url}
        else:
            args = {"user_id": user_id}
            if field is not None:
                args["field"] = field
            try:
                answer = await self._ctx.federation.get_json(
                    server, "/_matrix/federation/v1/query/profile", args, timeout=QUERY_TIMEOUT_S
                )
            except RemoteError as e:
                raise _remote_error(e, "Profile") from None
            profile = answer if isinstance(answer, dict) else {}
        fields = [field] if field is not None else list(PROFILE_FIELDS)
        out = {f: profile[f] for f in fields if isinstance(profile.get(f), str)}
        if field is not None and not out:
            raise MatrixError(404, "M_NOT_FOUND", f"The user has no {field}")
        return 200, out

    async def _put_profile(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        user_id = request.path_params["userId"]
        field = self._field_param(request)
        if field is None:
            raise MatrixError(400, "M_INVALID_PARAM", "Missing profile field")
        if user_id != requester.user_id:
            raise MatrixError(403, "M_FORBIDDEN", "You may only change your own profile")
        body = require_object(request)
        value = body.get(field)
        if value is not None and not isinstance(value, str):
            raise MatrixError(400, "M_INVALID_PARAM", f"{field} must be a string")
        if value is not None and len(value) > MAX_PROFILE_FIELD_LENGTH:
            raise MatrixError(400, "M_INVALID_PARAM", f"{field} is too long")
        if field == "displayname":
            await self._ctx.store.set_profile(user_id, displayname=value)
        else:
            await self._ctx.store.set_profile(user_id, avatar_url=value)
        await self._update_member_events(user_id)
        return 200, {}

    async def _update_member_events(self, user_id: str) -> None:
        profile = await self._ctx.store.get_profile(user_id)
        if profile is None:
            return
        content: dict[str, Any] = {"membership": "join"}
        if profile.displayname is not None:
            content["displayname"] = profile.displayname
        if profile.avatar_url is not None:
            content["avatar_url"] = profile.avatar_url
        for room_id in await self._ctx.store.get_rooms_for_user(user_id):
            try:
                await self._ctx.engine.send_event(
                    room_id,
                    type="m.room.member",
                    sender=user_id,
                    content=content,
                    state_key=user_id,
                )
            except MatrixError as e:
                log.warn(
                    "Could not update {user_id}'s member event in {room_id}: {error}",
                    user_id=user_id,
                    room_id=room_id,
                    error=e,
                )
