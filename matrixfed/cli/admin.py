"""``matrixfed register-user`` and ``matrixfed keys``.

``register-user USER`` creates an account either

- on a running server through Synapse's shared-secret admin API
  (``--url`` and ``--shared-secret``: GET a nonce, POST with the HMAC), or
- directly in a server's database (``--data-dir``/``--database`` and
  ``--server-name``), e.g. before the first start. SQLite allows this while
  the server runs; the new user can log in at once.

It prints the user ID and an access token.

``keys SERVER`` fetches ``/_matrix/key/v2/server`` from another server the way
federation does (server discovery, TLS verified against the system CAs plus
``--ca``), prints every key with its validity and says whether the response's
self-signature verifies with the keys it announces: a federation debugging
aid. Exit status 1 when the signature does not verify.

Both run the Twisted reactor themselves (``task.react``), so they are for the
command line only.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import os
import sys
from typing import Any

from signedjson.key import decode_verify_key_bytes, generate_signing_key
from signedjson.sign import SignatureVerifyException, verify_signed_json
from unpaddedbase64 import decode_base64

from matrixfed.cli.client import ClientApiClient
from matrixfed.clientapi.accounts import Accounts
from matrixfed.clientapi.admin import compute_registration_mac
from matrixfed.config import DEFAULT_DATA_DIR, Config, ConfigError

__all__ = ["add_admin_commands", "check_key_response"]

ADMIN_REGISTER_PATH = "/_synapse/admin/v1/register"
# The name the keys command signs its (unauthenticated) request with.
KEYS_CLIENT_NAME = "matrixfed-cli.invalid"
# Seconds to wait for a key server.
KEYS_TIMEOUT_S = 30.0


def _password(args: argparse.Namespace) -> str:
    if args.password is not None:
        password: str = args.password
        return password
    if not sys.stdin.isatty():
        line = sys.stdin.readline().rstrip("\n")
        if not line:
            raise ConfigError("no password given (--password or on stdin)")
        return line
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Confirm password: "):
        raise ConfigError("passwords do not match")
    if not first:
        raise ConfigError("empty password")
    return first


def _register_remote(args: argparse.Namespace, password: str) -> int:
    client = ClientApiClient(args.url, None)
    nonce = client.call("GET", ADMIN_REGISTER_PATH)["nonce"]
    username = args.user
    if username.startswith("@"):
        username = username[1:].split(":", 1)[0]
    mac = compute_registration_mac(args.shared_secret, nonce, username, password, admin=args.admin)
    answer = client.call(
        "POST",
        ADMIN_REGISTER_PATH,
        {
            "nonce": nonce,
            "username": username,
            "password": password,
            "admin": args.admin,
            "mac": mac,
        },
    )
    print(answer["user_id"])
    print(f"access token: {answer['access_token']}")
    return 0


def _register_local(args: argparse.Namespace, password: str) -> int:
    if not args.server_name:
        raise ConfigError("--server-name is needed to register in a data dir")
    config = Config(server_name=args.server_name, data_dir=args.data_dir, database=args.database)
    from twisted.internet import task

    from matrixfed.storage.database import Database
    from matrixfed.storage.profiles import ProfileStore
    from matrixfed.storage.users import UserStore

    if config.database is None:
        try:
            os.makedirs(config.data_dir, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create {config.data_dir}: {e.strerror or e}") from None
    outcome: dict[str, Any] = {}

    async def run(reactor: Any) -> None:
        db = Database.from_uri(config.database_uri, reactor=reactor)
        try:
            await db.start()
            accounts = Accounts(
                server_name=config.server_name,
                users=UserStore(db=db, clock=reactor),
                profiles=ProfileStore(db=db, clock=reactor),
            )
            user_id = accounts.user_id_for(args.user)
            await accounts.register(user_id, password, admin=args.admin)
            outcome["login"] = await accounts.issue_token(user_id)
        except Exception as e:
            outcome["error"] = e
        finally:
            db.close()

    _react(task, run)
    error = outcome.get("error")
    if error is not None:
        raise ConfigError(getattr(error, "message", None) or str(error))
    login = outcome["login"]
    print(login.user_id)
    print(f"access token: {login.access_token}")
    return 0


def _react(task: Any, run: Any) -> None:
    try:
        task.react(lambda reactor: _deferred(run(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            raise ConfigError("the command failed (see the log above)") from None


def _deferred(coro: Any) -> Any:
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coro)


def _register_user(args: argparse.Namespace) -> int:
    password = _password(args)
    if args.shared_secret is not None:
        return _register_remote(args, password)
    return _register_local(args, password)


def check_key_response(server_name: str, response: Any) -> tuple[list[str], bool, str]:
    """Describe a ``/_matrix/key/v2/server`` answer and check its self-signature.

    Returns:
        (lines describing each key, whether it verifies, why not / "ok").
    """
    if not isinstance(response, dict):
        return [], False, "the answer is not a JSON object"
    lines: list[str] = []
    valid_until = response.get("valid_until_ts")
    if isinstance(valid_until, int):
        lines.append(f"valid_until_ts: {valid_until} ({_when(valid_until)})")
    keys: dict[str, Any] = {}
    for key_id, entry in sorted((response.get("verify_keys") or {}).items()):
        try:
            key = decode_verify_key_bytes(key_id, decode_base64(entry["key"]))
        except (ValueError, KeyError, TypeError):
            lines.append(f"{key_id}: undecodable key {entry!r}")
            continue
        keys[key_id] = key
        lines.append(f"{key_id}: {entry['key']}")
    for key_id, entry in sorted((response.get("old_verify_keys") or {}).items()):
        expired = entry.get("expired_ts") if isinstance(entry, dict) else None
        when = f" (expired {_when(expired)})" if isinstance(expired, int) else ""
        key_text = entry.get("key") if isinstance(entry, dict) else entry
        lines.append(f"{key_id}: {key_text} old{when}")
    if response.get("server_name") != server_name:
        return lines, False, f"server_name is {response.get('server_name')!r}"
    signatures = (response.get("signatures") or {}).get(server_name) or {}
    if not signatures:
        return lines, False, f"not signed by {server_name}"
    for key_id in signatures:
        signer = keys.get(key_id)
        if signer is None:
            return lines, False, f"signed with {key_id}, which is not among verify_keys"
        try:
            verify_signed_json(response, server_name, signer)
        except SignatureVerifyException as e:
            return lines, False, f"signature {key_id} does not verify: {e}"
    return lines, True, "ok"


def _when(ts_ms: int) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(ts_ms / 1000, tz=datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return "out of range"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _keys(args: argparse.Namespace) -> int:
    from twisted.internet import task

    from matrixfed.errors import RemoteError
    from matrixfed.federation.client import build_federation_client

    outcome: dict[str, Any] = {}

    async def run(reactor: Any) -> None:
        try:
            client = build_federation_client(
                reactor=reactor,
                server_name=KEYS_CLIENT_NAME,
                signing_key=generate_signing_key("cli"),
                ca_file=args.ca,
                verify_tls=not args.insecure,
                allow_private=args.allow_private,
            )
        except ValueError as e:
            outcome["error"] = f"--ca: {e}"
            return
        try:
            outcome["response"] = await client.get_json(
                args.server, "/_matrix/key/v2/server", timeout=KEYS_TIMEOUT_S
            )
        except RemoteError as e:
            outcome["error"] = str(e)
        finally:
            await client.close()

    _react(task, run)
    if "error" in outcome:
        raise ConfigError(outcome["error"])
    lines, ok, reason = check_key_response(args.server, outcome["response"])
    print(f"server: {args.server}")
    for line in lines:
        print("  " + line)
    print(f"self-signature: {'verifies' if ok else 'DOES NOT VERIFY: ' + reason}")
    return 0 if ok else 1


def add_admin_commands(sub: Any) -> None:
    """Add register-user and keys to the ``matrixfed`` subparsers."""
    reg = sub.add_parser(
        "register-user",
        help="create a user account",
        description="Create a user on a running server (--url and --shared-secret, "
        "Synapse's shared-secret registration) or directly in a data dir's database "
        "(--data-dir and --server-name). Prints the user ID and an access token.",
    )
    reg.add_argument("user", metavar="USER", help="localpart or full user ID")
    reg.add_argument("--password", help="the password (default: prompt, or read stdin)")
    reg.add_argument("--admin", action="store_true", help="make the user a server admin")
    reg.add_argument("--url", default="http://127.0.0.1:8008", help="server's client API")
    reg.add_argument("--shared-secret", help="the server's --registration-shared-secret")
    reg.add_argument(
        "--data-dir", default=DEFAULT_DATA_DIR, help="the server's data dir (default: %(default)s)"
    )
    reg.add_argument("--database", help="database URI (default: SQLite in the data dir)")
    reg.add_argument("--server-name", help="the server's name (for --data-dir)")
    reg.set_defaults(func=_register_user)

    keys = sub.add_parser(
        "keys",
        help="fetch and verify a server's signing keys",
        description="Fetch /_matrix/key/v2/server from SERVER as federation does, print "
        "its keys and whether the self-signature verifies (exit 1 if not).",
    )
    keys.add_argument("server", metavar="SERVER", help="server name, e.g. matrix.org")
    keys.add_argument("--ca", help="extra trusted CA certificate(s), PEM")
    keys.add_argument(
        "--insecure", action="store_true", help="do not verify the TLS certificate (testing)"
    )
    keys.add_argument(
        "--allow-private", action="store_true", help="allow loopback and private addresses"
    )
    keys.set_defaults(func=_keys)
