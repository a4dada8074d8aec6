"""The server's configuration: one frozen ``Config``, from options, a YAML file, or code.

Every option is one attrs field of ``Config`` carrying its help text and how a
string from the command line or a value from YAML becomes the typed value. The
twistd options class (``MatrixfedOptions``) and the YAML loader are generated
from those fields, so adding an option is adding one field with ``option()``.

Precedence: command line, then the YAML file given with ``--config``, then the
field's default.

How it fails: any bad value raises ``ConfigError`` with one line naming the
option and what is wrong; ``twistd matrixfed`` prints that line and exits 1.
Constructing ``Config(...)`` directly (embedding) validates the same way.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import attrs
import yaml
from twisted.internet.endpoints import quoteStringArgument
from twisted.python import usage

from matrixfed.events.identifiers import is_valid_server_name
from matrixfed.events.room_versions import DEFAULT_ROOM_VERSION, KNOWN_ROOM_VERSIONS

__all__ = [
    "Config",
    "ConfigError",
    "MatrixfedOptions",
    "option",
    "parse_duration_ms",
    "split_server_name",
]

SECOND_MS = 1000
HOUR_MS = 3600 * SECOND_MS
DAY_MS = 24 * HOUR_MS

# spec: the key server's valid_until_ts must be useful to others for a while; an
# hour is the least that lets remote caches work.
MIN_KEY_VALIDITY_MS = HOUR_MS
# spec (room versions 5+): remote servers use at most 7 days of a key's
# valid_until_ts, so announcing longer only misleads older servers.
MAX_KEY_VALIDITY_MS = 7 * DAY_MS
# Synapse's default key refresh period: a day.
DEFAULT_KEY_VALIDITY_MS = DAY_MS
# A /send transaction is at most 50 PDUs + 100 EDUs of 64 KiB each (~9.4 MiB).
DEFAULT_MAX_REQUEST_BODY_SIZE = 10 * 1024 * 1024
# Smallest body limit that still admits a single maximal PDU plus its envelope.
MIN_REQUEST_BODY_SIZE = 128 * 1024

# Twisted's endpoint-string quoting (escapes ':', '=' and '\\' in file paths).
_quote_endpoint_arg = cast(Callable[[str], str], quoteStringArgument)

DEFAULT_DATA_DIR = "./matrixfed-data"
DEFAULT_CLIENT_LISTEN = "tcp:8008:interface=127.0.0.1"
DEFAULT_FEDERATION_PORT = 8448

_DURATION_RE = re.compile(r"(?P<n>[0-9]+)\s*(?P<unit>ms|s|m|h|d|w|y)?", re.ASCII)
_DURATION_UNITS_MS = {
    None: 1,
    "ms": 1,
    "s": SECOND_MS,
    "m": 60 * SECOND_MS,
    "h": HOUR_MS,
    "d": DAY_MS,
    "w": 7 * DAY_MS,
    "y": 365 * DAY_MS,
}


class ConfigError(Exception):
    """A configuration value is missing, malformed or unusable.

    The message is one line meant for the operator, e.g.
    ``--data-dir: /root/x is not writable``.
    """


def split_server_name(name: str) -> tuple[str, int | None]:
    """Split a server name into host and optional port, checking the grammar.

    Args:
        name: e.g. "example.org", "127.0.0.1:8448", "[::1]:8448".

    Returns:
        (host, port); the host keeps IPv6 brackets.

    Raises:
        ValueError: the name is not a valid server name.
    """
    if not is_valid_server_name(name):
        raise ValueError(f"{name!r} is not a valid server name (hostname[:port])")
    # The grammar allows ":" only inside IPv6 brackets and before the port, and
    # the port is digits only: a name ending in "]" or without ":" has no port.
    port_s: str | None = None
    host = name
    if not name.endswith("]") and ":" in name:
        host, _, port_s = name.rpartition(":")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{name!r} has an invalid IPv6 literal") from None
    port = int(port_s) if port_s is not None else None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{name!r} has a port outside 1-65535")
    return host, port


def parse_duration_ms(value: object) -> int:
    """Parse a duration like ``"1d"``, ``"12h"``, ``"90m"``, ``"30s"``, ``"500ms"``.

    A bare number means milliseconds (as in Synapse's configuration).

    Raises:
        ValueError: not a duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _DURATION_RE.fullmatch(value.strip())
        if m is not None:
            return int(m.group("n")) * _DURATION_UNITS_MS[m.group("unit")]
    raise ValueError(f"{value!r} is not a duration (e.g. 3600000, 1h, 1d)")


# ---------------------------------------------------------------------------
# Value parsers: turn a CLI string or a YAML value into the field's type.


def _as_str(value: object) -> str:
    if isinstance(value, str) and value:
        return value
    raise ValueError(f"expected a non-empty string, got {value!r}")


def _as_optional_str(value: object) -> str | None:
    if value is None:
        return None
    return _as_str(value)


def _as_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _as_size(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().upper()
        for suffix, mult in (("K", 1024), ("M", 1024**2), ("G", 1024**3)):
            if text.endswith(suffix) and text[:-1].isdigit():
                return int(text[:-1]) * mult
        if text.isdigit():
            return int(text)
    raise ValueError(f"{value!r} is not a size in bytes (e.g. 10485760, 10M)")


def _as_optional_count(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise ValueError(f"{value!r} is not a count (0, 1, 2, ...)")


def _as_str_tuple(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Iterable):
        return tuple(_as_str(v) for v in value)
    raise ValueError(f"expected a list of strings, got {value!r}")


# ---------------------------------------------------------------------------
# Fields


def option(
    default: Any,
    *,
    help: str,
    parse: Callable[[object], Any],
    kind: str = "param",
    cli: str | None = None,
) -> Any:
    """Declare a ``Config`` field that is also a command-line and YAML option.

    Args:
        default: the default value (use ``attrs.NOTHING`` for a required option).
        help: the one-line help shown by ``--help``.
        parse: turns a CLI string or YAML value into the field's type; raises
            ValueError with a readable message.
        kind: "param" (``--name VALUE``), "flag" (``--name`` sets True; for a
            field defaulting to True the flag is ``--no-name`` and sets False) or
            "list" (repeatable ``--name VALUE``).
        cli: the command-line name when not the field name with dashes.
    """
    return attrs.field(
        default=default,
        metadata={"help": help, "parse": parse, "kind": kind, "cli": cli},
    )


def _check_server_name(label: str, value: str) -> None:
    try:
        split_server_name(value)
    except ValueError as e:
        raise ConfigError(f"{label}: {e}") from None


@attrs.frozen(slots=True)
class Config:
    """Everything a matrixfed server needs to start.

    Derived paths (signing key, TLS files, database) default to files in
    ``data_dir``; see the ``*_path``/``*_uri`` properties.
    """

    server_name: str = option(
        attrs.NOTHING,
        help="This server's name, optionally with a port (e.g. example.org, 127.0.0.1:8448)",
        parse=_as_str,
    )
    data_dir: str = option(
        DEFAULT_DATA_DIR,
        help="Directory for the signing key, generated TLS files and the SQLite database",
        parse=_as_str,
    )
    federation_listen: str | None = option(
        None,
        help="Twisted endpoint for federation "
        "(default: ssl:8448 with the TLS certificate from the data dir; 'none' disables)",
        parse=_as_optional_str,
    )
    client_listen: str | None = option(
        DEFAULT_CLIENT_LISTEN,
        help="Twisted endpoint for the client API ('none' disables)",
        parse=_as_optional_str,
    )
    database: str | None = option(
        None,
        help="Database URI: sqlite:PATH or postgresql://... (default: SQLite in the data dir)",
        parse=_as_optional_str,
    )
    tls_certificate: str | None = option(
        None,
        help="PEM certificate (chain) for the default federation listener "
        "(default: a self-signed one generated in the data dir)",
        parse=_as_optional_str,
    )
    tls_private_key: str | None = option(
        None,
        help="PEM private key for --tls-certificate",
        parse=_as_optional_str,
    )
    signing_key_path: str | None = option(
        None,
        help="Signing key file in Synapse's format (default: DATA_DIR/signing.key)",
        parse=_as_optional_str,
    )
    old_signing_keys_path: str | None = option(
        None,
        help="File of retired verify keys (Synapse's 'ed25519 VERSION EXPIRED_TS KEY' lines)",
        parse=_as_optional_str,
    )
    federation_ca: str | None = option(
        None,
        help="Extra trusted CA certificate(s) (PEM) for outbound federation TLS",
        parse=_as_optional_str,
    )
    federation_verify_tls: bool = option(
        True,
        help="Do not verify remote TLS certificates (testing only)",
        parse=_as_bool,
        kind="flag",
    )
    federation_allow_private: bool = option(
        False,
        help="Allow outbound federation to loopback and private addresses",
        parse=_as_bool,
        kind="flag",
    )
    trusted_key_servers: tuple[str, ...] = option(
        (),
        help="Notary server used when a server's keys cannot be fetched directly (repeatable)",
        parse=_as_str_tuple,
        kind="list",
        cli="trusted-key-server",
    )
    key_validity_period: int = option(
        DEFAULT_KEY_VALIDITY_MS,
        help="How long our published keys stay valid, in ms or with a unit (1h..7d)",
        parse=parse_duration_ms,
    )
    default_room_version: str = option(
        DEFAULT_ROOM_VERSION,
        help="Room version for rooms this server creates",
        parse=_as_str,
    )
    max_request_body_size: int = option(
        DEFAULT_MAX_REQUEST_BODY_SIZE,
        help="Largest request body accepted, in bytes (suffixes K, M, G)",
        parse=_as_size,
    )
    enable_registration: bool = option(
        False,
        help="Let anyone register an account through the client API (POST /register)",
        parse=_as_bool,
        kind="flag",
    )
    registration_shared_secret: str | None = option(
        None,
        help="Secret for Synapse-style shared-secret registration at "
        "/_synapse/admin/v1/register (register_new_matrix_user)",
        parse=_as_optional_str,
    )
    join_verify_processes: int | None = option(
        None,
        help="Worker processes that check the events of a big remote join "
        "(default: one per CPU; 0: threads only)",
        parse=_as_optional_count,
    )
    join_partial_state: bool = option(
        True,
        help="Do not join remote rooms with partial state (faster joins: members left "
        "out, fetched in the background); every join waits for the full state",
        parse=_as_bool,
        kind="flag",
    )

    def __attrs_post_init__(self) -> None:
        _check_server_name("--server-name", self.server_name)
        for name in self.trusted_key_servers:
            _check_server_name("--trusted-key-server", name)
        if not MIN_KEY_VALIDITY_MS <= self.key_validity_period <= MAX_KEY_VALIDITY_MS:
            raise ConfigError(
                f"--key-validity-period: {self.key_validity_period} ms is outside 1h..7d"
            )
        if self.default_room_version not in KNOWN_ROOM_VERSIONS:
            raise ConfigError(
                f"--default-room-version: unknown room version {self.default_room_version!r}"
            )
        if self.max_request_body_size < MIN_REQUEST_BODY_SIZE:
            raise ConfigError(
                f"--max-request-body-size: {self.max_request_body_size} is below "
                f"{MIN_REQUEST_BODY_SIZE} bytes"
            )
        if (self.tls_certificate is None) != (self.tls_private_key is None):
            raise ConfigError("--tls-certificate and --tls-private-key must be given together")
        if self.database is not None and not (
            self.database.startswith("sqlite:")
            or self.database.startswith("postgresql://")
            or self.database.startswith("postgres://")
        ):
            raise ConfigError(
                f"--database: {self.database!r} is neither sqlite:PATH nor postgresql://..."
            )

    # -- derived values ----------------------------------------------------

    @property
    def server_host(self) -> str:
        """The host part of the server name (IPv6 without brackets)."""
        host, _ = split_server_name(self.server_name)
        return host[1:-1] if host.startswith("[") else host

    @property
    def signing_key_file(self) -> str:
        """Where the signing key lives."""
        return self.signing_key_path or os.path.join(self.data_dir, "signing.key")

    @property
    def tls_certificate_file(self) -> str:
        """The certificate of the default federation listener."""
        return self.tls_certificate or os.path.join(self.data_dir, "tls.crt")

    @property
    def tls_private_key_file(self) -> str:
        """The private key of the default federation listener."""
        return self.tls_private_key or os.path.join(self.data_dir, "tls.key")

    @property
    def uses_generated_tls(self) -> bool:
        """True when no certificate is configured: one is generated in the data dir
        (``tls.crt``/``tls.key``) for the default listener, or for an explicit
        ``--federation-listen ssl:...`` endpoint that names those files."""
        return self.tls_certificate is None

    @property
    def federation_listen_endpoint(self) -> str | None:
        """The federation endpoint string, defaulting to TLS on port 8448; None if
        disabled ("none")."""
        if self.federation_listen is not None:
            return None if self.federation_listen.lower() == "none" else self.federation_listen
        return (
            f"ssl:{DEFAULT_FEDERATION_PORT}"
            f":privateKey={_quote_endpoint_arg(self.tls_private_key_file)}"
            f":certKey={_quote_endpoint_arg(self.tls_certificate_file)}"
        )

    @property
    def client_listen_endpoint(self) -> str | None:
        """The client API endpoint string; None if disabled (None or "none")."""
        if self.client_listen is None or self.client_listen.lower() == "none":
            return None
        return self.client_listen

    @property
    def database_uri(self) -> str:
        """The database URI, defaulting to SQLite in the data dir."""
        return self.database or "sqlite:" + os.path.join(self.data_dir, "matrixfed.db")

    # -- loading -------------------------------------------------------------

    @classmethod
    def load(
        cls,
        values: Mapping[str, Any] | None = None,
        *,
        config_file: str | None = None,
    ) -> Config:
        """Build a Config from explicit values over an optional YAML file.

        Args:
            values: field name -> raw value (CLI strings or typed values); None
                values count as "not given" and fall through to the file.
            config_file: a YAML file mapping field names to values.

        Raises:
            ConfigError: the file is unreadable or any value is bad.
        """
        merged: dict[str, Any] = {}
        if config_file is not None:
            merged.update(_read_yaml(config_file))
        for name, value in (values or {}).items():
            if value is not None:
                merged[name] = value
        kwargs: dict[str, Any] = {}
        for field in attrs.fields(cls):
            if field.name not in merged:
                continue
            raw = merged[field.name]
            try:
                kwargs[field.name] = field.metadata["parse"](raw)
            except ValueError as e:
                raise ConfigError(f"{_cli_label(field)}: {e}") from None
        if "server_name" not in kwargs:
            raise ConfigError("--server-name is required (e.g. --server-name example.org)")
        return cls(**kwargs)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Config:
        """Build a Config from parsed ``MatrixfedOptions`` (and its --config file)."""
        values = {f.name: options.get(f.name) for f in attrs.fields(cls)}
        config_file = options.get("config")
        return cls.load(values, config_file=config_file)


def _cli_name(field: attrs.Attribute[Any]) -> str:
    """The field's command-line name without "--" and without a "no-" prefix."""
    name: str = field.metadata.get("cli") or field.name.replace("_", "-")
    return name


def _option_name(field: attrs.Attribute[Any]) -> str:
    """The name twistd parses: the flag of a field defaulting to True is "no-NAME"."""
    name = _cli_name(field)
    if field.metadata["kind"] == "flag" and field.default is True:
        return "no-" + name
    return name


def _cli_label(field: attrs.Attribute[Any]) -> str:
    return "--" + _option_name(field)


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"--config: {path}{where} is not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of option: value")
    known = {f.name for f in attrs.fields(Config)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise ConfigError(f"--config: {path}: unknown option {key!r}")
        out[name] = value
    return out


def _list_appender(name: str, help: str) -> Callable[[usage.Options, str], None]:
    # usage.Options inspects the signature: exactly (self, value) takes a value.
    def opt(self: usage.Options, value: str) -> None:
        self[name].append(value)

    opt.__doc__ = help
    return opt


def _build_options_class() -> type[usage.Options]:
    params: list[list[Any]] = [["config", None, None, "YAML file of options (command line wins)"]]
    flags: list[list[Any]] = []
    methods: dict[str, Any] = {}
    list_fields: list[str] = []
    for field in attrs.fields(Config):
        meta = field.metadata
        if meta["kind"] == "flag":
            flags.append([_option_name(field), None, meta["help"]])
        elif meta["kind"] == "list":
            list_fields.append(field.name)
            opt = "opt_" + _cli_name(field).replace("-", "_")
            methods[opt] = _list_appender(field.name, meta["help"])
        else:
            params.append([_option_name(field), None, None, meta["help"]])

    def __init__(self: usage.Options) -> None:
        usage.Options.__init__(self)  # type: ignore[no-untyped-call]
        for name in list_fields:
            self[name] = []

    def postOptions(self: usage.Options) -> None:
        # Normalise to field names; absent flags and empty lists mean "not given"
        # so the YAML file can supply them.
        for field in attrs.fields(Config):
            kind = field.metadata["kind"]
            if kind == "flag":
                given = bool(self[_option_name(field)])
                self[field.name] = (not field.default) if given else None
            elif kind == "list":
                self[field.name] = self[field.name] or None
            else:
                self[field.name] = self[_option_name(field)]

    def parseOptions(self: usage.Options, options: Any = None) -> None:
        try:
            usage.Options.parseOptions(self, options)  # type: ignore[no-untyped-call]
        except usage.UsageError as e:
            # One line, not twistd's whole option listing.
            raise SystemExit(f"matrixfed: {e} (see --help)") from None

    namespace: dict[str, Any] = {
        "optParameters": params,
        "optFlags": flags,
        "__init__": __init__,
        "postOptions": postOptions,
        "parseOptions": parseOptions,
        "__doc__": "Options of `twistd matrixfed`.",
        **methods,
    }
    return type("MatrixfedOptions", (usage.Options,), namespace)


MatrixfedOptions = _build_options_class()
"""twistd options for matrixfed, generated from ``Config``'s fields.

Parsing errors raise ``SystemExit`` with one line (``matrixfed: ...``).
After parsing, ``options[field_name]`` holds the raw value or None, ready for
``Config.from_options``.
"""
