"""Test databases for both engines, isolated per test.

SQLite: a fresh file in the test's temporary directory. PostgreSQL (only when
MATRIXFED_TEST_POSTGRES holds a URI): a fresh schema with a random name,
selected through the connection's search_path and dropped in cleanup, so
parallel runs never see each other's tables.

Usage in a test case::

    class MyTestsMixin:
        async def test_x(self) -> None:
            db = await self.make_database()

    class MyTestsSqlite(SqliteMixin, MyTestsMixin, unittest.TestCase): ...
    class MyTestsPostgres(PostgresMixin, MyTestsMixin, unittest.TestCase): ...
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.trial import unittest

from matrixfed.storage.database import Database
from matrixfed.storage.store import Store

if TYPE_CHECKING:
    _TestBase = unittest.TestCase
else:
    _TestBase = object

POSTGRES_URI = os.environ.get("MATRIXFED_TEST_POSTGRES")
POSTGRES_SKIP_REASON = "PostgreSQL not available (MATRIXFED_TEST_POSTGRES unset)"


def _with_search_path(uri: str, schema: str) -> str:
    sep = "&" if "?" in uri else "?"
    return f"{uri}{sep}options={quote('-csearch_path=' + schema, safe='')}"


def _pg_admin(sql: str) -> None:
    import psycopg2

    assert POSTGRES_URI is not None
    conn = psycopg2.connect(POSTGRES_URI)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


class DatabaseMixin(_TestBase):
    """Provides ``make_database``; the engine comes from the concrete mixin.

    Test mixins derive from it (typed as a TestCase, a plain class at run
    time, so trial does not collect the mixin itself).
    """

    def database_uri(self) -> str:
        raise AssertionError("use SqliteMixin or PostgresMixin")

    async def make_database(
        self,
        *,
        schema_dir: str | None = None,
        start: bool = True,
        clock: IReactorTime | None = None,
    ) -> Database:
        """A started Database on a fresh, isolated database, closed in cleanup.

        ``clock`` times the background WAL checkpoints (SQLite); the reactor by default.
        """
        case: Any = self
        db = Database.from_uri(self.database_uri(), schema_dir=schema_dir, clock=clock)
        case.addCleanup(db.close)
        if start:
            await db.start()
        return db

    async def make_store(self) -> Store:
        """A Store on a fresh database, with a fake clock at t=1000s."""
        db = await self.make_database()
        clock = Clock()
        clock.advance(1000)
        return Store(db=db, clock=clock)


class SqliteMixin(DatabaseMixin):
    engine = "sqlite"

    def database_uri(self) -> str:
        case: Any = self
        if not hasattr(self, "_sqlite_path"):
            self._sqlite_path = os.path.abspath(case.mktemp()) + ".db"
        return f"sqlite:{self._sqlite_path}"


class PostgresMixin(DatabaseMixin):
    engine = "postgres"
    if POSTGRES_URI is None:
        skip = POSTGRES_SKIP_REASON

    def database_uri(self) -> str:
        case: unittest.TestCase = self  # type: ignore[assignment]
        if not hasattr(self, "_pg_schema"):
            schema = "test_" + uuid.uuid4().hex[:16]
            _pg_admin(f"CREATE SCHEMA {schema}")
            self._pg_schema = schema
            # Cleanups run last-in first-out: registered before any database
            # using the schema, this runs after they are closed.
            case.addCleanup(_pg_admin, f"DROP SCHEMA {schema} CASCADE")
        assert POSTGRES_URI is not None
        return _with_search_path(POSTGRES_URI, self._pg_schema)
