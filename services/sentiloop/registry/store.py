"""Model versions, which one is active, and the history of activations (domain logic), on
SQLite or PostgreSQL (core/db.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sentiloop.core.db import (
    Database,
    Migration,
    Row,
    SQLiteDatabase,
    Transaction,
    sqlite_columns_if_missing,
    stored_time,
)
from sentiloop.core.errors import FailedPrecondition, InvalidArgument, NotFound
from sentiloop.core.serving import ServingState
from sentiloop.core.validation import decimal, quoted
from sentiloop.core.vocabulary import EndpointState
from sentiloop.data.shadow import ShadowReport, supersedes

# A SQLite registry made before the migration runner has no schema_migrations row: the
# steps are no-ops on what it has, so it adopts the runner at version 1 like a new one.
MIGRATIONS = (
    Migration(
        1,
        "versions, activations and what serves",
        sqlite=(
            """CREATE TABLE IF NOT EXISTS versions (
                number             INTEGER PRIMARY KEY AUTOINCREMENT,
                path               TEXT NOT NULL,
                source             TEXT NOT NULL,
                training_job_name  TEXT NOT NULL DEFAULT '',
                dataset_hash       TEXT NOT NULL DEFAULT '',
                test_metrics       TEXT NOT NULL DEFAULT '{}',
                validation_metrics TEXT NOT NULL DEFAULT '{}',
                gate               TEXT NOT NULL DEFAULT '{}',
                created_at         TEXT NOT NULL,
                shadow             TEXT NOT NULL DEFAULT '{}'
            )""",
            # A registry made before gate decisions, or before shadow evaluation.
            sqlite_columns_if_missing(
                "versions",
                {"gate": "TEXT NOT NULL DEFAULT '{}'", "shadow": "TEXT NOT NULL DEFAULT '{}'"},
            ),
            """CREATE TABLE IF NOT EXISTS activations (
                id               INTEGER PRIMARY KEY AUTOINCREMENT,
                version          TEXT NOT NULL,
                previous_version TEXT NOT NULL DEFAULT '',
                kind             TEXT NOT NULL,
                reason           TEXT NOT NULL DEFAULT '',
                activated_at     TEXT NOT NULL
            )""",
            # The latest serving.changed event: what InferenceService last said it serves.
            """CREATE TABLE IF NOT EXISTS serving (
                id             INTEGER PRIMARY KEY CHECK (id = 1),
                status         TEXT NOT NULL,
                model_version  TEXT NOT NULL,
                target_version TEXT NOT NULL,
                failure_reason TEXT NOT NULL,
                event_id       INTEGER NOT NULL
            )""",
            # How each version last served (engine and precision), from serving.changed.
            """CREATE TABLE IF NOT EXISTS served_with (
                version   TEXT PRIMARY KEY,
                engine    TEXT NOT NULL,
                precision TEXT NOT NULL,
                event_id  INTEGER NOT NULL
            )""",
        ),
        postgresql=(
            # An identity hands a number out once, whichever replica registers (a
            # rolled-back registration leaves a gap, as AUTOINCREMENT can).
            """CREATE TABLE versions (
                number             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                path               TEXT NOT NULL,
                source             TEXT NOT NULL,
                training_job_name  TEXT NOT NULL DEFAULT '',
                dataset_hash       TEXT NOT NULL DEFAULT '',
                test_metrics       TEXT NOT NULL DEFAULT '{}',
                validation_metrics TEXT NOT NULL DEFAULT '{}',
                gate               TEXT NOT NULL DEFAULT '{}',
                created_at         TIMESTAMPTZ NOT NULL,
                shadow             TEXT NOT NULL DEFAULT '{}'
            )""",
            # Ids follow the order of activations: every insert holds REGISTRY_LOCK.
            """CREATE TABLE activations (
                id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                version          TEXT NOT NULL,
                previous_version TEXT NOT NULL DEFAULT '',
                kind             TEXT NOT NULL,
                reason           TEXT NOT NULL DEFAULT '',
                activated_at     TIMESTAMPTZ NOT NULL
            )""",
            """CREATE TABLE serving (
                id             INTEGER PRIMARY KEY CHECK (id = 1),
                status         TEXT NOT NULL,
                model_version  TEXT NOT NULL,
                target_version TEXT NOT NULL,
                failure_reason TEXT NOT NULL,
                event_id       BIGINT NOT NULL
            )""",
            """CREATE TABLE served_with (
                version   TEXT PRIMARY KEY,
                engine    TEXT NOT NULL,
                precision TEXT NOT NULL,
                event_id  BIGINT NOT NULL
            )""",
        ),
    ),
)
# pg_advisory_xact_lock key ("registry"): held by every transaction that reads what is
# active and records an activation on it, so that replicas take turns.
REGISTRY_LOCK = 0x7265676973747279

SOURCES = ("bootstrap", "retraining", "manual")
ACTIVE_ALIAS = "active"


@dataclass(frozen=True)
class ModelVersion:
    version: str
    path: str
    source: str
    training_job_name: str
    dataset_hash: str
    test_metrics: dict[str, Any]
    validation_metrics: dict[str, Any]
    created_at: datetime
    is_active: bool = False
    status: str = "registered"
    gate: dict[str, Any] = field(default_factory=dict)
    engine: str = ""  # how it last served ("" if it has not, as far as the registry heard)
    precision: str = ""
    # The latest report of its shadow evaluation (data.shadow.ShadowReport's dict form).
    shadow: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return float(self.test_metrics.get("accuracy", 0.0))


@dataclass(frozen=True)
class Activation:
    version: str
    previous_version: str
    kind: str
    reason: str
    activated_at: datetime


@dataclass(frozen=True)
class NewModel:
    path: str
    source: str
    training_job_name: str = ""
    dataset_hash: str = ""
    test_metrics: dict[str, Any] = field(default_factory=dict)
    validation_metrics: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)


def version_name(number: int) -> str:
    return f"v{number}"


class ModelRegistry:
    """``database``: an opened database (core/db.py), or the path of a SQLite file.

    Replicas may share one database: what reads the active version and records an
    activation on it runs in one write transaction, which SQLite's BEGIN IMMEDIATE and
    PostgreSQL's REGISTRY_LOCK serialise across processes."""

    def __init__(self, database: Database | Path) -> None:
        self.database = SQLiteDatabase(database) if isinstance(database, Path) else database
        try:
            self.database.migrate("registry", MIGRATIONS)
        except BaseException:
            self.database.close()
            raise

    def close(self) -> None:
        self.database.close()

    def register(self, new: NewModel) -> ModelVersion:
        problems = {}
        if not new.path.strip():
            problems["path"] = "is required"
        if new.source not in SOURCES:
            problems["source"] = f"{quoted(new.source)} is not one of {', '.join(SOURCES)}"
        if problems:
            raise InvalidArgument(problems)

        def insert(tx: Transaction) -> ModelVersion:
            row = tx.fetch_one(
                "INSERT INTO versions (path, source, training_job_name, dataset_hash,"
                " test_metrics, validation_metrics, gate, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING number",
                (
                    new.path,
                    new.source,
                    new.training_job_name,
                    new.dataset_hash,
                    json.dumps(new.test_metrics),
                    json.dumps(new.validation_metrics),
                    json.dumps(new.gate),
                    _now(),
                ),
            )
            assert row is not None
            return _get(tx, version_name(int(row["number"])))

        # Not idempotent: a retry after a lost commit would register a second version.
        return self.database.run(insert, write=True)

    def versions(self) -> list[ModelVersion]:
        def read(tx: Transaction) -> list[ModelVersion]:
            active = _active(tx)
            rows = tx.fetch(_VERSIONS + " ORDER BY v.number DESC")
            return [_from_row(row, active) for row in rows]

        return self.database.run(read)

    def get(self, version: str) -> ModelVersion:
        return self.database.run(lambda tx: _get(tx, version))

    def active(self) -> ModelVersion | None:
        def read(tx: Transaction) -> ModelVersion | None:
            active = _active(tx)
            return _get(tx, active) if active else None

        return self.database.run(read)

    def activate(
        self, version: str, reason: str = "", kind: str = "activate"
    ) -> tuple[ModelVersion, str]:
        """Makes ``version`` active; returns it and the version active before."""

        def work(tx: Transaction) -> tuple[ModelVersion, str]:
            _serialise(tx)
            target = _get(tx, version)
            previous = _active(tx)
            _record(tx, target.version, previous, kind, reason)
            return _get(tx, target.version), previous

        return self.database.run(work, write=True)

    def record_shadow(self, version: str, report: dict[str, Any]) -> ModelVersion:
        """Keeps ``report`` as the version's latest shadow report, unless the one kept is
        more recent (replicas send theirs independently)."""

        def work(tx: Transaction) -> ModelVersion:
            _serialise(tx)
            target = _get(tx, version)
            if target.shadow and not supersedes(
                ShadowReport.from_dict(report), ShadowReport.from_dict(target.shadow)
            ):
                return target
            tx.execute(
                "UPDATE versions SET shadow = ? WHERE number = ?",
                (json.dumps(report), decimal(target.version[1:])),
            )
            return _get(tx, target.version)

        # Idempotent: the same report twice keeps it once.
        return self.database.run(work, write=True, idempotent=True)

    def rollback(self, reason: str = "") -> tuple[ModelVersion, str]:
        """Returns to the version that was active before the current one became active
        (undoing activations one at a time, like an undo stack)."""

        def work(tx: Transaction) -> tuple[ModelVersion, str]:
            _serialise(tx)
            current = _last_activation(tx)
            if current is None or not current["previous_version"]:
                raise FailedPrecondition("there is no earlier model version to roll back to")
            return _undo(tx, current, reason, "rollback"), str(current["version"])

        return self.database.run(work, write=True)

    def revert_failed(self, failed: str, answering: str, reason: str) -> ModelVersion | None:
        """``failed`` (the active version) could not be loaded while ``answering`` still
        serves: the activation of ``failed`` is undone (kind "reverted") when it was the last
        one and came from ``answering``; returns the version active now, or None when
        there was nothing to undo (another activation came first)."""

        def work(tx: Transaction) -> ModelVersion | None:
            _serialise(tx)
            last = _last_activation(tx)
            if last is None or last["version"] != failed or last["previous_version"] != answering:
                return None
            return _undo(tx, last, reason, "reverted")

        return self.database.run(work, write=True)

    def activations(self) -> list[Activation]:
        rows = self.database.run(lambda tx: tx.fetch("SELECT * FROM activations ORDER BY id DESC"))
        return [
            Activation(
                version=row["version"],
                previous_version=row["previous_version"],
                kind=row["kind"],
                reason=row["reason"],
                activated_at=stored_time(row["activated_at"]),
            )
            for row in rows
        ]

    def record_serving(self, state: ServingState, event_id: int) -> bool:
        """Keeps ``state`` unless a later event is kept already (events can arrive twice,
        from a catch-up and from the stream, and to every replica); says whether it was
        kept."""

        def work(tx: Transaction) -> bool:
            # ON CONFLICT ... WHERE compares with the row as committed (PostgreSQL locks
            # it first), so of two replicas keeping one event only one keeps it.
            kept = tx.execute(
                "INSERT INTO serving VALUES (1, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " status = excluded.status, model_version = excluded.model_version,"
                " target_version = excluded.target_version,"
                " failure_reason = excluded.failure_reason, event_id = excluded.event_id"
                " WHERE excluded.event_id > serving.event_id",
                (
                    state.status,
                    state.model_version,
                    state.target_version,
                    state.failure_reason,
                    event_id,
                ),
            )
            if state.status == EndpointState.IN_SERVICE and state.engine:
                tx.execute(
                    "INSERT INTO served_with VALUES (?, ?, ?, ?) ON CONFLICT (version) DO UPDATE"
                    " SET engine = excluded.engine, precision = excluded.precision,"
                    " event_id = excluded.event_id WHERE excluded.event_id > served_with.event_id",
                    (state.model_version, state.engine, state.precision, event_id),
                )
            return kept > 0

        # Not idempotent: a lost commit retried would answer "not kept" for a kept event.
        return self.database.run(work, write=True)

    def serving(self) -> tuple[ServingState, int] | None:
        """The kept serving state and the id of the event it came from."""
        row = self.database.run(lambda tx: tx.fetch_one("SELECT * FROM serving WHERE id = 1"))
        if row is None:
            return None
        state = ServingState(
            row["status"], row["model_version"], row["target_version"], row["failure_reason"]
        )
        return state, int(row["event_id"])


