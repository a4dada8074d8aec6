"""Versions, login, logout, whoami, open registration and token checks."""

from __future__ import annotations

from twisted.trial import unittest

from tests.clientapi.harness import ClientApiCase


class VersionsAndLoginTests(ClientApiCase, unittest.TestCase):
    async def test_versions_lists_v1_versions(self) -> None:
        api = await self.make_api()
        code, body = await api.call("GET", "/_matrix/client/versions")
        self.assertEqual(code, 200)
        self.assertIn("v1.1", body["versions"])

    async def test_well_known_names_this_listener(self) -> None:
        api = await self.make_api()
        code, body = await api.call("GET", "/.well-known/matrix/client")
        self.assertEqual(code, 200, body)
        self.assertEqual(body["m.homeserver"]["base_url"], api.listener.base)

    async def test_login_flows_offer_password(self) -> None:
        api = await self.make_api()
        code, body = await api.call("GET", "/login")
        self.assertEqual((code, body), (200, {"flows": [{"type": "m.login.password"}]}))

    async def test_password_login_with_identifier_and_with_user(self) -> None:
        api = await self.make_api()
        await api.register("alice", "hunter2")
        code, body = await api.call(
            "POST",
            "/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "alice"},
                "password": "hunter2",
                "device_id": "PHONE",
            },
        )
        self.assertEqual(code, 200)
        self.assertEqual(body["user_id"], "@alice:a.example")
        self.assertEqual(body["device_id"], "PHONE")
        code, who = await api.call("GET", "/account/whoami", token=body["access_token"])
        self.assertEqual(
            (code, who),
            (200, {"user_id": "@alice:a.example", "device_id": "PHONE", "is_guest": False}),
        )

        code, body = await api.call(
            "POST",
            "/login",
            {"type": "m.login.password", "user": "@alice:a.example", "password": "hunter2"},
        )
        self.assertEqual(code, 200)
        self.assertEqual(body["user_id"], "@alice:a.example")

    async def test_wrong_password_and_unknown_user_are_the_same_403(self) -> None:
        api = await self.make_api()
        await api.register("alice", "hunter2")
        for user, password in (("alice", "wrong"), ("nobody", "hunter2")):
            code, body = await api.call(
                "POST", "/login", {"type": "m.login.password", "user": user, "password": password}
            )
            self.assertEqual(code, 403)
            self.assertEqual(body["errcode"], "M_FORBIDDEN")

    async def test_unknown_login_type_is_400_m_unknown(self) -> None:
        api = await self.make_api()
        code, body = await api.call("POST", "/login", {"type": "m.login.token", "token": "x"})
        self.assertEqual((code, body["errcode"]), (400, "M_UNKNOWN"))

    async def test_login_without_body_is_not_json(self) -> None:
        api = await self.make_api()
        code, body = await api.call("POST", "/login", raw=b"{nope")
        self.assertEqual((code, body["errcode"]), (400, "M_NOT_JSON"))

    async def test_login_without_password_is_missing_param(self) -> None:
        api = await self.make_api()
        code, body = await api.call("POST", "/login", {"type": "m.login.password", "user": "a"})
        self.assertEqual((code, body["errcode"]), (400, "M_MISSING_PARAM"))


