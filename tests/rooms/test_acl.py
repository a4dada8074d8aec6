"""Server ACL matching (matrixfed/rooms/acl.py)."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from matrixfed.rooms.acl import server_is_allowed, strip_port


class ServerIsAllowedTests(unittest.SynchronousTestCase):
    def test_no_acl_allows_everyone(self) -> None:
        self.assertTrue(server_is_allowed(None, "evil.example"))

    def test_spec_order(self) -> None:
        acl: dict[str, Any] = {"allow": ["*"], "deny": ["evil.com", "*.evil.com"]}
        for name, allowed in [
            ("good.org", True),
            ("evil.com", False),
            ("evil.com:8448", False),
            ("EVIL.com:1234", False),
            ("sub.evil.com", False),
            ("notevil.com", True),
        ]:
            self.assertEqual(server_is_allowed(acl, name), allowed, name)

    def test_deny_wins_over_allow_and_empty_allow_denies(self) -> None:
        self.assertFalse(server_is_allowed({"allow": ["a.org"], "deny": ["a.org"]}, "a.org"))
        self.assertFalse(server_is_allowed({}, "a.org"))
        self.assertFalse(server_is_allowed({"deny": []}, "a.org"))

    def test_globs(self) -> None:
        acl = {"allow": ["matrix.?rg", "*.example.*"]}
        self.assertTrue(server_is_allowed(acl, "matrix.org"))
        self.assertFalse(server_is_allowed(acl, "matrix.oorg"))
        self.assertTrue(server_is_allowed(acl, "a.example.net"))
        self.assertFalse(server_is_allowed(acl, "example.net"))
        # Regex characters are literal.
        self.assertFalse(server_is_allowed({"allow": ["a+b.org"]}, "aab.org"))
        self.assertTrue(server_is_allowed({"allow": ["a+b.org"]}, "a+b.org"))

    def test_ip_literals(self) -> None:
        acl: dict[str, Any] = {"allow": ["*"], "allow_ip_literals": False}
        for name in ("1.2.3.4", "1.2.3.4:8448", "[::1]", "[::1]:8448"):
            self.assertFalse(server_is_allowed(acl, name), name)
        self.assertTrue(server_is_allowed(acl, "1.2.3.4.example"))
        # Missing or non-boolean: allowed.
        self.assertTrue(server_is_allowed({"allow": ["*"]}, "1.2.3.4"))
        self.assertTrue(server_is_allowed({"allow": ["*"], "allow_ip_literals": "no"}, "1.2.3.4"))

    def test_malformed_lists_are_empty(self) -> None:
        self.assertTrue(server_is_allowed({"allow": ["*"], "deny": "a.org"}, "a.org"))
        self.assertFalse(server_is_allowed({"allow": "*"}, "a.org"))
        self.assertTrue(server_is_allowed({"allow": [1, "a.org"]}, "a.org"))

    def test_strip_port(self) -> None:
        self.assertEqual(strip_port("Host.ORG:8448"), "host.org")
        self.assertEqual(strip_port("[::1]:8448"), "[::1]")
        self.assertEqual(strip_port("1.2.3.4"), "1.2.3.4")