# A version with how it last served and whether it was ever active, in one statement.
_VERSIONS = (
    "SELECT v.*, s.engine AS served_engine, s.precision AS served_precision,"
    " EXISTS (SELECT 1 FROM activations a WHERE a.version = 'v' || v.number) AS activated"
    " FROM versions v LEFT JOIN served_with s ON s.version = 'v' || v.number"
)


def _serialise(tx: Transaction) -> None:
    """Makes the registry's read-modify-write transactions take turns across processes
    (on SQLite, the write transaction's BEGIN IMMEDIATE already does)."""
    if tx.engine == "postgresql":
        tx.fetch("SELECT pg_advisory_xact_lock(?)", (REGISTRY_LOCK,))


def _last_activation(tx: Transaction) -> Row | None:
    return tx.fetch_one("SELECT * FROM activations ORDER BY id DESC LIMIT 1")


def _active(tx: Transaction) -> str:
    row = tx.fetch_one("SELECT version FROM activations ORDER BY id DESC LIMIT 1")
    return str(row["version"]) if row else ""


def _undo(tx: Transaction, current: Row, reason: str, kind: str) -> ModelVersion:
    """Undoes the activation ``current`` (the last one): its previous version becomes
    active again, with the undo stack below it."""
    target = str(current["previous_version"])
    # The undo stack below the target: what was active before it became active.
    became_active = tx.fetch_one(
        "SELECT previous_version FROM activations WHERE version = ? AND id < ?"
        " ORDER BY id DESC LIMIT 1",
        (target, current["id"]),
    )
    below = str(became_active["previous_version"]) if became_active else ""
    _record(tx, target, below, kind, reason)
    return _get(tx, target)


