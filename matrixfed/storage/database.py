"""The database handle: an adbapi connection pool, migrations, transactions.

What it guarantees:

* ``run_interaction(desc, func, *args)`` runs ``func(txn, *args)`` on a pool
  thread inside exactly one database transaction: commit when ``func``
  returns, rollback when it raises. Nothing of a failed interaction is
  stored. ``func`` may be run more than once (PostgreSQL serialisation
  failures, deadlocks and connections lost before the commit are retried), so
  it must have no side effect outside the database; use ``txn.call_after`` for
  work that must happen only once the commit succeeded (cache updates).
* SQL is written once, with ``?`` placeholders; on PostgreSQL they are
  translated to ``%s`` (and literal ``%`` escaped), outside quoted strings.
* ``start()`` applies every ``schema/NNNN_name.sql`` file not yet recorded in
  the ``schema_version`` table, in numeric order, each file in one transaction
  together with its ``schema_version`` row: a failed migration leaves the
  database at the previous version and ``start()`` fails. A version that
  must differ between engines (only in physical layout: the logical schema
  is the same) has a pair of files instead, ``NNNN_name.sqlite.sql`` and
  ``NNNN_name.postgres.sql``; each engine applies its own.

Engines:

* SQLite (the default, nothing to install): one connection and one pool
  thread (sqlite3 connections are not safe to share between threads), WAL
  journal, ``BEGIN IMMEDIATE`` transactions so a writer never has to upgrade
  a read lock. ``sqlite::memory:`` gives a private in-memory database.
  Checkpoints (copying the WAL into the database file, with its fsyncs) are
  kept off the commit path: the pool's connection does not checkpoint after
  its commits (unless the WAL passes ``SQLITE_WAL_AUTOCHECKPOINT_PAGES``, a
  bound for when the timer falls behind); a second connection on its own
  thread runs a passive checkpoint every ``SQLITE_CHECKPOINT_INTERVAL_SECONDS``
  (driven by the injected clock), which never blocks readers or the writer.
  Closing the last connection checkpoints what is left.
* PostgreSQL (psycopg2): a small pool, READ COMMITTED, connections that died
  are dropped and re-opened by adbapi (``cp_reconnect``).

Failures surface as the driver's exceptions (``sqlite3.Error``,
``psycopg2.Error``) through the returned Deferred.
"""

from __future__ import annotations

import importlib.resources
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from importlib.resources.abc import Traversable
from itertools import chain, islice
from pathlib import Path
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar, cast

import attrs
from twisted.enterprise import adbapi
from twisted.internet import threads
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

P = ParamSpec("P")
R = TypeVar("R")

EngineName = Literal["sqlite", "postgres"]

log = Logger()

# A transaction slower than this is logged: it blocks other writers.
SLOW_TXN_LOG_SECONDS = 1.0
# How many times one interaction is attempted on a retryable PostgreSQL error.
MAX_TXN_ATTEMPTS = 5
# PostgreSQL pool size: two cores here; more connections only add contention.
PG_POOL_MIN = 1
PG_POOL_MAX = 5
# SQLite: how long a statement waits for another process's lock (seconds).
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
# SQLite page cache per connection (KiB).
SQLITE_CACHE_KIB = 64 * 1024
# How often the background connection checkpoints the WAL into the database
# file: often enough that the WAL stays small, rarely enough to cost nothing.
SQLITE_CHECKPOINT_INTERVAL_SECONDS = 1.0
# WAL pages (4 KiB) after which a commit checkpoints inline after all, should
# the background checkpoints fall behind (256 MiB: ten 10,000-member joins).
SQLITE_WAL_AUTOCHECKPOINT_PAGES = 65536
# Once checkpointed and restarted, a WAL file larger than this is truncated
# back (bytes): a huge join must not leave a huge file behind for ever.
SQLITE_WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024
# Rows per round trip when executemany runs on PostgreSQL.
PG_EXECUTEMANY_PAGE_SIZE = 1000
# COPY data handed to libpq per read (characters): large enough to cost few
# calls, small enough that the server starts on the rows while we make more.
PG_COPY_CHUNK_CHARS = 64 * 1024
# Bound parameters per SQLite statement: SQLite's own limit (999 before 3.32).
SQLITE_MAX_PARAMS = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
# Rows per multi-row INSERT of copy_rows on SQLite: executemany pays a
# statement step and reset per row, a fifth to a half of a small row's cost;
# past a few hundred rows a longer statement saves nothing more.
SQLITE_COPY_ROWS_PER_INSERT = 500

