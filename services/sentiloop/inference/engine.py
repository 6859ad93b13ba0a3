"""Serving the active model in-process through sagemaker_scripts/inference.py, with a
log of every prediction (domain logic; no grpc here)."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sentiloop.core.artifacts import unpack_artifact
from sentiloop.core.config import MAX_RECENT_PREDICTIONS, MAX_TEXTS_PER_CALL
from sentiloop.core.db import Database, Migration, SQLiteDatabase, Transaction, stored_time
from sentiloop.core.errors import Internal, InvalidArgument, NotFound, Unavailable
from sentiloop.core.objectstore import ObjectStore
from sentiloop.core.scripts import load_script
from sentiloop.core.serving import ServingState
from sentiloop.core.validation import check_text, quoted
from sentiloop.core.vocabulary import EndpointState

# A SQLite log made before the migration runner (with or without the index) runs these
# steps, written to be no-ops on what exists, once. The order of logging is SQLite's
# rowid (in the created_at index implicitly) and PostgreSQL's ``seq``: an identity, as
# the prediction id is a random one.
PREDICTIONS_MIGRATIONS = (
    Migration(
        1,
        "the prediction log, and its index for the recent predictions, newest first",
        sqlite=(
            """CREATE TABLE IF NOT EXISTS predictions (
                id            TEXT PRIMARY KEY,
                text          TEXT NOT NULL,
                model_version TEXT NOT NULL,
                label         TEXT NOT NULL,
                confidence    REAL NOT NULL,
                scores        TEXT NOT NULL,
                created_at    TEXT NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS predictions_created_at ON predictions (created_at)",
        ),
        postgresql=(
            """CREATE TABLE predictions (
                id            TEXT PRIMARY KEY,
                text          TEXT NOT NULL,
                model_version TEXT NOT NULL,
                label         TEXT NOT NULL,
                confidence    DOUBLE PRECISION NOT NULL,
                scores        TEXT NOT NULL,
                created_at    TIMESTAMPTZ NOT NULL,
                seq           BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
            )""",
            "CREATE INDEX predictions_created_at ON predictions (created_at, seq)",
        ),
    ),
)


@dataclass(frozen=True)
class LoadedVersion:
    version: str
    model: Any  # inference.py's LoadedModel
    loaded_at: datetime

    def serving_state(self) -> ServingState:
        return ServingState(
            EndpointState.IN_SERVICE,
            self.version,
            self.version,
            loaded_at=self.loaded_at,
            engine=self.model.engine,
            precision=self.model.precision,
        )


@dataclass(frozen=True)
class Prediction:
    id: str
    text: str
    label: str
    confidence: float
    scores: dict[str, float]
    model_version: str
    created_at: datetime | None = None


def check_texts(texts: list[str], max_text_length: int) -> None:
    """The input rules of every predictor, local or SageMaker."""
    if not texts:
        raise InvalidArgument({"texts": "must hold at least one text"})
    if len(texts) > MAX_TEXTS_PER_CALL:
        raise InvalidArgument(
            {"texts": f"holds {len(texts)} texts; the limit is {MAX_TEXTS_PER_CALL}"}
        )
    field = "text" if len(texts) == 1 else "texts"
    problems = {
        (field if field == "text" else f"texts[{i}]"): problem
        for i, text in enumerate(texts)
        if (problem := check_text(text, max_text_length))
    }
    if problems:
        raise InvalidArgument(problems)


def migrate_prediction_log(database: Database) -> None:
    database.migrate("predictions", PREDICTIONS_MIGRATIONS)


