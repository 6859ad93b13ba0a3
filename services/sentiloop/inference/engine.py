"""Serving the active model in-process through sagemaker_scripts/inference.py, with a
log of every prediction (domain logic; no grpc here)."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sentiloop.core import sqlite
from sentiloop.core.artifacts import unpack_artifact
from sentiloop.core.config import MAX_RECENT_PREDICTIONS, MAX_TEXTS_PER_CALL
from sentiloop.core.errors import Internal, InvalidArgument, NotFound, Unavailable
from sentiloop.core.objectstore import ObjectStore
from sentiloop.core.scripts import load_script
from sentiloop.core.serving import ServingState
from sentiloop.core.validation import check_text, quoted
from sentiloop.core.vocabulary import EndpointState

PREDICTIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id            TEXT PRIMARY KEY,
    text          TEXT NOT NULL,
    model_version TEXT NOT NULL,
    label         TEXT NOT NULL,
    confidence    REAL NOT NULL,
    scores        TEXT NOT NULL,
    created_at    TEXT NOT NULL
);
-- The recent predictions, newest first (ListRecentPredictions); logs created before it
-- get it on the next start.
CREATE INDEX IF NOT EXISTS predictions_created_at ON predictions (created_at);
"""


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


class PredictionLog:
    """Every prediction, so feedback can cite its id. Synchronous=NORMAL: in WAL mode
    that survives a crash of the process, and keeps an fsync off each prediction."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite.connect(path)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(PREDICTIONS_SCHEMA)

    def record(self, predictions: list[Prediction]) -> None:
        now = datetime.now(UTC).isoformat()
        with self._lock:
            self._db.executemany(
                "INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        p.id,
                        p.text,
                        p.model_version,
                        p.label,
                        p.confidence,
                        json.dumps(p.scores),
                        now,
                    )
                    for p in predictions
                ],
            )

    def get(self, prediction_id: str) -> Prediction:
        if not prediction_id or len(prediction_id) > 64:
            raise InvalidArgument({"prediction_id": "is not a prediction id"})
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM predictions WHERE id = ?", (prediction_id,)
            ).fetchone()
        if row is None:
            raise NotFound(f"prediction {quoted(prediction_id)} does not exist")
        return _from_row(row)

    def recent(self, limit: int, since: datetime | None = None) -> list[Prediction]:
        """The newest ``limit`` predictions (made at or after ``since``), newest first;
        predictions of one batch share their time, so the last logged comes first."""
        if not 1 <= limit <= MAX_RECENT_PREDICTIONS:
            raise InvalidArgument({"page_size": f"must be between 1 and {MAX_RECENT_PREDICTIONS}"})
        # Times are stored as UTC ISO strings, whose order is their text's order.
        lower = since.astimezone(UTC).isoformat() if since is not None else ""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM predictions WHERE created_at >= ?"
                " ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (lower, limit),
            ).fetchall()
        return [_from_row(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _from_row(row: sqlite3.Row) -> Prediction:
    return Prediction(
        id=row["id"],
        text=row["text"],
        label=row["label"],
        confidence=row["confidence"],
        scores=json.loads(row["scores"]),
        model_version=row["model_version"],
        created_at=datetime.fromisoformat(row["created_at"]),
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
