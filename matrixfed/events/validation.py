"""PDU format validation per room version (placeholder until the events work lands)."""

from __future__ import annotations

from typing import Any

from matrixfed.errors import InvalidEventError
from matrixfed.events.room_versions import RoomVersion


def validate_pdu(pdu: Any, room_version: RoomVersion, *, backfilled: bool = False) -> None:
    if not isinstance(pdu, dict):
        raise InvalidEventError("PDU is not a JSON object")
