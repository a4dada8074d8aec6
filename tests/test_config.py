"""Config: options, YAML, precedence, validation with one-line errors."""

from __future__ import annotations

import os

from twisted.internet.endpoints import _parse
from twisted.trial import unittest

from matrixfed.config import (
    Config,
    ConfigError,
    MatrixfedOptions,
    parse_duration_ms,
    split_server_name,
)


def parse(args: list[str]) -> Config:
    options = MatrixfedOptions()
    options.parseOptions(args)
    return Config.from_options(options)


class ServerNameTests(unittest.TestCase):
    def test_valid(self) -> None:
        self.assertEqual(split_server_name("example.org"), ("example.org", None))
        self.assertEqual(split_server_name("127.0.0.1:8448"), ("127.0.0.1", 8448))
        self.assertEqual(split_server_name("[::1]:443"), ("[::1]", 443))

    def test_invalid(self) -> None:
        for name in ["", "a b", "ex:ample:1", "[zz::1]", "host:0", "host:70000", "h:", "é.org"]:
            self.assertRaises(ValueError, split_server_name, name)


class DurationTests(unittest.TestCase):
    def test_units(self) -> None:
        self.assertEqual(parse_duration_ms("1d"), 86_400_000)
        self.assertEqual(parse_duration_ms("2h"), 7_200_000)
        self.assertEqual(parse_duration_ms("90m"), 5_400_000)
        self.assertEqual(parse_duration_ms("30s"), 30_000)
        self.assertEqual(parse_duration_ms("500ms"), 500)
        self.assertEqual(parse_duration_ms("3600000"), 3_600_000)
        self.assertEqual(parse_duration_ms(42), 42)
        for bad in ["", "1x", "h", True, 1.5, None]:
            self.assertRaises(ValueError, parse_duration_ms, bad)


class OptionsTests(unittest.TestCase):
    def test_defaults(self) -> None:
        config = parse(["--server-name", "localhost:8448"])
        self.assertEqual(config.server_name, "localhost:8448")
        self.assertEqual(config.data_dir, "./matrixfed-data")
        self.assertEqual(config.client_listen, "tcp:8008:interface=127.0.0.1")
        self.assertEqual(config.database_uri, "sqlite:./matrixfed-data/matrixfed.db")
        self.assertEqual(
            config.federation_listen_endpoint,
            "ssl:8448:privateKey=./matrixfed-data/tls.key:certKey=./matrixfed-data/tls.crt",
        )
        self.assertTrue(config.federation_verify_tls)
        self.assertFalse(config.federation_allow_private)
        self.assertEqual(config.trusted_key_servers, ())
        self.assertEqual(config.key_validity_period, 86_400_000)
        self.assertTrue(config.uses_generated_tls)
        self.assertTrue(config.join_partial_state)

    def test_every_option(self) -> None:
        config = parse(
            [
                "--server-name=127.0.0.1:18448",
                "--data-dir=/tmp/d",
                "--federation-listen=tcp:0:interface=127.0.0.1",
                "--client-listen=none",
                "--database=postgresql://postgres@127.0.0.1/test",
                "--federation-ca=/tmp/ca.pem",
                "--tls-certificate=/tmp/c.pem",
                "--tls-private-key=/tmp/k.pem",
                "--no-federation-verify-tls",
                "--federation-allow-private",
                "--trusted-key-server=a.example",
                "--trusted-key-server=b.example:8448",
                "--key-validity-period=2h",
                "--default-room-version=10",
                "--max-request-body-size=1M",
                "--join-verify-processes=3",
                "--no-join-partial-state",
            ]
        )
        self.assertEqual(config.federation_listen_endpoint, "tcp:0:interface=127.0.0.1")
        self.assertIsNone(config.client_listen_endpoint)
        self.assertEqual(config.database_uri, "postgresql://postgres@127.0.0.1/test")
        self.assertEqual(config.federation_ca, "/tmp/ca.pem")
        self.assertFalse(config.federation_verify_tls)
        self.assertTrue(config.federation_allow_private)
        self.assertEqual(config.trusted_key_servers, ("a.example", "b.example:8448"))
        self.assertEqual(config.key_validity_period, 7_200_000)
        self.assertEqual(config.default_room_version, "10")
        self.assertEqual(config.max_request_body_size, 1024 * 1024)
        self.assertEqual(config.join_verify_processes, 3)
        self.assertFalse(config.join_partial_state)
        self.assertFalse(config.uses_generated_tls)

    def test_listeners_can_be_disabled(self) -> None:
        config = parse(["--server-name=a", "--federation-listen=none", "--client-listen=None"])
        self.assertIsNone(config.federation_listen_endpoint)
        self.assertIsNone(config.client_listen_endpoint)
        self.assertIsNone(Config(server_name="a", client_listen=None).client_listen_endpoint)
        self.assertIsNone(
            Config(server_name="a", federation_listen="none").federation_listen_endpoint
        )

    def test_data_dir_paths_are_endpoint_quoted(self) -> None:
        config = Config(server_name="a.example", data_dir="/tmp/we:ird=dir\\x")
        args, kwargs = _parse(config.federation_listen_endpoint)
        self.assertEqual(args, ["ssl", "8448"])
        self.assertEqual(kwargs["privateKey"], "/tmp/we:ird=dir\\x/tls.key")
        self.assertEqual(kwargs["certKey"], "/tmp/we:ird=dir\\x/tls.crt")

    def test_unknown_option_is_one_line(self) -> None:
        with self.assertRaises(SystemExit) as cm:
            MatrixfedOptions().parseOptions(["--server-name", "a", "--bogus"])
        message = str(cm.exception.code)
        self.assertEqual(message.count("\n"), 0)
        self.assertIn("bogus", message)

    def test_errors_name_the_option(self) -> None:
        cases = {
            ("--server-name", "not a name"): "--server-name",
            ("--key-validity-period", "10m"): "--key-validity-period",
            ("--key-validity-period", "soon"): "--key-validity-period",
            ("--key-validity-period", "30d"): "--key-validity-period",
            ("--default-room-version", "99"): "--default-room-version",
            ("--trusted-key-server", "bad name"): "--trusted-key-server",
            ("--database", "mysql://x"): "--database",
            ("--max-request-body-size", "lots"): "--max-request-body-size",
            ("--tls-certificate", "/x.pem"): "--tls-certificate",
            ("--join-verify-processes", "-1"): "--join-verify-processes",
            ("--join-verify-processes", "two"): "--join-verify-processes",
        }
        for (opt, value), label in cases.items():
            args = ["--server-name", "a.example", opt, value]
            if opt == "--server-name":
                args = [opt, value]
            with self.assertRaises(ConfigError) as cm:
                parse(args)
            self.assertTrue(str(cm.exception).startswith(label), str(cm.exception))
            self.assertNotIn("\n", str(cm.exception))

    def test_server_name_required(self) -> None:
        with self.assertRaises(ConfigError) as cm:
            parse([])
        self.assertIn("--server-name is required", str(cm.exception))

    def test_direct_construction_validates(self) -> None:
        self.assertRaises(ConfigError, Config, server_name="bad name")
        self.assertRaises(ConfigError, Config, server_name="a", key_validity_period=1000)


