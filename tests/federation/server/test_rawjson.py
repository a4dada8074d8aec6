"""Pre-encoded event arrays in answers (matrixfed/federation/server/rawjson.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator

from twisted.trial import unittest

from matrixfed.federation.server.rawjson import (
    EncodedJsonArray,
    StreamedJsonArray,
    encode_body,
    encoded_chunks,
    resolve_streams,
)

PDUS = [{"type": "m.room.create", "content": {"name": "caf\u00e9 \u2603"}}, {"depth": 2}]


def texts() -> EncodedJsonArray:
    return EncodedJsonArray([json.dumps(p, separators=(",", ":")) for p in PDUS])


class EncodeBodyTests(unittest.TestCase):
    def test_spliced_answer_decodes_to_the_same_value(self) -> None:
        body = {"origin": "a.example", "state": texts(), "auth_chain": EncodedJsonArray([])}
        decoded = json.loads(encode_body(body))
        self.assertEqual(decoded, {"origin": "a.example", "state": PDUS, "auth_chain": []})

    def test_v1_shape_inside_a_list(self) -> None:
        decoded = json.loads(encode_body([200, {"state": texts(), "event": {"x": "\u00e9"}}]))
        self.assertEqual(decoded, [200, {"state": PDUS, "event": {"x": "\u00e9"}}])

    def test_spliced_bytes_are_what_the_plain_encoder_writes(self) -> None:
        # For ASCII items the splice is byte for byte the compact encoding of
        # the decoded body, at both splice depths and for empty arrays.
        items = [{"type": "m.room.member", "n": i, "content": {"a": [1, "b"]}} for i in range(3)]
        texts = EncodedJsonArray([json.dumps(p, separators=(",", ":")) for p in items])
        for body, plain in [
            (
                {"origin": "o", "state": texts, "auth_chain": EncodedJsonArray([]), "x": [1]},
                {"origin": "o", "state": items, "auth_chain": [], "x": [1]},
            ),
            (
                [200, {"state": texts, "event": {"k": None}}],
                [200, {"state": items, "event": {"k": None}}],
            ),
            ([texts, 2, EncodedJsonArray([texts.texts[0]])], [items, 2, items[:1]]),
        ]:
            self.assertEqual(encode_body(body), json.dumps(plain, separators=(",", ":")).encode())

    def test_plain_bodies_are_compact_utf8(self) -> None:
        self.assertEqual(encode_body({"a": ["\u00e9", 1]}), '{"a":["\u00e9",1]}'.encode())

    def test_not_json_raises(self) -> None:
        self.assertRaises(TypeError, encode_body, {"a": object()})
        self.assertRaises(TypeError, encode_body, {"state": texts(), "a": object()})

    def test_in_process_readers_see_the_decoded_items(self) -> None:
        array = texts()
        self.assertEqual(len(array), 2)
        self.assertEqual(list(array), PDUS)
        self.assertEqual(array[1], {"depth": 2})
        self.assertEqual(array[-1:], [{"depth": 2}])
        self.assertEqual(array, PDUS)
        self.assertNotEqual(array, PDUS[:1])


async def _batches(*batches: list[str]) -> AsyncGenerator[list[str], None]:
    for batch in batches:
        yield batch


def _streamed(*batches: list[str]) -> StreamedJsonArray:
    return StreamedJsonArray(_batches(*batches))


class StreamedArrayTests(unittest.TestCase):
    async def test_chunks_join_to_what_encode_body_gives_once_resolved(self) -> None:
        t = texts().texts
        for make in [
            lambda: {"origin": "o", "state": _streamed(t[:1], [], t[1:]), "e": _streamed()},
            lambda: [200, {"state": _streamed([], t), "x": texts(), "y": "\u00e9"}],
            lambda: [_streamed(t), 1, _streamed([], [])],
        ]:
            chunks = [c async for c in encoded_chunks(make())]
            self.assertEqual(b"".join(chunks), encode_body(await resolve_streams(make())))
        # One chunk per non-empty batch, the text before each stream with its first.
        chunks = [c async for c in encoded_chunks({"a": _streamed(t[:1], [], t[1:]), "b": 2})]
        self.assertEqual(len(chunks), 3)
        self.assertEqual(json.loads(b"".join(chunks)), {"a": PDUS, "b": 2})

    async def test_streams_are_read_once_and_not_plain_json(self) -> None:
        array = _streamed(texts().texts)
        self.assertRaises(TypeError, encode_body, {"state": array})
        self.assertEqual(list(await array.collect()), PDUS)
        with self.assertRaises(RuntimeError):
            await array.collect()
