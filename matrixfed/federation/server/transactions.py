"""``PUT /_matrix/federation/v1/send/{txnId}``: inbound transactions.

What it guarantees:

- At most ``MAX_PDUS_PER_TRANSACTION`` PDUs and ``MAX_EDUS_PER_TRANSACTION``
  EDUs, else 400 ``M_BAD_JSON`` and nothing is processed.
- Each PDU is processed on its own by ``RoomEngine.receive_pdu`` and answered
  in ``pdus`` under its event ID: ``{}`` when accepted (soft-failed events
  too, as the spec's soft-failure is silent), ``{"error": ...}`` otherwise.
  A PDU for a room we do not know, or whose room's server ACL denies the
  origin, gets an error and changes nothing. PDUs of one room are processed
  in transaction order; different rooms concurrently.
- The answer is persisted per (origin, txnId) before it is returned: the
  same transaction sent again (a retry after a lost answer, or after our
  restart) is answered from storage without processing anything. Identical
  requests arriving while the first is still running wait for its answer.
- EDUs go, in order and after the PDUs, to the handler registered for their
  type (``register_edu_handler``); the others are accepted and dropped
  (logged at debug level). A retried transaction does not replay its EDUs.

How it fails: a malformed body is 400 ``M_BAD_JSON``; an unexpected error
while processing one PDU becomes that PDU's error (logged with its
traceback), so one bad event never blocks the origin's whole queue. A
database failure while saving the answer is a 500 and the origin retries.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from matrixfed.errors import (
    AuthError,
    InvalidEventError,
    MatrixError,
    SignatureError,
    bad_json,
)
from matrixfed.events.hashing import compute_event_id
from matrixfed.events.model import Event
from matrixfed.events.room_versions import (
    DEFAULT_ROOM_VERSION,
    RoomVersion,
    get_room_version,
)
from matrixfed.federation.server.endpoint import ApiRequest, Endpoint, JsonResponse
from matrixfed.rooms.acl import server_allowed_in_room
from matrixfed.storage.database import Transaction

if TYPE_CHECKING:
    from matrixfed.rooms.engine import RoomEngine

__all__ = ["EduHandler", "TransactionHandler"]

log = Logger()

# ``async (origin, content) -> None`` for one EDU type.
EduHandler = Callable[[str, Mapping[str, Any]], Awaitable[None]]

# spec: server-server "Transactions": at most 50 PDUs and 100 EDUs.
MAX_PDUS_PER_TRANSACTION = 50
MAX_EDUS_PER_TRANSACTION = 100
# How long an answered transaction is remembered. Senders retry within
# minutes; a day covers a long outage of our own.
TRANSACTION_MEMORY_MS = 24 * 3600 * 1000


class TransactionHandler:
    """Serves ``/send``; see the module docstring."""

    def __init__(self, *, engine: RoomEngine, clock: Any) -> None:
        """Create the handler.

        Args:
            engine: the room engine (its store also keeps the answers).
            clock: IReactorTime (``seconds()``).
        """
        self._engine = engine
        self._db = engine.store.db
        self._clock = clock
        self._inflight: dict[tuple[str, str], list[Deferred[dict[str, Any]]]] = {}
        self._edu_handlers: dict[str, EduHandler] = {}

    def endpoints(self) -> list[Endpoint]:
        """The endpoint to register on the federation resource."""
        return [Endpoint("PUT", "/_matrix/federation/v1/send/{txnId}", self.on_send)]

    async def on_send(self, request: ApiRequest) -> JsonResponse:
        origin = request.origin
        assert origin is not None  # AuthMode.REQUIRED
        txn_id = request.path_params["txnId"]
        body = request.content
        if not isinstance(body, dict):
            raise bad_json("transaction body must be a JSON object")
        pdus = body.get("pdus", [])
        edus = body.get("edus", [])
        if not isinstance(pdus, list) or not isinstance(edus, list):
            raise bad_json("pdus and edus must be arrays")
        if len(pdus) > MAX_PDUS_PER_TRANSACTION or len(edus) > MAX_EDUS_PER_TRANSACTION:
            raise bad_json(
                f"at most {MAX_PDUS_PER_TRANSACTION} PDUs and {MAX_EDUS_PER_TRANSACTION}"
                f" EDUs per transaction (got {len(pdus)} and {len(edus)})"
            )
        key = (origin, txn_id)
        waiters = self._inflight.get(key)
        if waiters is not None:
            d: Deferred[dict[str, Any]] = Deferred()
            waiters.append(d)
            return 200, await d
        self._inflight[key] = []
        try:
            answer = await self._answer(origin, txn_id, pdus, edus)
        except BaseException as e:
            for waiter in self._inflight.pop(key):
                waiter.errback(e)
            raise
        for waiter in self._inflight.pop(key):
            waiter.callback(answer)
        return 200, answer

    async def _answer(
        self, origin: str, txn_id: str, pdus: list[Any], edus: list[Any]
    ) -> dict[str, Any]:
        stored = await self._db.run_interaction(
            "get_received_transaction", _get_txn, origin, txn_id
        )
        if stored is not None:
            log.debug(
                "transaction {txn_id} from {origin} answered again", txn_id=txn_id, origin=origin
            )
            return stored
        results = await self.process_pdus(origin, pdus)
        await self.process_edus(origin, edus)
        answer = {"pdus": results}
        now = int(self._clock.seconds() * 1000)
        await self._db.run_interaction(
            "store_received_transaction", _store_txn, origin, txn_id, answer, now
        )
        log.info(
            "transaction {txn_id} from {origin}: {n} PDUs ({failed} failed), {e} EDUs",
            txn_id=txn_id,
            origin=origin,
            n=len(results),
            failed=sum(1 for r in results.values() if r),
            e=len(edus),
        )
        return answer

    def register_edu_handler(self, edu_type: str, handler: EduHandler) -> None:
        """Have ``handler(origin, content)`` called for each EDU of ``edu_type``.

        The handler applies the room's server ACL itself for room-scoped EDUs
        (typing, receipts). Its failures are logged and never fail the
        transaction. One handler per type; registering again replaces it.
        """
        self._edu_handlers[edu_type] = handler

    async def process_edus(self, origin: str, edus: list[Any]) -> None:
        """Hand each EDU to its handler, in order; drop the others (debug log)."""
        for edu in edus:
            edu_type = edu.get("edu_type") if isinstance(edu, dict) else None
            handler = self._edu_handlers.get(edu_type) if isinstance(edu_type, str) else None
            if handler is None:
                log.debug("dropped EDU {edu_type} from {origin}", edu_type=edu_type, origin=origin)
                continue
            content = edu.get("content")
            try:
                await handler(origin, content if isinstance(content, dict) else {})
            except Exception:
                log.failure("EDU {edu_type} from {origin}", edu_type=edu_type, origin=origin)

    async def process_pdus(self, origin: str, pdus: list[Any]) -> dict[str, dict[str, str]]:
        """Process PDUs (rooms concurrently, each room in order); result per event ID."""
        by_room: dict[str, list[Any]] = {}
        results: dict[str, dict[str, str]] = {}
        for pdu in pdus:
            room_id = pdu.get("room_id") if isinstance(pdu, dict) else None
            if not isinstance(room_id, str):
                event_id = _guess_event_id(pdu, None)
                if event_id is not None:
                    results[event_id] = {"error": "PDU has no room_id"}
                continue
            by_room.setdefault(room_id, []).append(pdu)
        rooms = [
            Deferred.fromCoroutine(self._process_room(origin, room_id, room_pdus, results))
            for room_id, room_pdus in by_room.items()
        ]
        await gatherResults(rooms, consumeErrors=True)
        return results

    async def _process_room(
        self, origin: str, room_id: str, pdus: list[Any], results: dict[str, dict[str, str]]
    ) -> None:
        rv = await self._engine.store.get_room_version(room_id)
        if rv is None:
            for pdu in pdus:
                event_id = _guess_event_id(pdu, None)
                if event_id is not None:
                    results[event_id] = {"error": f"unknown room {room_id}"}
            return
        allowed = await server_allowed_in_room(self._engine.store, room_id, origin)
        checked: Sequence[Event | Exception | None] = [None] * len(pdus)
        if allowed:
            # Format, signatures and hashes of the room's PDUs in one batch (one
            # key fetch; check_pdus verifies back to back). On any trouble each
            # PDU is simply checked on its own, as before.
            try:
                checked = await self._engine.inbound.check_pdus(pdus, rv)
            except Exception:
                log.failure("checking {n} PDUs of {room_id}", n=len(pdus), room_id=room_id)
        for pdu, result in zip(pdus, checked, strict=True):
            event_id = _guess_event_id(pdu, rv)
            if event_id is None:
                log.info("dropped a PDU from {origin} without an event ID", origin=origin)
                continue
            if not allowed:
                results[event_id] = {"error": f"{origin} is denied by the room's server ACL"}
                continue
            results[event_id] = await self._process_one(origin, pdu, rv, event_id, result)

    async def _process_one(
        self,
        origin: str,
        pdu: Any,
        rv: RoomVersion,
        event_id: str,
        checked: Event | Exception | None = None,
    ) -> dict[str, str]:
        try:
            await self._engine.receive_pdu(origin, pdu, room_version=rv, checked=checked)
        except (InvalidEventError, SignatureError, AuthError) as e:
            return {"error": f"{type(e).__name__}: {e}"}
        except MatrixError as e:
            return {"error": f"{e.errcode}: {e.message}"}
        except Exception:
            log.failure("processing {event_id} from {origin}", event_id=event_id, origin=origin)
            return {"error": "internal error while processing this event"}
        return {}


def _guess_event_id(pdu: Any, rv: RoomVersion | None) -> str | None:
    """The PDU's event ID in its room version; for an unknown room the v1/v2
    ``event_id`` field or the ID it would have in the default version."""
    if not isinstance(pdu, dict):
        return None
    given = pdu.get("event_id")
    if isinstance(given, str) and (rv is None or rv.event_id_in_pdu):
        return given
    try:
        return compute_event_id(pdu, rv or get_room_version(DEFAULT_ROOM_VERSION))
    except (ValueError, TypeError, KeyError, RecursionError):
        return None


def _get_txn(txn: Transaction, origin: str, txn_id: str) -> dict[str, Any] | None:
    txn.execute(
        "SELECT response_json FROM received_transactions WHERE origin = ? AND transaction_id = ?",
        (origin, txn_id),
    )
    row = txn.fetchone()
    if row is None:
        return None
    answer: dict[str, Any] = json.loads(row[0])
    return answer


def _store_txn(
    txn: Transaction, origin: str, txn_id: str, answer: Mapping[str, Any], now: int
) -> None:
    txn.execute(
        "DELETE FROM received_transactions WHERE received_ts < ?", (now - TRANSACTION_MEMORY_MS,)
    )
    txn.execute(
        "INSERT INTO received_transactions (origin, transaction_id, response_json, received_ts)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (origin, transaction_id) DO NOTHING",
        (origin, txn_id, json.dumps(answer), now),
    )