class YamlTests(unittest.TestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_yaml_values_and_command_line_wins(self) -> None:
        path = self.write(
            "server_name: yaml.example\n"
            "data-dir: /tmp/from-yaml\n"
            "federation_verify_tls: false\n"
            "trusted_key_servers: [n1.example, n2.example]\n"
            "key_validity_period: 2h\n"
        )
        config = parse(["--config", path, "--server-name", "cli.example"])
        self.assertEqual(config.server_name, "cli.example")
        self.assertEqual(config.data_dir, "/tmp/from-yaml")
        self.assertFalse(config.federation_verify_tls)
        self.assertEqual(config.trusted_key_servers, ("n1.example", "n2.example"))
        self.assertEqual(config.key_validity_period, 7_200_000)
        config = parse(["--config", path, "--trusted-key-server", "cli-notary.example"])
        self.assertEqual(config.trusted_key_servers, ("cli-notary.example",))
        self.assertEqual(config.server_name, "yaml.example")

    def test_flag_on_command_line_wins_over_yaml(self) -> None:
        path = self.write("server_name: a.example\nfederation_allow_private: false\n")
        self.assertTrue(
            parse(["--config", path, "--federation-allow-private"]).federation_allow_private
        )

    def test_yaml_errors(self) -> None:
        cases = {
            "missing": None,
            "server_name: [unclosed\n": "not valid YAML",
            "- a list\n": "mapping",
            "server_name: a.example\ncolour: blue\n": "unknown option 'colour'",
            "server_name: a.example\nfederation_verify_tls: maybe\n": "--no-federation-verify-tls",
            "server_name: a.example\ntrusted_key_servers: 5\n": "--trusted-key-server",
        }
        for text, expected in cases.items():
            path = self.mktemp() if text == "missing" else self.write(text)
            with self.assertRaises(ConfigError) as cm:
                parse(["--config", path])
            message = str(cm.exception)
            self.assertNotIn("\n", message)
            if expected is None:
                self.assertIn(os.path.basename(path), message)
            else:
                self.assertIn(expected, message)

    def test_empty_yaml_file(self) -> None:
        path = self.write("")
        self.assertEqual(parse(["--config", path, "--server-name", "a"]).server_name, "a")