def _record(tx: Transaction, version: str, previous: str, kind: str, reason: str) -> None:
    tx.execute(
        "INSERT INTO activations (version, previous_version, kind, reason, activated_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (version, previous, kind, reason, _now()),
    )


def _get(tx: Transaction, version: str) -> ModelVersion:
    active = _active(tx)
    if version == ACTIVE_ALIAS:
        if not active:
            raise NotFound("no model version is active yet")
        version = active
    number = decimal(version[1:]) if version.startswith("v") else None
    if number is None:
        raise InvalidArgument({"version": f"{quoted(version)} is not a version name like 'v3'"})
    row = tx.fetch_one(_VERSIONS + " WHERE v.number = ?", (number,))
    if row is None:
        raise NotFound(f"model version {quoted(version)} does not exist")
    return _from_row(row, active)


def _from_row(row: Row, active: str) -> ModelVersion:
    version = version_name(int(row["number"]))
    gate = json.loads(row["gate"])
    if version == active:
        status = "active"
    elif row["activated"]:
        status = "retired"
    elif gate.get("decision") == "rejected":
        status = "rejected"
    else:
        status = "registered"
    return ModelVersion(
        version=version,
        path=row["path"],
        source=row["source"],
        training_job_name=row["training_job_name"],
        dataset_hash=row["dataset_hash"],
        test_metrics=json.loads(row["test_metrics"]),
        validation_metrics=json.loads(row["validation_metrics"]),
        created_at=stored_time(row["created_at"]),
        is_active=version == active,
        status=status,
        gate=gate,
        engine=row["served_engine"] or "",
        precision=row["served_precision"] or "",
        shadow=json.loads(row["shadow"]),
    )


def _now() -> str:
    return datetime.now(UTC).isoformat()
