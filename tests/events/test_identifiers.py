"""Tests for matrixfed.events.identifiers (appendices "Identifier Grammar")."""

from __future__ import annotations

from twisted.trial import unittest

from matrixfed.events.identifiers import (
    domain_of,
    is_valid_domain_room_id,
    is_valid_hash_event_id,
    is_valid_hash_room_id,
    is_valid_server_name,
    is_valid_user_id,
    is_valid_v1_event_id,
    utf8_len,
)


class ServerNameTests(unittest.TestCase):
    def test_spec_examples(self) -> None:
        for name in (
            "matrix.org",
            "matrix.org:8888",
            "1.2.3.4",
            "1.2.3.4:1234",
            "[1234:5678::abcd]",
            "[1234:5678::abcd]:5678",
            "127.0.0.1:58169",
            "localhost",
            "MATRIX.org",
        ):
            self.assertTrue(is_valid_server_name(name), name)

    def test_invalid(self) -> None:
        for name in (
            "",
            ":8448",
            "matrix.org:",
            "matrix.org:123456",
            "matrix org",
            "matrix.org:port",
            "[1234::abcd",
            "[]",
            "ünicode.example",
            "a/b",
            "matrix.org\n",
            "1234:5678::abcd",
            "a" * 256,
        ):
            self.assertFalse(is_valid_server_name(name), name)


class UserIdTests(unittest.TestCase):
    def test_valid_including_historical(self) -> None:
        for user_id in (
            "@alice:a.example",
            "@a.b_c=d-e/f+g:a.example:8448",
            "@:a.example",
            "@Alice Ünïcode!:a.example",
            "@x:[::1]",
        ):
            self.assertTrue(is_valid_user_id(user_id), user_id)

    def test_invalid(self) -> None:
        for user_id in (
            "alice:a.example",
            "@alice",
            "@alice:",
            "@a\x00:a.example",
            "@alice:bad name",
            "@\ud800:a.example",
        ):
            self.assertFalse(is_valid_user_id(user_id), user_id)

    def test_length_in_bytes(self) -> None:
        base = ":a.example"
        ok = "@" + "a" * (255 - 1 - len(base)) + base
        self.assertTrue(is_valid_user_id(ok))
        self.assertFalse(is_valid_user_id(ok[:1] + "a" + ok[1:]))
        wide = "@" + "é" * 123 + base  # 1 + 246 + 10 = 257 bytes, 134 code points
        self.assertFalse(is_valid_user_id(wide))
        self.assertTrue(is_valid_user_id(wide, check_length=False))


class EventAndRoomIdTests(unittest.TestCase):
    def test_v1_event_ids(self) -> None:
        self.assertTrue(is_valid_v1_event_id("$abc:a.example"))
        self.assertTrue(is_valid_v1_event_id("$:a.example:8448"))
        for bad in ("abc:a.example", "$abc", "$abc:", "$abc:bad host", "$a\x00:a.example"):
            self.assertFalse(is_valid_v1_event_id(bad), bad)

    def test_hash_event_ids(self) -> None:
        std = "$" + "a+/" * 14 + "b"
        url = "$" + "a-_" * 14 + "b"
        self.assertTrue(is_valid_hash_event_id(std, urlsafe=False))
        self.assertFalse(is_valid_hash_event_id(std, urlsafe=True))
        self.assertTrue(is_valid_hash_event_id(url, urlsafe=True))
        self.assertFalse(is_valid_hash_event_id(url, urlsafe=False))
        for bad in (url[:-1], url + "c", "!" + url[1:], url[:-1] + "=", url[:-1] + "é"):
            self.assertFalse(is_valid_hash_event_id(bad, urlsafe=True), bad)

    def test_room_ids(self) -> None:
        h = "!" + "a-_" * 14 + "b"
        self.assertTrue(is_valid_hash_room_id(h))
        self.assertFalse(is_valid_hash_room_id("$" + h[1:]))
        self.assertFalse(is_valid_hash_room_id("!abc:a.example"))
        self.assertTrue(is_valid_domain_room_id("!abc:a.example"))
        self.assertTrue(is_valid_domain_room_id("!abc:anything at all"))
        for bad in (h, "!abc:", "abc:a.example", "!a\x00:a.example"):
            self.assertFalse(is_valid_domain_room_id(bad), bad)

    def test_domain_of(self) -> None:
        self.assertEqual(domain_of("@a:b.example:8448"), "b.example:8448")
        self.assertEqual(domain_of("@a:"), "")
        self.assertIsNone(domain_of("@a"))

    def test_utf8_len(self) -> None:
        self.assertEqual(utf8_len("abc"), 3)
        self.assertEqual(utf8_len("é"), 2)
        self.assertEqual(utf8_len("\ud800"), -1)
