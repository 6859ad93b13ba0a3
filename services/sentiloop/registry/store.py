"""Model versions, which one is active, and the history of activations (domain logic)."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sentiloop.core import sqlite
from sentiloop.core.errors import FailedPrecondition, InvalidArgument, NotFound
from sentiloop.core.serving import ServingState
from sentiloop.core.validation import decimal, quoted
from sentiloop.core.vocabulary import EndpointState
from sentiloop.data.shadow import ShadowReport, supersedes

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
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
);
CREATE TABLE IF NOT EXISTS activations (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    version          TEXT NOT NULL,
    previous_version TEXT NOT NULL DEFAULT '',
    kind             TEXT NOT NULL,
    reason           TEXT NOT NULL DEFAULT '',
    activated_at     TEXT NOT NULL
);
-- The latest serving.changed event: what InferenceService last said it serves.
CREATE TABLE IF NOT EXISTS serving (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    status         TEXT NOT NULL,
    model_version  TEXT NOT NULL,
    target_version TEXT NOT NULL,
    failure_reason TEXT NOT NULL,
    event_id       INTEGER NOT NULL
);
-- How each version last served (engine and precision), from serving.changed events.
CREATE TABLE IF NOT EXISTS served_with (
    version   TEXT PRIMARY KEY,
    engine    TEXT NOT NULL,
    precision TEXT NOT NULL,
    event_id  INTEGER NOT NULL
);
"""

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
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite.connect(path)
        self._db.executescript(SCHEMA)
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(versions)")}
        if "gate" not in columns:  # a registry created before gate decisions existed
            self._db.execute("ALTER TABLE versions ADD COLUMN gate TEXT NOT NULL DEFAULT '{}'")
        if "shadow" not in columns:  # ... or before shadow evaluation
            self._db.execute("ALTER TABLE versions ADD COLUMN shadow TEXT NOT NULL DEFAULT '{}'")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def register(self, new: NewModel) -> ModelVersion:
        problems = {}
        if not new.path.strip():
            problems["path"] = "is required"
        if new.source not in SOURCES:
            problems["source"] = f"{quoted(new.source)} is not one of {', '.join(SOURCES)}"
        if problems:
            raise InvalidArgument(problems)
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO versions (path, source, training_job_name, dataset_hash,"
                " test_metrics, validation_metrics, gate, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    new.path,
                    new.source,
                    new.training_job_name,
                    new.dataset_hash,
                    json.dumps(new.test_metrics),
                    json.dumps(new.validation_metrics),
                    json.dumps(new.gate),
                    datetime.now(UTC).isoformat(),
                ),
            )
            number = int(cursor.lastrowid or 0)
            return self._get_locked(version_name(number))

    def versions(self) -> list[ModelVersion]:
        with self._lock:
            active = self._active_locked()
            rows = self._db.execute("SELECT * FROM versions ORDER BY number DESC").fetchall()
            return [self._from_row(row, active) for row in rows]

    def get(self, version: str) -> ModelVersion:
        with self._lock:
            return self._get_locked(version)

    def active(self) -> ModelVersion | None:
        with self._lock:
            active = self._active_locked()
            return self._get_locked(active) if active else None

    def activate(
        self, version: str, reason: str = "", kind: str = "activate"
    ) -> tuple[ModelVersion, str]:
        """Makes ``version`` active; returns it and the version active before."""
        with self._lock:
            target = self._get_locked(version)
            previous = self._active_locked()
            self._record_locked(target.version, previous, kind, reason)
            return self._get_locked(target.version), previous

    def record_shadow(self, version: str, report: dict[str, Any]) -> ModelVersion:
        """Keeps ``report`` as the version's latest shadow report, unless the one kept is
        more recent (replicas send theirs independently)."""
        with self._lock:
            target = self._get_locked(version)
            if target.shadow and not supersedes(
                ShadowReport.from_dict(report), ShadowReport.from_dict(target.shadow)
            ):
                return target
            self._db.execute(
                "UPDATE versions SET shadow = ? WHERE number = ?",
                (json.dumps(report), decimal(target.version[1:])),
            )
            return self._get_locked(target.version)

    def rollback(self, reason: str = "") -> tuple[ModelVersion, str]:
        """Returns to the version that was active before the current one became active
        (undoing activations one at a time, like an undo stack)."""
        with self._lock:
            current = self._last_activation_locked()
            if current is None or not current["previous_version"]:
                raise FailedPrecondition("there is no earlier model version to roll back to")
            return self._undo_locked(current, reason, "rollback"), current["version"]

    def revert_failed(self, failed: str, answering: str, reason: str) -> ModelVersion | None:
        """``failed`` (the active version) could not be loaded while ``answering`` still
        serves: the activation of ``failed`` is undone (kind "reverted") when it was the last
        one and came from ``answering``; returns the version active now, or None when
        there was nothing to undo (another activation came first)."""
        with self._lock:
            last = self._last_activation_locked()
            if last is None or last["version"] != failed or last["previous_version"] != answering:
                return None
            return self._undo_locked(last, reason, "reverted")

    def _last_activation_locked(self) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._db.execute(
            "SELECT * FROM activations ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return row

    def _undo_locked(self, current: sqlite3.Row, reason: str, kind: str) -> ModelVersion:
        """Undoes the activation ``current`` (the last one): its previous version becomes
        active again, with the undo stack below it."""
        target = current["previous_version"]
        # The undo stack below the target: what was active before it became active.
        became_active = self._db.execute(
            "SELECT previous_version FROM activations WHERE version = ? AND id < ?"
            " ORDER BY id DESC LIMIT 1",
            (target, current["id"]),
        ).fetchone()
        below = became_active["previous_version"] if became_active else ""
        self._record_locked(target, below, kind, reason)
        return self._get_locked(target)

    def activations(self) -> list[Activation]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM activations ORDER BY id DESC").fetchall()
        return [
            Activation(
                version=row["version"],
                previous_version=row["previous_version"],
                kind=row["kind"],
                reason=row["reason"],
                activated_at=datetime.fromisoformat(row["activated_at"]),
            )
            for row in rows
        ]

    def record_serving(self, state: ServingState, event_id: int) -> bool:
        """Keeps ``state`` unless a later event is kept already (events can arrive twice,
        from a catch-up and from the stream); says whether it was kept."""
        with self._lock:
            cursor = self._db.execute(
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
                self._db.execute(
                    "INSERT INTO served_with VALUES (?, ?, ?, ?) ON CONFLICT (version) DO UPDATE"
                    " SET engine = excluded.engine, precision = excluded.precision,"
                    " event_id = excluded.event_id WHERE excluded.event_id > served_with.event_id",
                    (state.model_version, state.engine, state.precision, event_id),
                )
            return cursor.rowcount > 0

    def serving(self) -> tuple[ServingState, int] | None:
        """The kept serving state and the id of the event it came from."""
        with self._lock:
            row = self._db.execute("SELECT * FROM serving WHERE id = 1").fetchone()
        if row is None:
            return None
        state = ServingState(
            row["status"], row["model_version"], row["target_version"], row["failure_reason"]
        )
        return state, int(row["event_id"])

    def _record_locked(self, version: str, previous: str, kind: str, reason: str) -> None:
        self._db.execute(
            "INSERT INTO activations (version, previous_version, kind, reason, activated_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (version, previous, kind, reason, datetime.now(UTC).isoformat()),
        )

    def _active_locked(self) -> str:
        row = self._db.execute(
            "SELECT version FROM activations ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return str(row["version"]) if row else ""

    def _get_locked(self, version: str) -> ModelVersion:
        active = self._active_locked()
        if version == ACTIVE_ALIAS:
            if not active:
                raise NotFound("no model version is active yet")
            version = active
        number = decimal(version[1:]) if version.startswith("v") else None
        if number is None:
            raise InvalidArgument({"version": f"{quoted(version)} is not a version name like 'v3'"})
        row = self._db.execute("SELECT * FROM versions WHERE number = ?", (number,)).fetchone()
        if row is None:
            raise NotFound(f"model version {quoted(version)} does not exist")
        return self._from_row(row, active)

    def _from_row(self, row: sqlite3.Row, active: str) -> ModelVersion:
        version = version_name(row["number"])
        activated = self._db.execute(
            "SELECT 1 FROM activations WHERE version = ? LIMIT 1", (version,)
        ).fetchone()
        gate = json.loads(row["gate"])
        served = self._db.execute(
            "SELECT engine, precision FROM served_with WHERE version = ?", (version,)
        ).fetchone()
        if version == active:
            status = "active"
        elif activated:
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
            created_at=datetime.fromisoformat(row["created_at"]),
            is_active=version == active,
            status=status,
            gate=gate,
            engine=served["engine"] if served else "",
            precision=served["precision"] if served else "",
            shadow=json.loads(row["shadow"]),
        )
