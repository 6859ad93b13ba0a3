"""Shadow evaluation (domain logic; no grpc here): a candidate version scores the requests
the served model answered, off the answer path, and both answers are kept.

- The answer path only offers: after a request is answered, its texts and prediction ids
  go into a bounded queue (a lock held for a list append), and when the queue is full
  they are skipped and counted. Nothing on the answer path waits for the candidate.
- One thread of its own drains the queue in batches through the candidate and records
  its answers in ``shadow_predictions``, beside the served answers' ``predictions`` table
  in the same database (a SQLite file, or the service's PostgreSQL schema).
- The run itself (version, start, end) is a row of ``shadow_runs`` there, so every
  replica that shares the database shadows its own traffic of the same run, a
  restarted process resumes it, and the report covers every replica's requests.
- Labels come from FeedbackService, read incrementally (a cursor over its pages) into
  ``shadow_labels``; the report joins them with both models' answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sentiloop.core import metrics
from sentiloop.core.db import Database, Migration, SQLiteDatabase, Transaction, stored_time
from sentiloop.core.errors import FailedPrecondition, InvalidArgument
from sentiloop.core.vocabulary import EventType, normalize_label
from sentiloop.data.shadow import ShadowReport, ShadowState, score_labelled
from sentiloop.inference.engine import Prediction, migrate_prediction_log

log = logging.getLogger("sentiloop.inference.shadow")

MAX_DURATION_SECONDS = 30 * 24 * 3600
# How often each process looks at the run in the shared file: a run started on another
# replica, or one that ran out of time, is picked up within this.
FOLLOW_SECONDS = 1.0
FEEDBACK_PAGE_SIZE = 1000
# GetShadowReport is public: however often it is asked, new feedback is read at most this
# often (each read fetches FeedbackService's last page again).
LABELS_MIN_INTERVAL_SECONDS = 1.0

# pg_advisory_xact_lock key: a run begins under it, so two replicas asked at once never
# both find no run open ("shadow").
BEGIN_LOCK = 0x736861646F77

# A SQLite file made before the migration runner has these tables already: its steps
# are no-ops on them.
SHADOW_MIGRATIONS = (
    Migration(
        1,
        "shadow runs, the candidate's answers, the labels copied from feedback and the"
        " copy's cursor",
        sqlite=(
            """CREATE TABLE IF NOT EXISTS shadow_runs (
                id          INTEGER PRIMARY KEY AUTOINCREMENT,
                version     TEXT NOT NULL,
                artifact    TEXT NOT NULL,
                started_at  TEXT NOT NULL,
                ends_at     TEXT NOT NULL,
                ended_at    TEXT,
                end_reason  TEXT NOT NULL DEFAULT '',
                skipped     INTEGER NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE IF NOT EXISTS shadow_predictions (
                prediction_id  TEXT NOT NULL,
                shadow_version TEXT NOT NULL,
                label          TEXT NOT NULL,
                confidence     REAL NOT NULL,
                scores         TEXT NOT NULL,
                created_at     TEXT NOT NULL,
                run_id         INTEGER NOT NULL,
                PRIMARY KEY (prediction_id, shadow_version)
            )""",
            "CREATE INDEX IF NOT EXISTS shadow_predictions_by_run ON shadow_predictions (run_id)",
            # The latest user label of each prediction feedback cites (FeedbackService's,
            # copied).
            """CREATE TABLE IF NOT EXISTS shadow_labels (
                prediction_id TEXT PRIMARY KEY,
                user_label    TEXT NOT NULL,
                feedback_id   INTEGER NOT NULL
            )""",
            # Where the copy of the feedback stands: the page token that fetched the last
            # page read, and the newest record id seen on it.
            """CREATE TABLE IF NOT EXISTS shadow_feedback_cursor (
                id         INTEGER PRIMARY KEY CHECK (id = 1),
                page_token TEXT NOT NULL,
                last_id    INTEGER NOT NULL
            )""",
        ),
        postgresql=(
            """CREATE TABLE shadow_runs (
                id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                version     TEXT NOT NULL,
                artifact    TEXT NOT NULL,
                started_at  TIMESTAMPTZ NOT NULL,
                ends_at     TIMESTAMPTZ NOT NULL,
                ended_at    TIMESTAMPTZ,
                end_reason  TEXT NOT NULL DEFAULT '',
                skipped     BIGINT NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE shadow_predictions (
                prediction_id  TEXT NOT NULL,
                shadow_version TEXT NOT NULL,
                label          TEXT NOT NULL,
                confidence     DOUBLE PRECISION NOT NULL,
                scores         TEXT NOT NULL,
                created_at     TIMESTAMPTZ NOT NULL,
                run_id         BIGINT NOT NULL,
                PRIMARY KEY (prediction_id, shadow_version)
            )""",
            "CREATE INDEX shadow_predictions_by_run ON shadow_predictions (run_id)",
            """CREATE TABLE shadow_labels (
                prediction_id TEXT PRIMARY KEY,
                user_label    TEXT NOT NULL,
                feedback_id   BIGINT NOT NULL
            )""",
            """CREATE TABLE shadow_feedback_cursor (
                id         INTEGER PRIMARY KEY CHECK (id = 1),
                page_token TEXT NOT NULL,
                last_id    BIGINT NOT NULL
            )""",
        ),
    ),
)


@dataclass(frozen=True)
class ShadowRun:
    id: int
    version: str
    artifact: str
    started_at: datetime
    ends_at: datetime
    ended_at: datetime | None
    end_reason: str
    skipped: int

    def is_open(self) -> bool:
        """Not ended yet in the file (it may be past its end, until a process ends it)."""
        return self.ended_at is None


@dataclass(frozen=True)
class ShadowAnswer:
    prediction_id: str
    label: str
    confidence: float
    scores: dict[str, float]


@dataclass(frozen=True)
class Tally:
    shadowed: int
    agreed: int
    served_versions: tuple[str, ...]
    labelled: list[tuple[str, str, str]]  # (shadow label, served label, user label)


@dataclass(frozen=True)
class FeedbackLabel:
    id: int
    prediction_id: str
    user_label: str


Row = dict[str, Any]


def _time(value: str | datetime | None) -> datetime | None:
    return stored_time(value) if value else None


def _required_time(value: str | datetime) -> datetime:
    time = _time(value)
    assert time is not None
    return time


class ShadowStore:
    """The shadow tables, beside the prediction log (its table is made here too, when
    missing: the report joins it). ``database``: an opened database (core/db.py; the
    prediction log's may be shared), or the path of a SQLite file (opened as the
    prediction log's)."""

    def __init__(self, database: Database | Path) -> None:
        self.database = (
            SQLiteDatabase(database, durable=False) if isinstance(database, Path) else database
        )
        try:
            migrate_prediction_log(self.database)
            self.database.migrate("shadow", SHADOW_MIGRATIONS)
        except BaseException:
            self.database.close()
            raise

    def close(self) -> None:
        self.database.close()

    def begin(self, version: str, artifact: str, started_at: datetime, ends_at: datetime) -> int:
        """A new run, unless one is open and not past its end."""

        def insert(tx: Transaction) -> int:
            if tx.engine == "postgresql":
                # SQLite's write lock (BEGIN IMMEDIATE) serialises begins; this, PostgreSQL's.
                tx.fetch("SELECT pg_advisory_xact_lock(?)", (BEGIN_LOCK,))
            row = tx.fetch_one(
                "SELECT version, ends_at FROM shadow_runs WHERE ended_at IS NULL"
                " ORDER BY id DESC LIMIT 1"
            )
            if row is not None and _required_time(row["ends_at"]) > started_at:
                raise FailedPrecondition(
                    f"{row['version']} is shadowing until"
                    f" {_required_time(row['ends_at']).isoformat()}: stop it first"
                    " (POST /predict/shadow/stop)"
                )
            inserted = tx.fetch_one(
                "INSERT INTO shadow_runs (version, artifact, started_at, ends_at)"
                " VALUES (?, ?, ?, ?) RETURNING id",
                (version, artifact, started_at.isoformat(), ends_at.isoformat()),
            )
            assert inserted is not None
            return int(inserted["id"])

        return self.database.run(insert, write=True)

    def latest(self) -> ShadowRun | None:
        row = self.database.run(
            lambda tx: tx.fetch_one("SELECT * FROM shadow_runs ORDER BY id DESC LIMIT 1")
        )
        if row is None:
            return None
        return ShadowRun(
            id=int(row["id"]),
            version=row["version"],
            artifact=row["artifact"],
            started_at=_required_time(row["started_at"]),
            ends_at=_required_time(row["ends_at"]),
            ended_at=_time(row["ended_at"]),
            end_reason=row["end_reason"],
            skipped=int(row["skipped"]),
        )

    def end(self, run_id: int, reason: str, at: datetime) -> bool:
        """Ends the run; False when it had ended already (another process, or twice)."""
        changed = self.database.run(
            lambda tx: tx.execute(
                "UPDATE shadow_runs SET ended_at = ?, end_reason = ?"
                " WHERE id = ? AND ended_at IS NULL",
                (at.isoformat(), reason, run_id),
            ),
            write=True,
        )
        return changed > 0

    def add_skipped(self, run_id: int, texts: int) -> None:
        self.database.run(
            lambda tx: tx.execute(
                "UPDATE shadow_runs SET skipped = skipped + ? WHERE id = ?", (texts, run_id)
            ),
            write=True,
        )

    def record(self, run_id: int, version: str, answers: Sequence[ShadowAnswer]) -> None:
        now = datetime.now(UTC).isoformat()
        # In key order: two replicas writing the same keys take their row locks in one
        # order on PostgreSQL, never waiting on each other in a circle.
        rows = sorted(
            (a.prediction_id, version, a.label, a.confidence, json.dumps(a.scores), now, run_id)
            for a in answers
        )
        if not rows:
            return
        self.database.run(
            lambda tx: tx.execute_many(
                "INSERT INTO shadow_predictions (prediction_id, shadow_version, label,"
                " confidence, scores, created_at, run_id) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (prediction_id, shadow_version) DO UPDATE SET"
                " label = excluded.label, confidence = excluded.confidence,"
                " scores = excluded.scores, created_at = excluded.created_at,"
                " run_id = excluded.run_id",
                rows,
            ),
            write=True,
            idempotent=True,
        )

    def cursor(self) -> tuple[str, int]:
        row = self.database.run(
            lambda tx: tx.fetch_one(
                "SELECT page_token, last_id FROM shadow_feedback_cursor WHERE id = 1"
            )
        )
        return (row["page_token"], int(row["last_id"])) if row else ("", 0)

    def add_labels(self, labels: Sequence[FeedbackLabel], page_token: str, last_id: int) -> None:
        """Keeps each prediction's latest label, and moves the cursor, in one step. Two
        replicas copying the same pages at once write the same rows: each row keeps the
        highest feedback id's label and the cursor the highest id, whichever commits
        last."""
        rows = sorted((label.prediction_id, label.id, label.user_label) for label in labels)

        def store(tx: Transaction) -> None:
            if rows:
                tx.execute_many(
                    "INSERT INTO shadow_labels (prediction_id, feedback_id, user_label)"
                    " VALUES (?, ?, ?) ON CONFLICT (prediction_id)"
                    " DO UPDATE SET user_label = excluded.user_label,"
                    " feedback_id = excluded.feedback_id"
                    " WHERE excluded.feedback_id > shadow_labels.feedback_id",
                    rows,
                )
            tx.execute(
                "INSERT INTO shadow_feedback_cursor (id, page_token, last_id) VALUES (1, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET page_token = excluded.page_token,"
                " last_id = excluded.last_id"
                " WHERE excluded.last_id >= shadow_feedback_cursor.last_id",
                (page_token, last_id),
            )

        self.database.run(store, write=True, idempotent=True)

    def tally(self, run_id: int) -> Tally:
        def read(tx: Transaction) -> tuple[Row | None, list[Row], list[Row]]:
            counts = tx.fetch_one(
                "SELECT COUNT(*) AS shadowed,"
                " COALESCE(SUM(CASE WHEN s.label = p.label THEN 1 ELSE 0 END), 0) AS agreed"
                " FROM shadow_predictions s JOIN predictions p ON p.id = s.prediction_id"
                " WHERE s.run_id = ?",
                (run_id,),
            )
            versions = tx.fetch(
                "SELECT DISTINCT p.model_version FROM shadow_predictions s"
                " JOIN predictions p ON p.id = s.prediction_id WHERE s.run_id = ?"
                " ORDER BY p.model_version",
                (run_id,),
            )
            labelled = tx.fetch(
                "SELECT s.label AS shadow, p.label AS served, f.user_label AS user_label"
                " FROM shadow_predictions s JOIN predictions p ON p.id = s.prediction_id"
                " JOIN shadow_labels f ON f.prediction_id = s.prediction_id WHERE s.run_id = ?",
                (run_id,),
            )
            return counts, versions, labelled

        # One transaction: one snapshot on SQLite; on PostgreSQL (READ COMMITTED) each
        # statement reads its own, as the report's numbers were never one atomic view.
        counts, versions, labelled = self.database.run(read)
        assert counts is not None
        return Tally(
            # PostgreSQL's SUM of integers is a numeric (a Decimal here).
            shadowed=int(counts["shadowed"]),
            agreed=int(counts["agreed"]),
            served_versions=tuple(row["model_version"] for row in versions),
            labelled=[(row["shadow"], row["served"], row["user_label"]) for row in labelled],
        )


# The candidate's answers to texts, in order, as inference.py's predict_texts gives them
# ({"label", "confidence", "scores"}); blocking.
Score = Callable[[list[str]], Sequence[Mapping[str, Any]]]


@dataclass(frozen=True)
class _Active:
    run_id: int
    version: str
    score: Score


class ShadowRunner:
    """The bounded queue between the answer path and the candidate, and the single
    thread that drains it. ``record`` keeps a batch of the candidate's answers (called on
    that thread)."""

    def __init__(
        self,
        record: Callable[[int, str, Sequence[ShadowAnswer]], None],
        max_queue: int,
        max_batch: int = 32,
    ) -> None:
        self._record = record
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active: _Active | None = None
        # (prediction id, text, served label) of each text waiting for the candidate.
        self._pending: list[tuple[str, str, str]] = []
        self._draining = False
        self._skips: dict[int, int] = {}  # texts skipped per run, not yet in its row
        self._shadowed = 0
        self._agreed = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")

    @property
    def run_id(self) -> int | None:
        active = self._active
        return active.run_id if active else None

    def start(self, run_id: int, version: str, score: Score) -> None:
        with self._lock:
            self._active = _Active(run_id, version, score)
            self._pending = []
            self._shadowed = self._agreed = 0

    def stop(self) -> None:
        """Drops the candidate and what waits for it; a batch being scored still finishes
        and is recorded."""
        with self._lock:
            self._active = None
            self._pending = []

    def offer(self, predictions: Sequence[Prediction]) -> None:
        """Hands answered predictions to the candidate; never waits for it."""
        active = self._active
        if active is None or not predictions:
            return
        items = [(p.id, p.text, p.label) for p in predictions if p.model_version != active.version]
        with self._lock:
            if self._active is not active:
                return
            full = len(self._pending) + len(items) > self._max_queue
            if full:
                self._skips[active.run_id] = self._skips.get(active.run_id, 0) + len(items)
            else:
                self._pending.extend(items)
            start_draining = not full and not self._draining
            if start_draining:
                self._draining = True
        if full:
            metrics.count_shadow_skipped(active.version, len(items))
        elif start_draining:
            try:
                self._executor.submit(self._drain)
            except RuntimeError:  # closed meanwhile (the process is stopping)
                with self._lock:
                    self._draining = False
                    self._idle.notify_all()

    def take_skipped(self) -> dict[int, int]:
        """Texts skipped since the last call, per run (to be added to the runs' rows)."""
        with self._lock:
            skips, self._skips = self._skips, {}
            return skips

    def wait_idle(self, timeout: float) -> bool:
        """Until the queue is empty and nothing is being scored."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._draining, timeout)

    def _drain(self) -> None:
        while True:
            with self._lock:
                active = self._active
                if active is None or not self._pending:
                    self._draining = False
                    self._idle.notify_all()
                    return
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
            try:
                outputs = active.score([text for _, text, _ in batch])
                answers = [
                    ShadowAnswer(
                        prediction_id=prediction_id,
                        label=str(out["label"]),
                        confidence=float(out["confidence"]),
                        scores={k: float(v) for k, v in out["scores"].items()},
                    )
                    for (prediction_id, _, _), out in zip(batch, outputs, strict=True)
                ]
                self._record(active.run_id, active.version, answers)
            except Exception:
                log.exception("the shadow candidate %s failed on a batch", active.version)
                with self._lock:
                    self._skips[active.run_id] = self._skips.get(active.run_id, 0) + len(batch)
                continue
            agreed = sum(
                1 for (_, _, served), answer in zip(batch, answers, strict=True)
                if answer.label == served
            )  # fmt: skip
            with self._lock:
                if self._active is active:
                    self._shadowed += len(batch)
                    self._agreed += agreed
                    agreement = self._agreed / self._shadowed
                else:
                    agreement = agreed / len(batch)
            metrics.count_shadowed(active.version, len(batch), agreement)

    def close(self) -> None:
        self.stop()
        self._executor.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class Candidate:
    version: str
    path: str
    status: str  # the registry's: "registered", "rejected", "retired", "active"


class ShadowMesh(Protocol):
    """What shadow evaluation needs of the other services."""

    async def candidate(self, version: str) -> Candidate: ...
    async def feedback_page(
        self, page_token: str, page_size: int
    ) -> tuple[list[FeedbackLabel], str]:
        """A page of FeedbackService's records (oldest first) and the next page's token."""
        ...

    async def record_report(self, report: ShadowReport) -> None: ...
    async def notify(self, type: str, subject: str, message: str, **attributes: Any) -> object: ...


class ShadowController:
    """Starts, follows, ends and reports shadow runs for one inference process.
    ``load`` loads a version's artifact and gives its scoring function (slow: it runs on a
    loader thread); ``served_version`` is what this process answers with now."""

    def __init__(
        self,
        store: ShadowStore,
        runner: ShadowRunner,
        mesh: ShadowMesh,
        load: Callable[[str, str], Score],
        served_version: Callable[[], str],
        report_seconds: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._runner = runner
        self._mesh = mesh
        self._load = load
        self._served_version = served_version
        self._report_seconds = report_seconds
        self._clock = clock
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow-load")
        self._loading: asyncio.Task[None] | None = None
        self._loading_run: int | None = None
        self._sync_lock = asyncio.Lock()
        self._labels_read_at = -LABELS_MIN_INTERVAL_SECONDS
        self._follow_lock = asyncio.Lock()
        self._published: ShadowReport | None = None

    def offer(self, predictions: Sequence[Prediction]) -> None:
        self._runner.offer(predictions)

    async def start(self, version: str, duration_seconds: int) -> ShadowReport:
        if not version.strip():
            raise InvalidArgument({"version": "is required"})
        if not 0 < duration_seconds <= MAX_DURATION_SECONDS:
            raise InvalidArgument(
                {"duration_seconds": f"must be 1..{MAX_DURATION_SECONDS} (30 days)"}
            )
        candidate = await self._mesh.candidate(version)
        if candidate.status == "active" or candidate.version == self._served_version():
            raise FailedPrecondition(
                f"{candidate.version} is the active version: shadow a candidate instead"
            )
        now = self._clock()
        ends_at = now + timedelta(seconds=duration_seconds)
        await asyncio.to_thread(self._store.begin, candidate.version, candidate.path, now, ends_at)
        log.info(
            "shadowing with %s until %s",
            candidate.version,
            ends_at.isoformat(),
            extra={"fields": {"shadow_version": candidate.version}},
        )
        await self._mesh.notify(
            EventType.SHADOW_STARTED,
            candidate.version,
            f"{candidate.version} shadows live traffic for {duration_seconds} s",
            version=candidate.version,
            status=candidate.status,
            ends_at=ends_at.isoformat(),
        )
        await self.follow_once()
        return await self.report(refresh_labels=False)

    async def stop(self) -> ShadowReport:
        run = await asyncio.to_thread(self._store.latest)
        if run is None or not run.is_open() or self._clock() >= run.ends_at:
            raise FailedPrecondition("no shadow evaluation is running")
        await self._end(run, "stopped", self._clock())
        await self.follow_once()
        return await self.report()

    async def report(self, refresh_labels: bool = True) -> ShadowReport:
        run = await asyncio.to_thread(self._store.latest)
        if run is None:
            return ShadowReport()
        if refresh_labels:
            await self._sync_labels_logged()
        await self._flush_skipped()
        run = await asyncio.to_thread(self._store.latest) or run
        tally = await asyncio.to_thread(self._store.tally, run.id)
        scores = score_labelled(tally.labelled)
        now = self._clock()
        if run.ended_at is not None or now >= run.ends_at:
            state = ShadowState.ENDED
        elif self._runner.run_id == run.id:
            state = ShadowState.RUNNING
        else:
            state = ShadowState.LOADING
        return ShadowReport(
            state=state,
            shadow_version=run.version,
            served_versions=tally.served_versions,
            started_at=run.started_at,
            ends_at=run.ends_at,
            ended_at=run.ended_at or (run.ends_at if state == ShadowState.ENDED else None),
            end_reason=run.end_reason or ("duration elapsed" if state == ShadowState.ENDED else ""),
            shadowed=tally.shadowed,
            skipped=run.skipped,
            agreement=tally.agreed / tally.shadowed if tally.shadowed else 0.0,
            labelled=scores.labelled,
            shadow_accuracy=scores.shadow_accuracy,
            served_accuracy=scores.served_accuracy,
            shadow_macro_f1=scores.shadow_macro_f1,
            served_macro_f1=scores.served_macro_f1,
            computed_at=now,
        )

    async def run(self) -> None:
        """Follows the run in the shared file; refreshes and records the report."""
        loop = asyncio.get_running_loop()
        next_report = loop.time()
        while True:
            try:
                await self.follow_once()
                if loop.time() >= next_report:
                    next_report = loop.time() + self._report_seconds
                    await self.publish()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("following the shadow evaluation failed")
            await asyncio.sleep(FOLLOW_SECONDS)

    async def publish(self) -> None:
        """Records the latest run's report with its version in the registry when it
        changed (best effort: the next refresh tries again)."""
        run = await asyncio.to_thread(self._store.latest)
        if run is None:
            return
        report = await self.report()
        if report == self._published:
            return
        try:
            await self._mesh.record_report(report)
        except Exception as error:
            log.warning("could not record the shadow report of %s: %s", run.version, error)
            return
        self._published = report

    async def follow_once(self) -> None:
        async with self._follow_lock:
            run = await asyncio.to_thread(self._store.latest)
            if run is not None and run.is_open():
                if self._clock() >= run.ends_at:
                    await self._end(run, "duration elapsed", run.ends_at)
                    run = replace(run, ended_at=run.ends_at)
                elif self._served_version() == run.version:
                    await self._end(run, "became the served version", self._clock())
                    run = replace(run, ended_at=self._clock())
            if run is None or not run.is_open():
                await self._flush_skipped()
                if self._runner.run_id is not None:
                    self._runner.stop()
                    log.info("shadow evaluation over; the candidate is unloaded")
                self._cancel_loading()
                return
            await self._flush_skipped()
            if self._runner.run_id == run.id or self._loading_run == run.id:
                return
            self._runner.stop()  # an earlier run's candidate, if any
            self._cancel_loading()
            self._loading_run = run.id
            self._loading = asyncio.create_task(self._load_candidate(run))

    async def _load_candidate(self, run: ShadowRun) -> None:
        loop = asyncio.get_running_loop()
        try:
            score = await loop.run_in_executor(self._loader, self._load, run.version, run.artifact)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.exception("loading the shadow candidate %s failed", run.version)
            await self._end(run, f"could not load {run.version}: {error}", self._clock())
            return
        latest = await asyncio.to_thread(self._store.latest)
        if latest is None or latest.id != run.id or not latest.is_open():
            return  # stopped while it loaded
        self._runner.start(run.id, run.version, score)
        log.info(
            "%s shadows live traffic",
            run.version,
            extra={"fields": {"shadow_version": run.version}},
        )

    def _cancel_loading(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        self._loading = None
        self._loading_run = None

    async def _end(self, run: ShadowRun, reason: str, at: datetime) -> None:
        if not await asyncio.to_thread(self._store.end, run.id, reason, at):
            return  # another process ended it
        if self._runner.run_id == run.id:
            self._runner.stop()
        report = await self.report()
        log.info(
            "the shadow of %s ended: %s",
            run.version,
            reason,
            extra={"fields": {"shadow_version": run.version}},
        )
        await self._mesh.notify(
            EventType.SHADOW_ENDED,
            run.version,
            f"{run.version} stopped shadowing ({reason}): agreement"
            f" {report.agreement:.1%} over {report.shadowed} requests",
            version=run.version,
            reason=reason,
            shadowed=report.shadowed,
            skipped=report.skipped,
            agreement=report.agreement,
            labelled=report.labelled,
        )
        with contextlib.suppress(Exception):
            await self._mesh.record_report(report)

    async def _flush_skipped(self) -> None:
        for run_id, skipped in self._runner.take_skipped().items():
            await asyncio.to_thread(self._store.add_skipped, run_id, skipped)

    async def _sync_labels_logged(self) -> None:
        try:
            await self._sync_labels()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # The report still answers, with the labels copied so far.
            log.warning("could not read new feedback for the shadow report: %s", error)

    async def _sync_labels(self) -> None:
        """Copies the feedback that arrived since the last copy. A page token is only ever
        one FeedbackService gave: the last page is fetched again from the token that
        fetched it, and the records already seen on it (ids are increasing) skipped."""
        async with self._sync_lock:
            loop = asyncio.get_running_loop()
            if loop.time() - self._labels_read_at < LABELS_MIN_INTERVAL_SECONDS:
                return
            self._labels_read_at = loop.time()
            token, last_id = await asyncio.to_thread(self._store.cursor)
            while True:
                records, next_token = await self._mesh.feedback_page(token, FEEDBACK_PAGE_SIZE)
                fresh = []
                for record in records:
                    label = normalize_label(record.user_label)
                    if record.id > last_id and record.prediction_id and label is not None:
                        fresh.append(replace(record, user_label=str(label)))
                newest = max([last_id, *(record.id for record in records)])
                if next_token:
                    # Pages before the last one are never read again.
                    await asyncio.to_thread(self._store.add_labels, fresh, next_token, newest)
                    token, last_id = next_token, newest
                    continue
                await asyncio.to_thread(self._store.add_labels, fresh, token, newest)
                return

    async def close(self) -> None:
        """Stops the candidate; the store stays open (its database is the prediction
        log's, which answers still being logged need: whoever opened it closes it)."""
        self._cancel_loading()
        self._runner.close()  # waits for a batch being scored, which the store records
        self._loader.shutdown(wait=False, cancel_futures=True)
