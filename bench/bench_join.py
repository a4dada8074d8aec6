"""Join benchmark: a matrixfed joins a big room hosted by another matrixfed on loopback.

For each size (members), the script:

1. prepares the resident's data dir: a signing key and a room (create, the
   creator's join, power levels, public join rules, then N member joins by
   users of the resident, each signed by it), persisted in one batch;
2. starts the resident as its own process (``--resident``): a real matrixfed
   service with TLS on 127.0.0.1;
3. runs the joining server in a fresh process (``--join``): a real matrixfed
   service that joins ``@bob`` through ``JoinCoordinator.join`` (make_join,
   send_join over HTTPS, keys, threaded verification, auth, one-transaction
   persist) and prints one JSON line: times per stage, events, peak RSS;
4. stops the resident.

Each join runs in its own process so that ``ru_maxrss`` is the peak of that
join alone. Usage::

    /work/venv/bin/python bench/bench_join.py [--sizes 1000,10000,50000] [--version 11]
        [--partial] [--threads]

Printed per size: the whole join (make_join to joined), the time the
resident took to answer send_join (building and sending the state: not ours),
our ingestion (verification + auth + persist after the answer arrived), the
rate of events verified and stored per second, the CPU seconds of the
joining process and of its worker processes (which check the events), and
its peak memory (and growth over the idle process). With ``--partial`` the
join asks for partial state; the time the background resync then takes to
bring the full state is printed too. ``--threads`` checks the events on
threads instead of worker processes, for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.internet import defer, task

VENV_PYTHON = sys.executable
# Seconds to wait for the resident process to accept connections.
RESIDENT_START_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(data_dir: str, name: str, port: int, **extra: Any) -> Any:
    from matrixfed.config import Config

    return Config(
        server_name=name,
        data_dir=data_dir,
        federation_listen=(
            f"ssl:{port}:interface=127.0.0.1"
            f":privateKey={os.path.join(data_dir, 'tls.key')}"
            f":certKey={os.path.join(data_dir, 'tls.crt')}"
        ),
        client_listen="none",
        federation_verify_tls=False,
        federation_allow_private=True,
        **extra,
    )


# --- preparing the resident -------------------------------------------------------


async def prepare_resident(reactor: Any, data_dir: str, name: str, n: int, version: str) -> str:
    """Write the resident's key and a room of ``n`` members; return the room ID."""
    from matrixfed.auth.selection import select_auth_event_ids
    from matrixfed.events.model import Event
    from matrixfed.events.room_versions import KNOWN_ROOM_VERSIONS, EventFormat
    from matrixfed.events.signing import sign_event
    from matrixfed.keys.signing_key import load_server_signing_keys
    from matrixfed.storage import Database, EventWithContext, Store

    config = _config(data_dir, name, 0)
    key = load_server_signing_keys(config.signing_key_file).primary
    rv = KNOWN_ROOM_VERSIONS[version]
    creator = f"@alice:{name}"
    room_id = f"!bench{n}:{name}"
    events: list[Event] = []
    state: dict[tuple[str, str], str] = {}

    def add(etype: str, sender: str, content: dict[str, Any], state_key: str) -> None:
        auth = select_auth_event_ids(rv, etype, sender, state_key, content, state)
        depth = len(events) + 1
        pdu: dict[str, Any] = {
            "type": etype,
            "sender": sender,
            "state_key": state_key,
            "content": content,
            "depth": depth,
            "origin_server_ts": 1_700_000_000_000 + depth,
            "prev_events": [events[-1].event_id] if events else [],
            "auth_events": auth,
        }
        if not (rv.room_id_from_create and etype == "m.room.create"):
            pdu["room_id"] = room_id
        if rv.event_format is EventFormat.V1:
            raise SystemExit("use a room version >= 3 for this benchmark")
        if not rv.v11_top_level_keys:
            pdu["origin"] = name
        sign_event(pdu, rv, name, key)
        event = Event(pdu, rv)
        events.append(event)
        state[(etype, state_key)] = event.event_id

    create: dict[str, Any] = {"room_version": version}
    if not rv.msc2175_implicit_room_creator:
        create["creator"] = creator
    add("m.room.create", creator, create, "")
    if rv.room_id_from_create:
        raise SystemExit("use a room version < 12 for this benchmark (fixed room IDs)")
    add("m.room.member", creator, {"membership": "join", "displayname": "Alice"}, creator)
    add(
        "m.room.power_levels",
        creator,
        {"users": {creator: 100}, "users_default": 0, "state_default": 50, "ban": 50},
        "",
    )
    add("m.room.join_rules", creator, {"join_rule": "public"}, "")
    add("m.room.history_visibility", creator, {"history_visibility": "shared"}, "")
    add("m.room.name", creator, {"name": f"Bench room of {n} members"}, "")
    for i in range(n):
        user = f"@user{i}:{name}"
        add("m.room.member", user, {"membership": "join", "displayname": f"User {i}"}, user)

    db = Database.from_uri(config.database_uri)
    await db.start()
    try:
        store = Store(db=db, clock=reactor)
        await store.persist_events(room_id, [EventWithContext(ev) for ev in events])
    finally:
        db.close()
    return room_id