_SCHEMA_FILE = re.compile(r"^(\d{4})_[A-Za-z0-9_]+(?:\.(sqlite|postgres))?\.sql$")


@lru_cache(maxsize=4096)
def _to_pyformat(sql: str) -> str:
    """Translate ``?`` placeholders to psycopg2's ``%s`` (not inside quotes); escape ``%``."""

    def repl(m: re.Match[str]) -> str:
        tok = m.group(0)
        if tok == "?":
            return "%s"
        # psycopg2 interpolates % everywhere, quoted text included.
        return tok.replace("%", "%%")

    return re.sub(r"'(?:[^']|'')*'|\"[^\"]*\"|\?|%", repl, sql)


# Few distinct shapes: each table's full chunk and the remainders of recent batches.
@lru_cache(maxsize=64)
def _multi_row_insert(table: str, cols: str, width: int, nrows: int) -> str:
    """``INSERT INTO table (cols) VALUES (?, ...), ...`` for ``nrows`` rows."""
    row = "(" + ", ".join("?" * width) + ")"
    return f"INSERT INTO {table} ({cols}) VALUES " + ", ".join([row] * nrows)


# COPY text format: backslash, tab, newline and CR are escaped; NULL is \N.
_COPY_DIRTY = re.compile(r"[\\\t\n\r]").search
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


class _CopyTextReader:
    """Rows as COPY text, made as psycopg2 reads them (a file-like ``read``).

    The server parses and indexes each chunk while the next one is built, so
    the two overlap instead of the whole batch being formatted first.
    psycopg2 turns an exception raised by ``read`` into a ``QueryCanceled``;
    the original is kept in ``error`` for ``copy_rows`` to raise instead.
    """

    __slots__ = ("_rows", "error")

    def __init__(self, rows: Iterable[Sequence[Any]]) -> None:
        self._rows = iter(rows)
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> str:
        try:
            return self._read(size)
        except BaseException as e:
            self.error = e
            raise

    def _read(self, size: int) -> str:
        # Only values holding a backslash, tab, newline or CR need escaping;
        # finding them is one C-level regex search.
        dirty = _COPY_DIRTY
        esc = _COPY_ESCAPES
        lines: list[str] = []
        n = 0
        for row in self._rows:
            line = "\t".join(
                [
                    "\\N"
                    if v is None
                    else (
                        (v.translate(esc) if dirty(v) else v) if v.__class__ is str else str(int(v))
                    )
                    for v in row
                ]
            )
            lines.append(line)
            n += len(line) + 1
            if 0 <= size <= n:
                break
        if not lines:
            return ""
        lines.append("")
        return "\n".join(lines)