class TokenTests(ClientApiCase, unittest.TestCase):
    async def test_missing_token(self) -> None:
        api = await self.make_api()
        code, body = await api.call("GET", "/account/whoami")
        self.assertEqual((code, body["errcode"]), (401, "M_MISSING_TOKEN"))

    async def test_unknown_token(self) -> None:
        api = await self.make_api()
        code, body = await api.call("GET", "/account/whoami", token="mfd_made_up")
        self.assertEqual((code, body["errcode"]), (401, "M_UNKNOWN_TOKEN"))

    async def test_token_in_query_string(self) -> None:
        api = await self.make_api()
        user_id, token = await api.register("alice")
        code, body = await api.call("GET", f"/account/whoami?access_token={token}")
        self.assertEqual((code, body["user_id"]), (200, user_id))

    async def test_logout_invalidates_only_that_token(self) -> None:
        api = await self.make_api()
        _, first = await api.register("alice", "pw")
        _, login = await api.call(
            "POST", "/login", {"type": "m.login.password", "user": "alice", "password": "pw"}
        )
        second = login["access_token"]
        code, _ = await api.call("POST", "/logout", {}, token=first)
        self.assertEqual(code, 200)
        code, body = await api.call("GET", "/account/whoami", token=first)
        self.assertEqual((code, body["errcode"]), (401, "M_UNKNOWN_TOKEN"))
        code, _ = await api.call("GET", "/account/whoami", token=second)
        self.assertEqual(code, 200)

    async def test_tokens_are_stored_hashed(self) -> None:
        api = await self.make_api()
        _, token = await api.register("alice")

        def rows(txn: object) -> list[tuple[object, ...]]:
            txn.execute("SELECT token_hash FROM access_tokens")  # type: ignore[attr-defined]
            return txn.fetchall()  # type: ignore[attr-defined,no-any-return]

        stored = await api.store.db.run_interaction("t", rows)
        self.assertEqual(len(stored), 1)
        self.assertNotIn(token, str(stored))


class RegistrationTests(ClientApiCase, unittest.TestCase):
    async def test_without_auth_answers_401_with_dummy_flow(self) -> None:
        api = await self.make_api()
        code, body = await api.call("POST", "/register", {"username": "bob", "password": "pw"})
        self.assertEqual(code, 401)
        self.assertEqual(body["flows"], [{"stages": ["m.login.dummy"]}])
        self.assertTrue(body["session"])
        code, body = await api.call(
            "POST",
            "/register",
            {
                "username": "bob",
                "password": "pw",
                "auth": {"type": "m.login.dummy", "session": body["session"]},
            },
        )
        self.assertEqual(code, 200)
        self.assertEqual(body["user_id"], "@bob:a.example")
        self.assertTrue(body["access_token"])

    async def test_closed_registration_is_403(self) -> None:
        api = await self.make_api(enable_registration=False)
        code, body = await api.call(
            "POST",
            "/register",
            {"username": "bob", "password": "pw", "auth": {"type": "m.login.dummy"}},
        )
        self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"))
        code, _ = await api.call(
            "POST", "/login", {"type": "m.login.password", "user": "bob", "password": "pw"}
        )
        self.assertEqual(code, 403)

    async def test_taken_and_invalid_usernames(self) -> None:
        api = await self.make_api()
        await api.register("bob")
        for name, errcode in (("bob", "M_USER_IN_USE"), ("Bob!", "M_INVALID_USERNAME")):
            code, body = await api.call(
                "POST",
                "/register",
                {"username": name, "password": "pw", "auth": {"type": "m.login.dummy"}},
            )
            self.assertEqual((code, body["errcode"]), (400, errcode))

    async def test_guest_registration_is_refused(self) -> None:
        api = await self.make_api()
        code, body = await api.call("POST", "/register?kind=guest", {})
        self.assertEqual((code, body["errcode"]), (403, "M_GUEST_ACCESS_FORBIDDEN"))

    async def test_registered_user_gets_a_profile(self) -> None:
        api = await self.make_api()
        user_id, _ = await api.register("carol")
        code, body = await api.call("GET", f"/profile/{user_id}/displayname")
        self.assertEqual((code, body), (200, {"displayname": "carol"}))

    async def test_inhibit_login_returns_no_token(self) -> None:
        api = await self.make_api()
        code, body = await api.call(
            "POST",
            "/register",
            {
                "username": "dan",
                "password": "pw",
                "inhibit_login": True,
                "auth": {"type": "m.login.dummy"},
            },
        )
        self.assertEqual(code, 200)
        self.assertNotIn("access_token", body)
