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
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
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


def _add_pieces(value: Any, depth: int, out: list[str]) -> None:
    """Append the JSON text of ``value`` to ``out`` as pieces.

    The answer is joined once at the end: concatenating at every level would
    copy a 10,000-event array (megabytes) once per level.
    """
    if isinstance(value, EncodedJsonArray):
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


def _has_encoded(value: Any, depth: int) -> bool:
    if isinstance(value, EncodedJsonArray):
        return True
    if depth <= 0:
        return False
    if isinstance(value, dict):
        return any(_has_encoded(v, depth - 1) for v in value.values())
    if isinstance(value, list):
        return any(_has_encoded(v, depth - 1) for v in value)
    return False


def encode_body(body: Any) -> bytes:
    """A response body as compact UTF-8 JSON (module docstring).

    Raises:
        TypeError, ValueError: the body is not JSON-serialisable.
    """
    if _has_encoded(body, _SPLICE_DEPTH):
        pieces: list[str] = []
        _add_pieces(body, _SPLICE_DEPTH, pieces)
        return "".join(pieces).encode("utf-8")
    return _ENCODE(body).encode("utf-8")
