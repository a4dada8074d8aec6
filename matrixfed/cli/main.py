"""The ``matrixfed`` command: small administrative tasks beside ``twistd matrixfed``.

Subcommands:
    generate-keys   write a new ed25519 signing key (Synapse's file format).
    register-user   create an account (shared-secret API or a data dir's database).
    join, rooms, state, send
                    drive a running server through its client API.
    keys            fetch and verify another server's signing keys.

Exit status 0 on success, 1 with one ``matrixfed: ...`` line on stderr when the
task fails, 2 for usage errors (argparse).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from signedjson.key import get_verify_key

from matrixfed import __version__
from matrixfed.cli.admin import add_admin_commands
from matrixfed.cli.client import add_client_commands
from matrixfed.config import DEFAULT_DATA_DIR, ConfigError
from matrixfed.keys.signing_key import generate_key_file, key_id, verify_key_base64

__all__ = ["main"]


def _generate_keys(args: argparse.Namespace) -> int:
    path = args.output or os.path.join(args.data_dir, "signing.key")
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {directory}: {e.strerror or e}") from None
    if args.force and os.path.lexists(path):
        # Write beside it, then swap: a failure never leaves us with no key.
        staged = path + ".new"
        if os.path.lexists(staged):
            os.unlink(staged)
        key = generate_key_file(staged, version=args.key_version)
        os.replace(staged, path)
    else:
        key = generate_key_file(path, version=args.key_version)
    print(f"wrote {key_id(key)} to {path}")
    print(f"public key: {verify_key_base64(get_verify_key(key))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (public so tests and docs can inspect it)."""
    parser = argparse.ArgumentParser(
        prog="matrixfed",
        description="Administrative commands for matrixfed. "
        "Run the server itself with `twistd -n matrixfed --help`.",
    )
    parser.add_argument("--version", action="version", version=f"matrixfed {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    gen = sub.add_parser(
        "generate-keys",
        help="write a new signing key",
        description="Write a new ed25519 signing key in Synapse's format "
        "('ed25519 VERSION SEED'). Refuses to replace an existing key unless --force.",
    )
    gen.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        help="write DATA_DIR/signing.key, where the server looks (default: %(default)s)",
    )
    gen.add_argument("--output", "-o", help="write this file instead")
    gen.add_argument(
        "--key-version",
        help="the key version, [A-Za-z0-9_]+ (default: a random one like a_XyZw)",
    )
    gen.add_argument(
        "--force",
        action="store_true",
        help="replace an existing key (remote servers will no longer trust old signatures)",
    )
    gen.set_defaults(func=_generate_keys)
    add_admin_commands(sub)
    add_client_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``matrixfed`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as e:
        print(f"matrixfed: {e}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
