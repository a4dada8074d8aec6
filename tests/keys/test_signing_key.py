"""Our own signing keys: generated once in Synapse's format, reused, clear errors."""

from __future__ import annotations

import os
import stat

from signedjson.key import get_verify_key, read_signing_keys
from signedjson.sign import sign_json, verify_signed_json
from twisted.trial import unittest

from matrixfed.config import ConfigError
from matrixfed.keys.signing_key import (
    generate_key_file,
    key_id,
    load_or_generate_signing_keys,
    load_server_signing_keys,
    read_old_verify_keys,
    read_signing_key_file,
)

# A key in the exact form Synapse writes (a throwaway test key).
SYNAPSE_KEY_LINE = "ed25519 a_AbCd nJh5ktGKr1DmjP7IBV3m2o2JQvy/qBdZxIbmaXA4F4w\n"


class SigningKeyTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "signing.key")

    def test_first_start_generates_synapse_format(self) -> None:
        [key] = load_or_generate_signing_keys(self.path)
        with open(self.path) as f:
            text = f.read()
        alg, version, seed = text.split()
        self.assertEqual(alg, "ed25519")
        self.assertRegex(version, r"^a_[A-Za-z]{4}$")
        self.assertNotIn("=", seed)
        self.assertEqual(key_id(key), f"ed25519:{version}")
        # signedjson (and so Synapse) reads it back to the same key.
        [again] = read_signing_keys([text])
        self.assertEqual(bytes(again), bytes(key))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_later_start_reuses_key(self) -> None:
        [first] = load_or_generate_signing_keys(self.path)
        [second] = load_or_generate_signing_keys(self.path)
        self.assertEqual(bytes(first), bytes(second))
        self.assertEqual(first.version, second.version)
        self.assertEqual(os.listdir(self.dir), ["signing.key"])

    def test_synapse_key_file_is_used_as_is(self) -> None:
        with open(self.path, "w") as f:
            f.write(SYNAPSE_KEY_LINE)
        [key] = load_or_generate_signing_keys(self.path)
        self.assertEqual(key_id(key), "ed25519:a_AbCd")
        signed = sign_json({"a": 1}, "s", key)
        verify_signed_json(signed, "s", get_verify_key(key))

    def test_generate_refuses_to_overwrite(self) -> None:
        generate_key_file(self.path)
        self.assertRaises(ConfigError, generate_key_file, self.path)

    def test_unusable_files_give_one_line(self) -> None:
        cases = {
            "empty": "",
            "garbage": "this is not a key\n",
            "bad base64": "ed25519 a_x !!!!\n",
            "bad version": "ed25519 a-b nJh5ktGKr1DmjP7IBV3m2o2JQvy/qBdZxIbmaXA4F4w\n",
            "unknown alg": "rsa a_x nJh5ktGKr1DmjP7IBV3m2o2JQvy/qBdZxIbmaXA4F4w\n",
        }
        for label, text in cases.items():
            with open(self.path, "w") as f:
                f.write(text)
            with self.assertRaises(ConfigError, msg=label) as cm:
                load_or_generate_signing_keys(self.path)
            self.assertIn(self.path, str(cm.exception))
            self.assertNotIn("\n", str(cm.exception))

    def test_directory_instead_of_file(self) -> None:
        os.makedirs(self.path)
        self.assertRaises(ConfigError, read_signing_key_file, self.path)

    def test_missing_directory(self) -> None:
        path = os.path.join(self.dir, "nope", "signing.key")
        with self.assertRaises(ConfigError) as cm:
            load_or_generate_signing_keys(path)
        self.assertIn("cannot write", str(cm.exception))

    def test_old_keys(self) -> None:
        old_path = os.path.join(self.dir, "old.keys")
        with open(old_path, "w") as f:
            f.write("ed25519 a_old 1600000000000 l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ\n")
        [old] = read_old_verify_keys(old_path)
        self.assertEqual((old.key_id, old.expired_ts), ("ed25519:a_old", 1600000000000))
        keys = load_server_signing_keys(self.path, old_path)
        self.assertEqual(len(keys.signing_keys), 1)
        self.assertEqual(keys.old_verify_keys, (old,))
        with open(old_path, "w") as f:
            f.write("ed25519 a_old soon l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ\n")
        self.assertRaises(ConfigError, read_old_verify_keys, old_path)

    def test_old_key_clashing_with_current_refused(self) -> None:
        with open(self.path, "w") as f:
            f.write(SYNAPSE_KEY_LINE)
        old_path = os.path.join(self.dir, "old.keys")
        with open(old_path, "w") as f:
            f.write("ed25519 a_AbCd 1600000000000 l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ\n")
        self.assertRaises(ConfigError, load_server_signing_keys, self.path, old_path)
