"""``twistd matrixfed`` as a user runs it: in a subprocess, stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

import matrixfed
from tests.servertestutil import free_port, http_get_json, https_get_json

# Where the venv's twistd lives (next to the interpreter running the tests).
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
# How long a subprocess server may take to come up on a busy 2-core machine.
START_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.2


def plugin_env() -> dict[str, str]:
    """Environment in which twistd finds the plugin of the matrixfed under test.

    Twisted searches ``twisted/plugins`` in every sys.path entry, so putting the
    directory that holds this ``matrixfed`` package first covers both an
    installed package (site-packages) and a source checkout.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(matrixfed.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def twistd(*args: str, cwd: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "matrixfed", *args],
        cwd=cwd,
        env=plugin_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class PluginTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def run_to_exit(self, *args: str) -> tuple[int, str, str]:
        proc = twistd(*args, cwd=self.dir)
        out, err = proc.communicate(timeout=START_TIMEOUT_S)
        return proc.returncode, out, err

    def test_listed_by_twistd(self) -> None:
        out = subprocess.run(
            [TWISTD, "--help"], env=plugin_env(), capture_output=True, text=True, check=True
        ).stdout
        self.assertIn("matrixfed", out)
        help_out = subprocess.run(
            [TWISTD, "matrixfed", "--help"],
            env=plugin_env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for option in ["--server-name", "--federation-listen", "--trusted-key-server"]:
            self.assertIn(option, help_out)

    def assert_one_line_error(self, args: list[str], expected: str) -> None:
        code, out, err = self.run_to_exit(*args)
        self.assertNotEqual(code, 0)
        self.assertNotIn("Traceback", out + err)
        lines = err.strip().splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith("matrixfed: "), lines[0])
        self.assertIn(expected, lines[0])

    def test_bad_options_give_one_line(self) -> None:
        self.assert_one_line_error([], "--server-name is required")
        self.assert_one_line_error(["--server-name", "bad name"], "--server-name")
        self.assert_one_line_error(["--server-name", "a", "--bogus"], "bogus")
        self.assert_one_line_error(
            ["--server-name", "a", "--key-validity-period", "1m"], "--key-validity-period"
        )
        self.assert_one_line_error(
            ["--server-name", "a", "--config", "missing.yaml"], "missing.yaml"
        )

    async def _wait_until_serving(self, proc: subprocess.Popen[str], url: str) -> Any:
        cert = os.path.join(self.dir, "data", "tls.crt")
        waited = 0.0
        while True:
            if proc.poll() is not None:
                out, err = proc.communicate()
                self.fail(f"twistd exited with {proc.returncode}:\n{out}\n{err}")
            if os.path.exists(cert):
                try:
                    return await https_get_json(url, trust_pem=open(cert, "rb").read())
                except Exception:
                    pass  # not listening yet, or the certificate half-written
            if waited > START_TIMEOUT_S:
                self.fail("twistd did not start serving in time")
            await deferLater(reactor, POLL_INTERVAL_S, lambda: None)
            waited += POLL_INTERVAL_S

    def stop(self, proc: subprocess.Popen[str]) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.communicate(timeout=START_TIMEOUT_S)

    async def test_starts_serves_and_stops(self) -> None:
        fed, client = free_port(), free_port()
        name = f"127.0.0.1:{fed}"
        data = os.path.join(self.dir, "data")
        proc = twistd(
            "--server-name",
            name,
            "--data-dir",
            "data",
            "--federation-listen",
            f"ssl:{fed}:interface=127.0.0.1:privateKey=data/tls.key:certKey=data/tls.crt",
            "--client-listen",
            f"tcp:{client}:interface=127.0.0.1",
            cwd=self.dir,
        )
        self.addCleanup(self.stop, proc)
        code, body = await self._wait_until_serving(proc, f"https://{name}/_matrix/key/v2/server")
        self.assertEqual((code, body["server_name"]), (200, name))
        self.assertTrue(
            {"matrixfed.db", "signing.key", "tls.crt", "tls.key"} <= set(os.listdir(data))
        )
        code, body = await http_get_json(f"http://127.0.0.1:{client}/_matrix/client/versions")
        self.assertEqual(code, 200)
        self.assertIn("v1.1", body["versions"])
        code, body = await http_get_json(f"http://127.0.0.1:{client}/_matrix/client/v3/nonexistent")
        self.assertEqual((code, body["errcode"]), (404, "M_UNRECOGNIZED"))
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=START_TIMEOUT_S)
        # twistd re-raises the signal that stopped it once it has shut down cleanly.
        self.assertIn(proc.returncode, (0, -signal.SIGTERM), out + err)
        self.assertIn("matrixfed serving as " + name, out)
        self.assertIn("Server Shut Down.", out)
        self.assertNotIn("Traceback", out + err)

    def test_port_in_use_stops_with_one_critical_line(self) -> None:
        import socket

        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            code, out, err = self.run_to_exit(
                "--server-name",
                f"127.0.0.1:{port}",
                "--data-dir",
                "data",
                "--federation-listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--client-listen",
                "none",
            )
        self.assertNotEqual(code, 0)
        self.assertIn("matrixfed: --federation-listen: cannot listen on", out + err)
        self.assertNotIn("Traceback", out + err)
