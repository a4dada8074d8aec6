"""How fast is the full check of one received event, against bare ed25519?

Builds a synthetic room version 12 room with 10,000 members (create, power
levels, join rules, then one join per member, signed by a handful of servers,
each citing its auth events), serialises every PDU to JSON as it would arrive
and measures, on one core:

(a) the bare ed25519 verify rate of this machine: PyNaCl ``VerifyKey.verify``
    over the signed bytes of a typical member event;
(b) the full check of one received event: format validation, event ID,
    signature verification, content hash (``matrixfed.events.checks.check_pdu``),
    plus the auth rules against its auth events when ``matrixfed.auth.rules``
    is importable; in events per second, and as a fraction of (a).

The goal is (b) >= 50% of (a). ``--profile`` prints where the rest goes.
Everything runs on one thread and is timed in that thread's CPU time
(``time.thread_time``), so time the shared machine spends on other processes
is not counted. The measures are interleaved in short rounds; the ratios
compare rounds of the same pass, and each measure reports its median round
(and its fastest). ``--threads N`` adds a run of ``check_pdus`` on N threads.
This is a benchmark, not a test: it prints numbers and asserts nothing.

    /work/venv/bin/python bench/bench_event_check.py [--members N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import pstats
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from signedjson.key import decode_signing_key_base64, get_verify_key
from signedjson.types import SigningKey
from unpaddedbase64 import decode_base64, encode_base64

from matrixfed.events.checks import check_pdu, check_pdus
from matrixfed.events.hashing import compute_event_id, redacted_signing_json
from matrixfed.events.keys import KeyMap, ServerVerifyKey
from matrixfed.events.model import Event
from matrixfed.events.room_versions import get_room_version
from matrixfed.events.signing import sign_event

try:
    from matrixfed.auth.rules import check_auth, check_auth_events_refs

    HAVE_AUTH = True
except ImportError:  # the auth rules land separately
    HAVE_AUTH = False

RV = get_room_version("12")
SERVERS = [f"s{i}.example" for i in range(5)]
CREATOR = "@creator:s0.example"
TS0 = 1_790_000_000_000
# Events per measured round, and passes over the whole room.
ROUND = 250
# PDUs per check_pdus call in the batched measure: a /send transaction's worth.
BATCH = 50
PASSES = 2


def signing_key(server: str) -> SigningKey:
    seed = hashlib.sha256(f"bench/{server}".encode()).digest()
    key: SigningKey = decode_signing_key_base64("ed25519", "k1", encode_base64(seed))
    return key


def build_room(members: int) -> tuple[list[dict[str, Any]], KeyMap]:
    keys = {s: signing_key(s) for s in SERVERS}
    key_map: dict[str, dict[str, ServerVerifyKey]] = {
        s: {"ed25519:k1": ServerVerifyKey(s, "ed25519:k1", get_verify_key(k), 2**53 - 1)}  # type: ignore[arg-type]
        for s, k in keys.items()
    }
    pdus: list[dict[str, Any]] = []
    room_id = ""
    prev: list[str] = []

    def add(event_type: str, sender: str, content: dict[str, Any], state_key: str,
            auth: list[str]) -> str:  # fmt: skip
        nonlocal prev
        server = sender.split(":", 1)[1]
        pdu: dict[str, Any] = {
            "type": event_type,
            "sender": sender,
            "state_key": state_key,
            "content": content,
            "origin_server_ts": TS0 + len(pdus),
            "depth": len(pdus) + 1,
            "prev_events": prev,
            "auth_events": auth,
        }
        if room_id:
            pdu["room_id"] = room_id
        sign_event(pdu, RV, server, keys[server])
        pdu["unsigned"] = {"age": 1234}
        event_id = compute_event_id(pdu, RV)
        pdus.append(pdu)
        prev = [event_id]
        return event_id

    create_id = add("m.room.create", CREATOR, {"room_version": "12"}, "", [])
    room_id = "!" + create_id[1:]
    creator_join = add("m.room.member", CREATOR, {"membership": "join", "displayname": "creator"},
                       CREATOR, [])  # fmt: skip
    pl = add(
        "m.room.power_levels",
        CREATOR,
        {"users": {}, "users_default": 0, "events_default": 0, "state_default": 50,
         "ban": 50, "kick": 50, "redact": 50, "invite": 0,
         "events": {"m.room.name": 50, "m.room.power_levels": 100}},
        "",
        [creator_join],
    )  # fmt: skip
    join_rules = add("m.room.join_rules", CREATOR, {"join_rule": "public"}, "", [pl, creator_join])
    for i in range(members):
        user = f"@user{i}:{SERVERS[i % len(SERVERS)]}"
        add(
            "m.room.member",
            user,
            {"membership": "join", "displayname": f"User number {i}", "avatar_url": None},
            user,
            [pl, join_rules],
        )
    return pdus, key_map


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--profile", action="store_true", help="cProfile the full check")
    parser.add_argument("--stages", action="store_true",
                        help="time each step of the full check separately")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0,
                        help="also run check_pdus on this many threads (uses more cores)")  # fmt: skip
    args = parser.parse_args(argv)

    t = time.perf_counter()
    pdus, keys = build_room(args.members)
    wire = [json.dumps(p) for p in pdus]  # as received: fresh dicts per check
    print(f"built {len(pdus)} signed events in {time.perf_counter() - t:.1f}s "
          f"(room version {RV.identifier}, {len(SERVERS)} servers)")  # fmt: skip

    members = [json.loads(w) for w in wire[4:]]
    typical = members[len(members) // 2]
    server = typical["sender"].split(":", 1)[1]
    message = redacted_signing_json(typical, RV)
    signature = decode_base64(typical["signatures"][server]["ed25519:k1"])
    verify_key = keys[server]["ed25519:k1"].verify_key
    print(f"typical member event: {len(json.dumps(typical))} bytes of JSON, "
          f"{len(message)} signed bytes")  # fmt: skip

    # (b) the full check: format + event ID + signatures + hash (+ auth)
    by_id: dict[str, Event] = {}
    for w in wire[:4]:
        e = Event(json.loads(w), RV)
        by_id[e.event_id] = e
    create = next(iter(by_id.values()))
    create_key = ("m.room.create", "")

    def auth(event: Event) -> None:
        auth_events = {i: by_id[i] for i in event.auth_event_ids}
        check_auth_events_refs(event, auth_events)
        state = {e.state_tuple: e for e in auth_events.values()}
        state[create_key] = create
        check_auth(event, state)

    def full_check(pdu: dict[str, Any]) -> None:
        event = check_pdu(pdu, RV, keys)
        if HAVE_AUTH:
            auth(event)

    def one_by_one(batch: list[dict[str, Any]]) -> None:
        for pdu in batch:
            full_check(pdu)

    def pdu_only(batch: list[dict[str, Any]]) -> None:
        for pdu in batch:
            check_pdu(pdu, RV, keys)

    def batched(batch: list[dict[str, Any]]) -> None:
        for j in range(0, len(batch), BATCH):
            for result in check_pdus(batch[j : j + BATCH], RV, keys):
                assert isinstance(result, Event)
                if HAVE_AUTH:
                    auth(result)

    # Short rounds, interleaved, over every member event (each parsed afresh
    # so nothing is warm): (a), check_pdu alone, (b) one by one, (b) batched.
    # The machine is shared, so each measure keeps its fastest round, the one
    # least disturbed by the neighbours; medians are printed too.
    member_wire = wire[4:]
    cpu = time.thread_time
    measures = (("pdu", pdu_only), ("full", one_by_one), ("batched", batched))
    times: dict[str, list[float]] = {"bare": [], "pdu": [], "full": [], "batched": []}
    for _ in range(PASSES):
        for i in range(0, len(member_wire), ROUND):
            chunk = member_wire[i : i + ROUND]
            n = len(chunk)
            start = cpu()
            for _ in range(n):
                verify_key.verify(message, signature)
            times["bare"].append((cpu() - start) / n)
            for name, fn in measures:
                batch = [json.loads(w) for w in chunk]
                start = cpu()
                fn(batch)
                times[name].append((cpu() - start) / n)
    best = {k: 1 / min(v) for k, v in times.items()}
    median = {k: 1 / statistics.median(v) for k, v in times.items()}
    # Ratio per round (same pass, same neighbours), then the median of those.
    ratio = {
        k: statistics.median(b / t for b, t in zip(times["bare"], times[k], strict=True))
        for k in ("pdu", "full", "batched")
    }
    parse_start = time.perf_counter()
    for w in wire:
        json.loads(w)
    parse_rate = len(wire) / (time.perf_counter() - parse_start)

    label = "check_pdu + auth rules" if HAVE_AUTH else "check_pdu (no auth rules yet)"
    rows = (
        ("bare", "(a) bare ed25519 verify (PyNaCl VerifyKey.verify)"),
        ("pdu", "    check_pdu alone (format+id+sigs+hash)"),
        ("full", f"(b) full check, {label}, one PDU at a time"),
        ("batched", f"(b) full check, check_pdus in batches of {BATCH}, then auth"),
    )
    print()
    print(f"{'per event, CPU time of one thread':66s} {'median':>14s} {'fastest':>9s}  of (a)")
    for key, text in rows:
        share = "" if key == "bare" else f"  {ratio[key]:6.1%}"
        print(f"{text:66s} {median[key]:7.0f} /s {1e6 / median[key]:5.1f} us"
              f" {best[key]:7.0f} /s{share}")  # fmt: skip
    print("goal: (b) >= 50% of (a) (the ratio is the median over rounds of (a)/(b))")
    print(f"    for scale, json.loads of one PDU (not part of (b)): {1e6 / parse_rate:.1f} us")

    if args.threads:
        chunks = [members[i :: args.threads] for i in range(args.threads)]
        fresh = [[json.loads(json.dumps(p)) for p in c] for c in chunks]
        start = time.perf_counter()
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(lambda c: check_pdus(c, RV, keys), fresh))
        rate = len(members) / (time.perf_counter() - start)
        print(f"    check_pdus on {args.threads} threads: {rate:10.0f} /s "
              f"({rate / best['pdu']:.2f}x one thread)")  # fmt: skip

    if args.stages:
        print_stages(wire[4:], keys, by_id, create)

    if args.profile:
        batch = [json.loads(w) for w in wire[4:]]
        profiler = cProfile.Profile()
        profiler.enable()
        for pdu in batch:
            full_check(pdu)
        profiler.disable()
        print()
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(25)


def print_stages(
    member_wire: list[str], keys: KeyMap, by_id: dict[str, Event], create: Event
) -> None:
    """Where the time of one full check goes, step by step, per event.

    The steps are those ``check_pdu`` takes (kept in step with it by hand):
    the timings of the steps add up to about one check. Median round of
    ROUND events per step, in thread CPU time like the main measurement.
    """
    from matrixfed.events.canonical import encode_canonical_text
    from matrixfed.events.checks import (
        _NOT_HASHED,
        _hash_matches,
        _signing_json_from,
        _whole_size,
    )
    from matrixfed.events.hashing import event_id_from_reference_hash
    from matrixfed.events.signing import signing_servers, verify_signatures_over
    from matrixfed.events.validation import validate_pdu_with_size

    names = [
        "canonical JSON of the hashed part",
        "whole-PDU size",
        "format validation",
        "signed bytes (cut from the hashed part)",
        "reference hash, event ID, signers",
        "signature check (incl. ed25519)",
        "content hash compare, Event",
        "auth rules (refs + rules + lookups)",
    ]
    rounds: list[list[float]] = [[] for _ in names]
    clock = time.thread_time_ns
    for i in range(0, len(member_wire), ROUND):
        batch = [json.loads(w) for w in member_wire[i : i + ROUND]]
        spent = [0] * len(names)
        for pdu in batch:
            t0 = clock()
            hashed = encode_canonical_text({k: v for k, v in pdu.items() if k not in _NOT_HASHED})  # type: ignore[misc]
            content_json = hashed.encode("utf-8")
            ta = clock()
            size = _whole_size(content_json, pdu)
            t1 = clock()
            validate_pdu_with_size(pdu, RV, size)
            t2 = clock()
            signing_json = _signing_json_from(pdu, RV, hashed)
            assert signing_json is not None
            t3 = clock()
            digest = hashlib.sha256(signing_json).digest()
            event_id = event_id_from_reference_hash(digest, RV)
            servers, any_server = signing_servers(pdu, RV)
            t4 = clock()
            verify_signatures_over(
                event_id=event_id, signatures=pdu["signatures"], servers=servers,
                any_server=any_server, message=signing_json,
                origin_server_ts=pdu["origin_server_ts"], room_version=RV, keys=keys,
            )  # fmt: skip
            t5 = clock()
            _hash_matches(pdu["hashes"]["sha256"], content_json)
            event = Event(pdu, RV, event_id)
            t6 = clock()
            if HAVE_AUTH:
                auth_events = {i: by_id[i] for i in event.auth_event_ids}
                check_auth_events_refs(event, auth_events)
                state = {e.state_tuple: e for e in auth_events.values()}
                state[("m.room.create", "")] = create
                check_auth(event, state)
            t7 = clock()
            marks = (t0, ta, t1, t2, t3, t4, t5, t6, t7)
            for n in range(len(names)):
                spent[n] += marks[n + 1] - marks[n]
        for n in range(len(names)):
            rounds[n].append(spent[n] / len(batch) / 1000)
    medians = [statistics.median(r) for r in rounds]
    print()
    print("where one full check goes (us per event, median round of each step):")
    for name, us in zip(names, medians, strict=True):
        print(f"    {name:42s} {us:7.1f}")
    print(f"    {'sum':42s} {sum(medians):7.1f}")


if __name__ == "__main__":
    main()
