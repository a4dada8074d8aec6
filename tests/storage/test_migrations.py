"""Tests for the schema migrations that rebuild tables of an existing database
(0009 and 0011: the key tables' SQLite storage layout)."""

from __future__ import annotations

import importlib.resources
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.trial import unittest

from matrixfed.storage.database import Database, Transaction
from tests.storage.harness import PostgresMixin, SqliteMixin

# Rows of each table 0009 (and 0011) rebuild, as written before the migrations.
ROWS: dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]] = {
    "event_edges": (
        ("event_id", "prev_event_id"),
        [("$b", "$a"), ("$c", "$a"), ("$c", "$b")],
    ),
    "event_auth": (
        ("event_id", "auth_id"),
        [("$b", "$a"), ("$c", "$a"), ("$c", "$b")],
    ),
    "state_groups_state": (
        ("state_group", "type", "state_key", "event_id"),
        [(1, "m.room.create", "", "$a"), (2, "m.room.member", "@u:x", None)],
    ),
}

# The secondary indexes of those tables (0001), kept by the rebuild.
INDEXES = {"event_edges": "event_edges_prev"}
# The tables stored WITHOUT ROWID on SQLite in the end (0011 took event_edges back).
WITHOUT_ROWID = {"event_auth", "state_groups_state"}


def _insert_all(txn: Transaction) -> None:
    for table, (cols, rows) in ROWS.items():
        txn.copy_rows(table, cols, rows)


def _read_all(txn: Transaction) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    for table, (cols, _rows) in ROWS.items():
        txn.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {', '.join(cols[:2])}")
        out[table] = [tuple(r) for r in txn.fetchall()]
    return out


def _versions(txn: Transaction) -> list[tuple[int, str]]:
    txn.execute("SELECT version, name FROM schema_version ORDER BY version")
    return [(int(v), str(n)) for v, n in txn.fetchall()]


class KeyTablesMigrationTestsMixin:
    """0009 and 0011: the key tables survive the rebuilds with their rows, keys and indexes."""

    engine: str
    make_database: Callable[..., Awaitable[Database]]

    def _case(self) -> unittest.TestCase:
        case: Any = self
        return case  # type: ignore[no-any-return]

    def _schema_before(self, version: int) -> str:
        """A schema directory with the package's migrations older than ``version``."""
        path = self._case().mktemp()
        os.makedirs(path)
        root = importlib.resources.files("matrixfed.storage").joinpath("schema")
        for entry in root.iterdir():
            m = re.match(r"^(\d{4})_", entry.name)
            if m and int(m.group(1)) < version:
                with open(os.path.join(path, entry.name), "w") as f:
                    f.write(entry.read_text(encoding="utf-8"))
        return path

    async def test_existing_rows_survive(self) -> None:
        t = self._case()
        old = await self.make_database(schema_dir=self._schema_before(9))
        t.assertNotIn(9, [v for v, _ in await old.run_interaction("v", _versions)])
        await old.run_interaction("fill", _insert_all)
        before = await old.run_interaction("read", _read_all)
        old.close()

        db = await self.make_database()
        versions = await db.run_interaction("v", _versions)
        t.assertIn((9, f"0009_key_tables_without_rowid.{self.engine}.sql"), versions)
        t.assertIn((11, f"0011_event_edges_rowid_again.{self.engine}.sql"), versions)
        t.assertEqual(await db.run_interaction("read", _read_all), before)
        t.assertEqual(
            {k: sorted(v) for k, v in before.items()},
            {k: sorted(rows) for k, (_c, rows) in ROWS.items()},
        )
        # Primary keys still refuse duplicates, in one transaction that leaves nothing.
        for table, (cols, rows) in ROWS.items():
            with t.assertRaises(Exception):  # noqa: B017 (sqlite3 or psycopg2 error)
                await db.run_interaction(
                    "dup", lambda txn, tb=table, c=cols, r=rows: txn.copy_rows(tb, c, r[:1])
                )
        t.assertEqual(await db.run_interaction("read", _read_all), before)


class KeyTablesMigrationSqliteTests(SqliteMixin, KeyTablesMigrationTestsMixin, unittest.TestCase):
    async def test_storage_layout_and_indexes(self) -> None:
        db = await self.make_database()

        def master(txn: Transaction) -> dict[str, str]:
            txn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL")
            return {str(n): str(s) for n, s in txn.fetchall()}

        found = await db.run_interaction("master", master)
        for table in ROWS:
            self.assertEqual("WITHOUT ROWID" in found[table], table in WITHOUT_ROWID, table)
        for table, index in INDEXES.items():
            self.assertIn(f"ON {table} ", found[index])
        self.assertFalse([n for n in found if n.endswith("_new")])


class KeyTablesMigrationPostgresTests(
    PostgresMixin, KeyTablesMigrationTestsMixin, unittest.TestCase
):
    pass
