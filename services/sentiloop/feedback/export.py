"""Feedback exported to the object store as immutable, partitioned JSON-lines objects.

The feedback store's database stays the source of truth (SubmitFeedback acknowledges once a
record is there, whether or not the object store is up). A background task copies what
has not been exported yet, in id order, into objects::

    feedback/exports/date=YYYY-MM-DD/feedback-<first id, 12 digits>-<last id, 12 digits>.jsonl

one record per line, with the fields (and JSON form) of ``FeedbackStore.export``. An
object holds the records of one UTC day (``created_at``), at most ``batch_size`` of
them; a day with more feedback gets several objects. Readers can list one day's prefix
and concatenate: across all objects every record appears exactly once.

Exactly once
------------
The progress is kept in the feedback database (table ``feedback_export_state``, one row
per export location, so pointing the service at another bucket exports everything there
too): ``exported_through`` (every id up to it is exported) and the *pending* range
(``first``, ``last``, ``key``) being written. One export step:

1. reads the state; if a range is pending it is redone as recorded, otherwise the next
   range is chosen from the records above ``exported_through`` and recorded as pending
   (a compare-and-set on the state row) **before** anything is written;
2. writes the range's records under the range's key with put-if-absent; if the key
   already exists its content must be the same bytes (an earlier attempt of this same
   step), else the step stops with an error and nothing advances;
3. advances ``exported_through`` to ``last`` and clears the pending range, in one
   transaction.

A crash before (1) commits leaves nothing written; a crash anywhere after it leaves the
range recorded, so the restart writes the very same range (records never change, the
serialisation is deterministic: same key, same bytes) and put-if-absent makes a second
write a no-op; records that arrived in between go to the next range, never into a
bigger object that would overlap the first. Ranges are contiguous and disjoint because
each starts right after the previous one's ``last``, and the store lists settled ids
only (``FeedbackStore.list``: on PostgreSQL, with several replicas submitting at once,
no id below the highest one listed is still being inserted), so no record can later
appear inside an exported range. Several replicas may run exporters on one database:
the compare-and-set lets one claim a range, and the others finish that same range
(same key, same bytes) or wait for the next. Hence each record is in
exactly one object, and an object, once written, never changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from sentiloop.core.config import Settings
from sentiloop.core.db import Migration, Transaction
from sentiloop.core.errors import SentiloopError, Unavailable
from sentiloop.core.objectstore import ObjectStore
from sentiloop.data.feedback_records import to_jsonl
from sentiloop.feedback.store import Feedback, FeedbackStore

log = logging.getLogger("sentiloop.feedback.export")

EXPORT_PREFIX = "feedback/exports"
MAX_BACKOFF_SECONDS = 60.0

_STATE = """CREATE TABLE {exists}feedback_export_state (
    location         TEXT PRIMARY KEY,
    exported_through BIGINT NOT NULL DEFAULT 0,
    pending_first    BIGINT,
    pending_last     BIGINT,
    pending_key      TEXT,
    updated_at       TEXT NOT NULL
)"""
_EXPORTS = """CREATE TABLE {exists}feedback_exports (
    location     TEXT NOT NULL,
    key          TEXT NOT NULL,
    first_id     BIGINT NOT NULL,
    last_id      BIGINT NOT NULL,
    record_count INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    exported_at  TEXT NOT NULL,
    PRIMARY KEY (location, key)
)"""
# Same tables on both engines (BIGINT is an INTEGER to SQLite); IF NOT EXISTS on SQLite,
# where a database made before the migration runner may have them already.
MIGRATIONS = (
    Migration(
        1,
        "export progress per location, and the objects written",
        sqlite=(_STATE.format(exists="IF NOT EXISTS "), _EXPORTS.format(exists="IF NOT EXISTS ")),
        postgresql=(_STATE.format(exists=""), _EXPORTS.format(exists="")),
    ),
)


class ExportConflict(SentiloopError):
    """An export object already exists with other content: another deployment writes
    to the same location, or the database was restored from an older copy."""


@dataclass(frozen=True)
class ExportConfig:
    enabled: bool
    interval_seconds: float
    batch_size: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ExportConfig:
        mode = settings.feedback_export
        return cls(
            enabled=mode == "on" or (mode == "auto" and settings.object_store != "local"),
            interval_seconds=settings.feedback_export_seconds,
            batch_size=settings.feedback_export_batch,
        )


def day_of(record: Feedback) -> str:
    created = record.created_at
    if created.tzinfo is not None:
        created = created.astimezone(UTC)
    return created.date().isoformat()


def export_key(first: Feedback, last_id: int) -> str:
    return f"{EXPORT_PREFIX}/date={day_of(first)}/feedback-{first.id:012d}-{last_id:012d}.jsonl"


@dataclass(frozen=True)
class ExportedObject:
    key: str
    first_id: int
    last_id: int
    record_count: int


@dataclass(frozen=True)
class ExportState:
    exported_through: int
    pending: tuple[int, int, str] | None


class FeedbackExporter:
    """Exports pending feedback in batches; ``start()``/``stop()`` run it in the
    background every ``interval_seconds``, backing off while the store is unavailable."""

    def __init__(
        self,
        store: FeedbackStore,
        objects: ObjectStore,
        config: ExportConfig,
    ) -> None:
        self._store = store
        self._objects = objects
        self._config = config
        # Where exports go ("s3://bucket/prefix/feedback/exports/" or a folder): the
        # progress is kept per location.
        self.location = objects.uri(f"{EXPORT_PREFIX}/_")[:-1]
        # Kept in the store's database, beside the records it describes.
        self._db = store.database
        self._db.migrate("feedback_export", MIGRATIONS)
        self._db.run(
            lambda tx: tx.execute(
                "INSERT INTO feedback_export_state (location, updated_at) VALUES (?, ?)"
                " ON CONFLICT (location) DO NOTHING",
                (self.location, _now()),
            ),
            write=True,
            idempotent=True,
        )
        self._stopping = threading.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.consecutive_failures = 0

    # -- state ----------------------------------------------------------------

    def state(self) -> ExportState:
        row = self._db.run(
            lambda tx: tx.fetch_one(
                "SELECT * FROM feedback_export_state WHERE location = ?", (self.location,)
            )
        )
        assert row is not None
        pending = None
        if row["pending_key"] is not None:
            pending = (int(row["pending_first"]), int(row["pending_last"]), row["pending_key"])
        return ExportState(exported_through=int(row["exported_through"]), pending=pending)

    def _claim(self, through: int, first: int, last: int, key: str) -> bool:
        """Records the range as pending unless the state moved on (compare-and-set)."""
        changed = self._db.run(
            lambda tx: tx.execute(
                "UPDATE feedback_export_state SET pending_first = ?, pending_last = ?,"
                " pending_key = ?, updated_at = ? WHERE location = ? AND exported_through = ?"
                " AND pending_key IS NULL",
                (first, last, key, _now(), self.location, through),
            ),
            write=True,
        )
        return changed == 1

    def _advance(self, first: int, last: int, key: str, count: int, digest: str) -> None:
        def advance(tx: Transaction) -> None:
            tx.execute(
                "UPDATE feedback_export_state SET exported_through = ?, pending_first = NULL,"
                " pending_last = NULL, pending_key = NULL, updated_at = ?"
                " WHERE location = ? AND pending_key = ?",
                (last, _now(), self.location, key),
            )
            tx.execute(
                "INSERT INTO feedback_exports (location, key, first_id, last_id,"
                " record_count, sha256, exported_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (location, key) DO UPDATE SET first_id = excluded.first_id,"
                " last_id = excluded.last_id, record_count = excluded.record_count,"
                " sha256 = excluded.sha256, exported_at = excluded.exported_at",
                (self.location, key, first, last, count, digest, _now()),
            )

        # Idempotent: a second run finds pending_key cleared and rewrites the same row.
        self._db.run(advance, write=True, idempotent=True)

    # -- one step -------------------------------------------------------------

    def _records(self, first: int, last: int) -> list[Feedback]:
        records = self._store.list(after_id=first - 1, limit=last - first + 1)
        return [r for r in records if r.id <= last]

    def export_once(self) -> ExportedObject | None:
        """Exports the next range (or finishes the pending one); None when nothing is
        pending. Raises Unavailable when the object store is, ExportConflict when the
        range's object exists with other content."""
        state = self.state()
        if state.pending is not None:
            first, last, key = state.pending
            records = self._records(first, last)
            if not records or records[0].id != first or records[-1].id != last:
                raise ExportConflict(
                    f"feedback export: the pending range {first}..{last} no longer matches"
                    " the feedback database"
                )
        else:
            candidates = self._store.list(
                after_id=state.exported_through, limit=self._config.batch_size
            )
            if not candidates:
                return None
            # Ids follow creation order: stop at the first record of another day, so
            # that an object holds one day.
            day = day_of(candidates[0])
            end = next((i for i, r in enumerate(candidates) if day_of(r) != day), None)
            records = candidates[:end]
            first, last = records[0].id, records[-1].id
            key = export_key(records[0], last)
            if not self._claim(state.exported_through, first, last, key):
                return self.export_once()  # the state moved under us: read it again
        content = to_jsonl(records)
        if not self._objects.put_bytes_if_absent(key, content):
            existing = self._objects.get_bytes(key)
            if existing != content:
                raise ExportConflict(
                    f"feedback export: {self._objects.uri(key)} already exists with other"
                    " content (another deployment exporting to the same location?);"
                    " not overwriting it"
                )
        self._advance(first, last, key, len(records), hashlib.sha256(content).hexdigest())
        log.info(
            "exported feedback %d..%d to %s",
            first,
            last,
            key,
            extra={
                "fields": {"key": key, "first_id": first, "last_id": last, "records": len(records)}
            },
        )
        return ExportedObject(key=key, first_id=first, last_id=last, record_count=len(records))

    def export_pending(self) -> list[ExportedObject]:
        """Exports every pending record, batch by batch (stops early when stopping)."""
        exported: list[ExportedObject] = []
        while not self._stopping.is_set():
            done = self.export_once()
            if done is None:
                break
            exported.append(done)
        return exported

    # -- background task --------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="feedback-export")

    async def _run(self) -> None:
        interval = self._config.interval_seconds
        max_backoff = max(interval, min(MAX_BACKOFF_SECONDS, 12 * interval))
        while not self._stopping.is_set():
            self._wake.clear()
            delay = interval
            try:
                await asyncio.to_thread(self.export_pending)
                if self.consecutive_failures:
                    log.info("feedback export works again")
                self.consecutive_failures = 0
            except Exception as error:
                self.consecutive_failures += 1
                delay = min(max_backoff, interval * 2**self.consecutive_failures)
                if isinstance(error, Unavailable):
                    log.warning(
                        "feedback export failed (%d in a row); next try in %.1fs: %s",
                        self.consecutive_failures,
                        delay,
                        error,
                    )
                elif isinstance(error, ExportConflict):
                    log.error("%s; next try in %.1fs", error, delay)
                else:
                    log.exception("feedback export failed; next try in %.1fs", delay)
            if self._stopping.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stops after the batch in progress (at most ``timeout`` seconds)."""
        self._stopping.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                task.cancel()
                log.warning("feedback export did not stop within %.0fs", timeout)

    def close(self) -> None:
        """Nothing of its own to release: the database is the store's (closing it)."""


def _now() -> str:
    return datetime.now(UTC).isoformat()
