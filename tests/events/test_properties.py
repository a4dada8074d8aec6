"""Property tests (hypothesis) for canonical JSON, signing, redaction, hashing,
validation and the received-PDU check."""

from __future__ import annotations

import json
from typing import Any

from canonicaljson import encode_canonical_json
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from signedjson.sign import SignatureVerifyException, verify_signed_json
from twisted.trial import unittest
from unpaddedbase64 import encode_base64

from matrixfed.errors import InvalidEventError, SignatureError
from matrixfed.events.canonical import encode_canonical_text
from matrixfed.events.checks import _signing_json_from, _whole_size, check_pdu
from matrixfed.events.hashing import (
    compute_content_hash,
    compute_reference_hash,
    redacted_signing_json,
)
from matrixfed.events.model import Event
from matrixfed.events.redaction import redact
from matrixfed.events.room_versions import RoomVersion
from matrixfed.events.signing import (
    check_hash_or_redact,
    sign_event,
    verify_event_signatures,
)
from matrixfed.events.validation import CANONICAL_INT_MAX, CANONICAL_INT_MIN, validate_pdu
from tests.events.fixtures import (
    ALL_VERSIONS,
    default_keys,
    signing_key,
    unsigned_pdu,
    verify_key_entry,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

texts = st.text(st.characters(codec="utf-8"), max_size=12)
strict_ints = st.integers(min_value=CANONICAL_INT_MIN, max_value=CANONICAL_INT_MAX)
scalars = st.none() | st.booleans() | strict_ints | texts
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=20,
)
# Anything json.loads can produce, floats and huge integers included.
any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=20,
)
versions = st.sampled_from(ALL_VERSIONS)
servers = st.sampled_from(["a.example", "b.example:8448"])
event_types = st.sampled_from(
    [
        "m.room.message",
        "m.room.member",
        "m.room.create",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.redaction",
        "m.room.aliases",
        "m.room.history_visibility",
        "org.example.custom",
    ]
)
contents = st.dictionaries(
    texts.filter(lambda k: k != "join_authorised_via_users_server")
    | st.sampled_from(["membership", "creator", "join_rule", "users", "body"]),
    json_values,
    max_size=5,
)


@st.composite
def signed_events(draw: st.DrawFn) -> tuple[dict[str, Any], RoomVersion]:
    rv = draw(versions)
    server = draw(servers)
    localpart = draw(st.text(st.characters(codec="ascii", exclude_characters=":\x00"), max_size=8))
    state_key = draw(st.none() | texts)
    pdu = unsigned_pdu(
        rv,
        sender=f"@{localpart}:{server}",
        event_type=draw(event_types),
        content=draw(contents),
        state_key=state_key,
        n=draw(st.integers(min_value=0, max_value=1000)),
    )
    sign_event(pdu, rv, server, signing_key(server))
    if draw(st.booleans()):
        pdu["unsigned"] = {"age": draw(strict_ints)}
    return pdu, rv


def leaf_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in leaf_paths(v, prefix + (k,))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in leaf_paths(v, prefix + (i,))]
    return [prefix]


