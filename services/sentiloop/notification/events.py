"""The event log (domain logic; no grpc here): every transition of the loop is an
event, stored durably in the service's database (core/db.py: SQLite, WAL and fsync on
commit, or PostgreSQL) before it is acknowledged.

Replay reads "the events after the last id seen", so ids must become visible in id order
or a reader could pass over one that commits late. SQLite has one writer at a time; on
PostgreSQL, where several replicas publish, a publish takes an advisory lock before its
id is drawn and keeps it until it has committed (events are few: the queue is short)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sentiloop.core.db import Database, Migration, Row, SQLiteDatabase, Transaction, stored_time
from sentiloop.core.errors import InvalidArgument
from sentiloop.core.validation import DEFAULT_PAGE_SIZE, page_size
from sentiloop.core.vocabulary import EventType

MIGRATIONS = (
    Migration(
        1,
        "the event log",
        sqlite=(
            # IF NOT EXISTS: a file made before the migration runner is adopted as it is.
            """CREATE TABLE IF NOT EXISTS events (
                id         INTEGER PRIMARY KEY AUTOINCREMENT,
                type       TEXT NOT NULL,
                subject    TEXT NOT NULL DEFAULT '',
                message    TEXT NOT NULL DEFAULT '',
                attributes TEXT NOT NULL DEFAULT '{}',
                created_at TEXT NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS events_by_type ON events (type, id)",
        ),
        postgresql=(
            """CREATE TABLE events (
                id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                type       TEXT NOT NULL,
                subject    TEXT NOT NULL DEFAULT '',
                message    TEXT NOT NULL DEFAULT '',
                attributes TEXT NOT NULL DEFAULT '{}',
                created_at TIMESTAMPTZ NOT NULL
            )""",
            "CREATE INDEX events_by_type ON events (type, id)",
        ),
    ),
)
# pg_advisory_xact_lock key that puts publishes in a line, so that ids commit in order
# ("events").
PUBLISH_LOCK = 0x6576656E7473

# The event types the services of the loop emit. Others are accepted when they
# have the same shape (lower-case dotted words); these are the documented ones.
KNOWN_TYPES: tuple[str, ...] = tuple(EventType)

TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
PREFIX_PATTERN = re.compile(r"^[a-z0-9_.]+$")
MAX_TYPE_LENGTH = 100
MAX_SUBJECT_LENGTH = 500
MAX_MESSAGE_LENGTH = 5000
MAX_ATTRIBUTES_BYTES = 16 * 1024
MAX_TYPE_PREFIXES = 20


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    subject: str
    message: str
    attributes: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def matches(self, type_prefixes: Sequence[str]) -> bool:
        """True when no prefixes are given or the type starts with one of them."""
        return not type_prefixes or self.type.startswith(tuple(type_prefixes))


