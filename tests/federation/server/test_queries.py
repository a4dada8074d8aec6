"""state, state_ids, event, event_auth, backfill, get_missing_events, timestamp_to_event
(matrixfed/federation/server/queries.py)."""

from __future__ import annotations

import json
from typing import Any

from twisted.trial import unittest

from matrixfed.events.room_versions import get_room_version
from matrixfed.federation.server.membership import MembershipHandshakes
from matrixfed.federation.server.queries import ResidentQueries
from matrixfed.federation.server.rawjson import encode_body, resolve_streams
from tests.federation.server.resident import (
    ALICE,
    BOB,
    OURS,
    REMOTE,
    ResidentMixin,
    check_schema,
    event_id_of,
    load_response_schema,
    request,
    sign_as,
)
from tests.storage.harness import PostgresMixin

V1 = "/_matrix/federation/v1"


class QueriesCase(ResidentMixin, unittest.TestCase):
    async def setup(self, version: str = "10", **kw: Any) -> str:
        await self.make_engine()
        self.q = ResidentQueries(store=self.store, server_name=OURS, clock=self.clock)
        self.hs = MembershipHandshakes(engine=self.engine)
        self.room_id = await self.room(version, **kw)
        self.rv = get_room_version(version)
        return self.room_id

    async def join_bob(self) -> str:
        code, made = await self.hs.on_make_join(
            request(
                "GET",
                V1 + "/make_join/{roomId}/{userId}",
                {"roomId": self.room_id, "userId": BOB},
                query={"ver": [self.rv.identifier]},
            )
        )
        pdu = sign_as(made["event"], self.rv, REMOTE)
        event_id = event_id_of(pdu, self.rv)
        await self.hs.on_send_join_v2(
            request(
                "PUT",
                V1 + "/send_join/{roomId}/{eventId}",
                {"roomId": self.room_id, "eventId": event_id},
                content=pdu,
            )
        )
        return event_id

    async def message(self, body: str) -> str:
        event = await self.engine.send_event(
            self.room_id, type="m.room.message", sender=ALICE, content={"body": body}
        )
        return event.event_id

    def get(self, path: str, params: dict[str, str], origin: str = REMOTE, **query: Any) -> Any:
        q = {k: v if isinstance(v, list) else [str(v)] for k, v in query.items()}
        return request("GET", V1 + path, params, origin=origin, query=q)


class AccessTests(QueriesCase):
    async def test_non_member_server_is_refused_everywhere(self) -> None:
        room_id = await self.setup()
        msg = await self.message("hi")
        room = {"roomId": room_id}
        calls = [
            self.q.on_state(self.get("/state/{roomId}", room, event_id=msg)),
            self.q.on_state_ids(self.get("/state_ids/{roomId}", room, event_id=msg)),
            self.q.on_event(self.get("/event/{eventId}", {"eventId": msg})),
            self.q.on_event_auth(
                self.get("/event_auth/{roomId}/{eventId}", {"roomId": room_id, "eventId": msg})
            ),
            self.q.on_backfill(self.get("/backfill/{roomId}", room, v=[msg], limit=10)),
            self.q.on_get_missing_events(
                request(
                    "POST",
                    V1 + "/get_missing_events/{roomId}",
                    room,
                    content={"earliest_events": [], "latest_events": [msg]},
                )
            ),
            self.q.on_timestamp_to_event(
                self.get("/timestamp_to_event/{roomId}", room, ts=0, dir="f")
            ),
        ]
        for call in calls:
            await self.assert_error(call, 403, "M_FORBIDDEN")
        # Unknown rooms look the same.
        await self.assert_error(
            self.q.on_state_ids(self.get("/state_ids/{roomId}", {"roomId": "!x:y"}, event_id=msg)),
            403,
            "M_FORBIDDEN",
        )

    async def test_world_readable_rooms_answer_anyone(self) -> None:
        await self.setup(
            initial_state=[
                {
                    "type": "m.room.history_visibility",
                    "state_key": "",
                    "content": {"history_visibility": "world_readable"},
                }
            ]
        )
        msg = await self.message("hi")
        code, body = await self.q.on_event(self.get("/event/{eventId}", {"eventId": msg}))
        self.assertEqual(body["pdus"][0]["content"], {"body": "hi"})

    async def test_acl_denies_a_joined_server(self) -> None:
        room_id = await self.setup()
        await self.join_bob()
        msg = await self.message("hi")
        await self.engine.send_event(
            room_id,
            type="m.room.server_acl",
            sender=ALICE,
            state_key="",
            content={"allow": ["*"], "deny": [REMOTE]},
        )
        await self.assert_error(
            self.q.on_state_ids(self.get("/state_ids/{roomId}", {"roomId": room_id}, event_id=msg)),
            403,
            "M_FORBIDDEN",
        )


