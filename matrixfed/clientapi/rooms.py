"""Room creation and membership: createRoom, join, leave, invite, kick, ban.

- ``POST /createRoom`` maps the request onto ``RoomEngine.create_room``
  (the room exists whole or not at all).
- ``POST /join/{roomIdOrAlias}`` and ``POST /rooms/{roomId}/join`` go to the
  join coordinator, which joins locally when we are in the room and over
  federation otherwise. The servers to try come from ``via`` and
  ``server_name`` (v12 room IDs name no server), then the coordinator adds
  what it knows (alias servers, the inviter's server).
- ``leave`` goes to the coordinator too (rejecting a remote invite needs
  ``make_leave``/``send_leave``); ``invite``, ``kick``, ``ban`` and ``unban`` are
  member events appended by the engine (a remote invitee's server
  countersigns the invite first); in a room joined with partial state they
  first wait (bounded) for the full member list, which judges them.
- ``GET /joined_rooms``.
- ``GET /_matrix/client/unstable/org.matrixfed/join_progress?room=...``: the
  latest progress report of the requester's join of ``room`` that is running
  (stage, done, total), for the command line's progress bar; 404 when none.

How it fails: the errors of the engine and coordinator pass through (403
``M_FORBIDDEN`` when the auth rules refuse, 404 for unknown rooms, the
coordinator's per-server failure report); bad bodies get 400.
"""

from __future__ import annotations

from typing import Any

import attrs

from matrixfed.clientapi.common import Requester, client_endpoints, get_str, require_object
from matrixfed.clientapi.context import ClientContext
from matrixfed.errors import MatrixError
from matrixfed.events.identifiers import domain_of, is_valid_user_id
from matrixfed.federation.server.endpoint import ApiRequest, AuthMode, Endpoint, JsonResponse

__all__ = ["RoomServlets"]

# createRoom presets the spec defines.
PRESETS = ("private_chat", "public_chat", "trusted_private_chat")
# Invitees accepted in one createRoom request (each is one event, maybe one
# federation round trip).
MAX_CREATE_INVITES = 100
JOIN_PROGRESS_PATH = "/_matrix/client/unstable/org.matrixfed/join_progress"


def _room_id_param(request: ApiRequest) -> str:
    room_id = request.path_params["roomId"]
    if not room_id.startswith("!"):
        raise MatrixError(400, "M_INVALID_PARAM", f"{room_id!r} is not a room ID")
    return room_id


