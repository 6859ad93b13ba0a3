"""The metadata stores' database: SQLite (embedded, the default) or PostgreSQL (several
processes, a server built for many writers), chosen by a URL.

    database = open_service_database(settings, "feedback", "feedback.db")
    database.migrate("feedback", MIGRATIONS)         # at start, before serving
    record = database.run(work, write=True)          # work(tx) in one transaction

One SQL for both engines where the two agree (``INSERT ... ON CONFLICT``, ``RETURNING``,
``CASE``): statements use ``?`` placeholders, translated for psycopg. Where they differ
(column types, identity columns) a migration carries one list of steps per engine.

Migrations are a small versioned runner rather than Alembic: each store declares an
ordered list of steps per engine, the applied version is recorded per store (component)
in ``schema_migrations``, and a start applies what is missing in one transaction (DDL is
transactional on both engines), under an advisory lock on PostgreSQL so that replicas
starting together migrate once. Alembic would bring SQLAlchemy and a migration-script
directory per store for what is a dozen lines here, and its autogeneration needs ORM
models the stores do not have.

One PostgreSQL database holds every service's tables, each service in a schema of its
own (``search_path``), so two services' tables never meet (evaluation keeps a
``feedback`` table of its own) and one service's stores can share a transaction's
names as they share a file on SQLite.

Retries: PostgreSQL work is retried on serialization failures, deadlocks and lost
connections when the transaction certainly did not commit, or when the work is
idempotent (a commit whose answer was lost may have happened). SQLite's one writer waits
for the file lock instead (``busy_timeout``)."""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import urlsplit

from sentiloop.core import sqlite
from sentiloop.core.config import Settings
from sentiloop.core.errors import FailedPrecondition, Unavailable

log = logging.getLogger("sentiloop.core.db")

Engine = Literal["sqlite", "postgresql"]
Row = dict[str, Any]
T = TypeVar("T")

# PostgreSQL: attempts of one unit of work, and the first pause between them (doubling).
ATTEMPTS = 5
FIRST_BACKOFF_SECONDS = 0.05
# pg_advisory_xact_lock key that serialises migrations across processes ("sentiloop").
MIGRATION_LOCK = 0x73656E74696C6F6F
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class Transaction(Protocol):
    """Statements inside one transaction; ``?`` placeholders on both engines."""

    engine: Engine

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Runs a statement; the number of rows it changed."""
        ...

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


Step = str | Callable[[Transaction], None]


@dataclass(frozen=True)
class Migration:
    """One schema version: its steps on each engine, applied in order."""

    version: int
    description: str
    sqlite: Sequence[Step] = field(default_factory=tuple)
    postgresql: Sequence[Step] = field(default_factory=tuple)

    def steps(self, engine: Engine) -> Sequence[Step]:
        return self.sqlite if engine == "sqlite" else self.postgresql


def sqlite_columns_if_missing(table: str, columns: dict[str, str]) -> Step:
    """A SQLite step adding ``columns`` (name: definition) that ``table`` lacks: files
    made before the migration runner grew columns by hand, so one may have some already."""

    def add(tx: Transaction) -> None:
        present = {row["name"] for row in tx.fetch(f"PRAGMA table_info({table})")}
        for name, definition in columns.items():
            if name not in present:
                tx.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")

    return add


class Database:
    engine: Engine
    url: str

    def run(
        self, work: Callable[[Transaction], T], *, write: bool = False, idempotent: bool = False
    ) -> T:
        """``work`` in one transaction, committed when it returns. ``write`` takes SQLite's
        write lock at the start (no upgrade deadlock mid-transaction); ``idempotent`` lets
        PostgreSQL retry even when a commit's answer was lost."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def migrate(self, component: str, migrations: Sequence[Migration]) -> int:
        """Applies the migrations of ``component`` newer than its recorded version; the
        version the database is at afterwards."""
        versions = [m.version for m in migrations]
        if versions != sorted(set(versions)) or (versions and versions[0] < 1):
            raise ValueError(f"{component}: migration versions must increase from 1: {versions}")
        latest = versions[-1] if versions else 0

        def apply(tx: Transaction) -> int:
            if tx.engine == "postgresql":
                tx.fetch("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " component TEXT NOT NULL, version INTEGER NOT NULL,"
                " description TEXT NOT NULL, applied_at TEXT NOT NULL,"
                " PRIMARY KEY (component, version))"
            )
            row = tx.fetch_one(
                "SELECT COALESCE(MAX(version), 0) AS version FROM schema_migrations"
                " WHERE component = ?",
                (component,),
            )
            current = int(row["version"]) if row else 0
            if current > latest:
                raise FailedPrecondition(
                    f"the {component} schema is at version {current}, newer than this"
                    f" release knows ({latest}): run the release that migrated it"
                )
            for migration in migrations:
                if migration.version <= current:
                    continue
                for step in migration.steps(tx.engine):
                    if isinstance(step, str):
                        tx.execute(step)
                    else:
                        step(tx)
                tx.execute(
                    "INSERT INTO schema_migrations (component, version, description, applied_at)"
                    " VALUES (?, ?, ?, ?)",
                    (component, migration.version, migration.description, _now()),
                )
                log.info("%s schema migrated to version %d", component, migration.version)
            return max(current, latest)

        return self.run(apply, write=True, idempotent=True)