class Transaction:
    """A cursor for the duration of one ``run_interaction``.

    ``execute``/``executemany`` take SQL with ``?`` placeholders. Rows come
    back as tuples on both engines.
    """

    __slots__ = ("_cursor", "engine", "_after_callbacks")

    def __init__(self, cursor: Any, engine: EngineName) -> None:
        self._cursor = cursor
        self.engine: EngineName = engine
        self._after_callbacks: list[tuple[Callable[..., object], tuple[Any, ...]]] = []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement."""
        if self.engine == "postgres":
            self._cursor.execute(_to_pyformat(sql), tuple(params))
        else:
            self._cursor.execute(sql, tuple(params))

    def executemany(self, sql: str, seq_of_params: Iterable[Sequence[Any]]) -> None:
        """Run one statement for each parameter tuple, in few round trips."""
        if self.engine == "postgres":
            from psycopg2.extras import execute_batch

            execute_batch(
                self._cursor,
                _to_pyformat(sql),
                [tuple(p) for p in seq_of_params],
                page_size=PG_EXECUTEMANY_PAGE_SIZE,
            )
        else:
            self._cursor.executemany(sql, seq_of_params)

    def execute_values(
        self, sql_prefix: str, rows: Sequence[Sequence[Any]], *, width: int, suffix: str = ""
    ) -> None:
        """Insert many rows with multi-row ``VALUES`` lists (much faster on PostgreSQL).

        Args:
            sql_prefix: e.g. ``"INSERT INTO t (a, b) VALUES"``.
            rows: the value tuples, each of ``width`` items.
            width: the number of columns per row.
            suffix: appended after the values, e.g. ``"ON CONFLICT DO NOTHING"``.
        """
        if not rows:
            return
        if self.engine == "postgres":
            from psycopg2.extras import execute_values

            execute_values(
                self._cursor,
                f"{sql_prefix} %s {suffix}",
                rows,
                page_size=PG_EXECUTEMANY_PAGE_SIZE,
            )
        else:
            placeholders = "(" + ", ".join("?" * width) + ")"
            self._cursor.executemany(f"{sql_prefix} {placeholders} {suffix}", rows)

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Bulk-insert plain rows (no conflict handling): ``COPY`` on PostgreSQL,
        multi-row ``INSERT`` statements on SQLite. The fastest way to write a
        large batch.

        Values must be None, str or int (not bool). ``rows`` may be a
        generator: it is consumed once, a statement's worth at a time on
        SQLite and a COPY chunk at a time on PostgreSQL, so a large batch
        need not exist as tuples all at once (tens of thousands of live tuples
        cost cyclic-GC passes over the whole heap).
        """
        cols = ", ".join(columns)
        if self.engine == "postgres":
            it = iter(rows)
            first = next(it, None)
            if first is not None:
                reader = _CopyTextReader(chain((first,), it))
                try:
                    self._cursor.copy_expert(
                        f"COPY {table} ({cols}) FROM STDIN", reader, PG_COPY_CHUNK_CHARS
                    )
                except Exception:
                    # The rows failed, not the database: raise what they raised.
                    if reader.error is not None:
                        raise reader.error from None
                    raise
        else:
            width = len(columns)
            per = max(1, min(SQLITE_COPY_ROWS_PER_INSERT, SQLITE_MAX_PARAMS // width))
            execute = self._cursor.execute
            flat = chain.from_iterable
            it = iter(rows)
            while chunk := list(islice(it, per)):
                execute(_multi_row_insert(table, cols, width, len(chunk)), list(flat(chunk)))
                if len(chunk) < per:
                    break

    def prefer_index_lookups(self) -> None:
        """For the rest of this transaction, plan joins as index lookups (PostgreSQL).

        The planner cannot estimate recursive CTEs (graph walks) and picks
        merge or hash joins that scan whole tables; walks touch few rows via
        indexes. No-op on SQLite, which always plans nested loops.
        """
        if self.engine == "postgres":
            self._cursor.execute("SET LOCAL enable_mergejoin = off")
            self._cursor.execute("SET LOCAL enable_hashjoin = off")

    def fetchone(self) -> tuple[Any, ...] | None:
        return cast("tuple[Any, ...] | None", self._cursor.fetchone())

    def fetchall(self) -> list[tuple[Any, ...]]:
        return cast("list[tuple[Any, ...]]", self._cursor.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    def call_after(self, func: Callable[..., object], *args: Any) -> None:
        """Call ``func(*args)`` on the reactor thread once this transaction committed.

        Not called if the transaction rolls back; a retried attempt starts
        with an empty list.
        """
        self._after_callbacks.append((func, args))

    def allocate_ids(self, name: str, count: int = 1) -> int:
        """Reserve ``count`` consecutive ids of the counter ``name``; return the first.

        Ids start at 1 and only grow. The counter row stays locked until the
        transaction ends, so on PostgreSQL concurrent allocators of the same
        counter are serialised and commit in id order (readers never see id
        N+1 committed before N). Needs the ``id_counters`` table (0001_core).
        """
        if count < 1:
            raise ValueError("count must be >= 1")
        self.execute(
            "INSERT INTO id_counters (name, value) VALUES (?, 0) ON CONFLICT (name) DO NOTHING",
            (name,),
        )
        self.execute("UPDATE id_counters SET value = value + ? WHERE name = ?", (count, name))
        self.execute("SELECT value FROM id_counters WHERE name = ?", (name,))
        row = self.fetchone()
        assert row is not None
        return int(row[0]) - count + 1


@attrs.frozen(slots=True)
class _EngineConfig:
    name: EngineName
    dbapi_module: str
    connargs: tuple[Any, ...]
    connkw: dict[str, Any]
    cp_min: int
    cp_max: int
    is_memory: bool = False


def parse_uri(uri: str) -> _EngineConfig:
    """Parse a database URI ("sqlite:/path", "sqlite::memory:", "postgresql://...")."""
    if uri.startswith("sqlite:"):
        path = uri[len("sqlite:") :]
        if path.startswith("//"):
            # sqlite:///abs/path style
            path = path[2:]
        if not path:
            raise ValueError(f"no path in database URI {uri!r}")
        return _EngineConfig(
            name="sqlite",
            dbapi_module="sqlite3",
            connargs=(path,),
            connkw={
                "check_same_thread": False,
                "isolation_level": None,
                "timeout": SQLITE_BUSY_TIMEOUT_SECONDS,
            },
            cp_min=1,
            cp_max=1,
            is_memory=path == ":memory:",
        )
    if uri.startswith(("postgresql://", "postgres://")):
        return _EngineConfig(
            name="postgres",
            dbapi_module="psycopg2",
            connargs=(uri,),
            connkw={},
            cp_min=PG_POOL_MIN,
            cp_max=PG_POOL_MAX,
        )
    raise ValueError(f"unsupported database URI {uri!r} (want sqlite:... or postgresql://...)")


def _open_sqlite(conn: sqlite3.Connection) -> None:
    conn.isolation_level = None
    cur = conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # WAL makes NORMAL durable against application crashes; only power loss
    # can lose the last transactions.
    cur.execute("PRAGMA synchronous=NORMAL")
    # The default 2 MB page cache thrashes on the indexes of a large join batch.
    cur.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
    # No foreign keys: outliers and partial state reference events we lack.
    cur.execute("PRAGMA foreign_keys=OFF")
    # Checkpoints run in the background (_WalCheckpointer), not
    # after our commits; this is only the bound for when they fall behind.
    cur.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_WAL_AUTOCHECKPOINT_PAGES}")
    cur.execute(f"PRAGMA journal_size_limit = {SQLITE_WAL_SIZE_LIMIT_BYTES}")
    cur.close()


def _open_postgres(conn: Any) -> None:
    conn.set_session(isolation_level="READ COMMITTED", autocommit=False)
    # JIT compilation costs 100+ ms whenever the planner overestimates a
    # query (recursive CTEs always are): never worth it for this workload.
    cur = conn.cursor()
    cur.execute("SET jit = off")
    cur.close()
    conn.commit()


def _is_retryable_pg_error(exc: BaseException) -> bool:
    code = getattr(exc, "pgcode", None)
    # 40001 serialization_failure, 40P01 deadlock_detected
    return code in ("40001", "40P01")


def _statements(script: str) -> list[str]:
    """Split an SQL script into statements (SQLite's own completeness test)."""
    out: list[str] = []
    buf: list[str] = []
    for line in script.splitlines(keepends=True):
        buf.append(line)
        text = "".join(buf)
        if sqlite3.complete_statement(text):
            stmt = text.strip()
            if stmt.rstrip(";").strip() and not _only_comments(stmt):
                out.append(stmt)
            buf = []
    rest = "".join(buf).strip()
    if rest and not _only_comments(rest):
        raise ValueError(f"incomplete SQL statement at end of script: {rest[:80]!r}")
    return out


def _only_comments(text: str) -> bool:
    return all(
        not line.strip() or line.strip().startswith("--") for line in text.rstrip(";").splitlines()
    )


def _load_migrations(
    engine: EngineName, schema_dir: str | None = None
) -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every schema version for ``engine``, sorted.

    A version is one portable file or a pair of engine files (``.sqlite.sql``
    and ``.postgres.sql``); anything else is an error, so that no engine can
    silently miss a version.
    """
    root: Traversable = (
        Path(schema_dir)
        if schema_dir is not None
        else importlib.resources.files("matrixfed.storage").joinpath("schema")
    )
    # version -> {engine or "": (file name, SQL)}
    found: dict[int, dict[str, tuple[str, str]]] = {}
    if root.is_dir():
        for entry in root.iterdir():
            m = _SCHEMA_FILE.match(entry.name)
            if not m:
                continue
            version = int(m.group(1))
            variants = found.setdefault(version, {})
            variant = m.group(2) or ""
            if variant in variants:
                raise ValueError(
                    f"two schema files for version {version}: {variants[variant][0]}, {entry.name}"
                )
            variants[variant] = (entry.name, entry.read_text(encoding="utf-8"))
    out: list[tuple[int, str, str]] = []
    for version, variants in sorted(found.items()):
        names = sorted(name for name, _ in variants.values())
        if set(variants) not in ({""}, {"sqlite", "postgres"}):
            raise ValueError(
                f"schema version {version} needs one portable file or both a .sqlite.sql"
                f" and a .postgres.sql file, found {names}"
            )
        name, sql = variants.get(engine) or variants[""]
        out.append((version, name, sql))
    return out


@attrs.frozen(slots=True)
class WalCheckpoint:
    """What one SQLite WAL checkpoint did (``PRAGMA wal_checkpoint``'s answer).

    Attributes:
        busy: it stopped early: another connection held a lock it needed.
        wal_frames: pages (frames) in the WAL.
        checkpointed: how many of them are now in the database file.
    """

    busy: bool
    wal_frames: int
    checkpointed: int


class _WalCheckpointer:
    """Passive checkpoints of an SQLite file on a connection and thread of their own.

    A passive checkpoint copies what no reader still needs from the WAL into
    the database file and fsyncs it; it takes no lock the pool's connection
    waits for, so it runs alongside its reads and writes.
    """

    def __init__(self, config: _EngineConfig, reactor: Any, clock: IReactorTime) -> None:
        self._config = config
        self._reactor = reactor
        self._threadpool = ThreadPool(minthreads=1, maxthreads=1, name="sqlite-checkpoint")
        self._conn: sqlite3.Connection | None = None
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self._shutdown_id: Any = None

    def start(self) -> None:
        conn = sqlite3.connect(*self._config.connargs, **self._config.connkw)
        _open_sqlite(conn)
        self._conn = conn
        self._threadpool.start()
        # Stopped with the reactor too, like adbapi's own pool: its thread
        # must not keep the process alive if close() is never called.
        self._shutdown_id = self._reactor.addSystemEventTrigger("during", "shutdown", self._stop)
        self._loop.start(SQLITE_CHECKPOINT_INTERVAL_SECONDS, now=False)

    def checkpoint(self) -> Deferred[WalCheckpoint]:
        if self._conn is None:
            raise RuntimeError("the checkpointer is stopped")
        return threads.deferToThreadPool(
            self._reactor, self._threadpool, _checkpoint_in_thread, self._conn
        )

    def _tick(self) -> Deferred[None]:
        def failed(failure: Failure) -> None:
            # Logged and retried at the next tick; the WAL keeps the data safe.
            log.failure("background WAL checkpoint failed", failure)

        return self.checkpoint().addCallbacks(lambda _: None, failed)

    def stop(self) -> None:
        """Stop the timer and the thread (waits for a checkpoint in progress)."""
        if self._shutdown_id is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_id)
        self._stop()

    def _stop(self) -> None:
        self._shutdown_id = None
        if self._loop.running:
            self._loop.stop()
        self._threadpool.stop()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _checkpoint_in_thread(conn: sqlite3.Connection) -> WalCheckpoint:
    row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return WalCheckpoint(busy=bool(row[0]), wal_frames=int(row[1]), checkpointed=int(row[2]))


class Database:
    """An adbapi pool on SQLite or PostgreSQL. See the module docstring."""

    def __init__(
        self,
        config: _EngineConfig,
        *,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        schema_dir: str | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._config = config
        self._schema_dir = schema_dir
        self._reactor: Any = reactor
        self._clock: IReactorTime = reactor if clock is None else clock
        self._pool: adbapi.ConnectionPool | None = None
        self._checkpointer: _WalCheckpointer | None = None
        self.engine: EngineName = config.name

    @classmethod
    def from_uri(
        cls,
        uri: str,
        *,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        schema_dir: str | None = None,
    ) -> Database:
        """Build (not open) a Database for ``uri``; call ``start()`` next.

        Args:
            uri: ``sqlite:/path/file.db``, ``sqlite::memory:``, or
                ``postgresql://user@host:port/dbname[?options]`` (any libpq URI).
            reactor: the reactor whose thread pool machinery to use.
            clock: what times the background WAL checkpoints (SQLite files);
                the reactor by default.
            schema_dir: read migrations from this directory instead of the
                package's ``schema/`` (tests).
        """
        return cls(parse_uri(uri), reactor=reactor, clock=clock, schema_dir=schema_dir)

    @property
    def is_memory(self) -> bool:
        return self._config.is_memory

    async def start(self) -> None:
        """Open the pool and apply pending migrations."""
        if self._pool is not None:
            return
        cfg = self._config
        openfun = _open_sqlite if cfg.name == "sqlite" else _open_postgres
        pool = adbapi.ConnectionPool(  # type: ignore[no-untyped-call]
            cfg.dbapi_module,
            *cfg.connargs,
            cp_min=cfg.cp_min,
            cp_max=cfg.cp_max,
            cp_openfun=openfun,
            cp_reconnect=cfg.name == "postgres",
            cp_noisy=False,
            cp_reactor=self._reactor,
            **cfg.connkw,
        )
        pool.start()  # type: ignore[no-untyped-call]
        self._pool = pool
        try:
            await self.run_interaction("create_schema_version", _create_schema_version_table)
            applied = set(await self.run_interaction("get_schema_versions", _get_versions))
            for version, name, sql in _load_migrations(cfg.name, self._schema_dir):
                if version in applied:
                    continue
                did = await self.run_interaction(
                    f"migrate_{name}", _apply_migration, version, name, sql
                )
                if did:
                    log.info("applied schema migration {name}", name=name)
            if cfg.name == "sqlite" and not cfg.is_memory:
                checkpointer = _WalCheckpointer(cfg, self._reactor, self._clock)
                self._checkpointer = checkpointer
                checkpointer.start()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close every connection and stop the threads and timer (blocks briefly).

        On SQLite the last connection closed checkpoints the rest of the WAL.
        """
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.stop()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()  # type: ignore[no-untyped-call]

    def checkpoint_wal(self) -> Deferred[WalCheckpoint | None]:
        """Checkpoint the WAL now, as the background timer does (None: no WAL file).

        Passive: copies what no reader still needs; never blocks them or the writer.
        """
        if self._pool is None:
            raise RuntimeError("Database is not started (or was closed)")
        checkpointer = self._checkpointer
        if checkpointer is None:
            return succeed(None)
        # Deferred is invariant; a Deferred of a WalCheckpoint is one of an optional one.
        return cast("Deferred[WalCheckpoint | None]", checkpointer.checkpoint())

    def run_interaction(
        self,
        desc: str,
        func: Callable[Concatenate[Transaction, P], R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Deferred[R]:
        """Run ``func(txn, *args, **kwargs)`` in one transaction on a pool thread.

        Args:
            desc: a short name for logs.
            func: runs in a pool thread; must not touch the reactor; may be
                retried, so it must not have effects outside the database.

        Returns:
            A Deferred firing with ``func``'s result after the commit (and after
            the transaction's ``call_after`` callbacks ran), or failing with the
            exception ``func`` or the database raised.
        """
        pool = self._pool
        if pool is None:
            raise RuntimeError("Database is not started (or was closed)")
        d: Deferred[tuple[R, list[tuple[Callable[..., object], tuple[Any, ...]]]]]
        d = threads.deferToThreadPool(
            self._reactor,
            pool.threadpool,
            self._run_in_thread,
            pool,
            desc,
            func,
            args,
            kwargs,
        )

        def _after(res: tuple[R, list[tuple[Callable[..., object], tuple[Any, ...]]]]) -> R:
            result, callbacks = res
            for cb, cb_args in callbacks:
                cb(*cb_args)
            return result

        return d.addCallback(_after)

    def _run_in_thread(
        self,
        pool: adbapi.ConnectionPool,
        desc: str,
        func: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[R, list[tuple[Callable[..., object], tuple[Any, ...]]]]:
        # Runs in a pool thread. adbapi gives each pool thread its own
        # connection (pool.connect); transaction control is ours, so that
        # retries and lost connections are handled in one place.
        engine = self.engine
        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            conn = pool.connect()  # type: ignore[no-untyped-call]
            committing = False
            try:
                cursor = conn.cursor()
                try:
                    if engine == "sqlite":
                        cursor.execute("BEGIN IMMEDIATE")
                    txn = Transaction(cursor, engine)
                    result = func(txn, *args, **kwargs)
                finally:
                    _close_quietly(cursor)
                committing = True
                conn.commit()
                break
            except BaseException as e:
                lost = _connection_is_dead(conn, engine)
                if not lost:
                    try:
                        conn.rollback()
                    except Exception:
                        lost = True
                if lost:
                    # Drop it: the next pool.connect() in this thread opens a new one.
                    pool.disconnect(conn)  # type: ignore[no-untyped-call]
                    if not committing and attempt < MAX_TXN_ATTEMPTS:
                        log.warn("{desc}: database connection lost, retrying", desc=desc)
                        continue
                    raise
                if engine == "postgres" and _is_retryable_pg_error(e):
                    if attempt < MAX_TXN_ATTEMPTS:
                        log.info(
                            "{desc}: retrying after {error}", desc=desc, error=type(e).__name__
                        )
                        continue
                raise
        elapsed = time.monotonic() - start
        if elapsed > SLOW_TXN_LOG_SECONDS:
            log.info("slow transaction {desc}: {seconds:.2f}s", desc=desc, seconds=elapsed)
        return result, txn._after_callbacks


def _close_quietly(cursor: Any) -> None:
    # Closing a cursor of a connection that died raises too; the error that
    # killed it is the one worth reporting.
    try:
        cursor.close()
    except Exception:
        pass


def _connection_is_dead(conn: Any, engine: EngineName) -> bool:
    if engine != "postgres":
        return False
    return bool(getattr(conn, "closed", 0))


# --- migrations -------------------------------------------------------------


def _create_schema_version_table(txn: Transaction) -> None:
    txn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER NOT NULL PRIMARY KEY,"
        " name TEXT NOT NULL,"
        " applied_ts BIGINT NOT NULL)"
    )


def _get_versions(txn: Transaction) -> list[int]:
    txn.execute("SELECT version FROM schema_version")
    return [int(r[0]) for r in txn.fetchall()]


def _apply_migration(txn: Transaction, version: int, name: str, sql: str) -> bool:
    if txn.engine == "postgres":
        # Two processes starting at once: the second waits, then sees the row.
        txn.execute("LOCK TABLE schema_version IN EXCLUSIVE MODE")
    txn.execute("SELECT 1 FROM schema_version WHERE version = ?", (version,))
    if txn.fetchone() is not None:
        return False
    for stmt in _statements(sql):
        txn._cursor.execute(stmt)
    txn.execute(
        "INSERT INTO schema_version (version, name, applied_ts) VALUES (?, ?, ?)",
        (version, name, int(time.time() * 1000)),
    )
    return True
