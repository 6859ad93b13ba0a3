"""Incremental evaluation (domain logic; no grpc here).

Evaluate used to export the whole feedback table and rescore every text on every call
(27,000 records took 8 minutes). Now:

* a local mirror holds the latest label per feedback text, brought up to date from the
  feedback service page by page after the last record id it has seen (records are
  append-only and their ids increase), so each call reads only what is new;
* each (model artifact, text) is scored once and kept, for feedback texts and test sets
  alike;
* a feedback record that cites a prediction of the evaluated version already carries that
  model's answer, logged when it served: it is reused instead of predicted again.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sentiloop.core import sqlite
from sentiloop.core.artifacts import unpack_artifact
from sentiloop.core.errors import FailedPrecondition
from sentiloop.core.objectstore import ObjectStore
from sentiloop.core.scripts import load_script
from sentiloop.core.vocabulary import LABELS, normalize_label
from sentiloop.data.scoring import (
    CROSSFIT_FILE,
    Comparison,
    CrossFitted,
    Labelled,
    compare,
    metrics,
    predict_labels,
    read_crossfit_csv,
)

MODEL_CACHE_SIZE = 3  # the active model, a candidate, and one more
PAGE_SIZE = 1000

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    text             TEXT PRIMARY KEY,
    label            INTEGER NOT NULL,
    model_version    TEXT NOT NULL,
    model_prediction INTEGER,
    id               INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scores (
    artifact TEXT NOT NULL,
    text     TEXT NOT NULL,
    label    INTEGER NOT NULL,
    PRIMARY KEY (artifact, text)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""


class Models:
    """A few loaded models by artifact location (the active one and a candidate)."""

    def __init__(self, store: ObjectStore, cache_dir: Path) -> None:
        self._store = store
        self._cache_dir = cache_dir
        self._loaded: dict[str, Any] = {}

    def folder(self, artifact: str) -> Path:
        return unpack_artifact(self._store, artifact, self._cache_dir)

    def get(self, artifact: str) -> Any:
        if artifact not in self._loaded:
            folder = self.folder(artifact)
            if len(self._loaded) >= MODEL_CACHE_SIZE:
                self._loaded.pop(next(iter(self._loaded)))
            self._loaded[artifact] = load_script("inference").model_fn(str(folder))
        return self._loaded[artifact]


@dataclass(frozen=True)
class FeedbackRecord:
    id: int
    text: str
    user_label: str
    model_version: str
    model_prediction: str


class FeedbackPages(Protocol):
    async def page(self, after_id: int, size: int) -> tuple[list[FeedbackRecord], bool, int]:
        """Records with ids above ``after_id``, oldest first; whether more follow; and
        how many records are stored in all."""
        ...


class EvaluationStore:
    """The feedback mirror and the kept scores, in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite.connect(path)
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def last_id(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM state WHERE name = 'last_id'").fetchone()
        return int(row["value"]) if row else 0

    def apply(self, records: Sequence[FeedbackRecord]) -> None:
        """Later records replace earlier labels of the same text (the latest label wins)."""
        if not records:
            return
        rows = []
        for r in records:
            label = normalize_label(r.user_label)
            if label is None:  # the feedback service validates labels; never expected
                continue
            prediction = normalize_label(r.model_prediction)
            rows.append(
                (
                    r.text,
                    LABELS.index(label),
                    r.model_version,
                    None if prediction is None else LABELS.index(prediction),
                    r.id,
                )
            )
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO feedback (text, label, model_version, model_prediction, id)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (text) DO UPDATE SET"
                " label = excluded.label, model_version = excluded.model_version,"
                " model_prediction = excluded.model_prediction, id = excluded.id"
                " WHERE excluded.id > feedback.id",
                rows,
            )
            self._db.execute(
                "INSERT INTO state (name, value) VALUES ('last_id', ?) ON CONFLICT (name)"
                " DO UPDATE SET value = max(value, excluded.value)",
                (max(r.id for r in records),),
            )

    def feedback_for(self, artifact: str, version: str) -> tuple[Labelled, dict[str, int]]:
        """Every feedback text with its label, and the predictions already known for this
        model: kept scores, and serve-time predictions of this version."""
        with self._lock:
            rows = self._db.execute(
                "SELECT f.text, f.label, f.model_version, f.model_prediction, s.label AS scored"
                " FROM feedback f LEFT JOIN scores s ON s.artifact = ? AND s.text = f.text"
                " ORDER BY f.id",
                (artifact,),
            ).fetchall()
        known: dict[str, int] = {}
        for row in rows:
            if row["scored"] is not None:
                known[row["text"]] = int(row["scored"])
            elif row["model_version"] == version and row["model_prediction"] is not None:
                known[row["text"]] = int(row["model_prediction"])
        data = Labelled(texts=[r["text"] for r in rows], labels=[int(r["label"]) for r in rows])
        return data, known

    def scores(self, artifact: str, texts: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        with self._lock:
            for start in range(0, len(texts), 500):
                chunk = list(texts[start : start + 500])
                marks = ",".join("?" * len(chunk))
                for row in self._db.execute(
                    f"SELECT text, label FROM scores WHERE artifact = ? AND text IN ({marks})",
                    (artifact, *chunk),
                ):
                    found[row["text"]] = int(row["label"])
        return found

    def keep(self, artifact: str, predicted: dict[str, int]) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO scores (artifact, text, label) VALUES (?, ?, ?)",
                [(artifact, text, label) for text, label in predicted.items()],
            )


