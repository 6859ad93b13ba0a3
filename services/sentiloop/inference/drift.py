"""Drift: how far the texts the served version has been asked about lately have moved
away from the texts it was trained on (domain logic; no grpc here).

The score compares a window of the prediction log (the most recent predictions the served
version made) with a reference built once per version from its training data:

- **token divergence**: the Jensen-Shannon divergence (base 2, so 0..1) between the
  unigram distributions of token ids (the served model's own tokenizer, special tokens
  left out) of the window's texts and of the training texts, over the training texts'
  ``REFERENCE_TOKENS`` most frequent tokens plus one bucket for every other token, each
  count plus ``SMOOTHING``. Restricting the comparison to frequent tokens is what lets a
  window of a few hundred texts be compared at all: over the whole vocabulary, a sample
  that small misses most rare words and an in-domain window of 100 sentences scored 0.19
  against 0.37 for tweets; over the top 500 it scores 0.04 against 0.10 (0.015 against 0.12
  at 500 sentences). The "other" bucket carries what a new domain brings most of: words
  the training texts rarely use.
- **confidence shift**: the same divergence between the 10-bin histograms of the top
  class's confidence in the window and of the served model on held-out texts of its
  training data (the validation split: confidences on the very texts a model was fitted
  to are higher than on any new text, in-domain or not).

The score is the token divergence; the confidence shift is reported beside it. A model's
confidences move for reasons other than its inputs (calibration, a retrained head) and
are noisy in a window of a hundred texts spread over ten bins, while the inputs are what
drift means; the shift says how the served model takes the drift.
"""

from __future__ import annotations

import csv
import io
import logging
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from sentiloop.core.db import Database, Migration, SQLiteDatabase, Transaction
from sentiloop.core.objectstore import ObjectStore
from sentiloop.core.vocabulary import EventType
from sentiloop.data.datasets import StoredDataset, lineage_dataset, record_key
from sentiloop.inference.engine import LoadedVersion, Prediction

log = logging.getLogger("sentiloop.inference.drift")

REFERENCE_TOKENS = 500
CONFIDENCE_BINS = 10
SMOOTHING = 0.5
REFERENCE_SEED = 13

OK = "ok"
DRIFTED = "drifted"
NOT_ENOUGH_TRAFFIC = "not_enough_traffic"
NO_MODEL = "no_model"


# ---- the scoring functions (pure)


def js_divergence(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> float:
    """Jensen-Shannon divergence, base 2 (0 for equal distributions, 1 for disjoint ones),
    of two histograms over the same bins; each is normalised first."""
    a = np.asarray(p, dtype=np.float64)
    b = np.asarray(q, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"histograms of shapes {a.shape} and {b.shape}: need one equal length")
    if (a < 0).any() or (b < 0).any() or a.sum() <= 0 or b.sum() <= 0:
        raise ValueError("histograms need non-negative counts and some mass")
    a, b = a / a.sum(), b / b.sum()
    m = (a + b) / 2

    def kl(x: np.ndarray) -> float:
        mask = x > 0
        return float((x[mask] * np.log2(x[mask] / m[mask])).sum())

    # Rounding can leave a hair below 0 or above 1.
    return min(1.0, max(0.0, (kl(a) + kl(b)) / 2))


def top_tokens(counts: Counter[int], size: int = REFERENCE_TOKENS) -> tuple[int, ...]:
    """The ``size`` most frequent token ids (ties by id, so the same counts give the same
    buckets)."""
    return tuple(
        token for token, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]
    )


def token_counts(token_ids: Iterable[Iterable[int]]) -> Counter[int]:
    counts: Counter[int] = Counter()
    for ids in token_ids:
        counts.update(ids)
    return counts


def token_histogram(counts: Mapping[int, int], vocabulary: Sequence[int]) -> np.ndarray:
    """Counts per bucket: one per token of ``vocabulary`` (in its order), then one for
    every other token."""
    index = {token: i for i, token in enumerate(vocabulary)}
    other = len(vocabulary)
    histogram = np.zeros(len(vocabulary) + 1, dtype=np.float64)
    for token, count in counts.items():
        histogram[index.get(token, other)] += count
    return histogram


def confidence_histogram(confidences: Iterable[float], bins: int = CONFIDENCE_BINS) -> np.ndarray:
    """Counts per equal-width bin of [0, 1] (1.0 falls in the last bin)."""
    values = np.clip(np.asarray(list(confidences), dtype=np.float64), 0.0, 1.0)
    histogram, _ = np.histogram(values, bins=bins, range=(0.0, 1.0))
    return histogram.astype(np.float64)


def smoothed_divergence(
    window: np.ndarray, reference: np.ndarray, smoothing: float = SMOOTHING
) -> float:
    """JS divergence of two count histograms, each count plus ``smoothing``: a bucket one
    side never saw does not make the other side's few counts in it weigh as if they were
    certain."""
    return js_divergence(window + smoothing, reference + smoothing)


