"""`sentiloop db copy`: the metadata of a mesh that ran on SQLite files, copied into the
PostgreSQL database ``SENTILOOP_DATABASE_URL`` names, so that a team moving to
PostgreSQL keeps its models, activations, feedback, events and the rest.

Each store file is read from a snapshot (SQLite's backup API, into a scratch folder
beside it) migrated to the latest schema there: the operator's files are never written,
and an old file's columns line up with the target's. The target is migrated by the same
migrations the services run at start, then every table but ``schema_migrations`` is
copied column by column (the columns both sides have), values converted where the two
engines store a type differently, identities copied as they were and their sequences
moved past them. Which files and migrations exist is the services' knowledge; the
caller (the command) passes them in, as this layer may not import the services."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sentiloop.core.config import Settings
from sentiloop.core.db import Migration, PostgresDatabase, SQLiteDatabase, Transaction, redact
from sentiloop.core.processes import pid_alive

BATCH_ROWS = 1000
SKIPPED_TABLES = {"schema_migrations"}


class CopyRefused(Exception):
    """The copy did not start, and wrote nothing: why, for the operator."""


@dataclass(frozen=True)
class StoreFile:
    """One service's SQLite file and the migrations (per component, in the order the
    service's stores apply them) that make its tables."""

    service: str
    file: str
    components: Sequence[tuple[str, Sequence[Migration]]]


@dataclass(frozen=True)
class _Column:
    name: str
    data_type: str
    identity: bool


@dataclass
class _Plan:
    store: StoreFile
    snapshot: Path
    tables: dict[str, list[str]]  # table -> its SQLite columns
    # Tables the migrations themselves give rows (a singleton's one row): the target's
    # are replaced by the source's, not counted as rows to merge with.
    seeded: set[str]


def running_pids(data_dir: Path) -> list[int]:
    """The live processes the mesh of ``data_dir`` recorded in ``run/*.pid`` (a stale
    file left by a crash names a process that is gone)."""
    pids = []
    for path in sorted((data_dir / "run").glob("*.pid")):
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            continue
        if pid_alive(pid):
            pids.append(pid)
    return pids


def copy_to_postgres(
    settings: Settings, stores: Sequence[StoreFile], echo: Callable[[str], None] = print
) -> int:
    """Copies every store file of ``settings.data_dir`` into ``settings.database_url``;
    the number of rows copied. CopyRefused, before anything is written, when the URL is
    unset, the mesh still runs, or the target already holds rows."""
    if settings.database_url is None:
        raise CopyRefused(
            "SENTILOOP_DATABASE_URL is not set: set it to the PostgreSQL database to copy into"
        )
    url = settings.database_url.get_secret_value()  # PostgreSQL: the settings check it
    pids = running_pids(settings.data_dir)
    if pids:
        raise CopyRefused(
            f"the mesh of {settings.data_dir} is running (pids {', '.join(map(str, pids))}):"
            " stop it first, so that nothing is written while it is copied"
        )
    # data_dir / service, as service_dir names it without making it: nothing is written.
    present = [s for s in stores if (settings.data_dir / s.service / s.file).is_file()]
    if not present:
        raise CopyRefused(f"no SQLite metadata under {settings.data_dir}: nothing to copy")
    echo(f"copying the metadata of {settings.data_dir} into {redact(url)}")
    # Beside the files: a snapshot needs as much room as its file, which /tmp may lack.
    with tempfile.TemporaryDirectory(prefix=".db-copy-", dir=settings.data_dir) as scratch:
        plans = [_snapshot(settings, store, Path(scratch)) for store in present]
        _refuse_unless_empty(url, plans)
        total = tables = 0
        for plan in plans:
            copied = _copy(url, plan, echo)
            total += sum(copied.values())
            tables += len(copied)
    echo(
        f"done: {total} rows in {tables} tables from {len(plans)} SQLite files."
        " Start the mesh with SENTILOOP_DATABASE_URL set; the SQLite files are unchanged"
        " (and no longer read)."
    )
    return total


def _snapshot(settings: Settings, store: StoreFile, scratch: Path) -> _Plan:
    source = settings.data_dir / store.service / store.file
    snapshot = scratch / store.service / store.file
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    # Read only: the backup reads what was committed, the WAL included.
    reader = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    copy = sqlite3.connect(snapshot)
    try:
        reader.backup(copy)
    finally:
        copy.close()
        reader.close()
    database = SQLiteDatabase(snapshot)
    try:
        for component, migrations in store.components:
            database.migrate(component, migrations)
        tables = database.run(_shape)
    finally:
        database.close()
    fresh = SQLiteDatabase(scratch / "fresh" / store.service / store.file)
    try:
        for component, migrations in store.components:
            fresh.migrate(component, migrations)

        def with_rows(tx: Transaction) -> set[str]:
            return {
                table
                for table in _shape(tx)
                if tx.fetch_one(f'SELECT 1 AS one FROM "{table}" LIMIT 1')
            }

        seeded = fresh.run(with_rows)
    finally:
        fresh.close()
    return _Plan(store, snapshot, tables, seeded)