# --- the resident process ---------------------------------------------------------


def run_resident(data_dir: str, name: str, port: int) -> None:
    from twisted.internet import reactor

    from matrixfed.service import make_service

    svc = make_service(_config(data_dir, name, port), reactor=reactor)
    svc.privilegedStartService()
    svc.startService()
    reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)
    reactor.run()  # type: ignore[attr-defined]


# --- the joining process ------------------------------------------------------------


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _workers_cpu_s(svc: Any) -> float:
    """CPU seconds so far of the service's event-checking worker processes."""
    pool = svc.verify_pool
    executor = None if pool is None else pool._executor
    if executor is None:
        return 0.0
    return sum(_proc_cpu_s(pid) for pid in list(executor._processes))


async def run_join(reactor: Any, resident: str, room_id: str, partial: bool, threads: bool) -> None:
    from matrixfed.joins import JoinProgress
    from matrixfed.service import make_service

    data_dir = tempfile.mkdtemp(prefix="bench-join-")
    port = _free_port()
    name = f"127.0.0.1:{port}"
    try:
        svc = make_service(
            _config(
                data_dir,
                name,
                port,
                join_partial_state=partial,
                join_verify_processes=0 if threads else None,
            ),
            reactor=reactor,
        )
        svc.privilegedStartService()
        svc.startService()
        await svc.when_ready()
        coordinator = svc.join_coordinator
        assert coordinator is not None
        first: dict[str, float] = {}
        last: dict[str, float] = {}
        counts: dict[str, int] = {}

        first_cpu: dict[str, float] = {}
        last_cpu: dict[str, float] = {}

        def progress(p: JoinProgress) -> None:
            now = time.perf_counter()
            cpu_now = _cpu_s()
            first.setdefault(p.stage, now)
            last[p.stage] = now
            first_cpu.setdefault(p.stage, cpu_now)
            last_cpu[p.stage] = cpu_now
            counts[p.stage] = max(counts.get(p.stage, 0), p.total)

        if svc.verify_pool is not None:
            # A server that has been up for a second has its workers running.
            await svc.verify_pool.ready()
        rss_before = _rss_mb()
        cpu_before = _cpu_s()
        workers_before = _workers_cpu_s(svc)
        started = time.perf_counter()
        result = await coordinator.join(
            room_id, f"@bob:{name}", servers=[resident], progress=progress
        )
        total = time.perf_counter() - started
        cpu = _cpu_s() - cpu_before
        workers_cpu = _workers_cpu_s(svc) - workers_before
        resync_s = 0.0
        finished = coordinator.resync.finished(room_id)
        if finished is not None:
            # A partial-state join: the members arrive in the background.
            await finished
            resync_s = time.perf_counter() - started - total
        send_join_wait = last["send_join"] - first["send_join"]
        ingest = last["persist"] - last["send_join"]
        events = counts.get("verify", 0)
        print(
            json.dumps(
                {
                    "room_id": result.room_id,
                    "partial": result.partial_state,
                    "events": events,
                    "total_s": total,
                    "make_join_s": last["make_join"] - started,
                    "send_join_wait_s": send_join_wait,
                    "keys_s": last["keys"] - first["keys"],
                    "verify_s": last["verify"] - first["verify"],
                    "auth_s": last["auth"] - first["auth"],
                    "persist_s": last["persist"] - first["persist"],
                    "ingest_s": ingest,
                    "cpu_s": cpu,
                    # CPU seconds of the worker processes that checked events.
                    "workers_cpu_s": workers_cpu,
                    # CPU seconds of this process (all threads) per stage.
                    "verify_cpu_s": last_cpu["verify"] - first_cpu["verify"],
                    "auth_cpu_s": last_cpu["auth"] - first_cpu["auth"],
                    "persist_cpu_s": last_cpu["persist"] - first_cpu["persist"],
                    "resync_s": resync_s,
                    "rss_before_mb": rss_before,
                    "rss_peak_mb": _rss_mb(),
                    "joined_users": len(await svc.store.get_joined_users(room_id)),
                }
            ),
            flush=True,
        )
        await svc.stopService()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


# --- orchestration ------------------------------------------------------------------

# One ed25519 verification on an idle core of these machines (DESIGN.md).
NOMINAL_VERIFY_US = 47
# Verifications timed to calibrate the report against a loaded machine.
CALIBRATION_VERIFIES = 2000


