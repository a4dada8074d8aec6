"""Pre-encoded JSON arrays in handler answers, and the encoder that splices them.

A big answer (a send_join of a 10,000-member room) is mostly events that are
stored as JSON text already. Decoding each one into a dict only to encode it
again for the wire costs most of the answer's CPU time, so a handler may put
an ``EncodedJsonArray`` (the items' JSON texts) where a list would go;
``encode_body`` writes the texts into the response as they are.

Guarantees: the bytes ``encode_body`` produces decode to the same value as
``json.dumps`` of the body with every ``EncodedJsonArray`` replaced by the
list of its decoded items. Items must each be one valid JSON value (the
store's own encoding: ASCII only); they are not re-checked. Code in the same
process that reads such an answer (tests, in-process callers) sees a read-only
sequence whose items are decoded on access, so nothing else has to know.
``EncodedJsonArray`` values are recognised as values of the top-level object
or array and of objects/arrays directly inside it (the v1 ``[200, {...}]``
shapes); deeper ones fail like any non-JSON value.

Streaming: a ``StreamedJsonArray`` (the same, but its texts come later, in
batches) lets the resource layer send the answer while it is still being
read from the store (``encoded_chunks``; the same bytes as ``encode_body``
of the body once ``resolve_streams`` collected it). In-process readers call
``resolve_streams`` first; ``encode_body`` refuses such bodies.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterator, Sequence
from typing import Any, overload

# The encoder of every response: compact, UTF-8 as is.
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# How deep encode_body looks for EncodedJsonArray values (body, then [200, body]).
_SPLICE_DEPTH = 2


class EncodedJsonArray(Sequence[Any]):
    """A JSON array given as the JSON texts of its items."""

    __slots__ = ("texts",)

    def __init__(self, texts: list[str]) -> None:
        """Args:
        texts: one JSON value per item, already encoded.
        """
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [json.loads(t) for t in self.texts[index]]
        return json.loads(self.texts[index])

    def __iter__(self) -> Iterator[Any]:
        for text in self.texts:
            yield json.loads(text)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EncodedJsonArray):
            other = list(other)
        return isinstance(other, list) and list(self) == other

    __hash__ = None  # type: ignore[assignment]

    def encoded(self) -> str:
        """The array's JSON text."""
        return "[" + ",".join(self.texts) + "]"


class StreamedJsonArray:
    """A JSON array whose items' JSON texts arrive later, in batches.

    For answers too big to hold back until their last item is read: the
    resource layer sends the answer up to the array as soon as the first
    batch is there and each later batch as it comes, so reading the store
    overlaps encrypting and sending (``encoded_chunks``). Consumed once;
    in-process readers call ``resolve_streams`` first.
    """

    __slots__ = ("_batches", "_used")

    def __init__(self, batches: AsyncGenerator[list[str], None]) -> None:
        """Args:
        batches: the items' JSON texts (each one valid JSON value), in order.
        """
        self._batches = batches
        self._used = False

    def batches(self) -> AsyncGenerator[list[str], None]:
        """The batches (once)."""
        if self._used:
            raise RuntimeError("a StreamedJsonArray is consumed once")
        self._used = True
        return self._batches

    async def collect(self) -> EncodedJsonArray:
        """Every item, as an ``EncodedJsonArray``."""
        texts: list[str] = []
        async for batch in self.batches():
            texts.extend(batch)
        return EncodedJsonArray(texts)


def _add_pieces(value: Any, depth: int, out: list[Any]) -> None:
    """Append the JSON text of ``value`` to ``out`` as pieces (str), and
    ``StreamedJsonArray`` values as they are.

    The answer is joined once at the end: concatenating at every level would
    copy a 10,000-event array (megabytes) once per level.
    """
    if isinstance(value, StreamedJsonArray):
        out.append(value)
    elif isinstance(value, EncodedJsonArray):
        out.append("[")
        if value.texts:
            items: list[str] = [","] * (2 * len(value.texts) - 1)
            items[::2] = value.texts
            out.extend(items)
        out.append("]")
    elif depth > 0 and isinstance(value, dict):
        out.append("{")
        for i, (k, v) in enumerate(value.items()):
            out.append(("," if i else "") + _ENCODE(str(k)) + ":")
            _add_pieces(v, depth - 1, out)
        out.append("}")
    elif depth > 0 and isinstance(value, list):
        out.append("[")
        for i, v in enumerate(value):
            if i:
                out.append(",")
            _add_pieces(v, depth - 1, out)
        out.append("]")
    else:
        out.append(_ENCODE(value))


def _has(value: Any, depth: int, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, kinds):
        return True
    if depth <= 0:
        return False
    if isinstance(value, dict):
        return any(_has(v, depth - 1, kinds) for v in value.values())
    if isinstance(value, list):
        return any(_has(v, depth - 1, kinds) for v in value)
    return False


def has_streams(body: Any) -> bool:
    """Whether the body holds ``StreamedJsonArray`` values (``encoded_chunks``)."""
    return _has(body, _SPLICE_DEPTH, (StreamedJsonArray,))


def encode_body(body: Any) -> bytes:
    """A response body as compact UTF-8 JSON (module docstring).

    Raises:
        TypeError, ValueError: the body is not JSON-serialisable (bodies with
            a ``StreamedJsonArray`` go through ``encoded_chunks``).
    """
    if _has(body, _SPLICE_DEPTH, (EncodedJsonArray, StreamedJsonArray)):
        pieces: list[Any] = []
        _add_pieces(body, _SPLICE_DEPTH, pieces)
        if any(isinstance(p, StreamedJsonArray) for p in pieces):
            raise TypeError("a StreamedJsonArray is sent with encoded_chunks")
        return "".join(pieces).encode("utf-8")
    return _ENCODE(body).encode("utf-8")


async def encoded_chunks(body: Any) -> AsyncGenerator[bytes, None]:
    """The bytes ``encode_body`` would give for the body with its streams
    collected, in chunks: the text before each ``StreamedJsonArray`` goes
    out with its first non-empty batch, then one chunk per later batch.

    Raises:
        TypeError, ValueError: the body is not JSON-serialisable (before
            anything is yielded); whatever a stream's batches raise.
    """
    pieces: list[Any] = []
    _add_pieces(body, _SPLICE_DEPTH, pieces)
    text: list[str] = []
    for piece in pieces:
        if not isinstance(piece, StreamedJsonArray):
            text.append(piece)
            continue
        text.append("[")
        first = True
        batches = piece.batches()
        try:
            async for batch in batches:
                if not batch:
                    continue
                text.append(",".join(batch) if first else "," + ",".join(batch))
                first = False
                yield "".join(text).encode("utf-8")
                text = []
        finally:
            # Also when the reader stops early: the source lets go of its reads.
            await batches.aclose()
        text.append("]")
    yield "".join(text).encode("utf-8")


async def resolve_streams(body: Any) -> Any:
    """The body with each ``StreamedJsonArray`` collected into an
    ``EncodedJsonArray`` (for in-process readers of a handler's answer)."""
    return await _resolve(body, _SPLICE_DEPTH)


async def _resolve(value: Any, depth: int) -> Any:
    if isinstance(value, StreamedJsonArray):
        return await value.collect()
    if depth > 0 and isinstance(value, dict):
        return {k: await _resolve(v, depth - 1) for k, v in value.items()}
    if depth > 0 and isinstance(value, list):
        return [await _resolve(v, depth - 1) for v in value]
    return value
