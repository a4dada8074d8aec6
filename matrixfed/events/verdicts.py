"""Checking PDUs somewhere else: the verdicts a worker process sends back.

``check_and_encode`` is what a join does to each chunk of the state and auth
chain it received: ``check_pdus`` (format, event ID, signatures, content
hash) and the stored JSON text of each kept event. ``check_in_worker`` runs
it in another process (``matrixfed.joins.procpool``) and answers with a
compact verdict per PDU instead of the events: the event ID, whether the
content hash failed (the redacted form is kept), the stored text, or the
error's message. ``results_from_verdicts`` turns the verdicts back into what
``check_and_encode`` returns, from the caller's own copy of the PDUs, so the
PDUs never travel back and exceptions never need pickling.

This module imports only the pure core, so a worker process starts fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matrixfed.errors import EventSizeError, InvalidEventError, SignatureError
from matrixfed.events.checks import CheckResult, check_pdus
from matrixfed.events.keys import KeyMap
from matrixfed.events.model import Event
from matrixfed.events.redaction import redact
from matrixfed.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from matrixfed.events.storedjson import encode_pdu

__all__ = ["VerdictError", "check_and_encode", "check_in_worker", "results_from_verdicts"]

# Verdict kinds (tuples of strings and bools: cheap to pickle).
_OK = "ok"  # (_OK, event_id, hash_failed, stored_json)
_REJECTABLE = "rejectable"  # (_REJECTABLE, event_id, hash_failed, stored_json, message)
_INVALID = "invalid"  # (_INVALID, message)
_BAD_SIGNATURE = "signature"  # (_BAD_SIGNATURE, message)

Verdict = tuple[Any, ...]


class VerdictError(ValueError):
    """Verdicts that do not fit the PDUs they are said to be about."""


def check_and_encode(
    chunk: Sequence[Any], room_version: RoomVersion, keys: KeyMap
) -> tuple[list[CheckResult], list[str | None]]:
    """``check_pdus`` over ``chunk`` (PDUs of a join's state and auth chain:
    no prev/auth event count limits), and the stored JSON text of each kept
    event (None for a dropped one)."""
    results = check_pdus(chunk, room_version, keys, backfilled=True)
    texts: list[str | None] = []
    for result in results:
        if isinstance(result, Event):
            texts.append(encode_pdu(result.pdu))
        elif isinstance(result, EventSizeError) and result.rejectable:
            texts.append(encode_pdu(result.event.pdu))
        else:
            texts.append(None)
    return results, texts


def check_in_worker(chunk: Sequence[Any], room_version_id: str, keys: KeyMap) -> list[Verdict]:
    """``check_and_encode`` as verdicts, one per PDU in order (runs in a worker)."""
    room_version = KNOWN_ROOM_VERSIONS[room_version_id]
    results, texts = check_and_encode(chunk, room_version, keys)
    verdicts: list[Verdict] = []
    for pdu, result, text in zip(chunk, results, texts, strict=True):
        if isinstance(result, Event):
            verdicts.append((_OK, result.event_id, result.pdu is not pdu, text))
        elif isinstance(result, EventSizeError) and result.rejectable:
            event = result.event
            verdicts.append((_REJECTABLE, event.event_id, event.pdu is not pdu, text, str(result)))
        elif isinstance(result, SignatureError):
            verdicts.append((_BAD_SIGNATURE, str(result)))
        else:
            verdicts.append((_INVALID, str(result)))
    return verdicts


def _event(pdu: dict[str, Any], room_version: RoomVersion, event_id: str, redacted: bool) -> Event:
    return Event(redact(pdu, room_version) if redacted else pdu, room_version, event_id)


def results_from_verdicts(
    chunk: Sequence[Any], room_version: RoomVersion, verdicts: Sequence[Verdict]
) -> tuple[list[CheckResult], list[str | None]]:
    """What ``check_and_encode(chunk, ...)`` returns, from ``chunk`` and the
    verdicts ``check_in_worker`` gave on it.

    Raises:
        VerdictError: not one well-formed verdict per PDU.
    """
    if len(verdicts) != len(chunk):
        raise VerdictError(f"{len(verdicts)} verdicts for {len(chunk)} PDUs")
    results: list[CheckResult] = []
    texts: list[str | None] = []
    for pdu, verdict in zip(chunk, verdicts, strict=True):
        kind = verdict[0] if verdict else None
        if kind == _OK and len(verdict) == 4:
            results.append(_event(pdu, room_version, verdict[1], verdict[2]))
            texts.append(verdict[3])
        elif kind == _REJECTABLE and len(verdict) == 5:
            event = _event(pdu, room_version, verdict[1], verdict[2])
            results.append(EventSizeError(verdict[4], rejectable=True, event=event))
            texts.append(verdict[3])
        elif kind == _BAD_SIGNATURE and len(verdict) == 2:
            results.append(SignatureError(verdict[1]))
            texts.append(None)
        elif kind == _INVALID and len(verdict) == 2:
            results.append(InvalidEventError(verdict[1]))
            texts.append(None)
        else:
            raise VerdictError(f"not a verdict: {verdict!r:.100}")
    return results, texts
