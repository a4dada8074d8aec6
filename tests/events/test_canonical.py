"""Tests for matrixfed.events.canonical: byte-identical to canonicaljson."""

from __future__ import annotations

from typing import Any

from canonicaljson import encode_canonical_json
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from matrixfed.events.canonical import encode_canonical

json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8")),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(st.characters(codec="utf-8")), children, max_size=5)
    ),
    max_leaves=30,
)


class EncodeCanonicalTests(unittest.TestCase):
    @settings(max_examples=200, deadline=None)
    @given(json_like)
    def test_same_bytes_as_canonicaljson(self, value: Any) -> None:
        self.assertEqual(encode_canonical(value), encode_canonical_json(value))

    def test_spec_examples(self) -> None:
        self.assertEqual(encode_canonical({"b": "2", "a": "1"}), b'{"a":"1","b":"2"}')
        self.assertEqual(encode_canonical({"本": 2, "日": 1}), '{"日":1,"本":2}'.encode())
        self.assertEqual(encode_canonical({"a": "\u65e5"}), '{"a":"日"}'.encode())

    def test_refuses_what_canonicaljson_refuses(self) -> None:
        for value in ({"x": float("nan")}, {"x": float("inf")}, {"x": "\ud800"}):
            self.assertRaises(ValueError, encode_canonical, value)
            self.assertRaises(ValueError, encode_canonical_json, value)
        for value in ({"x": object()}, {"x": b"bytes"}, {"a": 1, 2: "b"}):
            self.assertRaises(TypeError, encode_canonical, value)
            self.assertRaises(TypeError, encode_canonical_json, value)