def drift_score(token_divergence: float, confidence_shift: float) -> float:
    """The one number the threshold applies to: the token divergence (the module's
    docstring says why the confidence shift stays beside it)."""
    del confidence_shift  # reported, not scored
    return token_divergence


def drift_state(score: float, threshold: float) -> str:
    return DRIFTED if score >= threshold else OK


def drift_event(state: str, version: str, drifted_version: str | None) -> EventType | None:
    """The event a new state calls for, given the version drift was last announced for
    (None: none, or it was cleared since): one per crossing, not one per computation. A
    newly served version that is drifted too is announced again, for that version."""
    if state == DRIFTED and version != drifted_version:
        return EventType.MODEL_DRIFT_DETECTED
    if state == OK and drifted_version is not None:
        return EventType.MODEL_DRIFT_CLEARED
    return None


# The one row is made with the table; a SQLite file made before the migration runner
# has both already, and the steps leave them as they are.
CROSSINGS_MIGRATIONS = (
    Migration(
        1,
        "the version drift was last announced for",
        sqlite=(
            "CREATE TABLE IF NOT EXISTS announced"
            " (id INTEGER PRIMARY KEY CHECK (id = 1), drifted_version TEXT)",
            "INSERT INTO announced (id, drifted_version) VALUES (1, NULL)"
            " ON CONFLICT (id) DO NOTHING",
        ),
        postgresql=(
            "CREATE TABLE announced (id INTEGER PRIMARY KEY CHECK (id = 1), drifted_version TEXT)",
            "INSERT INTO announced (id, drifted_version) VALUES (1, NULL)",
        ),
    ),
)


class Crossings:
    """The version drift was last announced for (None: none, or cleared since), in the
    service's database, which its replicas share as they share the prediction log (and so
    score the same window): whichever replica moves it first announces the crossing, so
    one crossing is one event from all of them, and a restart announces nothing again.
    ``database``: an opened database (core/db.py), or the path of a SQLite file."""

    def __init__(self, database: Database | Path) -> None:
        self.database = SQLiteDatabase(database) if isinstance(database, Path) else database
        try:
            self.database.migrate("drift", CROSSINGS_MIGRATIONS)
        except BaseException:
            self.database.close()
            raise

    def drifted_version(self) -> str | None:
        row = self.database.run(
            lambda tx: tx.fetch_one("SELECT drifted_version FROM announced WHERE id = 1")
        )
        value = row["drifted_version"] if row is not None else None
        return None if value is None else str(value)

    def move(self, expected: str | None, new: str | None) -> bool:
        """Sets ``new`` if the value is still ``expected``; False when another replica
        moved it first (the row's lock orders the two updates on PostgreSQL; the second
        finds the value moved and changes nothing)."""

        def update(tx: Transaction) -> int:
            # SQLite's ``IS`` compares NULLs too; PostgreSQL's spelling of it.
            same = "IS" if tx.engine == "sqlite" else "IS NOT DISTINCT FROM"
            return tx.execute(
                f"UPDATE announced SET drifted_version = ? WHERE id = 1 AND drifted_version"
                f" {same} ?",
                (new, expected),
            )

        # Not idempotent: after a lost commit answer a retry would find its own move and
        # report it as another replica's.
        return self.database.run(update, write=True) == 1

    def close(self) -> None:
        self.database.close()


# ---- the reference and the monitor


@dataclass(frozen=True)
class DriftRules:
    window: int  # most recent predictions the window takes
    min_window: int  # fewest a score needs
    threshold: float
    reference_texts: int  # held-out texts predicted for the confidence reference


@dataclass(frozen=True)
class DriftReport:
    state: str
    reason: str
    threshold: float
    min_window: int
    max_window: int
    score: float = 0.0
    token_divergence: float = 0.0
    confidence_shift: float = 0.0
    window_size: int = 0
    reference_version: str = ""
    reference_dataset: str = ""
    computed_at: datetime | None = None


@dataclass(frozen=True)
class Reference:
    version: str
    dataset: str  # the content hash of the dataset whose texts these are
    vocabulary: tuple[int, ...]
    tokens: np.ndarray  # counts over the vocabulary's buckets + "other"
    special: frozenset[int]  # ids the tokenizer adds to every text (CLS, SEP, ...)
    confidences: np.ndarray  # histogram of the served model's top-class confidences


@dataclass(frozen=True)
class TrainingTexts:
    dataset: str
    train: list[str]
    held_out: list[str]  # validation split (else test, else train)


def _texts(store: ObjectStore, dataset: StoredDataset, channel: str) -> list[str]:
    prefix = dataset.channels.get(channel)
    if not prefix or not store.exists(f"{prefix}{channel}.csv"):
        return []
    content = store.get_bytes(f"{prefix}{channel}.csv").decode("utf-8")
    return [row["text"] for row in csv.DictReader(io.StringIO(content)) if row.get("text")]