def open_service_database(
    settings: Settings, service: str, sqlite_file: str, *, durable: bool = True
) -> Database:
    """``service``'s metadata database: with ``SENTILOOP_DATABASE_URL`` set, PostgreSQL
    in the schema named after the service; else the SQLite file ``sqlite_file`` in the
    service's data directory."""
    url = settings.database_url.get_secret_value() if settings.database_url else None
    return open_database(
        url, settings.service_dir(service) / sqlite_file, schema=service, durable=durable
    )


def open_database(
    url: str | None, default: Path, *, schema: str = "public", durable: bool = True
) -> Database:
    """The database at ``url``: ``sqlite:///absolute/path`` (or ``sqlite:////...``),
    ``sqlite:relative/path``,
    ``postgresql://user:password@host:port/name?options`` (libpq's URI), whose tables live
    in ``schema`` (made when missing); unset means the SQLite file ``default``.

    ``durable=False`` is for logs whose newest rows may be lost in a crash of the machine
    or the database server (never in a crash of the service's process), in exchange for
    no flush to disk per commit: SQLite ``synchronous=NORMAL`` (WAL), PostgreSQL
    ``synchronous_commit=off``. Either way a crash never corrupts what was committed
    before."""
    if not url:
        return SQLiteDatabase(default, durable=durable)
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        path = url.removeprefix("sqlite:")
        if path.startswith("/"):  # sqlite:///abs and SQLAlchemy's sqlite:////abs alike
            path = "/" + path.lstrip("/")
        if path in ("", "/"):
            raise ValueError(f"{url!r}: no file named")
        return SQLiteDatabase(Path(path), durable=durable)
    if scheme in ("postgresql", "postgres"):
        return PostgresDatabase(url, schema=schema, durable=durable)
    raise ValueError(f"{redact(url)!r}: the database URL must start with sqlite: or postgresql:")


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


# -- SQLite ---------------------------------------------------------------------------


class _SQLiteTransaction:
    engine: Engine = "sqlite"

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return [dict(row) for row in self._connection.execute(sql, params)]

    def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row = self._connection.execute(sql, params).fetchone()
        return None if row is None else dict(row)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self._connection.execute(sql, params).rowcount)

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._connection.executemany(sql, rows)


class SQLiteDatabase(Database):
    """One connection (core/sqlite.py: WAL, a full fsync per commit) behind a lock: the
    file has one writer at a time anyway, and a commit is durable before ``run`` returns."""

    engine: Engine = "sqlite"

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self._lock = threading.Lock()
        self._connection = sqlite.connect(path)
        if not durable:  # see open_database
            self._connection.execute("PRAGMA synchronous=NORMAL")

    def run(
        self, work: Callable[[Transaction], T], *, write: bool = False, idempotent: bool = False
    ) -> T:
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = work(_SQLiteTransaction(self._connection))
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")
            return result

    def close(self) -> None:
        with self._lock:
            self._connection.close()


