"""Tests for matrixfed.auth.identifiers: user ID checks used by the auth rules."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from matrixfed.auth.identifiers import is_user_id_shaped, is_valid_user_id


class IdentifierTests(SynchronousTestCase):
    def test_user_id_strengths(self) -> None:
        for user_id, shaped, valid in (
            ("@alice:a.example", True, True),
            ("@alice:a.example:8448", True, True),
            ("@alice:1.2.3.4", True, True),
            ("@alice:1.2.3.400", True, False),
            ("@alice:[::1]:8448", True, True),
            ("@Legacy!User:a.example", True, True),
            ("@:a.example", True, True),
            ("@alice:bad host", True, False),
            ("@alice:a.example:port", True, False),
            ("@al\x00ice:a.example", False, False),
            ("@alice", False, False),
            ("@alice:", False, False),
            ("alice:a.example", False, False),
            ("@" + "a" * 250 + ":a.example", True, False),
            (5, False, False),
        ):
            self.assertEqual(is_user_id_shaped(user_id), shaped, repr(user_id))
            self.assertEqual(is_valid_user_id(user_id), valid, repr(user_id))