class PredictionLog:
    """Every prediction, so feedback can cite its id; the replicas of the service share
    it. ``database``: an opened database (core/db.py; InferenceService opens it not
    durable, which keeps a flush to disk off each answer), or the path of a SQLite file
    (opened so)."""

    def __init__(self, database: Database | Path) -> None:
        self.database = (
            SQLiteDatabase(database, durable=False) if isinstance(database, Path) else database
        )
        try:
            migrate_prediction_log(self.database)
        except BaseException:
            self.database.close()
            raise

    def record(self, predictions: list[Prediction]) -> None:
        """Logs a batch in one transaction. A retry after a lost commit answer finds the
        rows there already (the ids are random, unique): nothing is logged twice."""
        now = datetime.now(UTC).isoformat()
        rows = [
            (p.id, p.text, p.model_version, p.label, p.confidence, json.dumps(p.scores), now)
            for p in predictions
        ]
        if not rows:
            return
        self.database.run(
            lambda tx: tx.execute_many(
                "INSERT INTO predictions"
                " (id, text, model_version, label, confidence, scores, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                rows,
            ),
            write=True,
            idempotent=True,
        )

    def get(self, prediction_id: str) -> Prediction:
        if not prediction_id or len(prediction_id) > 64:
            raise InvalidArgument({"prediction_id": "is not a prediction id"})
        row = self.database.run(
            lambda tx: tx.fetch_one(
                f"SELECT {_COLUMNS} FROM predictions WHERE id = ?", (prediction_id,)
            )
        )
        if row is None:
            raise NotFound(f"prediction {quoted(prediction_id)} does not exist")
        return _from_row(row)

    def recent(self, limit: int, since: datetime | None = None) -> list[Prediction]:
        """The newest ``limit`` predictions (made at or after ``since``), newest first;
        predictions of one batch share their time, so the last logged comes first."""
        if not 1 <= limit <= MAX_RECENT_PREDICTIONS:
            raise InvalidArgument({"page_size": f"must be between 1 and {MAX_RECENT_PREDICTIONS}"})

        def read(tx: Transaction) -> list[Row]:
            order = "rowid" if tx.engine == "sqlite" else "seq"
            # SQLite keeps UTC ISO strings, whose order is their text's order; PostgreSQL
            # reads the same string as a timestamptz.
            where, params = ("", ()) if since is None else (
                "WHERE created_at >= ?", (since.astimezone(UTC).isoformat(),)
            )  # fmt: skip
            return tx.fetch(
                f"SELECT {_COLUMNS} FROM predictions {where}"
                f" ORDER BY created_at DESC, {order} DESC LIMIT ?",
                (*params, limit),
            )

        return [_from_row(row) for row in self.database.run(read)]

    def close(self) -> None:
        self.database.close()


Row = dict[str, Any]
_COLUMNS = "id, text, model_version, label, confidence, scores, created_at"


def _from_row(row: Row) -> Prediction:
    created_at = stored_time(row["created_at"])
    return Prediction(
        id=row["id"],
        text=row["text"],
        label=row["label"],
        confidence=float(row["confidence"]),
        scores=json.loads(row["scores"]),
        model_version=row["model_version"],
        created_at=created_at,
    )


def engine_threads(replicas: int) -> int:
    """This process's share of the CPU's cores: replicas whose engines each took every core
    would fight over them."""
    return max(1, (os.cpu_count() or 1) // replicas)


class Predictor:
    def __init__(
        self,
        store: ObjectStore,
        cache_dir: Path,
        log: PredictionLog,
        max_text_length: int,
        threads: int | None = None,  # None: the engine's own default (every core)
        engine: str = "auto",
    ) -> None:
        self._store = store
        self._threads = threads
        self._engine = engine
        self._cache_dir = cache_dir
        self._log = log
        self._max_text_length = max_text_length
        # Swapped atomically: a request keeps the version it started with.
        self.current: LoadedVersion | None = None
        self.state = ServingState(EndpointState.NOT_DEPLOYED)
        self._inference = load_script("inference")

    def load(self, version: str, artifact: str) -> LoadedVersion:
        """Fetches and unpacks the artifact, then loads it (slow; runs off the event loop)."""
        folder = unpack_artifact(self._store, artifact, self._cache_dir)
        model = self._inference.load_model(folder, threads=self._threads, engine=self._engine)
        return LoadedVersion(version=version, model=model, loaded_at=datetime.now(UTC))

    def check(self, texts: list[str]) -> None:
        """The input rules, checked per caller before a request joins a batch."""
        check_texts(texts, self._max_text_length)

    def predict(self, texts: list[str]) -> list[Prediction]:
        check_texts(texts, self._max_text_length)
        loaded = self.current
        if loaded is None and self.state.status == EndpointState.FAILED:
            raise Internal(
                f"the active model version {self.state.target_version} could not be loaded;"
                " GET /predict/status says why"
            )
        if loaded is None:
            raise Unavailable(
                "no model is deployed yet: bootstrap one with"
                " POST /model-init/bootstrap?auto_deploy=true"
            )
        outputs = self._inference.predict_texts(loaded.model, texts)
        predictions = [
            Prediction(
                id=uuid.uuid4().hex,
                text=text,
                label=out["label"],
                confidence=float(out["confidence"]),
                scores={k: float(v) for k, v in out["scores"].items()},
                model_version=loaded.version,
            )
            for text, out in zip(texts, outputs, strict=True)
        ]
        self._log.record(predictions)
        return predictions