@dataclass(frozen=True)
class Scored:
    metrics: dict[str, Any]
    predicted_now: int  # texts the model had to predict in this call (the rest were known)


class Evaluator:
    def __init__(self, store: EvaluationStore, models: Models, feedback: FeedbackPages) -> None:
        self._store = store
        self._models = models
        self._feedback = feedback
        self._sync_lock = asyncio.Lock()

    async def sync_feedback(self) -> int:
        """Brings the mirror up to date; returns how many feedback records exist."""
        async with self._sync_lock:
            total = 0
            more = True
            while more:
                after = await asyncio.to_thread(self._store.last_id)
                records, more, total = await self._feedback.page(after, PAGE_SIZE)
                await asyncio.to_thread(self._store.apply, records)
                more = more and bool(records)
            return total

    def _fill(
        self, artifact: str, texts: Sequence[str], known: dict[str, int]
    ) -> tuple[list[int], int]:
        """Runs on the model thread: predicts what is not known yet and keeps it; returns
        the predictions in ``texts`` order and how many were made now."""
        missing = [text for text in dict.fromkeys(texts) if text not in known]
        if missing:
            predicted = dict(
                zip(missing, predict_labels(self._models.get(artifact), missing), strict=True)
            )
            self._store.keep(artifact, predicted)
            known = {**known, **predicted}
        return [known[text] for text in texts], len(missing)

    def _complete(self, artifact: str, data: Labelled, known: dict[str, int]) -> Scored:
        predictions, made = self._fill(artifact, data.texts, known)
        return Scored(metrics(data.labels, predictions), made)

    def predictions(self, artifact: str, texts: Sequence[str]) -> list[int]:
        return self._fill(artifact, texts, self._store.scores(artifact, texts))[0]

    def crossfitted(self, artifact: str) -> CrossFitted:
        path = self._models.folder(artifact) / CROSSFIT_FILE
        if not path.is_file():
            raise FailedPrecondition(
                f"the candidate has no out-of-fold predictions ({CROSSFIT_FILE}): train it"
                " with cross_fit_folds >= 2 on at least that many feedback rows"
            )
        return read_crossfit_csv(path.read_bytes())

    def compare_models(
        self,
        candidate: str,
        baseline: str,
        test: Labelled,
        feedback: Labelled | CrossFitted | None,
        seed: int,
    ) -> tuple[Comparison, Comparison | None]:
        """The candidate against the baseline (artifacts) on the test set and, when given,
        on feedback: a labelled set both models predict, or the candidate's out-of-fold
        predictions (cross-fitted), which only the baseline has to predict. Runs on the
        model thread, the paired bootstrap included."""
        on_test = compare(
            "test",
            test.labels,
            self.predictions(candidate, test.texts),
            self.predictions(baseline, test.texts),
            seed,
        )
        if isinstance(feedback, CrossFitted):
            on_feedback = compare(
                "feedback", feedback.feedback.labels, feedback.predictions,
                self.predictions(baseline, feedback.feedback.texts), seed, folds=feedback.folds,
            )  # fmt: skip
        elif feedback is not None:
            on_feedback = compare(
                "feedback", feedback.labels, self.predictions(candidate, feedback.texts),
                self.predictions(baseline, feedback.texts), seed,
            )  # fmt: skip
        else:
            on_feedback = None
        return on_test, on_feedback

    def score_feedback(self, artifact: str, version: str) -> Scored:
        data, known = self._store.feedback_for(artifact, version)
        return self._complete(artifact, data, known)

    def score(self, artifact: str, data: Labelled) -> Scored:
        return self._complete(artifact, data, self._store.scores(artifact, data.texts))