class RoomServlets:
    """createRoom and the membership endpoints."""

    def __init__(self, ctx: ClientContext) -> None:
        self._ctx = ctx
        # (user_id, room ID or alias as requested) -> latest progress report.
        self._progress: dict[tuple[str, str], dict[str, Any]] = {}

    def endpoints(self) -> list[Endpoint]:
        """Every endpoint of this module."""
        req = self._ctx.auth.required
        eps: list[Endpoint] = []
        eps += client_endpoints("POST", "/createRoom", req(self._create_room))
        eps += client_endpoints("POST", "/join/{roomIdOrAlias}", req(self._join))
        eps += client_endpoints("POST", "/rooms/{roomId}/join", req(self._join_room))
        eps += client_endpoints("POST", "/rooms/{roomId}/leave", req(self._leave))
        eps += client_endpoints("POST", "/rooms/{roomId}/invite", req(self._invite))
        eps += client_endpoints("POST", "/rooms/{roomId}/kick", req(self._kick))
        eps += client_endpoints("POST", "/rooms/{roomId}/ban", req(self._ban))
        eps += client_endpoints("POST", "/rooms/{roomId}/unban", req(self._unban))
        eps += client_endpoints("GET", "/joined_rooms", req(self._joined_rooms))
        eps.append(
            Endpoint("GET", JOIN_PROGRESS_PATH, req(self._join_progress), auth=AuthMode.NONE)
        )
        return eps

    # --- createRoom ----------------------------------------------------------

    async def _create_room(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        body = require_object(request, allow_empty=True)
        visibility = get_str(body, "visibility") or "private"
        if visibility not in ("public", "private"):
            raise MatrixError(400, "M_INVALID_PARAM", "visibility must be public or private")
        preset = get_str(body, "preset")
        if preset is None:
            preset = "public_chat" if visibility == "public" else "private_chat"
        if preset not in PRESETS:
            raise MatrixError(400, "M_INVALID_PARAM", f"Unknown preset {preset!r}")
        alias_name = get_str(body, "room_alias_name")
        alias = None
        if alias_name is not None:
            if not alias_name or ":" in alias_name or alias_name.startswith("#"):
                raise MatrixError(400, "M_INVALID_PARAM", "Invalid room_alias_name")
            alias = f"#{alias_name}:{self._ctx.server_name}"
            if await self._ctx.store.get_alias(alias) is not None:
                raise MatrixError(400, "M_ROOM_IN_USE", "Room alias already taken")
        invite = body.get("invite", [])
        if not isinstance(invite, list) or not all(isinstance(u, str) for u in invite):
            raise MatrixError(400, "M_INVALID_PARAM", "invite must be a list of user IDs")
        if len(invite) > MAX_CREATE_INVITES:
            raise MatrixError(400, "M_INVALID_PARAM", "Too many invitees")
        for user_id in invite:
            if not is_valid_user_id(user_id):
                raise MatrixError(400, "M_INVALID_PARAM", f"Invalid user ID {user_id!r}")
        initial_state = body.get("initial_state", [])
        if not isinstance(initial_state, list) or not all(
            isinstance(e, dict)
            and isinstance(e.get("type"), str)
            and isinstance(e.get("content"), dict)
            and isinstance(e.get("state_key", ""), str)
            for e in initial_state
        ):
            raise MatrixError(
                400, "M_INVALID_PARAM", "initial_state must be a list of state events"
            )
        overrides = body.get("power_level_content_override")
        if overrides is not None and not isinstance(overrides, dict):
            raise MatrixError(
                400, "M_INVALID_PARAM", "power_level_content_override must be an object"
            )
        creation_content = body.get("creation_content")
        if creation_content is not None and not isinstance(creation_content, dict):
            raise MatrixError(400, "M_INVALID_PARAM", "creation_content must be an object")
        room_id = await self._ctx.engine.create_room(
            requester.user_id,
            room_version=get_str(body, "room_version"),
            preset=preset,
            name=get_str(body, "name"),
            topic=get_str(body, "topic"),
            alias=alias,
            initial_state=[
                {"type": e["type"], "state_key": e.get("state_key", ""), "content": e["content"]}
                for e in initial_state
            ],
            power_level_content_override=overrides,
            is_public=visibility == "public",
            invite=invite,
            creation_content=creation_content,
        )
        response: dict[str, Any] = {"room_id": room_id}
        if alias is not None:
            response["room_alias"] = alias
        return 200, response

    # --- joins and leaves ------------------------------------------------------

    async def _join(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        target = request.path_params["roomIdOrAlias"]
        if not target.startswith(("!", "#")):
            raise MatrixError(400, "M_INVALID_PARAM", f"{target!r} is neither a room ID nor alias")
        require_object(request, allow_empty=True)
        servers = list(request.args("via")) + list(request.args("server_name"))
        return await self._run_join(target, requester.user_id, list(dict.fromkeys(servers)))

    async def _join_room(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        room_id = _room_id_param(request)
        require_object(request, allow_empty=True)
        return await self._run_join(room_id, requester.user_id, [])

    async def _invite_servers(self, room_id: str, user_id: str) -> list[str]:
        """Servers named by a pending invite from another server: the inviter's
        and the room creator's (v12 room IDs name no server)."""
        out: list[str] = []
        for invite in await self._ctx.store.get_invites_for_user(user_id):
            if invite.room_id != room_id:
                continue
            out.append(domain_of(invite.sender) or "")
            for event in invite.stripped_state:
                if event.get("type") == "m.room.create" and isinstance(event.get("sender"), str):
                    out.append(domain_of(event["sender"]) or "")
        return [s for s in out if s]

    async def _run_join(self, target: str, user_id: str, servers: list[str]) -> JsonResponse:
        key = (user_id, target)
        if target.startswith("!"):
            servers = list(dict.fromkeys([*servers, *await self._invite_servers(target, user_id)]))

        def progress(report: Any) -> None:
            self._progress[key] = (
                attrs.asdict(report) if attrs.has(type(report)) else {"stage": str(report)}
            )

        self._progress[key] = {"stage": "starting", "done": 0, "total": 1}
        try:
            result = await self._ctx.joiner.join(
                target, user_id, servers=servers, progress=progress
            )
        finally:
            self._progress.pop(key, None)
        await self._ctx.store.delete_received_invite(result.room_id, user_id)
        return 200, {"room_id": result.room_id}

    async def _join_progress(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        room = request.arg("room")
        if not room:
            raise MatrixError(400, "M_MISSING_PARAM", "Missing parameter: room")
        report = self._progress.get((requester.user_id, room))
        if report is None:
            raise MatrixError(404, "M_NOT_FOUND", "No join of this room is running")
        return 200, report

    async def _leave(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        room_id = _room_id_param(request)
        require_object(request, allow_empty=True)
        servers = await self._invite_servers(room_id, requester.user_id)
        await self._ctx.joiner.leave(room_id, requester.user_id, servers=servers)
        # A rejected invite from another server is settled: stop listing it.
        await self._ctx.store.delete_received_invite(room_id, requester.user_id)
        return 200, {}

    # --- member events about someone else ---------------------------------------

    async def _member_event(
        self, request: ApiRequest, requester: Requester, membership: str
    ) -> JsonResponse:
        room_id = _room_id_param(request)
        body = require_object(request)
        target = get_str(body, "user_id", required=True)
        assert target is not None
        if not is_valid_user_id(target):
            raise MatrixError(400, "M_INVALID_PARAM", f"Invalid user ID {target!r}")
        # Judged by the target's membership: not by a partial state's guess.
        await self._ctx.require_full_state(room_id, f"{membership} of {target}")
        content: dict[str, Any] = {"membership": membership}
        reason = get_str(body, "reason")
        if reason is not None:
            content["reason"] = reason
        await self._ctx.engine.send_event(
            room_id,
            type="m.room.member",
            sender=requester.user_id,
            content=content,
            state_key=target,
        )
        return 200, {}

    async def _invite(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        return await self._member_event(request, requester, "invite")

    async def _kick(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        return await self._member_event(request, requester, "leave")

    async def _ban(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        return await self._member_event(request, requester, "ban")

    async def _unban(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        return await self._member_event(request, requester, "leave")

    async def _joined_rooms(self, request: ApiRequest, requester: Requester) -> JsonResponse:
        rooms = await self._ctx.store.get_rooms_for_user(requester.user_id)
        return 200, {"joined_rooms": sorted(rooms)}
