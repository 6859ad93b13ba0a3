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

Kept scores hold the label and the probabilities, so the test set's metrics include the
expected calibration error and the Brier score. The feedback's metrics do not: served
answers are logged as labels only, and feedback is not a random sample of traffic (users
label what they choose to, often what the model got wrong), so its calibration would
measure that choice rather than the model.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sentiloop.core.artifacts import unpack_artifact
from sentiloop.core.db import (
    Database,
    Migration,
    SQLiteDatabase,
    Transaction,
    sqlite_columns_if_missing,
)
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
    predict,
    read_crossfit_csv,
)

MODEL_CACHE_SIZE = 3  # the active model, a candidate, and one more
PAGE_SIZE = 1000
# pg_advisory lock key of the feedback mirror's writers ("evalmirr").
MIRROR_LOCK = 0x6576616C6D697272


MIGRATIONS = (
    Migration(
        1,
        "the feedback mirror, the kept scores and the mirror's position",
        sqlite=(
            # IF NOT EXISTS: a file made before the migration runner is adopted as it is.
            """CREATE TABLE IF NOT EXISTS feedback (
                text             TEXT PRIMARY KEY,
                label            INTEGER NOT NULL,
                model_version    TEXT NOT NULL,
                model_prediction INTEGER,
                id               INTEGER NOT NULL
            ) WITHOUT ROWID""",
            """CREATE TABLE IF NOT EXISTS scores (
                artifact      TEXT NOT NULL,
                text          TEXT NOT NULL,
                label         INTEGER NOT NULL,
                probabilities TEXT,
                PRIMARY KEY (artifact, text)
            ) WITHOUT ROWID""",
            """CREATE TABLE IF NOT EXISTS state (
                name  TEXT PRIMARY KEY,
                value INTEGER NOT NULL
            ) WITHOUT ROWID""",
            # Scores kept before calibration was measured lack it.
            sqlite_columns_if_missing("scores", {"probabilities": "TEXT"}),
        ),
        postgresql=(
            # Texts are keyed by their md5: a B-tree entry must fit a third of a page and
            # texts may be longer (5,000 characters). Two texts sharing an md5 would have
            # to be crafted, and would cost evaluation's mirror one label, nothing more.
            """CREATE TABLE feedback (
                text             TEXT NOT NULL,
                label            INTEGER NOT NULL,
                model_version    TEXT NOT NULL,
                model_prediction INTEGER,
                id               BIGINT NOT NULL
            )""",
            "CREATE UNIQUE INDEX feedback_text ON feedback (md5(text))",
            """CREATE TABLE scores (
                artifact      TEXT NOT NULL,
                text          TEXT NOT NULL,
                label         INTEGER NOT NULL,
                probabilities TEXT
            )""",
            "CREATE UNIQUE INDEX scores_artifact_text ON scores (artifact, md5(text))",
            """CREATE TABLE state (
                name  TEXT PRIMARY KEY,
                value BIGINT NOT NULL
            )""",
        ),
    ),
)


def _key(tx: Transaction, text: str) -> str:
    """The expression a text is keyed by (see MIGRATIONS): the text itself on SQLite."""
    return text if tx.engine == "sqlite" else f"md5({text})"


