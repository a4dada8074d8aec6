"""The JSON text a PDU is stored as (the ``events.json`` column).

Compact, keys in the PDU's own order, ``ensure_ascii`` so no raw NUL or lone
surrogate reaches the database. Not canonical JSON: what is signed and
hashed is re-derived when needed; this is only the stored copy.

It lives in the pure core, not in ``matrixfed.storage``, so the processes
that check a join's events (``matrixfed.events.verdicts``) can produce it
without importing the storage layer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# One encoder for every row (json.dumps with options builds a new one per call).
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


def encode_pdu(pdu: Mapping[str, Any]) -> str:
    """The stored JSON text of ``pdu``."""
    return _ENCODE(pdu)
