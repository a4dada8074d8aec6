"""Canonical JSON for the per-event hot path, built once instead of per call.

``canonicaljson.encode_canonical_json`` goes through
``json.JSONEncoder.encode``, which constructs a fresh C encoder on every call;
for the small objects of an event that costs as much as the encoding itself.
``encode_canonical`` keeps one C encoder configured exactly as canonicaljson
configures its own (UTF-8 output, no NaN/Infinity, sorted keys, compact
separators) and checks at import that both give the same bytes on a probe
object. Where the C encoder is missing (not CPython) or disagrees, it simply
is ``encode_canonical_json``.

Differences from canonicaljson, none of which JSON-decoded data can hit: no
circular-reference check (such data raises RecursionError instead of
ValueError), and types registered with canonicaljson's
``register_preserialisation_callback`` are refused with TypeError.
The encoder holds no per-call state, so it is safe to share between threads.
"""

from __future__ import annotations

import json.encoder
from collections.abc import Callable

from canonicaljson import encode_canonical_json


def _not_json(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# Exercises sorting (including non-BMP keys), escapes, non-ASCII, nesting and
# every JSON scalar type.
_PROBE: dict[str, object] = {
    "b": [1, -2, 2**60, True, False, None, 1.5, 'é\n"\\\u2028\x01', []],
    "a": {"\U0001f600": {}, "z": "", "\u00e9": "日本語"},
    "": [{"y": 0, "x": [None]}],
}


_Encoders = tuple[
    Callable[[object], bytes], Callable[[object], str] | None, Callable[[str], str] | None
]


def _build() -> _Encoders:
    make = getattr(json.encoder, "c_make_encoder", None)
    basestring = getattr(json.encoder, "c_encode_basestring", None)
    if make is None or basestring is None:
        return encode_canonical_json, None, None
    try:
        c_encode = make(None, _not_json, basestring, None, ":", ",", True, False, False)

        def text(value: object) -> str:
            chunks = c_encode(value, 0)  # in practice a list of one string
            return chunks[0] if len(chunks) == 1 else "".join(chunks)

        def encode(value: object) -> bytes:
            chunks = c_encode(value, 0)  # text(), inlined: once per encode
            return (chunks[0] if len(chunks) == 1 else "".join(chunks)).encode("utf-8")

        if encode(_PROBE) != encode_canonical_json(_PROBE):
            return encode_canonical_json, None, None
    except Exception:  # another Python's private encoder API: use the library
        return encode_canonical_json, None, None
    return encode, text, basestring


encode_canonical, encode_canonical_text, encode_canonical_string = _build()
"""``encode_canonical(value)``: ``value`` as canonical JSON bytes (see the
module docstring). ``encode_canonical_text(value)``: the same as a str, not
yet UTF-8 encoded (so it may hold lone surrogates that encoding then refuses),
for callers that assemble canonical JSON from pieces; None where the C encoder
is not used. ``encode_canonical_string(s)``: the quoted, escaped JSON text of
one str (the encoder's own string encoder; None likewise)."""
