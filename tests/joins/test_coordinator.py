"""JoinCoordinator against scripted residents (no HTTP): what a joining user sees.

Each test joins through ``FakeResidents`` (tests/joins/resident.py) into a
real SQLite store and checks what ends up stored: the room, its current
state, memberships, and nothing at all when the join fails.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from matrixfed.errors import MatrixError, RemoteError
from matrixfed.events.room_versions import KNOWN_ROOM_VERSIONS
from matrixfed.joins import JoinCoordinator, JoinFailed, JoinProgress, PoolRunner
from matrixfed.joins.api import RESYNC_MAX_ATTEMPTS, RESYNC_SLOW_RETRY_SECONDS
from matrixfed.storage.store import Store
from tests.auth.roombuilder import RoomBuilder
from tests.harness.servers import eventually
from tests.joins.resident import (
    CREATOR,
    OURS,
    RESIDENT,
    FakeEngine,
    FakeKeyring,
    FakeResidents,
    build_room,
    our_key,
    user,
)
from tests.storage.harness import DatabaseMixin, PostgresMixin, SqliteMixin

ALL_VERSIONS = tuple(KNOWN_ROOM_VERSIONS)


class JoinTestMixin(DatabaseMixin):
    async def setup_join(
        self,
        room: RoomBuilder,
        servers: tuple[str, ...] = (RESIDENT,),
        *,
        partial_state: bool = False,
        chunk_size: int = 1000,
    ) -> None:
        self.room = room
        self.residents = FakeResidents(room, servers)
        self.keyring = FakeKeyring()
        self.engine = FakeEngine(room)
        self.clock = Clock()
        self.clock.advance(1_700_000_100)
        self.store: Store = await self.make_store()
        self.coordinator = JoinCoordinator(
            store=self.store,
            engine=self.engine,
            federation_client=self.residents,
            keyring=self.keyring,
            clock=self.clock,
            server_name=OURS,
            signing_key=our_key(),
            runner=PoolRunner(reactor=reactor, threadpool=reactor.getThreadPool()),
            partial_state=partial_state,
            verify_chunk_size=chunk_size,
        )

    @property
    def room_id(self) -> str:
        assert self.room.room_id is not None
        return self.room.room_id

    async def assert_nothing_stored(self) -> None:
        case: Any = self
        case.assertIsNone(await self.store.get_room(self.room_id))
        case.assertEqual(await self.store.have_events(list(self.room.events)), set())
        case.assertEqual(await self.store.get_current_state_ids(self.room_id), {})


def _versioned(version: str) -> type:
    class JoinEachVersion(JoinTestMixin):
        async def test_full_join(self) -> None:
            """The room, its whole state and our membership are stored; the join is live."""
            await self.setup_join(build_room(version, members=4))
            expected_state = {k: e.event_id for k, e in self.room.state.items()}
            stages: list[JoinProgress] = []
            result = await self.coordinator.join(
                self.room_id, user("bob"), servers=[RESIDENT], progress=stages.append
            )
            self.assertEqual(result.room_id, self.room_id)
            self.assertEqual(result.server, RESIDENT)
            self.assertFalse(result.partial_state)
            info = await self.store.get_room(self.room_id)
            assert info is not None
            self.assertEqual(info.room_version, version)
            self.assertFalse(info.partial_state)
            current = await self.store.get_current_state_ids(self.room_id)
            self.assertEqual(
                current, {**expected_state, ("m.room.member", user("bob")): result.event_id}
            )
            self.assertEqual(await self.store.get_state_before(result.event_id), expected_state)
            self.assertEqual(
                await self.store.get_membership(self.room_id, user("bob")),
                ("join", result.event_id),
            )
            self.assertEqual(
                await self.store.get_forward_extremities(self.room_id), [result.event_id]
            )
            self.assertTrue(await self.store.is_host_joined(self.room_id, OURS))
            # The state is stored once (before the join) plus the join's delta.
            _groups, rows = await self.store.count_state_rows(self.room_id)
            self.assertEqual(rows, len(expected_state) + 1)
            # The stored join is ours, signed by us.
            stored = await self.store.get_event(result.event_id)
            assert stored is not None
            self.assertIn(OURS, stored.signatures)
            self.assertEqual(stored.pdu["origin"], OURS)
            # One key batch for the whole answer.
            self.assertEqual(len(self.keyring.batches), 1)
            self.assertIn(RESIDENT, self.keyring.batches[0])
            # Progress went through every stage and counted every event.
            names = [p.stage for p in stages]
            for stage in ("make_join", "send_join", "keys", "verify", "auth", "persist"):
                self.assertIn(stage, names)
            self.assertEqual(names[-1], "joined")
            verify = [p for p in stages if p.stage == "verify"]
            self.assertEqual(verify[-1].done, verify[-1].total)
            self.assertGreater(verify[-1].total, len(expected_state))
            # Clients waiting for the room were woken.
            self.assertEqual(self.engine.notifier.users[-1][0], user("bob"))

        async def test_partial_join_then_full_state(self) -> None:
            """Usable at once with the members left out; complete after the resync."""
            await self.setup_join(build_room(version, members=4), partial_state=True)
            expected_state = {k: e.event_id for k, e in self.room.state.items()}
            result = await self.coordinator.join(self.room_id, user("bob"), servers=[RESIDENT])
            self.assertTrue(result.partial_state)
            finished = self.coordinator.resync.finished(self.room_id)
            info = await self.store.get_room(self.room_id)
            assert info is not None
            if finished is not None:
                self.assertTrue(await finished)
            info = await self.store.get_room(self.room_id)
            assert info is not None
            self.assertFalse(info.partial_state)
            current = await self.store.get_current_state_ids(self.room_id)
            self.assertEqual(
                current, {**expected_state, ("m.room.member", user("bob")): result.event_id}
            )
            joined = await self.store.get_joined_users(self.room_id)
            self.assertIn("@m3:other.example", joined)
            self.assertIn(user("bob"), joined)

    return JoinEachVersion


for _v in ALL_VERSIONS:
    _mixin = _versioned(_v)
    for _engine, _db_mixin in (("", SqliteMixin), ("Postgres", PostgresMixin)):
        _name = f"Join{_engine}V{_v}"
        globals()[_name] = type(
            _name, (_db_mixin, _mixin, unittest.TestCase), {"__module__": __name__}
        )


def _topic_room(version: str = "10") -> RoomBuilder:
    room = build_room(version, members=2)
    room.send("m.room.topic", CREATOR, {"topic": "the real topic"}, "")
    return room


class _TamperedState(JoinTestMixin):
    """Bad events in the answer never become current state."""

    async def test_bad_signature_is_dropped(self) -> None:
        room = _topic_room()
        await self.setup_join(room)
        member = room.state[("m.room.member", "@m1:other.example")].event_id

        def tamper(body: dict[str, Any]) -> None:
            for pdu in body["state"] + body["auth_chain"]:
                if pdu.get("state_key") == "@m1:other.example":
                    sigs = pdu["signatures"]["other.example"]
                    key = next(iter(sigs))
                    sigs[key] = "A" * 86  # a well-formed but wrong signature

        self.residents.tamper[RESIDENT] = tamper
        result = await self.coordinator.join(self.room_id, user("bob"))
        current = await self.store.get_current_state_ids(self.room_id)
        self.assertNotIn(("m.room.member", "@m1:other.example"), current)
        self.assertEqual(current[("m.room.member", user("bob"))], result.event_id)
        self.assertEqual(await self.store.have_events([member]), set())

    async def test_bad_hash_uses_redacted_form(self) -> None:
        room = _topic_room()
        await self.setup_join(room)
        topic = room.state[("m.room.topic", "")].event_id

        def tamper(body: dict[str, Any]) -> None:
            for pdu in body["state"] + body["auth_chain"]:
                if pdu.get("type") == "m.room.topic":
                    pdu["content"]["topic"] = "something the sender never said"

        self.residents.tamper[RESIDENT] = tamper
        await self.coordinator.join(self.room_id, user("bob"))
        current = await self.store.get_current_state_ids(self.room_id)
        self.assertEqual(current[("m.room.topic", "")], topic)
        stored = await self.store.get_event(topic)
        assert stored is not None
        self.assertEqual(dict(stored.content), {})
        # The row itself (written from the text encoded on the verify threads).
        ((_depth, text),) = (await self.store.get_event_json([topic])).values()
        self.assertEqual(json.loads(text), stored.pdu)

    async def test_unauthorised_state_event_is_rejected(self) -> None:
        room = _topic_room()
        # A name set by a user without the power to: the resident let it in.
        bad = room.apply(room.make("m.room.name", "@m1:other.example", {"name": "pwned"}, ""))
        await self.setup_join(room)
        await self.coordinator.join(self.room_id, user("bob"))
        current = await self.store.get_current_state_ids(self.room_id)
        self.assertNotIn(("m.room.name", ""), current)
        rejected = await self.store.get_rejected([bad.event_id])
        self.assertIn(bad.event_id, rejected)

    async def test_event_citing_a_rejected_event_is_rejected(self) -> None:
        room = _topic_room()
        real_power_levels = room.state[("m.room.power_levels", "")]
        bad = room.apply(
            room.make(
                "m.room.power_levels",
                "@m1:other.example",
                {"users": {"@m1:other.example": 100}},
                "",
            )
        )
        # Allowed by the forged power levels, so rejected with them.
        follower = room.apply(room.make("m.room.name", "@m1:other.example", {"name": "pwned"}, ""))
        # The resident's state keeps the real power levels and the name.
        room.state[("m.room.power_levels", "")] = real_power_levels
        await self.setup_join(room)
        await self.coordinator.join(self.room_id, user("bob"))
        current = await self.store.get_current_state_ids(self.room_id)
        self.assertNotIn(("m.room.name", ""), current)
        self.assertNotEqual(current[("m.room.power_levels", "")], bad.event_id)
        rejected = await self.store.get_rejected([bad.event_id, follower.event_id])
        self.assertEqual(set(rejected), {bad.event_id, follower.event_id})

    async def test_state_that_cannot_authorise_the_join_fails_and_stores_nothing(self) -> None:
        room = build_room("10", members=2)
        room.send("m.room.join_rules", CREATOR, {"join_rule": "invite"}, "")
        await self.setup_join(room)
        with self.assertRaises(JoinFailed) as caught:
            await self.coordinator.join(self.room_id, user("bob"))
        self.assertIn("does not authorise our join", caught.exception.message)
        await self.assert_nothing_stored()

    async def test_missing_create_event_fails(self) -> None:
        await self.setup_join(build_room("12", members=2))

        def tamper(body: dict[str, Any]) -> None:
            body["state"] = [p for p in body["state"] if p["type"] != "m.room.create"]

        self.residents.tamper[RESIDENT] = tamper
        with self.assertRaises(JoinFailed) as caught:
            await self.coordinator.join(self.room_id, user("bob"), servers=[RESIDENT])
        self.assertIn("m.room.create", caught.exception.message)
        await self.assert_nothing_stored()

    async def test_unverifiable_resident_fails_and_stores_nothing(self) -> None:
        """No keys for the resident (unreachable, no notary): every event is dropped."""
        await self.setup_join(build_room("10", members=2))
        self.keyring.unknown.add(RESIDENT)
        with self.assertRaises(JoinFailed) as caught:
            await self.coordinator.join(self.room_id, user("bob"))
        self.assertIn("m.room.create", caught.exception.message)
        await self.assert_nothing_stored()

    async def test_events_of_another_room_are_dropped(self) -> None:
        room = build_room("10", members=2)
        stray = build_room("10", members=1)
        await self.setup_join(room)

        def tamper(body: dict[str, Any]) -> None:
            body["state"].extend(e.pdu for e in stray.state.values() if e.type == "m.room.member")

        self.residents.tamper[RESIDENT] = tamper
        await self.coordinator.join(self.room_id, user("bob"))
        strays = [e.event_id for e in stray.state.values() if e.type == "m.room.member"]
        self.assertEqual(await self.store.have_events(strays), set())
        current = await self.store.get_current_state_ids(self.room_id)
        self.assertEqual(set(current.values()) & set(strays), set())

    async def test_returned_join_event_must_be_ours(self) -> None:
        await self.setup_join(build_room("10", members=2))

        def tamper(body: dict[str, Any]) -> None:
            body["event"]["content"]["displayname"] = "not what we signed"

        self.residents.tamper[RESIDENT] = tamper
        with self.assertRaises(JoinFailed) as caught:
            await self.coordinator.join(self.room_id, user("bob"))
        self.assertIn("not the one we sent", caught.exception.message)
        await self.assert_nothing_stored()


class TamperedStateTests(SqliteMixin, _TamperedState, unittest.TestCase):
    pass


class TamperedStatePostgresTests(PostgresMixin, _TamperedState, unittest.TestCase):
    pass


class CandidateTests(SqliteMixin, JoinTestMixin, unittest.TestCase):
    """Servers that fail are skipped for the next; all failing -> JoinFailed."""

    servers = ("slow.example", "junk.example", "other-room.example", "other-user.example")

    async def test_bad_residents_are_skipped(self) -> None:
        await self.setup_join(build_room("11", members=2), (*self.servers, RESIDENT))
        self.residents.errors[("slow.example", "make_join")] = RemoteError(
            "slow.example", "timed out", reachable=False, transient=True
        )
        self.residents.garbage[("junk.example", "make_join")] = ["not", "an", "object"]
        self.residents.template_overrides["other-room.example"] = {"room_id": "!other:x.example"}
        self.residents.template_overrides["other-user.example"] = {"sender": user("mallory")}
        result = await self.coordinator.join(
            self.room_id, user("bob"), servers=[*self.servers, RESIDENT]
        )
        self.assertEqual(result.server, RESIDENT)
        tried = [s for s, name in self.residents.calls if name == "make_join"]
        self.assertEqual(tried, [*self.servers, RESIDENT])
        sent = [s for s, name in self.residents.calls if name == "send_join"]
        self.assertEqual(sent, [RESIDENT])

    async def test_garbage_send_join_moves_on(self) -> None:
        await self.setup_join(build_room("9", members=2), ("junk.example", RESIDENT))
        self.residents.garbage[("junk.example", "send_join")] = {"state": "nope"}
        result = await self.coordinator.join(self.room_id, user("bob"), servers=["junk.example"])
        # The room ID's server comes after the given ones.
        self.assertEqual(result.server, RESIDENT)

    async def test_all_failing_says_why_per_server_and_stores_nothing(self) -> None:
        await self.setup_join(build_room("11", members=2), self.servers)
        self.residents.errors[("slow.example", "make_join")] = RemoteError(
            "slow.example", "timed out", reachable=False, transient=True
        )
        self.residents.garbage[("junk.example", "make_join")] = ["not", "an", "object"]
        self.residents.template_overrides["other-room.example"] = {"room_id": "!other:x.example"}
        self.residents.template_overrides["other-user.example"] = {"sender": user("mallory")}
        with self.assertRaises(JoinFailed) as caught:
            await self.coordinator.join(self.room_id, user("bob"), servers=list(self.servers))
        error = caught.exception
        self.assertIsInstance(error, MatrixError)
        self.assertEqual(error.code, 502)
        servers = [f["server"] for f in error.to_json()["failures"]]
        self.assertEqual(servers, [*self.servers, RESIDENT])
        self.assertIn("timed out", error.message)
        self.assertIn("room_id", error.message)
        self.assertIn("sender", error.message)
        await self.assert_nothing_stored()

    async def test_everyone_forbids_gives_403(self) -> None:
        await self.setup_join(build_room("11", members=2))
        self.residents.errors[(RESIDENT, "make_join")] = RemoteError(
            RESIDENT,
            "HTTP 403",
            reachable=True,
            transient=False,
            code=403,
            errcode="M_FORBIDDEN",
        )
        with self.assertRaises(JoinFailed) as caught:
            await self.coordinator.join(self.room_id, user("bob"))
        self.assertEqual((caught.exception.code, caught.exception.errcode), (403, "M_FORBIDDEN"))

    async def test_v12_room_without_servers_has_no_candidate(self) -> None:
        await self.setup_join(build_room("12", members=2))
        with self.assertRaises(JoinFailed) as caught:
            await self.coordinator.join(self.room_id, user("bob"))
        self.assertEqual(caught.exception.code, 404)
        self.assertEqual(self.residents.calls, [])

    async def test_alias_is_resolved_on_its_server(self) -> None:
        await self.setup_join(build_room("12", members=2))
        result = await self.coordinator.join(f"#room:{RESIDENT}", user("bob"))
        self.assertEqual(result.room_id, self.room_id)
        self.assertEqual(self.residents.calls[0], (RESIDENT, "query_directory"))

    async def test_unresolvable_alias(self) -> None:
        await self.setup_join(build_room("12", members=2))
        self.residents.errors[(RESIDENT, "query_directory")] = RemoteError(
            RESIDENT,
            "HTTP 404",
            reachable=True,
            transient=False,
            code=404,
            errcode="M_NOT_FOUND",
        )
        with self.assertRaises(JoinFailed) as caught:
            await self.coordinator.join(f"#nope:{RESIDENT}", user("bob"))
        self.assertEqual(caught.exception.code, 404)

    async def test_remote_user_cannot_be_joined(self) -> None:
        await self.setup_join(build_room("12", members=2))
        with self.assertRaises(MatrixError) as caught:
            await self.coordinator.join(self.room_id, "@eve:elsewhere.example", servers=[RESIDENT])
        self.assertEqual(caught.exception.code, 400)


class ConcurrencyAndLocalTests(SqliteMixin, JoinTestMixin, unittest.TestCase):
    async def test_concurrent_joins_share_one_handshake(self) -> None:
        await self.setup_join(build_room("10", members=3))
        first = ensureDeferred(self.coordinator.join(self.room_id, user("bob")))
        second = ensureDeferred(self.coordinator.join(self.room_id, user("carol")))
        third = ensureDeferred(self.coordinator.join(self.room_id, user("dan")))
        results = [await first, await second, await third]
        self.assertEqual([r.server for r in results], [RESIDENT, None, None])
        self.assertEqual([n for _, n in self.residents.calls].count("send_join"), 1)
        self.assertEqual(
            [(u, m) for _, _, u, m in self.engine.sent],
            [(user("carol"), "join"), (user("dan"), "join")],
        )

    async def test_join_of_a_joined_room_is_local(self) -> None:
        await self.setup_join(build_room("10", members=3))
        await self.coordinator.join(self.room_id, user("bob"))
        calls = len(self.residents.calls)
        result = await self.coordinator.join(self.room_id, user("carol"))
        self.assertIsNone(result.server)
        self.assertEqual(len(self.residents.calls), calls)
        self.assertEqual(self.engine.sent, [(self.room_id, "m.room.member", user("carol"), "join")])

    async def test_failed_handshake_lets_the_waiter_try_its_own(self) -> None:
        await self.setup_join(build_room("10", members=3))
        gate: Deferred[None] = Deferred()
        original = self.residents.send_join
        attempts = []

        async def slow_then_fail(*args: Any, **kwargs: Any) -> Any:
            attempts.append(args[0])
            if len(attempts) == 1:
                await gate
                raise RemoteError(RESIDENT, "boom", reachable=True, transient=True, code=500)
            return await original(*args, **kwargs)

        self.residents.send_join = slow_then_fail  # type: ignore[method-assign]
        first = ensureDeferred(self.coordinator.join(self.room_id, user("bob")))
        second = ensureDeferred(self.coordinator.join(self.room_id, user("carol")))
        gate.callback(None)
        with self.assertRaises(JoinFailed):
            await first
        result = await second
        self.assertEqual(result.server, RESIDENT)
        self.assertEqual(len(attempts), 2)


class ResponsivenessTests(SqliteMixin, JoinTestMixin, unittest.TestCase):
    async def test_reactor_keeps_turning_while_a_join_is_verified(self) -> None:
        await self.setup_join(build_room("11", members=40), chunk_size=5)
        turns = 0
        running = True

        def tick() -> None:
            nonlocal turns
            turns += 1
            if running:
                reactor.callLater(0, tick)

        seen: list[tuple[str, int, int]] = []

        def progress(p: JoinProgress) -> None:
            seen.append((p.stage, p.done, turns))

        reactor.callLater(0, tick)
        await self.coordinator.join(self.room_id, user("bob"), progress=progress)
        running = False
        verify = [(done, t) for stage, done, t in seen if stage == "verify"]
        # Many chunks, reported one by one, with the reactor turning between them.
        self.assertGreater(len(verify), 8)
        self.assertGreater(verify[-1][1], verify[0][1])


class ProgressTests(SqliteMixin, JoinTestMixin, unittest.TestCase):
    async def test_a_failing_progress_callback_does_not_break_the_join(self) -> None:
        await self.setup_join(build_room("11", members=3))

        def broken(p: JoinProgress) -> None:
            raise RuntimeError("the terminal went away")

        result = await self.coordinator.join(self.room_id, user("bob"), progress=broken)
        self.assertEqual(result.server, RESIDENT)
        self.assertTrue(self.flushLoggedErrors(RuntimeError))


class LeaveTests(SqliteMixin, JoinTestMixin, unittest.TestCase):
    async def test_reject_remote_invite_via_inviting_server(self) -> None:
        room = build_room("11", members=2)
        room.member(CREATOR, "invite", user("bob"))
        await self.setup_join(room)
        result = await self.coordinator.leave(self.room_id, user("bob"), servers=[RESIDENT])
        self.assertEqual(result.server, RESIDENT)
        self.assertEqual([n for _, n in self.residents.calls], ["make_leave", "send_leave"])
        leave = room.state[("m.room.member", user("bob"))]
        self.assertEqual(leave.event_id, result.event_id)
        # A room we were never in gets no row from rejecting its invite.
        self.assertIsNone(await self.store.get_room(self.room_id))
        self.assertEqual(leave.membership, "leave")
        self.assertIn(OURS, leave.signatures)

    async def test_leave_of_joined_room_is_local(self) -> None:
        await self.setup_join(build_room("11", members=2))
        await self.coordinator.join(self.room_id, user("bob"))
        result = await self.coordinator.leave(self.room_id, user("bob"))
        self.assertIsNone(result.server)
        self.assertEqual(
            self.engine.sent[-1], (self.room_id, "m.room.member", user("bob"), "leave")
        )

    async def test_leave_failing_everywhere(self) -> None:
        room = build_room("11", members=2)
        await self.setup_join(room)
        self.residents.errors[(RESIDENT, "make_leave")] = RemoteError(
            RESIDENT,
            "HTTP 403",
            reachable=True,
            transient=False,
            code=403,
            errcode="M_FORBIDDEN",
        )
        with self.assertRaises(JoinFailed) as caught:
            await self.coordinator.leave(self.room_id, user("bob"))
        self.assertEqual(caught.exception.code, 403)


class RestrictedJoinTests(SqliteMixin, JoinTestMixin, unittest.TestCase):
    async def test_countersigned_join_is_stored_with_the_residents_signature(self) -> None:
        room = build_room("10", members=2)
        room.send(
            "m.room.join_rules",
            CREATOR,
            {
                "join_rule": "restricted",
                "allow": [{"type": "m.room_membership", "room_id": "!x:y"}],
            },
            "",
        )
        await self.setup_join(room)
        self.residents.countersign = True
        self.residents.join_content = {"join_authorised_via_users_server": CREATOR}
        result = await self.coordinator.join(self.room_id, user("bob"))
        stored = await self.store.get_event(result.event_id)
        assert stored is not None
        self.assertIn(RESIDENT, stored.signatures)
        self.assertIn(OURS, stored.signatures)

    async def test_restricted_join_without_countersignature_fails(self) -> None:
        room = build_room("10", members=2)
        room.send(
            "m.room.join_rules",
            CREATOR,
            {
                "join_rule": "restricted",
                "allow": [{"type": "m.room_membership", "room_id": "!x:y"}],
            },
            "",
        )
        await self.setup_join(room)
        self.residents.join_content = {"join_authorised_via_users_server": CREATOR}

        def tamper(body: dict[str, Any]) -> None:
            del body["event"]

        self.residents.tamper[RESIDENT] = tamper
        with self.assertRaises(JoinFailed) as caught:
            await self.coordinator.join(self.room_id, user("bob"))
        self.assertIn("countersigned", caught.exception.message)
        await self.assert_nothing_stored()


class PartialStateTests(SqliteMixin, JoinTestMixin, unittest.TestCase):
    async def test_big_resync_uses_state_request(self) -> None:
        await self.setup_join(build_room("11", members=60), partial_state=True)
        result = await self.coordinator.join(self.room_id, user("bob"))
        self.assertTrue(result.partial_state)
        finished = self.coordinator.resync.finished(self.room_id)
        if finished is not None:
            self.assertTrue(await finished)
        names = [n for _, n in self.residents.calls]
        self.assertIn("state", names)
        self.assertNotIn("event", names)
        joined = await self.store.get_joined_users(self.room_id)
        self.assertEqual(len(joined), 60 + 2)  # members, creator, bob

    async def test_small_resync_fetches_single_events(self) -> None:
        await self.setup_join(build_room("11", members=3), partial_state=True)
        await self.coordinator.join(self.room_id, user("bob"))
        finished = self.coordinator.resync.finished(self.room_id)
        if finished is not None:
            self.assertTrue(await finished)
        names = [n for _, n in self.residents.calls]
        self.assertIn("event", names)
        self.assertNotIn("state", names)

    async def test_partial_state_while_resync_pending(self) -> None:
        await self.setup_join(build_room("11", members=3), partial_state=True)
        gate: Deferred[None] = Deferred()
        original = self.residents.get_state_ids

        async def later(*args: Any) -> Any:
            await gate
            return await original(*args)

        self.residents.get_state_ids = later  # type: ignore[method-assign]
        result = await self.coordinator.join(self.room_id, user("bob"))
        info = await self.store.get_room(self.room_id)
        assert info is not None
        self.assertTrue(info.partial_state)
        current = await self.store.get_current_state_ids(self.room_id)
        self.assertNotIn(("m.room.member", "@m1:other.example"), current)
        self.assertEqual(current[("m.room.member", user("bob"))], result.event_id)
        gate.callback(None)
        finished = self.coordinator.resync.finished(self.room_id)
        assert finished is not None
        self.assertTrue(await finished)
        current = await self.store.get_current_state_ids(self.room_id)
        self.assertIn(("m.room.member", "@m1:other.example"), current)

    async def test_resync_keeps_trying_after_the_quick_rounds(self) -> None:
        """/state_ids fails for the quick rounds and two slow ones: the room
        stays partial meanwhile and is complete once the resident answers."""
        await self.setup_join(build_room("11", members=3), partial_state=True)
        failing = RESYNC_MAX_ATTEMPTS + 2
        self.residents.errors[(RESIDENT, "state_ids")] = RemoteError(
            RESIDENT, "unavailable", reachable=True, transient=True, code=503
        )
        await self.coordinator.join(self.room_id, user("bob"))
        finished = self.coordinator.resync.finished(self.room_id)
        assert finished is not None

        def asked() -> int:
            return sum(1 for s, n in self.residents.calls if (s, n) == (RESIDENT, "state_ids"))

        for round_ in range(1, failing):
            await eventually(
                lambda r=round_: asked() == r and bool(self.clock.getDelayedCalls()),
                f"round {round_} fails and waits",
            )
            self.assertFalse(finished.called)
            self.clock.advance(RESYNC_SLOW_RETRY_SECONDS)
        await eventually(
            lambda: asked() == failing and bool(self.clock.getDelayedCalls()),
            f"round {failing} fails and waits",
        )
        del self.residents.errors[(RESIDENT, "state_ids")]
        info = await self.store.get_room(self.room_id)
        assert info is not None
        self.assertTrue(info.partial_state)
        self.clock.advance(RESYNC_SLOW_RETRY_SECONDS)
        self.assertTrue(await finished)
        current = await self.store.get_current_state_ids(self.room_id)
        self.assertIn(("m.room.member", "@m1:other.example"), current)

    async def test_resident_without_partial_support_gives_full_join(self) -> None:
        await self.setup_join(build_room("11", members=3), partial_state=True)
        self.residents.omit_members_supported = False
        result = await self.coordinator.join(self.room_id, user("bob"))
        self.assertFalse(result.partial_state)
        self.assertIsNone(self.coordinator.resync.finished(self.room_id))

    async def test_unusable_partial_answer_falls_back_to_full(self) -> None:
        await self.setup_join(build_room("11", members=3), partial_state=True)

        def tamper(body: dict[str, Any]) -> None:
            if body.get("members_omitted"):
                del body["servers_in_room"]

        self.residents.tamper[RESIDENT] = tamper
        result = await self.coordinator.join(self.room_id, user("bob"))
        self.assertFalse(result.partial_state)
        self.assertEqual([n for _, n in self.residents.calls].count("send_join"), 2)
