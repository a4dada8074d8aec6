"""matrixfed as real processes (``twistd -n matrixfed``) on 127.0.0.1 for end-to-end tests.

``MatrixfedProcess.start()`` writes a TLS certificate from a shared test CA,
runs the server with open registration and a shared secret, and waits until
the client API answers. ``stop()`` ends it by its PID (SIGTERM, then SIGKILL
after a grace period). Everything here blocks: call it from a thread or from
synchronous code, never on the reactor thread.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from twisted.internet.endpoints import quoteStringArgument

import matrixfed
from tests.federation.fakes import TestCA
from tests.harness.servers import free_port

SHARED_SECRET = "e2e-shared-secret"
# How long a server may take to start (imports, key generation, migrations).
START_BUDGET_S = 60.0
# Grace period between SIGTERM and SIGKILL.
STOP_GRACE_S = 10.0
POLL_S = 0.1


class MatrixfedProcess:
    """One ``twistd -n matrixfed`` process."""

    def __init__(self, directory: str, ca: TestCA) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.ca = ca
        self.federation_port = free_port()
        self.client_port = free_port()
        self.server_name = f"127.0.0.1:{self.federation_port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def log_file(self) -> str:
        return os.path.join(self.directory, "matrixfed.log")

    def command(self) -> list[str]:
        cert_pem, key_pem = self.ca.issue("127.0.0.1")
        cert = os.path.join(self.directory, "tls.crt")
        key = os.path.join(self.directory, "tls.key")
        with open(cert, "wb") as f:
            f.write(cert_pem)
        with open(key, "wb") as f:
            f.write(key_pem)
        quote: Any = quoteStringArgument
        return [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "--logfile=" + self.log_file,
            "matrixfed",
            "--server-name",
            self.server_name,
            "--data-dir",
            os.path.join(self.directory, "data"),
            "--federation-listen",
            f"ssl:{self.federation_port}:interface=127.0.0.1"
            f":privateKey={quote(key)}:certKey={quote(cert)}",
            "--client-listen",
            f"tcp:{self.client_port}:interface=127.0.0.1",
            "--tls-certificate",
            cert,
            "--tls-private-key",
            key,
            "--federation-ca",
            self.ca.ca_file,
            "--federation-allow-private",
            "--enable-registration",
            "--registration-shared-secret",
            SHARED_SECRET,
        ]

    def start(self) -> None:
        """Start the process and wait until its client API answers."""
        root = os.path.dirname(os.path.dirname(os.path.abspath(matrixfed.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        out = open(os.path.join(self.directory, "stdout.log"), "wb")
        self.process = subprocess.Popen(
            self.command(), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.directory
        )
        out.close()
        deadline = time.monotonic() + START_BUDGET_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"matrixfed exited at start-up:\n{self.log_tail()}")
            try:
                status, _ = self.request("GET", "/_matrix/client/versions")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(POLL_S)
        raise RuntimeError(f"matrixfed did not start in time:\n{self.log_tail()}")

    def request(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        """A client API request; (status, parsed JSON)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.client_url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def log_tail(self, lines: int = 60) -> str:
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the process by its PID."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