def get_path(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def set_path(value: Any, path: tuple[Any, ...], new: Any) -> None:
    for step in path[:-1]:
        value = value[step]
    value[path[-1]] = new


def changed(old: Any, index: int) -> Any:
    """A different value of the same kind (one character, one unit, negated)."""
    if isinstance(old, bool):
        return not old
    if isinstance(old, int):
        return old + 1 if old < CANONICAL_INT_MAX else old - 1
    if isinstance(old, str):
        if not old:
            return "x"
        i = index % len(old)
        return old[:i] + ("y" if old[i] != "y" else "z") + old[i + 1 :]
    return "was null"


class CanonicalJsonProperties(unittest.TestCase):
    @SETTINGS
    @given(json_values)
    def test_round_trip(self, value: Any) -> None:
        encoded = encode_canonical_json(value)
        self.assertEqual(json.loads(encoded), value)
        self.assertEqual(encode_canonical_json(json.loads(encoded)), encoded)

    @SETTINGS
    @given(st.dictionaries(texts, json_values, max_size=8), st.randoms())
    def test_key_order_irrelevant(self, value: dict[str, Any], rnd: Any) -> None:
        items = list(value.items())
        rnd.shuffle(items)
        self.assertEqual(encode_canonical_json(dict(items)), encode_canonical_json(value))

    @SETTINGS
    @given(st.dictionaries(texts, json_values, max_size=6))
    def test_whole_size_matches_encoding(self, value: dict[str, Any]) -> None:
        hashed = {k: v for k, v in value.items() if k not in ("hashes", "signatures", "unsigned")}
        self.assertEqual(
            _whole_size(encode_canonical_json(hashed), value), len(encode_canonical_json(value))
        )

    @SETTINGS
    @given(signed_events(), st.booleans())
    def test_signed_bytes_cut_from_the_hashed_text(
        self, case: tuple[dict[str, Any], RoomVersion], extra_key: bool
    ) -> None:
        # check_pdu cuts the signed bytes out of the hashed part's text; they
        # must be the bytes of the redacted form, or None (encoded whole).
        pdu, rv = case
        if extra_key:  # a key redaction drops: never cut from the text
            pdu["prev_state"] = []
        assert encode_canonical_text is not None
        hashed = {k: v for k, v in pdu.items() if k not in ("hashes", "signatures", "unsigned")}
        cut = _signing_json_from(pdu, rv, encode_canonical_text(hashed))
        if extra_key or rv.event_id_in_pdu or ("origin" in pdu and rv.v11_top_level_keys):
            self.assertIsNone(cut)
        else:
            self.assertEqual(cut, redacted_signing_json(pdu, rv))


class SigningProperties(unittest.TestCase):
    @SETTINGS
    @given(signed_events())
    def test_sign_then_verify(self, case: tuple[dict[str, Any], RoomVersion]) -> None:
        pdu, rv = case
        validate_pdu(pdu, rv)
        event = Event.from_pdu(pdu, rv)
        verify_event_signatures(event, default_keys())
        self.assertIs(check_hash_or_redact(event), event)
        checked = check_pdu(pdu, rv, default_keys())
        self.assertEqual(checked.event_id, event.event_id)
        self.assertIs(checked.pdu, pdu)

    @SETTINGS
    @given(signed_events(), st.data())
    def test_changing_a_signed_field_breaks_verification(
        self, case: tuple[dict[str, Any], RoomVersion], data: st.DataObject
    ) -> None:
        pdu, rv = case
        signed_form = redact(pdu, rv)
        signed_form.pop("signatures")
        path = data.draw(st.sampled_from(leaf_paths(signed_form)))
        index = data.draw(st.integers(min_value=0, max_value=300))
        set_path(pdu, path, changed(get_path(pdu, path), index))
        event = Event(pdu, rv)
        self.assertRaises(SignatureError, verify_event_signatures, event, default_keys())
        self.assertRaises((SignatureError, InvalidEventError), check_pdu, pdu, rv, default_keys())

    @SETTINGS
    @given(signed_events(), st.binary(max_size=80) | st.just(b"\x00" * 64), st.booleans())
    def test_verification_agrees_with_signedjson(
        self, case: tuple[dict[str, Any], RoomVersion], sig: bytes, replace: bool
    ) -> None:
        pdu, rv = case
        server = pdu["sender"].split(":", 1)[1]
        if replace:
            pdu["signatures"][server]["ed25519:k1"] = encode_base64(sig)
        vk = verify_key_entry(server, signing_key(server)).verify_key
        try:
            verify_signed_json(redact(pdu, rv), server, vk)
            expected_ok = True
        except SignatureVerifyException:
            expected_ok = False
        try:
            verify_event_signatures(Event(pdu, rv), default_keys())
            ok = True
        except SignatureError:
            ok = False
        self.assertEqual(ok, expected_ok)


class RedactionAndHashProperties(unittest.TestCase):
    @SETTINGS
    @given(
        versions,
        event_types,
        st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "content",
                    "origin",
                    "membership",
                    "prev_state",
                    "x",
                    "unsigned",
                    "state_key",
                    "depth",
                ]
            )
            | texts,
            json_values,
        ),
        st.dictionaries(
            st.sampled_from(["membership", "third_party_invite", "creator", "allow", "redacts"])
            | texts,
            json_values | st.dictionaries(st.sampled_from(["signed", "x"]), json_values),
        ),
    )
    def test_redaction_idempotent(
        self, rv: RoomVersion, event_type: str, pdu: dict[str, Any], content: dict[str, Any]
    ) -> None:
        pdu = dict(pdu, type=event_type, content=content)
        once = redact(pdu, rv)
        self.assertEqual(redact(once, rv), once)

    @SETTINGS
    @given(
        signed_events(), st.dictionaries(texts, json_values), st.dictionaries(texts, json_values)
    )
    def test_hashes_ignore_unsigned_and_signatures(
        self,
        case: tuple[dict[str, Any], RoomVersion],
        unsigned: dict[str, Any],
        extra_sigs: dict[str, Any],
    ) -> None:
        pdu, rv = case
        reference = compute_reference_hash(pdu, rv)
        content_hash = compute_content_hash(pdu)
        pdu["unsigned"] = unsigned
        pdu["signatures"] = dict(pdu["signatures"], **{"z" + k: v for k, v in extra_sigs.items()})
        self.assertEqual(compute_reference_hash(pdu, rv), reference)
        self.assertEqual(compute_content_hash(pdu), content_hash)


class ValidationProperties(unittest.TestCase):
    @SETTINGS
    @given(versions, any_json)
    def test_arbitrary_json_never_crashes(self, rv: RoomVersion, value: Any) -> None:
        try:
            validate_pdu(value, rv)
        except InvalidEventError:
            pass
        try:
            check_pdu(value, rv, default_keys())
        except (InvalidEventError, SignatureError):
            pass

    @SETTINGS
    @given(signed_events(), st.data(), any_json)
    def test_mutated_pdu_never_crashes(
        self, case: tuple[dict[str, Any], RoomVersion], data: st.DataObject, new: Any
    ) -> None:
        pdu, rv = case
        path = data.draw(st.sampled_from(leaf_paths(pdu) + [(k,) for k in pdu]))
        set_path(pdu, path, new)
        try:
            validate_pdu(pdu, rv)
        except InvalidEventError:
            pass
        try:
            check_pdu(pdu, rv, default_keys())
        except (InvalidEventError, SignatureError):
            pass
