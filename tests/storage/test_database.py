"""Tests for matrixfed.storage.database on SQLite and (if configured) PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from matrixfed.storage.database import (
    SQLITE_CHECKPOINT_INTERVAL_SECONDS,
    SQLITE_COPY_ROWS_PER_INSERT,
    Database,
    Transaction,
    _statements,
    parse_uri,
)
from tests.storage.harness import PostgresMixin, SqliteMixin

AUTH = ("event_id", "auth_id")


def _count(txn: Transaction, table: str) -> int:
    txn.execute(f"SELECT COUNT(*) FROM {table}")
    row = txn.fetchone()
    assert row is not None
    return int(row[0])


def _versions(txn: Transaction) -> list[tuple[int, str]]:
    txn.execute("SELECT version, name FROM schema_version ORDER BY version")
    return [(int(v), str(n)) for v, n in txn.fetchall()]


class DatabaseTestsMixin:
    engine: str

    # provided by the harness mixin (SqliteMixin / PostgresMixin)
    make_database: Callable[..., Awaitable[Database]]

    def _case(self) -> unittest.TestCase:
        case: Any = self
        return case  # type: ignore[no-any-return]

    def _schema_dir(self, files: dict[str, str]) -> str:
        path = self._case().mktemp()
        os.makedirs(path)
        for name, sql in files.items():
            with open(os.path.join(path, name), "w") as f:
                f.write(sql)
        return path

    async def test_start_applies_core_schema_once(self) -> None:
        t = self._case()
        db = await self.make_database()
        versions = await db.run_interaction("v", _versions)
        t.assertIn((1, "0001_core.sql"), versions)
        t.assertEqual(db.engine, self.engine)
        await db.run_interaction(
            "ins",
            lambda txn: txn.execute(
                "INSERT INTO room_aliases (room_alias, room_id, servers) VALUES (?, ?, ?)",
                ("#a:x", "!r:x", "[]"),
            ),
        )
        db.close()

        # Restart on the same database: nothing re-applied, data intact.
        db2 = await self.make_database()
        t.assertEqual(await db2.run_interaction("v", _versions), versions)
        t.assertEqual(await db2.run_interaction("c", _count, "room_aliases"), 1)

    async def test_migrations_in_order_and_failed_one_leaves_nothing(self) -> None:
        t = self._case()
        good = {
            "0001_a.sql": "-- first\nCREATE TABLE a (x INTEGER NOT NULL);\n"
            "INSERT INTO a (x) VALUES (1);\n",
            "0002_b.sql": "CREATE TABLE b (y TEXT NOT NULL);\n",
        }
        schema = self._schema_dir(good)
        db = await self.make_database(schema_dir=schema)
        t.assertEqual(
            await db.run_interaction("v", _versions), [(1, "0001_a.sql"), (2, "0002_b.sql")]
        )
        db.close()

        # A third migration fails half way: its first statement is rolled back
        # with it and the recorded version stays at 2.
        with open(os.path.join(schema, "0003_bad.sql"), "w") as f:
            f.write("CREATE TABLE c (z INTEGER);\nINSERT INTO no_such_table VALUES (1);\n")
        with t.assertRaises(Exception):  # noqa: B017 (sqlite3 or psycopg2 error)
            await self.make_database(schema_dir=schema)
        os.unlink(os.path.join(schema, "0003_bad.sql"))
        with open(os.path.join(schema, "0003_good.sql"), "w") as f:
            f.write("CREATE TABLE c (z INTEGER);\n")
        db3 = await self.make_database(schema_dir=schema)
        t.assertEqual([v for v, _ in await db3.run_interaction("v", _versions)], [1, 2, 3])
        t.assertEqual(await db3.run_interaction("c", _count, "a"), 1)

    async def test_engine_specific_migration_files(self) -> None:
        t = self._case()
        schema = self._schema_dir(
            {
                "0001_a.sql": "CREATE TABLE a (x INTEGER NOT NULL);\n",
                "0002_b.sqlite.sql": "CREATE TABLE only_sqlite (x INTEGER);\n",
                "0002_b.postgres.sql": "-- nothing\nCREATE TABLE only_postgres (x INTEGER);\n",
                "0003_c.sql": "CREATE TABLE c (x INTEGER);\n",
            }
        )
        db = await self.make_database(schema_dir=schema)
        t.assertEqual(
            await db.run_interaction("v", _versions),
            [(1, "0001_a.sql"), (2, f"0002_b.{self.engine}.sql"), (3, "0003_c.sql")],
        )
        t.assertEqual(await db.run_interaction("c", _count, f"only_{self.engine}"), 0)
        other = "postgres" if self.engine == "sqlite" else "sqlite"
        with t.assertRaises(Exception):  # noqa: B017 (sqlite3 or psycopg2 error)
            await db.run_interaction("c", _count, f"only_{other}")

    async def test_engine_file_needs_its_twin(self) -> None:
        t = self._case()
        for files in (
            {"0001_a.sqlite.sql": "CREATE TABLE a (x INTEGER);\n"},
            {"0001_a.postgres.sql": "CREATE TABLE a (x INTEGER);\n"},
            {
                "0001_a.sql": "CREATE TABLE a (x INTEGER);\n",
                "0001_a.sqlite.sql": "CREATE TABLE a (x INTEGER);\n",
                "0001_a.postgres.sql": "CREATE TABLE a (x INTEGER);\n",
            },
        ):
            with t.assertRaises(ValueError):
                await self.make_database(schema_dir=self._schema_dir(files))

    async def test_interaction_commits_or_rolls_back_whole(self) -> None:
        t = self._case()
        db = await self.make_database()

        def insert_then_fail(txn: Transaction) -> None:
            txn.executemany(
                "INSERT INTO id_counters (name, value) VALUES (?, ?)",
                [("a", 1), ("b", 2)],
            )
            raise ValueError("boom")

        with t.assertRaises(ValueError):
            await db.run_interaction("fail", insert_then_fail)
        t.assertEqual(await db.run_interaction("c", _count, "id_counters"), 0)

        def insert(txn: Transaction) -> None:
            txn.executemany(
                "INSERT INTO id_counters (name, value) VALUES (?, ?)",
                [("a", 1), ("b", 2)],
            )

        await db.run_interaction("ok", insert)
        t.assertEqual(await db.run_interaction("c", _count, "id_counters"), 2)

    async def test_placeholders_and_literals(self) -> None:
        t = self._case()
        db = await self.make_database()

        def q(txn: Transaction) -> list[tuple[Any, ...]]:
            txn.execute_values(
                "INSERT INTO id_counters (name, value) VALUES",
                [("50%", 1), ("what?", 2), ("o'k", 3)],
                width=2,
            )
            txn.execute(
                "SELECT name, '?', 'a%b' FROM id_counters WHERE name LIKE '%?%' OR value = ?"
                " ORDER BY value",
                (3,),
            )
            return txn.fetchall()

        rows = await db.run_interaction("q", q)
        t.assertEqual(rows, [("what?", "?", "a%b"), ("o'k", "?", "a%b")])

    async def test_copy_rows_round_trips_awkward_values(self) -> None:
        t = self._case()
        db = await self.make_database()
        values = [
            ("tab\there", "", 1),
            ("new\nline\r\\back\\slash \\N", None, -5),
            ("\u00e9\U0001f600 \"q\" 'a' %s ?", "x", 2**40),
        ]

        def q(txn: Transaction) -> list[tuple[Any, ...]]:
            txn.copy_rows(
                "current_state_events",
                ("room_id", "type", "state_key", "event_id", "membership"),
                [(v[0], "t", str(i), str(v[2]), v[1]) for i, v in enumerate(values)],
            )
            txn.execute(
                "SELECT room_id, membership, event_id FROM current_state_events ORDER BY state_key"
            )
            return txn.fetchall()

        rows = await db.run_interaction("q", q)
        t.assertEqual(rows, [(a, b, str(c)) for a, b, c in values])

    async def test_copy_rows_many_rows_whole_or_nothing(self) -> None:
        t = self._case()
        db = await self.make_database()
        # Several full multi-row statements and a remainder on SQLite.
        n = SQLITE_COPY_ROWS_PER_INSERT * 2 + 7
        rows = [(f"$e{i:05}", f"$a{i % 3}") for i in range(n)]

        def read(txn: Transaction) -> list[tuple[Any, ...]]:
            txn.execute("SELECT event_id, auth_id FROM event_auth ORDER BY event_id")
            return [tuple(r) for r in txn.fetchall()]

        # Rows may come from a generator, consumed as they are written.
        await db.run_interaction(
            "copy", lambda txn: txn.copy_rows("event_auth", AUTH, (r for r in rows))
        )
        t.assertEqual(await db.run_interaction("read", read), rows)
        await db.run_interaction("none", lambda txn: txn.copy_rows("event_auth", AUTH, iter([])))
        t.assertEqual(await db.run_interaction("read", read), rows)

        # A duplicate in the last statement fails the interaction: none of the
        # rows before it, in earlier statements, stays.
        more = [(f"$f{i:05}", "$a0") for i in range(n)] + [rows[0]]
        with t.assertRaises(Exception):  # noqa: B017 (sqlite3 or psycopg2 error)
            await db.run_interaction("dup", lambda txn: txn.copy_rows("event_auth", AUTH, more))
        t.assertEqual(await db.run_interaction("read", read), rows)

        # So does an error while the rows are being made, half way through.
        def failing() -> Iterator[tuple[str, str]]:
            yield from more[:n]
            raise ValueError("no more rows")

        with t.assertRaises(ValueError):
            await db.run_interaction(
                "gen", lambda txn: txn.copy_rows("event_auth", AUTH, failing())
            )
        t.assertEqual(await db.run_interaction("read", read), rows)

    async def test_allocate_ids_monotonic(self) -> None:
        t = self._case()
        db = await self.make_database()
        first = await db.run_interaction("a", lambda txn: txn.allocate_ids("x", 3))
        second = await db.run_interaction("a", lambda txn: txn.allocate_ids("x"))
        other = await db.run_interaction("a", lambda txn: txn.allocate_ids("y", 2))
        t.assertEqual((first, second, other), (1, 4, 1))

        def alloc_then_fail(txn: Transaction) -> None:
            txn.allocate_ids("x", 10)
            raise ValueError("no")

        with t.assertRaises(ValueError):
            await db.run_interaction("a", alloc_then_fail)
        t.assertEqual(await db.run_interaction("a", lambda txn: txn.allocate_ids("x")), 5)

    async def test_call_after_only_on_commit(self) -> None:
        t = self._case()
        db = await self.make_database()
        called: list[str] = []

        def ok(txn: Transaction) -> int:
            txn.call_after(called.append, "ok")
            return 7

        def fail(txn: Transaction) -> None:
            txn.call_after(called.append, "fail")
            raise ValueError()

        t.assertEqual(await db.run_interaction("ok", ok), 7)
        with t.assertRaises(ValueError):
            await db.run_interaction("fail", fail)
        t.assertEqual(called, ["ok"])

    async def test_closed_database_refuses_work(self) -> None:
        t = self._case()
        db = await self.make_database()
        db.close()
        with t.assertRaises(RuntimeError):
            db.run_interaction("x", _versions)


class DatabaseSqliteTests(SqliteMixin, DatabaseTestsMixin, unittest.TestCase):
    async def test_memory_database(self) -> None:
        db = Database.from_uri("sqlite::memory:")
        self.addCleanup(db.close)
        await db.start()
        self.assertTrue(db.is_memory)
        self.assertEqual(await db.run_interaction("c", _count, "events"), 0)

    async def test_wal_mode(self) -> None:
        db = await self.make_database()

        def mode(txn: Transaction) -> str:
            txn.execute("PRAGMA journal_mode")
            row = txn.fetchone()
            assert row is not None
            return str(row[0])

        self.assertEqual(await db.run_interaction("m", mode), "wal")

    async def test_commits_leave_the_checkpoint_to_the_timer(self) -> None:
        clock = Clock()
        db = await self.make_database(clock=clock)
        path = self._sqlite_path
        size_after_start = os.path.getsize(path)
        # ~8 MB: far past SQLite's default auto-checkpoint (1,000 pages), which
        # would have copied it into the database file inside the commit.
        rows = [(f"#a{i}:x", "!r:x", "x" * 2000) for i in range(4000)]
        await db.run_interaction(
            "fill",
            lambda txn: txn.copy_rows("room_aliases", ("room_alias", "room_id", "servers"), rows),
        )
        self.assertEqual(os.path.getsize(path), size_after_start)

        # Committed means visible, checkpointed or not: another connection reads it all.
        reader = Database.from_uri(self.database_uri(), clock=Clock())
        self.addCleanup(reader.close)
        await reader.start()
        self.assertEqual(await reader.run_interaction("c", _count, "room_aliases"), 4000)

        # The timer's tick copies the WAL into the file, on its own thread;
        # once it is done the loop schedules the next tick.
        clock.advance(SQLITE_CHECKPOINT_INTERVAL_SECONDS)
        self.assertEqual(clock.getDelayedCalls(), [])
        for _ in range(3000):
            if clock.getDelayedCalls():
                break
            await deferLater(reactor, 0.01)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertGreater(os.path.getsize(path), size_after_start + 4000 * 2000)
        result = await db.checkpoint_wal()
        assert result is not None
        self.assertFalse(result.busy)
        self.assertEqual(result.checkpointed, result.wal_frames)

    async def test_close_stops_the_checkpoint_timer(self) -> None:
        clock = Clock()
        db = await self.make_database(clock=clock)
        self.assertEqual(
            [c.getTime() for c in clock.getDelayedCalls()], [SQLITE_CHECKPOINT_INTERVAL_SECONDS]
        )
        rows = [(f"#a{i}:x", "!r:x", "[]") for i in range(100)]
        await db.run_interaction(
            "fill",
            lambda txn: txn.copy_rows("room_aliases", ("room_alias", "room_id", "servers"), rows),
        )
        db.close()
        self.assertEqual(clock.getDelayedCalls(), [])
        with self.assertRaises(RuntimeError):
            db.checkpoint_wal()
        # Both connections are closed, the last one checkpointed everything:
        # no WAL is left and the file alone holds the rows.
        self.assertFalse(os.path.exists(self._sqlite_path + "-wal"))
        db2 = await self.make_database(clock=Clock())
        self.assertEqual(await db2.run_interaction("c", _count, "room_aliases"), 100)

    async def test_memory_database_has_no_checkpoint_timer(self) -> None:
        clock = Clock()
        db = Database.from_uri("sqlite::memory:", clock=clock)
        self.addCleanup(db.close)
        await db.start()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertIsNone(await db.checkpoint_wal())


class DatabasePostgresTests(PostgresMixin, DatabaseTestsMixin, unittest.TestCase):
    async def test_no_checkpoint_timer(self) -> None:
        clock = Clock()
        db = await self.make_database(clock=clock)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertIsNone(await db.checkpoint_wal())

    async def test_serialization_failure_is_retried(self) -> None:
        db = await self.make_database()
        attempts: list[int] = []

        def flaky(txn: Transaction) -> int:
            attempts.append(1)
            txn.execute("INSERT INTO id_counters (name, value) VALUES (?, ?)", ("n", len(attempts)))
            if len(attempts) < 3:
                txn.execute("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40001'; END $$")
            return len(attempts)

        self.assertEqual(await db.run_interaction("flaky", flaky), 3)
        rows = await db.run_interaction(
            "r", lambda txn: (txn.execute("SELECT value FROM id_counters"), txn.fetchall())[1]
        )
        self.assertEqual(rows, [(3,)])

    async def test_lost_connection_is_replaced(self) -> None:
        db = await self.make_database()
        attempts: list[int] = []

        def killer(txn: Transaction) -> str:
            attempts.append(1)
            if len(attempts) == 1:
                txn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            txn.execute("SELECT 'alive'")
            row = txn.fetchone()
            assert row is not None
            return str(row[0])

        self.assertEqual(await db.run_interaction("killer", killer), "alive")
        self.assertEqual(len(attempts), 2)


class ParsingTests(unittest.TestCase):
    def test_uris(self) -> None:
        self.assertEqual(parse_uri("sqlite:/tmp/x.db").connargs, ("/tmp/x.db",))
        self.assertEqual(parse_uri("sqlite:///tmp/x.db").connargs, ("/tmp/x.db",))
        self.assertEqual(parse_uri("postgresql://u@h:5/d").name, "postgres")
        with self.assertRaises(ValueError):
            parse_uri("mysql://x")
        with self.assertRaises(ValueError):
            parse_uri("sqlite:")

    def test_statement_splitting(self) -> None:
        script = "-- c1\nCREATE TABLE a (x TEXT DEFAULT ';');\n\n-- c2\nCREATE INDEX i ON a (x);\n"
        self.assertEqual(
            _statements(script),
            ["-- c1\nCREATE TABLE a (x TEXT DEFAULT ';');", "-- c2\nCREATE INDEX i ON a (x);"],
        )
