"""Shared-secret registration, byte for byte the flow of Synapse's admin API."""

from __future__ import annotations

import hashlib
import hmac

from twisted.trial import unittest

from matrixfed.clientapi.admin import NONCE_TIMEOUT_S, compute_registration_mac
from tests.clientapi.harness import SECRET, ClientApiCase

PATH = "/_synapse/admin/v1/register"


def synapse_mac(secret: str, nonce: str, user: str, password: str, admin: bool) -> str:
    """The MAC as register_new_matrix_user computes it (written from its documentation)."""
    message = b"\x00".join(
        [nonce.encode(), user.encode(), password.encode(), b"admin" if admin else b"notadmin"]
    )
    return hmac.new(SECRET.encode(), message, hashlib.sha1).hexdigest()


class SharedSecretTests(ClientApiCase, unittest.TestCase):
    async def _nonce(self, api: object) -> str:
        code, body = await api.call("GET", PATH)  # type: ignore[attr-defined]
        self.assertEqual(code, 200)
        nonce: str = body["nonce"]
        return nonce

    def test_mac_matches_the_documented_construction(self) -> None:
        self.assertEqual(
            compute_registration_mac(SECRET, "abc", "alice", "pw", admin=True),
            synapse_mac(SECRET, "abc", "alice", "pw", True),
        )
        self.assertEqual(
            compute_registration_mac(SECRET, "abc", "alice", "pw"),
            synapse_mac(SECRET, "abc", "alice", "pw", False),
        )

    async def test_register_then_log_in(self) -> None:
        api = await self.make_api(enable_registration=False)
        nonce = await self._nonce(api)
        code, body = await api.call(
            "POST",
            PATH,
            {
                "nonce": nonce,
                "username": "admin",
                "password": "pw",
                "admin": True,
                "mac": synapse_mac(SECRET, nonce, "admin", "pw", True),
            },
        )
        self.assertEqual(code, 200, body)
        self.assertEqual(body["user_id"], "@admin:a.example")
        self.assertEqual(body["home_server"], "a.example")
        code, who = await api.call("GET", "/account/whoami", token=body["access_token"])
        self.assertEqual((code, who["user_id"]), (200, "@admin:a.example"))
        code, _ = await api.call(
            "POST", "/login", {"type": "m.login.password", "user": "admin", "password": "pw"}
        )
        self.assertEqual(code, 200)
        user = await api.api.users.get_user("@admin:a.example")
        assert user is not None
        self.assertTrue(user.admin)

    async def test_wrong_mac_is_403_and_creates_nothing(self) -> None:
        api = await self.make_api()
        nonce = await self._nonce(api)
        code, body = await api.call(
            "POST",
            PATH,
            {
                "nonce": nonce,
                "username": "eve",
                "password": "pw",
                "mac": synapse_mac(SECRET, nonce, "eve", "pw", True),  # claims admin
            },
        )
        self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"))
        self.assertIsNone(await api.api.users.get_user("@eve:a.example"))

    async def test_nonce_is_single_use(self) -> None:
        api = await self.make_api()
        nonce = await self._nonce(api)
        request = {
            "nonce": nonce,
            "username": "bob",
            "password": "pw",
            "mac": synapse_mac(SECRET, nonce, "bob", "pw", False),
        }
        code, _ = await api.call("POST", PATH, request)
        self.assertEqual(code, 200)
        code, body = await api.call("POST", PATH, request)
        self.assertEqual((code, body["errcode"]), (400, "M_UNKNOWN"))

    async def test_nonce_expires(self) -> None:
        api = await self.make_api()
        nonce = await self._nonce(api)
        api.clock.advance(NONCE_TIMEOUT_S + 1)
        code, body = await api.call(
            "POST",
            PATH,
            {
                "nonce": nonce,
                "username": "bob",
                "password": "pw",
                "mac": synapse_mac(SECRET, nonce, "bob", "pw", False),
            },
        )
        self.assertEqual((code, body["errcode"]), (400, "M_UNKNOWN"))

    async def test_existing_user_is_user_in_use(self) -> None:
        api = await self.make_api()
        await api.register("bob")
        nonce = await self._nonce(api)
        code, body = await api.call(
            "POST",
            PATH,
            {
                "nonce": nonce,
                "username": "bob",
                "password": "pw",
                "mac": synapse_mac(SECRET, nonce, "bob", "pw", False),
            },
        )
        self.assertEqual((code, body["errcode"]), (400, "M_USER_IN_USE"))

    async def test_missing_fields_are_400(self) -> None:
        api = await self.make_api()
        code, body = await api.call("POST", PATH, {"username": "x"})
        self.assertEqual((code, body["errcode"]), (400, "M_BAD_JSON"))
        nonce = await self._nonce(api)
        code, body = await api.call(
            "POST", PATH, {"nonce": nonce, "username": "x", "password": "p"}
        )
        self.assertEqual((code, body["errcode"]), (400, "M_BAD_JSON"))

    async def test_disabled_without_secret(self) -> None:
        api = await self.make_api(secret=None)
        code, body = await api.call("GET", PATH)
        self.assertEqual((code, body["errcode"]), (400, "M_UNKNOWN"))