class AnswerTests(QueriesCase):
    async def test_state_and_state_ids_before_the_event(self) -> None:
        room_id = await self.setup()
        join_id = await self.join_bob()
        msg = await self.message("hi")
        before = await self.store.get_state_before(msg)
        assert before is not None
        code, ids = await self.q.on_state_ids(
            self.get("/state_ids/{roomId}", {"roomId": room_id}, event_id=msg)
        )
        schema = load_response_schema("events.yaml", "/state_ids/{roomId}", "get")
        self.assertEqual(check_schema(ids, schema), [])
        self.assertEqual(set(ids["pdu_ids"]), set(before.values()))
        self.assertIn(join_id, ids["pdu_ids"])
        code, full = await self.q.on_state(
            self.get("/state/{roomId}", {"roomId": room_id}, event_id=msg)
        )
        # As the remote server receives it (read in batches, spliced from the
        # stored texts).
        full = json.loads(encode_body(await resolve_streams(full)))
        schema = load_response_schema("events.yaml", "/state/{roomId}", "get")
        self.assertEqual(check_schema(full, schema), [])
        self.assertEqual({event_id_of(p, self.rv) for p in full["pdus"]}, set(ids["pdu_ids"]))
        self.assertEqual(
            {event_id_of(p, self.rv) for p in full["auth_chain"]}, set(ids["auth_chain_ids"])
        )
        for p in full["pdus"]:
            for ref in p["auth_events"]:
                self.assertIn(ref, set(ids["auth_chain_ids"]))
        # The state at the join itself does not include it.
        code, at_join = await self.q.on_state_ids(
            self.get("/state_ids/{roomId}", {"roomId": room_id}, event_id=join_id)
        )
        self.assertNotIn(join_id, at_join["pdu_ids"])
        await self.assert_error(
            self.q.on_state_ids(self.get("/state_ids/{roomId}", {"roomId": room_id})),
            400,
            "M_MISSING_PARAM",
        )
        await self.assert_error(
            self.q.on_state_ids(
                self.get("/state_ids/{roomId}", {"roomId": room_id}, event_id="$nope")
            ),
            404,
            "M_NOT_FOUND",
        )

    async def test_event_and_event_auth(self) -> None:
        room_id = await self.setup()
        await self.join_bob()
        msg = await self.message("hi")
        code, body = await self.q.on_event(self.get("/event/{eventId}", {"eventId": msg}))
        self.assertEqual((body["origin"], len(body["pdus"])), (OURS, 1))
        self.assertEqual(body["pdus"][0]["content"], {"body": "hi"})
        self.assertIsInstance(body["origin_server_ts"], int)
        code, auth = await self.q.on_event_auth(
            self.get("/event_auth/{roomId}/{eventId}", {"roomId": room_id, "eventId": msg})
        )
        schema = load_response_schema("event_auth.yaml", "/event_auth/{roomId}/{eventId}", "get")
        self.assertEqual(check_schema(auth, schema), [])
        event = await self.store.get_event(msg)
        assert event is not None
        served = {event_id_of(p, self.rv) for p in auth["auth_chain"]}
        self.assertTrue(set(event.auth_event_ids) <= served)
        self.assertNotIn(msg, served)

    async def test_redacted_events_are_served_redacted(self) -> None:
        await self.setup()
        await self.join_bob()
        msg = await self.message("secret")
        await self.engine.send_event(
            self.room_id, type="m.room.redaction", sender=ALICE, content={}, redacts=msg
        )
        code, body = await self.q.on_event(self.get("/event/{eventId}", {"eventId": msg}))
        self.assertEqual(body["pdus"][0]["content"], {})

    async def test_state_serves_redacted_state_and_chain_events_redacted(self) -> None:
        # /state (a partial-state joiner's resync): a redacted state event and
        # a redacted event only in the auth chain go out redacted, oldest
        # chain events first.
        room_id = await self.setup()
        await self.join_bob()
        first = await self.engine.send_event(
            room_id,
            type="m.room.member",
            sender=ALICE,
            state_key=ALICE,
            content={"membership": "join", "displayname": "A1"},
        )
        await self.engine.send_event(
            room_id,
            type="m.room.member",
            sender=ALICE,
            state_key=ALICE,
            content={"membership": "join", "displayname": "A2"},
        )
        topic = await self.engine.send_event(
            room_id, type="m.room.topic", sender=ALICE, state_key="", content={"topic": "t"}
        )
        for target in (first.event_id, topic.event_id):
            await self.engine.send_event(
                room_id, type="m.room.redaction", sender=ALICE, content={}, redacts=target
            )
        msg = await self.message("after")
        code, body = await self.q.on_state(
            self.get("/state/{roomId}", {"roomId": room_id}, event_id=msg)
        )
        body = json.loads(encode_body(await resolve_streams(body)))
        pdus = {event_id_of(p, self.rv): p for p in body["pdus"]}
        chain = {event_id_of(p, self.rv): p for p in body["auth_chain"]}
        self.assertEqual(pdus[topic.event_id]["content"], {})
        self.assertEqual(chain[first.event_id]["content"], {"membership": "join"})
        alice = [p for p in body["pdus"] if p.get("state_key") == ALICE]
        self.assertEqual(alice[0]["content"]["displayname"], "A2")
        order = [(p["depth"], event_id_of(p, self.rv)) for p in body["auth_chain"]]
        self.assertEqual(order, sorted(order))
        self.assertEqual(list(pdus), sorted(pdus))

    async def test_redactions_apply_only_from_the_sender_or_with_power(self) -> None:
        await self.setup("11")
        await self.join_bob()
        alices = await self.message("alice's")

        async def bob_sends(etype: str, content: dict[str, Any]) -> str:
            template = await self.engine.build_event(
                self.room_id, type=etype, sender=BOB, content=content
            )
            pdu = sign_as(template, self.rv, REMOTE)
            await self.engine.receive_pdu(REMOTE, pdu)
            return event_id_of(pdu, self.rv)

        bobs = await bob_sends("m.room.message", {"body": "bob's"})
        over_alice = await bob_sends("m.room.redaction", {"redacts": alices})
        await bob_sends("m.room.redaction", {"redacts": bobs})
        # Accepted into the room (v3+ leave the check to whoever applies it).
        status = (await self.store.get_event_statuses([over_alice]))[over_alice]
        self.assertIsNone(status.rejected_reason)
        self.assertFalse(status.soft_failed)
        code, body = await self.q.on_event(self.get("/event/{eventId}", {"eventId": alices}))
        self.assertEqual(body["pdus"][0]["content"], {"body": "alice's"})
        code, body = await self.q.on_event(self.get("/event/{eventId}", {"eventId": bobs}))
        self.assertEqual(body["pdus"][0]["content"], {})

    async def test_backfill_and_missing_events(self) -> None:
        room_id = await self.setup()
        await self.join_bob()
        msgs = [await self.message(f"m{i}") for i in range(5)]
        code, body = await self.q.on_backfill(
            self.get("/backfill/{roomId}", {"roomId": room_id}, v=[msgs[-1]], limit=3)
        )
        schema = load_response_schema("backfill.yaml", "/backfill/{roomId}", "get")
        self.assertEqual(check_schema(body, schema), [])
        self.assertEqual([event_id_of(p, self.rv) for p in body["pdus"]], msgs[:1:-1])
        code, body = await self.q.on_get_missing_events(
            request(
                "POST",
                V1 + "/get_missing_events/{roomId}",
                {"roomId": room_id},
                content={"earliest_events": [msgs[1]], "latest_events": [msgs[4]], "limit": 10},
            )
        )
        self.assertEqual([event_id_of(p, self.rv) for p in body["events"]], msgs[2:4])
        await self.assert_error(
            self.q.on_get_missing_events(
                request(
                    "POST",
                    V1 + "/get_missing_events/{roomId}",
                    {"roomId": room_id},
                    content={"latest_events": "x", "earliest_events": []},
                )
            ),
            400,
            "M_BAD_JSON",
        )

    async def test_history_before_the_join_is_redacted_when_joined_only(self) -> None:
        room_id = await self.setup(
            initial_state=[
                {
                    "type": "m.room.history_visibility",
                    "state_key": "",
                    "content": {"history_visibility": "joined"},
                }
            ]
        )
        early = await self.message("before bob")
        await self.join_bob()
        late = await self.message("after bob")
        code, body = await self.q.on_backfill(
            self.get("/backfill/{roomId}", {"roomId": room_id}, v=[late], limit=20)
        )
        by_id = {event_id_of(p, self.rv): p for p in body["pdus"]}
        self.assertEqual(by_id[late]["content"], {"body": "after bob"})
        self.assertEqual(by_id[early]["content"], {})
        await self.assert_error(
            self.q.on_event(self.get("/event/{eventId}", {"eventId": early})), 403, "M_FORBIDDEN"
        )

    async def test_timestamp_to_event(self) -> None:
        room_id = await self.setup()
        await self.join_bob()
        self.engine.clock.advance(10)
        first = await self.message("a")
        ts_first = (await self.store.get_event(first)).origin_server_ts  # type: ignore[union-attr]
        self.engine.clock.advance(10)
        second = await self.message("b")
        room = {"roomId": room_id}
        code, body = await self.q.on_timestamp_to_event(
            self.get("/timestamp_to_event/{roomId}", room, ts=ts_first + 1, dir="f")
        )
        self.assertEqual(body["event_id"], second)
        code, body = await self.q.on_timestamp_to_event(
            self.get("/timestamp_to_event/{roomId}", room, ts=ts_first + 1, dir="b")
        )
        self.assertEqual(body, {"event_id": first, "origin_server_ts": ts_first})
        await self.assert_error(
            self.q.on_timestamp_to_event(
                self.get("/timestamp_to_event/{roomId}", room, ts=ts_first + 10**9, dir="f")
            ),
            404,
            "M_NOT_FOUND",
        )
        await self.assert_error(
            self.q.on_timestamp_to_event(
                self.get("/timestamp_to_event/{roomId}", room, ts=1, dir="x")
            ),
            400,
            "M_INVALID_PARAM",
        )


# The same on PostgreSQL (skipped unless MATRIXFED_TEST_POSTGRES is set).
class AnswerPostgresTests(PostgresMixin, AnswerTests):
    pass