def _shape(tx: Transaction) -> dict[str, list[str]]:
    """A SQLite database's tables (but schema_migrations) and their columns."""
    names = tx.fetch(
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        " AND name NOT LIKE 'sqlite_%' ORDER BY name"
    )
    return {
        row["name"]: [c["name"] for c in tx.fetch(f'PRAGMA table_info("{row["name"]}")')]
        for row in names
        if row["name"] not in SKIPPED_TABLES
    }


def _refuse_unless_empty(url: str, plans: Sequence[_Plan]) -> None:
    """No merging: a table of the target that already has rows stops the copy. Read in
    the public schema, so that nothing (not even a service's schema) is made yet."""
    database = PostgresDatabase(url, max_size=1)
    try:

        def occupied(tx: Transaction) -> list[str]:
            found = []
            for plan in plans:
                schema = plan.store.service
                for table in plan.tables.keys() - plan.seeded:
                    exists = tx.fetch_one(
                        "SELECT 1 AS one FROM information_schema.tables"
                        " WHERE table_schema = ? AND table_name = ?",
                        (schema, table),
                    )
                    if exists and tx.fetch_one(
                        f'SELECT 1 AS one FROM "{schema}"."{table}" LIMIT 1'
                    ):
                        found.append(f"{schema}.{table}")
            return found

        found = database.run(occupied)
    finally:
        database.close()
    if found:
        raise CopyRefused(
            f"the target already holds rows ({', '.join(found)}): the copy does not merge;"
            " copy into a new, empty database"
        )


def _copy(url: str, plan: _Plan, echo: Callable[[str], None]) -> dict[str, int]:
    """One store file in one transaction: all of it, or nothing."""
    service = plan.store.service
    target = PostgresDatabase(url, schema=service, max_size=1)
    source = sqlite3.connect(plan.snapshot)
    try:
        for component, migrations in plan.store.components:
            target.migrate(component, migrations)

        def work(tx: Transaction) -> dict[str, int]:
            copied = {}
            for table, source_columns in plan.tables.items():
                columns = _target_columns(tx, service, table)
                if not columns:
                    echo(f"  {service}/{plan.store.file}: {table}: not in the target, skipped")
                    continue
                names = [c for c in columns if c in source_columns]
                copied[table] = _copy_table(
                    tx, source, service, table, columns, names, table in plan.seeded
                )
                echo(f"  {service}/{plan.store.file}: {table}: {copied[table]} rows")
            return copied

        result: dict[str, int] = target.run(work, write=True)
        return result
    finally:
        source.close()
        target.close()


def _target_columns(tx: Transaction, schema: str, table: str) -> dict[str, _Column]:
    rows = tx.fetch(
        "SELECT column_name, data_type, is_identity, column_default"
        " FROM information_schema.columns WHERE table_schema = ? AND table_name = ?"
        " ORDER BY ordinal_position",
        (schema, table),
    )
    return {
        row["column_name"]: _Column(
            row["column_name"],
            row["data_type"],
            row["is_identity"] == "YES" or str(row["column_default"] or "").startswith("nextval("),
        )
        for row in rows
    }


def _copy_table(
    tx: Transaction,
    source: sqlite3.Connection,
    schema: str,
    table: str,
    columns: dict[str, _Column],
    names: list[str],
    seeded: bool,
) -> int:
    if seeded:
        tx.execute(f'DELETE FROM "{table}"')
    # Checked again in the transaction that writes: a process may have written since.
    elif tx.fetch_one(f'SELECT 1 AS one FROM "{table}" LIMIT 1'):
        raise CopyRefused(f"{schema}.{table} got rows while the copy ran (is a mesh using it?)")
    if not names:
        return 0
    quoted = ", ".join(f'"{name}"' for name in names)
    identities = [name for name in names if columns[name].identity]
    insert = (
        f'INSERT INTO "{table}" ({quoted})'
        + (" OVERRIDING SYSTEM VALUE" if identities else "")
        + f" VALUES ({', '.join('?' for _ in names)})"
    )
    convert = [_converter(columns[name].data_type) for name in names]
    cursor = source.execute(f'SELECT {quoted} FROM "{table}"')
    count = 0
    while batch := cursor.fetchmany(BATCH_ROWS):
        tx.execute_many(
            insert, [[c(value) for c, value in zip(convert, row, strict=True)] for row in batch]
        )
        count += len(batch)
    for name in identities:
        # Past the largest copied id, so that new rows never take one of them.
        tx.fetch(
            f'SELECT setval(pg_get_serial_sequence(?, ?), MAX("{name}")) FROM "{table}"'
            f' HAVING MAX("{name}") IS NOT NULL',
            (f'"{schema}"."{table}"', name),
        )
    return count


def _converter(data_type: str) -> Callable[[Any], Any]:
    if data_type == "boolean":
        return lambda value: value if value is None else bool(value)
    if data_type == "timestamp with time zone":
        return lambda value: datetime.fromisoformat(value) if isinstance(value, str) else value
    return lambda value: value