@dataclass(frozen=True)
class Known:
    """One model's answer on one text: its label (an index into LABELS) and, when the
    evaluator predicted it, its probabilities in LABELS order (a served answer logged with
    the feedback, or a score kept before probabilities were, has none)."""

    label: int
    probabilities: list[float] | None = None


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
    """The feedback mirror and the kept scores, in one database (core/db.py); ``database``
    may be the path of a SQLite file. Replicas may share it: every write is an upsert
    whose outcome does not depend on the order replicas apply the same records in."""

    def __init__(self, database: Database | Path) -> None:
        self.database = SQLiteDatabase(database) if isinstance(database, Path) else database
        try:
            self.database.migrate("scores", MIGRATIONS)
        except BaseException:
            self.database.close()
            raise

    def close(self) -> None:
        self.database.close()

    def last_id(self) -> int:
        row = self.database.run(
            lambda tx: tx.fetch_one("SELECT value FROM state WHERE name = 'last_id'")
        )
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
        last_id = max(r.id for r in records)

        def store(tx: Transaction) -> None:
            if tx.engine == "postgresql":
                # Replicas bringing the mirror up to date at once would upsert the same
                # texts in other orders and deadlock; syncs are rare, so they take turns.
                tx.fetch("SELECT pg_advisory_xact_lock(?)", (MIRROR_LOCK,))
            tx.execute_many(
                "INSERT INTO feedback (text, label, model_version, model_prediction, id)"
                f" VALUES (?, ?, ?, ?, ?) ON CONFLICT ({_key(tx, 'text')}) DO UPDATE SET"
                " text = excluded.text, label = excluded.label,"
                " model_version = excluded.model_version,"
                " model_prediction = excluded.model_prediction, id = excluded.id"
                " WHERE excluded.id > feedback.id",
                rows,
            )
            tx.execute(
                "INSERT INTO state (name, value) VALUES ('last_id', ?) ON CONFLICT (name)"
                " DO UPDATE SET value = CASE WHEN excluded.value > state.value"
                " THEN excluded.value ELSE state.value END",
                (last_id,),
            )

        self.database.run(store, write=True, idempotent=True)

    def feedback_for(self, artifact: str, version: str) -> tuple[Labelled, dict[str, Known]]:
        """Every feedback text with its label, and the predictions already known for this
        model: kept scores, and serve-time predictions of this version."""

        def read(tx: Transaction) -> list[dict[str, Any]]:
            same_text = "s.text = f.text"
            if tx.engine == "postgresql":  # by the key first: the index's expression
                same_text = f"{_key(tx, 's.text')} = {_key(tx, 'f.text')} AND {same_text}"
            return tx.fetch(
                "SELECT f.text, f.label, f.model_version, f.model_prediction,"
                " s.label AS scored, s.probabilities"
                f" FROM feedback f LEFT JOIN scores s ON s.artifact = ? AND {same_text}"
                " ORDER BY f.id",
                (artifact,),
            )

        rows = self.database.run(read)
        known: dict[str, Known] = {}
        for row in rows:
            if row["scored"] is not None:
                known[row["text"]] = _known(row["scored"], row["probabilities"])
            elif row["model_version"] == version and row["model_prediction"] is not None:
                known[row["text"]] = Known(int(row["model_prediction"]))
        data = Labelled(texts=[r["text"] for r in rows], labels=[int(r["label"]) for r in rows])
        return data, known

    def scores(self, artifact: str, texts: Sequence[str]) -> dict[str, Known]:
        asked = set(texts)

        def read(tx: Transaction) -> dict[str, Known]:
            found: dict[str, Known] = {}
            for start in range(0, len(texts), 500):
                chunk = list(texts[start : start + 500])
                marks = ",".join(_key(tx, "?") for _ in chunk)
                for row in tx.fetch(
                    "SELECT text, label, probabilities FROM scores"
                    f" WHERE artifact = ? AND {_key(tx, 'text')} IN ({marks})",
                    (artifact, *chunk),
                ):
                    if row["text"] in asked:  # not another text of the same md5
                        found[row["text"]] = _known(row["label"], row["probabilities"])
            return found

        return self.database.run(read)

    def keep(self, artifact: str, predicted: dict[str, Known]) -> None:
        self.database.run(
            lambda tx: tx.execute_many(
                "INSERT INTO scores (artifact, text, label, probabilities) VALUES (?, ?, ?, ?)"
                f" ON CONFLICT (artifact, {_key(tx, 'text')}) DO UPDATE SET"
                " text = excluded.text, label = excluded.label,"
                " probabilities = excluded.probabilities",
                [
                    (
                        artifact,
                        text,
                        known.label,
                        None if known.probabilities is None else json.dumps(known.probabilities),
                    )
                    # In one order for every writer: two upserting the same texts in
                    # other orders could deadlock on PostgreSQL.
                    for text, known in sorted(predicted.items())
                ],
            ),
            write=True,
            idempotent=True,
        )


def _known(label: Any, probabilities: str | None) -> Known:
    return Known(int(label), None if probabilities is None else json.loads(probabilities))


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
        self,
        artifact: str,
        texts: Sequence[str],
        known: dict[str, Known],
        with_probabilities: bool,
    ) -> tuple[list[Known], int]:
        """Runs on the model thread: predicts what is not known yet (or known without the
        probabilities asked for) and keeps it; returns the predictions in ``texts`` order
        and how many were made now."""
        missing = [
            text
            for text in dict.fromkeys(texts)
            if text not in known or (with_probabilities and known[text].probabilities is None)
        ]
        if missing:
            labels, probabilities = predict(self._models.get(artifact), missing)
            predicted = {
                text: Known(label, p)
                for text, label, p in zip(missing, labels, probabilities, strict=True)
            }
            self._store.keep(artifact, predicted)
            known = {**known, **predicted}
        return [known[text] for text in texts], len(missing)

    def _complete(
        self, artifact: str, data: Labelled, known: dict[str, Known], with_probabilities: bool
    ) -> Scored:
        predictions, made = self._fill(artifact, data.texts, known, with_probabilities)
        probabilities = [p.probabilities or [] for p in predictions] if with_probabilities else None
        return Scored(metrics(data.labels, [p.label for p in predictions], probabilities), made)

    def predictions(
        self, artifact: str, texts: Sequence[str]
    ) -> tuple[list[int], list[list[float]]]:
        """The model's labels and probabilities on ``texts``, kept or predicted now."""
        known, _ = self._fill(artifact, texts, self._store.scores(artifact, texts), True)
        return [k.label for k in known], [k.probabilities or [] for k in known]

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
        candidate_test, candidate_probabilities = self.predictions(candidate, test.texts)
        baseline_test, baseline_probabilities = self.predictions(baseline, test.texts)
        on_test = compare(
            "test",
            test.labels,
            candidate_test,
            baseline_test,
            seed,
            candidate_probabilities=candidate_probabilities,
            baseline_probabilities=baseline_probabilities,
        )
        if isinstance(feedback, CrossFitted):
            on_feedback = compare(
                "feedback", feedback.feedback.labels, feedback.predictions,
                self.predictions(baseline, feedback.feedback.texts)[0], seed, folds=feedback.folds,
            )  # fmt: skip
        elif feedback is not None:
            on_feedback = compare(
                "feedback", feedback.labels, self.predictions(candidate, feedback.texts)[0],
                self.predictions(baseline, feedback.texts)[0], seed,
            )  # fmt: skip
        else:
            on_feedback = None
        return on_test, on_feedback

    def score_feedback(self, artifact: str, version: str) -> Scored:
        """Metrics on the feedback: labels only (see the module's docstring), so served
        answers are reused."""
        data, known = self._store.feedback_for(artifact, version)
        return self._complete(artifact, data, known, with_probabilities=False)

    def score(self, artifact: str, data: Labelled) -> Scored:
        """Metrics on a labelled set (the test set), ECE and Brier score included."""
        known = self._store.scores(artifact, data.texts)
        return self._complete(artifact, data, known, with_probabilities=True)