# -- PostgreSQL -----------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def to_pyformat(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (and a literal ``%`` doubled), leaving
    quoted strings and identifiers alone."""
    out: list[str] = []
    quote = ""
    for char in sql:
        if quote:
            out.append("%%" if char == "%" else char)
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
            out.append(char)
        elif char == "?":
            out.append("%s")
        elif char == "%":
            out.append("%%")
        else:
            out.append(char)
    return "".join(out)


class _PostgresTransaction:
    engine: Engine = "postgresql"

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._cursor.execute(to_pyformat(sql), params)
        return list(self._cursor.fetchall()) if self._cursor.description else []

    def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        self._cursor.execute(to_pyformat(sql), params)
        row: Row | None = self._cursor.fetchone()
        return row

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._cursor.execute(to_pyformat(sql), params)
        return int(self._cursor.rowcount)

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cursor.executemany(to_pyformat(sql), rows)


class PostgresDatabase(Database):
    """A psycopg_pool connection pool: several threads of a service work at once, each
    on its own connection. A broken connection (a server restart or failover) fails the
    transaction's first statement, before anything could commit, so ``run`` retries it on
    a fresh one: a restart costs a retry, not a restart of the service. Connections are
    not checked before each use, which would cost every transaction a round trip."""

    engine: Engine = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        schema: str = "public",
        max_size: int = 8,
        timeout: float = 10.0,
        durable: bool = True,
    ) -> None:
        import psycopg
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        if not SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"{schema!r} is not a plain schema name")
        self.url = url
        self.schema = schema
        self._psycopg = psycopg
        self._pool: ConnectionPool[Any] = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            timeout=timeout,
            # Timestamps come back in UTC, as the SQLite stores write them.
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "options": f"-c TimeZone=UTC -c search_path={schema}"
                + ("" if durable else " -c synchronous_commit=off"),  # see open_database
            },
            name="sentiloop",
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=timeout)
        except Exception as error:
            self._pool.close()
            raise Unavailable(f"PostgreSQL at {redact(url)} is unreachable: {error}") from error
        if schema != "public":
            self.run(self._create_schema, write=True, idempotent=True)

    def _create_schema(self, tx: Transaction) -> None:
        # Replicas starting together: IF NOT EXISTS alone can still race on the catalog.
        tx.fetch("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
        tx.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')

    def _transient(self, error: Exception) -> bool:
        errors = self._psycopg.errors
        if isinstance(error, errors.SerializationFailure | errors.DeadlockDetected):
            return True
        if isinstance(error, errors.AdminShutdown | errors.CannotConnectNow):
            return True  # a server restarting or failing over
        sqlstate = getattr(error, "sqlstate", None)
        # No SQLSTATE: the client lost the connection; class 08: connection exceptions.
        return isinstance(error, self._psycopg.OperationalError) and (
            sqlstate is None or sqlstate.startswith("08")
        )

    def run(
        self, work: Callable[[Transaction], T], *, write: bool = False, idempotent: bool = False
    ) -> T:
        from psycopg_pool import PoolTimeout

        delay = FIRST_BACKOFF_SECONDS
        for attempt in range(1, ATTEMPTS + 1):
            committing = False
            try:
                with self._pool.connection() as connection:
                    with connection.transaction(), connection.cursor() as cursor:
                        result = work(_PostgresTransaction(cursor))
                        committing = True
                    return result
            except PoolTimeout as error:
                if attempt == ATTEMPTS:
                    raise Unavailable(f"PostgreSQL: no connection: {error}") from error
            except self._psycopg.Error as error:
                # Mid-commit the outcome is unknown: only idempotent work may go again.
                if not self._transient(error) or (committing and not idempotent):
                    if self._transient(error):
                        raise Unavailable(f"PostgreSQL: {error}") from error
                    raise
                if attempt == ATTEMPTS:
                    raise Unavailable(f"PostgreSQL: {error} ({attempt} attempts)") from error
                log.warning("PostgreSQL: %s; attempt %d of %d", error, attempt + 1, ATTEMPTS)
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._pool.close()


def stored_time(value: str | datetime) -> datetime:
    """A time read back from either engine: SQLite keeps ISO 8601 text, PostgreSQL a
    timestamptz (read in UTC)."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _now() -> str:
    return datetime.now(UTC).isoformat()