def _attributes_json(attributes: dict[str, Any]) -> str:
    return json.dumps(attributes, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def validate_event(
    type: str, subject: str, message: str, attributes: dict[str, Any]
) -> tuple[str, str]:
    """Raises InvalidArgument naming every bad field; returns (type, attributes as JSON)."""
    problems: dict[str, str] = {}
    clean_type = type
    if not clean_type:
        problems["type"] = "is required"
    elif len(clean_type) > MAX_TYPE_LENGTH:
        problems["type"] = f"must be at most {MAX_TYPE_LENGTH} characters"
    elif not TYPE_PATTERN.match(clean_type):
        problems["type"] = (
            f"{clean_type!r} is not an event type: use lower-case dotted words,"
            " e.g. 'training.completed'"
        )
    if len(subject) > MAX_SUBJECT_LENGTH:
        problems["subject"] = f"must be at most {MAX_SUBJECT_LENGTH} characters"
    if len(message) > MAX_MESSAGE_LENGTH:
        problems["message"] = f"must be at most {MAX_MESSAGE_LENGTH} characters"
    encoded = "{}"
    try:
        encoded = _attributes_json(attributes)
    except (TypeError, ValueError) as error:
        problems["attributes"] = f"must be JSON values: {error}"
    else:
        if len(encoded.encode()) > MAX_ATTRIBUTES_BYTES:
            problems["attributes"] = (
                f"must be at most {MAX_ATTRIBUTES_BYTES} bytes as JSON"
                f" (got {len(encoded.encode())})"
            )
    if problems:
        raise InvalidArgument(problems)
    return clean_type, encoded


def check_type_prefix(prefix: str, field_name: str = "type_prefix") -> str:
    """A type prefix to filter on ("" for all): lower-case letters, digits, '_' and '.'."""
    if prefix and (len(prefix) > MAX_TYPE_LENGTH or not PREFIX_PATTERN.match(prefix)):
        raise InvalidArgument(
            {
                field_name: f"{prefix[:MAX_TYPE_LENGTH]!r} is not a type prefix: use at most"
                f" {MAX_TYPE_LENGTH} lower-case letters, digits, '_' and '.', e.g. 'training.'"
            }
        )
    return prefix


def check_type_prefixes(prefixes: Sequence[str]) -> list[str]:
    if len(prefixes) > MAX_TYPE_PREFIXES:
        raise InvalidArgument({"type_prefixes": f"at most {MAX_TYPE_PREFIXES} prefixes"})
    problems: dict[str, str] = {}
    for index, prefix in enumerate(prefixes):
        name = f"type_prefixes[{index}]"
        if not prefix:
            problems[name] = "must not be empty (leave type_prefixes out for every event)"
            continue
        try:
            check_type_prefix(prefix, name)
        except InvalidArgument as error:
            problems.update(error.violations)
    if problems:
        raise InvalidArgument(problems)
    return list(prefixes)


def _prefix_filter(prefixes: Sequence[str]) -> tuple[str, list[Any]]:
    """SQL matching a type prefix literally ('_' and '%' are no wildcards here)."""
    if not prefixes:
        return "TRUE", []
    # The cast: psycopg sends a Python int as the smallest integer type that holds it,
    # and PostgreSQL's substr takes an integer.
    clauses = " OR ".join("substr(type, 1, CAST(? AS INTEGER)) = ?" for _ in prefixes)
    params: list[Any] = []
    for prefix in prefixes:
        params += [len(prefix), prefix]
    return f"({clauses})", params


class EventLog:
    """The durable, append-only event log. Thread-safe; blocking (call it off the loop).
    ``database``: an opened database (core/db.py), or the path of a SQLite file."""

    def __init__(self, database: Database | Path) -> None:
        self.database = SQLiteDatabase(database) if isinstance(database, Path) else database
        try:
            self.database.migrate("events", MIGRATIONS)
        except BaseException:
            self.database.close()
            raise

    def close(self) -> None:
        self.database.close()

    def publish(
        self,
        type: str,
        subject: str = "",
        message: str = "",
        attributes: dict[str, Any] | None = None,
    ) -> Event:
        """Validates and stores the event (on disk before it returns)."""
        clean_type, encoded = validate_event(type, subject, message, attributes or {})
        created_at = datetime.now(UTC)

        def insert(tx: Transaction) -> int:
            if tx.engine == "postgresql":
                # Held until the commit: the next publish draws its id only once this
                # one's is visible (see the module's docstring).
                tx.fetch("SELECT pg_advisory_xact_lock(?)", (PUBLISH_LOCK,))
            row = tx.fetch_one(
                "INSERT INTO events (type, subject, message, attributes, created_at)"
                " VALUES (?, ?, ?, ?, ?) RETURNING id",
                (clean_type, subject, message, encoded, created_at.isoformat()),
            )
            assert row is not None
            return int(row["id"])

        # Not idempotent: a retry after a lost commit answer could store the event twice.
        event_id = self.database.run(insert, write=True)
        return Event(
            id=event_id,
            type=clean_type,
            subject=subject,
            message=message,
            attributes=json.loads(encoded),
            created_at=created_at,
        )

    def after(
        self, event_id: int, type_prefixes: Sequence[str] = (), limit: int = DEFAULT_PAGE_SIZE
    ) -> list[Event]:
        """Events with an id above ``event_id``, oldest first (for replay)."""
        where, params = _prefix_filter(type_prefixes)
        rows = self.database.run(
            lambda tx: tx.fetch(
                f"SELECT * FROM events WHERE id > ? AND {where} ORDER BY id LIMIT ?",
                (event_id, *params, limit),
            )
        )
        return [_from_row(row) for row in rows]

    def list(self, type_prefix: str = "", limit: int = DEFAULT_PAGE_SIZE) -> list[Event]:
        """The newest events first."""
        check_type_prefix(type_prefix)
        where, params = _prefix_filter([type_prefix] if type_prefix else [])
        rows = self.database.run(
            lambda tx: tx.fetch(
                f"SELECT * FROM events WHERE {where} ORDER BY id DESC LIMIT ?",
                (*params, page_size(limit)),
            )
        )
        return [_from_row(row) for row in rows]

    def latest_id(self) -> int:
        row = self.database.run(
            lambda tx: tx.fetch_one("SELECT COALESCE(MAX(id), 0) AS latest FROM events")
        )
        return int(row["latest"]) if row else 0


def _from_row(row: Row) -> Event:
    created_at = row["created_at"]
    return Event(
        id=int(row["id"]),
        type=row["type"],
        subject=row["subject"],
        message=row["message"],
        attributes=json.loads(row["attributes"]),
        created_at=stored_time(created_at),
    )
