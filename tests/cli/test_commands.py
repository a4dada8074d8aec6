"""The ``matrixfed`` client and admin subcommands against a real ``twistd matrixfed``."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from signedjson.key import generate_signing_key, get_verify_key
from signedjson.sign import sign_json
from twisted.trial import unittest

import matrixfed
from matrixfed.cli.admin import check_key_response
from matrixfed.cli.client import render_progress
from matrixfed.keys.signing_key import key_id, verify_key_base64
from tests.clientapi.procs import SHARED_SECRET, MatrixfedProcess
from tests.federation.fakes import TestCA


def cli(*argv: str, stdin: str | None = None) -> tuple[int, str, str]:
    """Run ``matrixfed ARGV`` in a new process; (status, stdout, stderr)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(matrixfed.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("MATRIXFED_TOKEN", None)
    proc = subprocess.run(
        [sys.executable, "-m", "matrixfed.cli.main", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    return proc.returncode, proc.stdout, proc.stderr


def token_of(out: str) -> str:
    for line in out.splitlines():
        if line.startswith("access token: "):
            return line.split(": ", 1)[1]
    raise AssertionError(f"no token in {out!r}")


class AgainstRunningServerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.ca = TestCA()
        self.server = MatrixfedProcess(os.path.abspath(self.mktemp()), self.ca)
        self.addCleanup(self.server.stop)
        self.server.start()
        self.url = self.server.client_url

    def test_register_send_state_rooms_join(self) -> None:
        s = self.server
        code, out, err = cli(
            "register-user", "alice", "--password", "pw", "--url", self.url,
            "--shared-secret", SHARED_SECRET,
        )  # fmt: skip
        self.assertEqual(code, 0, err)
        self.assertIn(f"@alice:{s.server_name}", out)
        alice = token_of(out)

        # Registered straight into the running server's database.
        data_dir = os.path.join(s.directory, "data")
        code, out, err = cli(
            "register-user", "bob", "--data-dir", data_dir, "--server-name", s.server_name,
            stdin="bob-pw\n",
        )  # fmt: skip
        self.assertEqual(code, 0, err)
        bob = token_of(out)
        status, login = s.request(
            "POST",
            "/_matrix/client/v3/login",
            {"type": "m.login.password", "user": "bob", "password": "bob-pw"},
        )
        self.assertEqual(status, 200, login)

        status, created = s.request(
            "POST",
            "/_matrix/client/v3/createRoom",
            {"preset": "public_chat", "room_alias_name": "cli", "name": "CLI room"},
            token=alice,
        )
        self.assertEqual(status, 200, created)
        room_id = created["room_id"]
        alias = f"#cli:{s.server_name}"

        code, out, err = cli("join", alias, "--url", self.url, "--token", bob)
        self.assertEqual((code, out.strip()), (0, room_id), err)

        code, out, err = cli("send", alias, "hello from the cli", "--url", self.url, "--token", bob)
        self.assertEqual(code, 0, err)
        event_id = out.strip()
        self.assertTrue(event_id.startswith("$"))
        status, event = s.request(
            "GET", f"/_matrix/client/v3/rooms/{room_id}/event/{event_id}", token=alice
        )
        self.assertEqual((status, event["content"]["body"]), (200, "hello from the cli"))

        code, out, err = cli("state", room_id, "--url", self.url, "--token", alice)
        self.assertEqual(code, 0, err)
        self.assertIn('m.room.name\t\t{"name": "CLI room"}', out)
        self.assertIn(f"m.room.member\t@bob:{s.server_name}", out)

        code, out, err = cli("rooms", "--url", self.url, "--token", bob)
        self.assertEqual((code, out), (0, f"{room_id}\tCLI room\n"), err)

    def test_errors_are_one_line_and_status_1(self) -> None:
        code, _, err = cli(
            "register-user", "eve", "--password", "pw", "--url", self.url,
            "--shared-secret", "wrong",
        )  # fmt: skip
        self.assertEqual((code, err.strip()), (1, "matrixfed: M_FORBIDDEN: HMAC incorrect"))
        code, _, err = cli("rooms", "--url", self.url, "--token", "nope")
        self.assertEqual(code, 1)
        self.assertIn("M_UNKNOWN_TOKEN", err)
        code, _, err = cli("rooms", "--url", self.url)
        self.assertEqual(code, 1)
        self.assertIn("access token", err)

    def test_keys_of_a_live_server_verify(self) -> None:
        code, out, err = cli(
            "keys", self.server.server_name, "--ca", self.ca.ca_file, "--allow-private"
        )
        self.assertEqual(code, 0, err)
        self.assertIn("self-signature: verifies", out)
        self.assertIn("ed25519:", out)


class OfflineTests(unittest.TestCase):
    def test_every_subcommand_has_help(self) -> None:
        for command in ("register-user", "join", "rooms", "state", "send", "keys"):
            code, out, _ = cli(command, "--help")
            self.assertEqual(code, 0)
            self.assertIn("usage: matrixfed " + command, out)

    def test_key_response_checks(self) -> None:
        key = generate_signing_key("k1")
        body = {
            "server_name": "example.org",
            "valid_until_ts": int(time.time() * 1000) + 3600_000,
            "verify_keys": {key_id(key): {"key": verify_key_base64(get_verify_key(key))}},
            "old_verify_keys": {},
        }
        good = sign_json(dict(body), "example.org", key)
        lines, ok, reason = check_key_response("example.org", good)
        self.assertEqual((ok, reason), (True, "ok"))
        self.assertTrue(any(line.startswith("ed25519:k1: ") for line in lines))

        tampered = dict(good, valid_until_ts=good["valid_until_ts"] + 1)
        self.assertFalse(check_key_response("example.org", tampered)[1])
        self.assertIn("server_name", check_key_response("other.org", good)[2])
        other = generate_signing_key("k1")
        forged = sign_json(dict(body), "example.org", other)
        self.assertFalse(check_key_response("example.org", forged)[1])

    def test_progress_bar(self) -> None:
        self.assertEqual(
            render_progress({"stage": "verify", "done": 50, "total": 100}, width=10),
            "[#####-----] verify     50/100",
        )
        self.assertEqual(
            render_progress({"stage": "make_join", "done": 0, "total": 0}, width=4),
            "[----] make_join  0/0",
        )

    def test_register_into_a_fresh_data_dir(self) -> None:
        data_dir = self.mktemp()
        code, out, err = cli(
            "register-user", "carol", "--password", "pw", "--data-dir", data_dir,
            "--server-name", "example.org",
        )  # fmt: skip
        self.assertEqual(code, 0, err)
        self.assertIn("@carol:example.org", out)
        code, _, err = cli(
            "register-user", "carol", "--password", "pw", "--data-dir", data_dir,
            "--server-name", "example.org",
        )  # fmt: skip
        self.assertEqual(code, 1)
        self.assertIn("User ID already taken", err)