def _ed25519_speed() -> tuple[float, float]:
    """(wall us, CPU us) of one PyNaCl verify right now, to read the numbers by."""
    from nacl.signing import SigningKey

    key = SigningKey.generate()
    message = b"x" * 500
    signature = key.sign(message).signature
    verify_key = key.verify_key
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(CALIBRATION_VERIFIES):
        verify_key.verify(message, signature)
    return (
        (time.perf_counter() - wall) * 1e6 / CALIBRATION_VERIFIES,
        (time.process_time() - cpu) * 1e6 / CALIBRATION_VERIFIES,
    )


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + RESIDENT_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"resident exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("resident did not start")


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5); the split starts at field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_size(n: int, version: str, partial: bool, threads: bool) -> dict[str, Any]:
    data_dir = tempfile.mkdtemp(prefix="bench-resident-")
    port = _free_port()
    name = f"127.0.0.1:{port}"
    try:
        prep_started = time.perf_counter()
        out = subprocess.run(
            [VENV_PYTHON, __file__, "--prepare", data_dir, name, str(n), version],
            check=True,
            capture_output=True,
            text=True,
        )
        room_id = out.stdout.strip().splitlines()[-1]
        prep = time.perf_counter() - prep_started
        resident = subprocess.Popen(
            [VENV_PYTHON, __file__, "--resident", data_dir, name, str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_for_port(port, resident)
            args = [VENV_PYTHON, __file__, "--join", name, room_id]
            if partial:
                args.append("--partial")
            if threads:
                args.append("--threads")
            resident_cpu = _proc_cpu_s(resident.pid)
            joined = subprocess.run(args, check=True, capture_output=True, text=True)
            result: dict[str, Any] = json.loads(joined.stdout.strip().splitlines()[-1])
            result["prepare_s"] = prep
            # The resident's CPU during the join: answering make_join and send_join.
            result["resident_cpu_s"] = _proc_cpu_s(resident.pid) - resident_cpu
            return result
        finally:
            resident.terminate()
            resident.wait(timeout=30)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--version", default="11")
    parser.add_argument("--partial", action="store_true", help="partial-state joins")
    parser.add_argument(
        "--threads", action="store_true", help="check events on threads, no worker processes"
    )
    parser.add_argument("--prepare", nargs=4, metavar=("DIR", "NAME", "N", "VERSION"))
    parser.add_argument("--resident", nargs=3, metavar=("DIR", "NAME", "PORT"))
    parser.add_argument("--join", nargs=2, metavar=("RESIDENT", "ROOM_ID"))
    args = parser.parse_args()

    if args.prepare:
        data_dir, name, n, version = args.prepare

        async def prepare(reactor: Any) -> None:
            print(await prepare_resident(reactor, data_dir, name, int(n), version))

        task.react(lambda r: defer.ensureDeferred(prepare(r)))
        return
    if args.resident:
        data_dir, name, port = args.resident
        run_resident(data_dir, name, int(port))
        return
    if args.join:
        resident, room_id = args.join
        task.react(
            lambda r: defer.ensureDeferred(
                run_join(r, resident, room_id, args.partial, args.threads)
            )
        )
        return

    print(
        f"{'members':>8} {'events':>7} {'join s':>7} {'resident s':>10} {'ingest s':>8}"
        f" {'verify s':>8} {'auth s':>7} {'persist s':>9} {'ev/s':>8} {'cpu s':>6}"
        f" {'peak MB':>8} {'growth MB':>9} {'KB/ev':>6}"
        f" | CPU s: {'resident':>8} {'verify':>6} {'workers':>7} {'auth':>5} {'persist':>7}"
    )
    wall_us, cpu_us = _ed25519_speed()
    print(
        f"(load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; one ed25519"
        f" verify now takes {wall_us:.0f} us wall, {cpu_us:.0f} us CPU; {NOMINAL_VERIFY_US} us"
        " on an idle core of this machine type)"
    )
    for n in [int(s) for s in args.sizes.split(",")]:
        r = bench_size(n, args.version, args.partial, args.threads)
        growth = r["rss_peak_mb"] - r["rss_before_mb"]
        rate = r["events"] / r["ingest_s"] if r["ingest_s"] > 0 else float("nan")
        print(
            f"{n:>8} {r['events']:>7} {r['total_s']:>7.2f} {r['send_join_wait_s']:>10.2f}"
            f" {r['ingest_s']:>8.2f} {r['verify_s']:>8.2f} {r['auth_s']:>7.2f}"
            f" {r['persist_s']:>9.2f} {rate:>8.0f} {r['cpu_s']:>6.2f} {r['rss_peak_mb']:>8.1f}"
            f" {growth:>9.1f} {growth * 1024 / max(r['events'], 1):>6.2f}"
            f" |        {r['resident_cpu_s']:>8.2f} {r['verify_cpu_s']:>6.2f}"
            f" {r['workers_cpu_s']:>7.2f}"
            f" {r['auth_cpu_s']:>5.2f} {r['persist_cpu_s']:>7.2f}",
            flush=True,
        )
        if r["partial"]:
            print(
                f"{'':>8} partial state: the full state ({r['joined_users']} members) followed"
                f" {r['resync_s']:.2f} s after the join returned",
                flush=True,
            )


if __name__ == "__main__":
    main()
