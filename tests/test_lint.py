"""mypy (strict, configured in setup.cfg) and ruff run as part of the test suite.

A type error or a lint finding fails the build like any other test; the
tools' own output is the failure message. A missing tool fails too ("No module
named ..."): the test extra installs both.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Everything ruff looks at: the package, the plugin, the tests and the benchmarks.
LINTED = ("matrixfed", "twisted", "tests", "bench", "setup.py")
# mypy over the whole package takes ~10 s cold on these machines.
TOOL_TIMEOUT_S = 600


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )


class LintTests(unittest.TestCase):
    def test_mypy_strict(self) -> None:
        # setup.cfg's [mypy] section sets strict = True and files = matrixfed.
        result = _run(sys.executable, "-m", "mypy", "--config-file", "setup.cfg")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_ruff_check(self) -> None:
        result = _run(sys.executable, "-m", "ruff", "check", *LINTED)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_ruff_format(self) -> None:
        result = _run(sys.executable, "-m", "ruff", "format", "--check", *LINTED)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