def read_training_texts(store: ObjectStore, dataset_hash: str) -> TrainingTexts:
    """The texts a version trained on: the dataset ``dataset_hash`` names (a retraining
    snapshot's train split holds the feedback it learnt from too), or the built-in one for
    versions recorded without a dataset."""
    if dataset_hash and store.exists(record_key(dataset_hash)):
        dataset = StoredDataset.from_json(store.get_bytes(record_key(dataset_hash)))
    else:
        dataset = lineage_dataset(store, dataset_hash)
    train = _texts(store, dataset, "train")
    held_out = _texts(store, dataset, "validation") or _texts(store, dataset, "test") or train
    return TrainingTexts(dataset.content_hash, train, held_out)


class DriftMonitor:
    """Computes drift reports (blocking: run it off the event loop). The reference of a
    version is built on its first report with enough traffic and kept while it serves."""

    def __init__(
        self,
        rules: DriftRules,
        recent: Callable[[int], list[Prediction]],
        training_texts: Callable[[str], TrainingTexts],
        predict_texts: Callable[[Any, list[str]], list[dict[str, Any]]],
    ) -> None:
        self.rules = rules
        self._recent = recent
        self._training_texts = training_texts
        self._predict_texts = predict_texts
        self._reference: Reference | None = None
        self._lock = threading.Lock()

    def _report(self, state: str, reason: str, **fields: Any) -> DriftReport:
        return DriftReport(
            state=state,
            reason=reason,
            threshold=self.rules.threshold,
            min_window=self.rules.min_window,
            max_window=self.rules.window,
            computed_at=datetime.now(UTC),
            **fields,
        )

    def _token_counts(
        self, loaded: LoadedVersion, texts: list[str], special: frozenset[int]
    ) -> Counter[int]:
        counts = token_counts(loaded.model.encode(texts))
        for token in special:
            counts.pop(token, None)
        return counts

    def reference(self, loaded: LoadedVersion, dataset_hash: str) -> Reference:
        with self._lock:
            if self._reference is not None and self._reference.version == loaded.version:
                return self._reference
            texts = self._training_texts(dataset_hash)
            # What the tokenizer adds to an empty text, it adds to every text: left out,
            # they would only dilute both distributions by each side's text lengths.
            special = frozenset(loaded.model.encode([""])[0])
            counts = self._token_counts(loaded, texts.train, special)
            vocabulary = top_tokens(counts)
            sample = texts.held_out
            if len(sample) > self.rules.reference_texts:
                sample = random.Random(REFERENCE_SEED).sample(sample, self.rules.reference_texts)
            outputs = self._predict_texts(loaded.model, sample)
            self._reference = Reference(
                version=loaded.version,
                dataset=texts.dataset,
                vocabulary=vocabulary,
                tokens=token_histogram(counts, vocabulary),
                special=special,
                confidences=confidence_histogram(float(o["confidence"]) for o in outputs),
            )
            log.info(
                "drift reference of %s: %d training texts, %d held-out texts predicted",
                loaded.version,
                len(texts.train),
                len(sample),
                extra={"fields": {"version": loaded.version, "dataset": texts.dataset}},
            )
            return self._reference

    def compute(self, loaded: LoadedVersion | None, dataset_hash: str) -> DriftReport:
        """The drift of the served version's recent inputs; ``dataset_hash`` names the
        dataset it trained on (the registry's lineage)."""
        if loaded is None:
            return self._report(NO_MODEL, "no model is served yet")
        version = loaded.version
        window = [p for p in self._recent(self.rules.window) if p.model_version == version]
        needed = min(self.rules.min_window, self.rules.window)
        if len(window) < needed:
            return self._report(
                NOT_ENOUGH_TRAFFIC,
                f"{len(window)} of the {needed} predictions by {version} a drift score needs",
                window_size=len(window),
                reference_version=version,
            )
        reference = self.reference(loaded, dataset_hash)
        texts = [p.text for p in window]
        tokens = token_histogram(
            self._token_counts(loaded, texts, reference.special), reference.vocabulary
        )
        token_divergence = smoothed_divergence(tokens, reference.tokens)
        confidence_shift = smoothed_divergence(
            confidence_histogram(p.confidence for p in window), reference.confidences
        )
        score = drift_score(token_divergence, confidence_shift)
        state = drift_state(score, self.rules.threshold)
        relation = "at or over" if state == DRIFTED else "under"
        return self._report(
            state,
            f"drift score {score:.3f} is {relation} the threshold {self.rules.threshold:g}"
            f" ({len(window)} recent predictions by {version} against its training texts)",
            score=score,
            token_divergence=token_divergence,
            confidence_shift=confidence_shift,
            window_size=len(window),
            reference_version=version,
            reference_dataset=reference.dataset,
        )
