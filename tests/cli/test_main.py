"""The ``matrixfed`` admin command."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stderr, redirect_stdout

from twisted.trial import unittest

from matrixfed.cli.main import main
from matrixfed.keys.signing_key import key_id, load_or_generate_signing_keys


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as e:
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


class GenerateKeysTests(unittest.TestCase):
    def test_writes_key_the_server_then_uses(self) -> None:
        data_dir = self.mktemp()
        code, out, _ = run("generate-keys", "--data-dir", data_dir, "--key-version", "a_test")
        self.assertEqual(code, 0)
        path = os.path.join(data_dir, "signing.key")
        self.assertIn(f"wrote ed25519:a_test to {path}", out)
        [key] = load_or_generate_signing_keys(path)
        self.assertEqual(key_id(key), "ed25519:a_test")

    def test_refuses_to_overwrite_without_force(self) -> None:
        path = os.path.join(self.mktemp(), "k")
        self.assertEqual(run("generate-keys", "-o", path)[0], 0)
        before = open(path).read()
        code, _, err = run("generate-keys", "-o", path)
        self.assertEqual(code, 1)
        self.assertEqual(err.count("\n"), 1)
        self.assertIn("already exists", err)
        self.assertEqual(open(path).read(), before)
        self.assertEqual(run("generate-keys", "-o", path, "--force")[0], 0)
        self.assertNotEqual(open(path).read(), before)
        self.assertEqual(os.listdir(os.path.dirname(path)), ["k"])

    def test_bad_version(self) -> None:
        code, _, err = run("generate-keys", "-o", self.mktemp(), "--key-version", "bad-version")
        self.assertEqual(code, 1)
        self.assertIn("invalid key version", err)

    def test_help_and_usage_errors(self) -> None:
        code, out, _ = run("--help")
        self.assertEqual(code, 0)
        self.assertIn("generate-keys", out)
        self.assertEqual(run()[0], 2)
        self.assertEqual(run("frobnicate")[0], 2)
