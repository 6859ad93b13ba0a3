"""Prometheus metrics: every metric the services export, declared once, and the merge
that lets one scrape of ``GET /metrics`` (through Envoy) cover every process of the mesh.

Each process counts into prometheus_client's default registry (which also holds the
process_* and python_* collectors). The record functions below are the only way code
counts anything, so that ``SENTILOOP_METRICS_ENABLED=false`` (the benchmark's baseline)
turns every one of them off in one place."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import prometheus_client
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

# The samples Prometheus itself derives (rate() over _count) make the per-series
# _created timestamps redundant; they would double what every scrape carries.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

# generate_latest() writes the classic text format, which every Prometheus (2.x too) reads
# under this content-type.
CONTENT_TYPE = prometheus_client.exposition.CONTENT_TYPE_PLAIN_0_0_4

# Latencies from a cached sub-millisecond answer to a call that waits on training.
_RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
_TRAINING_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)

RPC_DURATION = Histogram(
    "sentiloop_rpc_duration_seconds",
    "Time each call took in the service, by gRPC service, method and status code",
    ["grpc_service", "grpc_method", "grpc_code"],
    buckets=_RPC_BUCKETS,
)
BATCH_SIZE = Histogram(
    "sentiloop_batch_size",
    "Texts per forward pass of the serving engine (the dynamic batcher's batches)",
    buckets=_BATCH_BUCKETS,
)
BATCH_QUEUE_WAIT = Histogram(
    "sentiloop_batch_queue_wait_seconds",
    "Time a Predict call's texts waited in the batch queue before their forward pass",
    buckets=_WAIT_BUCKETS,
)
BATCH_QUEUE_DEPTH = Gauge(
    "sentiloop_batch_queue_depth", "Texts waiting in the batch queue for a forward pass"
)
PREDICTIONS = Counter(
    "sentiloop_predictions",
    "Texts predicted, by predicted label and the model version that answered",
    ["label", "model_version"],
)
FEEDBACK = Counter("sentiloop_feedback", "Feedback records accepted, by their label", ["label"])
FEEDBACK_DISAGREEMENTS = Counter(
    "sentiloop_feedback_disagreements",
    "Feedback that corrects the prediction it cites, by predicted and given label",
    ["predicted_label", "label"],
)
RETRAINING_RUNS = Counter(
    "sentiloop_retraining_runs", "Retraining runs that ended, by outcome", ["outcome"]
)
GATE_DECISIONS = Counter(
    "sentiloop_gate_decisions", "Promotion gate decisions on retrained models", ["decision"]
)
TRAINING_DURATION = Histogram(
    "sentiloop_training_duration_seconds",
    "Wall time of training jobs that ended, by outcome",
    ["outcome"],
    buckets=_TRAINING_BUCKETS,
)
# An info metric (value 1, the facts in labels) as a labelled gauge: prometheus_client's
# Info would show an empty sample in every process that serves no model.
SERVED_MODEL = Gauge(
    "sentiloop_served_model_info",
    "The model version this inference process serves, and how (value 1)",
    ["version", "engine", "precision"],
)
# Shadow evaluation (POST /predict/shadow): what the candidate scored beside the served
# model, what it skipped to never hold up an answer, and how often the two agreed.
SHADOW_PREDICTIONS = Counter(
    "sentiloop_shadow_predictions",
    "Answered texts a shadow candidate scored too, by the candidate's version",
    ["shadow_version"],
)
SHADOW_SKIPPED = Counter(
    "sentiloop_shadow_skipped",
    "Answered texts a shadow candidate skipped because its queue was full",
    ["shadow_version"],
)
SHADOW_AGREEMENT = Gauge(
    "sentiloop_shadow_agreement",
    "Share of the texts this process shadowed on which the candidate chose the served label",
    ["shadow_version"],
)
# The latest drift score of the served version's recent inputs (GET /predict/drift) and
# its components; no sample while there is no score (too little traffic, no model).
DRIFT_SCORE = Gauge(
    "sentiloop_drift_score",
    "Drift score of the recent prediction inputs against the served version's training data",
    ["version"],
)
DRIFT_TOKEN_DIVERGENCE = Gauge(
    "sentiloop_drift_token_divergence",
    "Jensen-Shannon divergence of the window's token distribution from the training texts'",
    ["version"],
)
DRIFT_CONFIDENCE_SHIFT = Gauge(
    "sentiloop_drift_confidence_shift",
    "Jensen-Shannon divergence of the window's confidence histogram from the held-out one",
    ["version"],
)
DRIFT_WINDOW = Gauge(
    "sentiloop_drift_window_size",
    "Predictions the latest drift score was computed over",
    ["version"],
)

# Every metric name a dashboard may use (deploy/grafana checks its queries against it).
METRIC_NAMES = frozenset(
    {
        "sentiloop_rpc_duration_seconds",
        "sentiloop_batch_size",
        "sentiloop_batch_queue_wait_seconds",
        "sentiloop_batch_queue_depth",
        "sentiloop_predictions_total",
        "sentiloop_feedback_total",
        "sentiloop_feedback_disagreements_total",
        "sentiloop_retraining_runs_total",
        "sentiloop_gate_decisions_total",
        "sentiloop_training_duration_seconds",
        "sentiloop_served_model_info",
        "sentiloop_shadow_predictions_total",
        "sentiloop_shadow_skipped_total",
        "sentiloop_shadow_agreement",
        "sentiloop_drift_score",
        "sentiloop_drift_token_divergence",
        "sentiloop_drift_confidence_shift",
        "sentiloop_drift_window_size",
        "sentiloop_scrape_up",
    }
)

_enabled = True


def configure(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def observe_rpc(method: str, code: str, seconds: float) -> None:
    """``method`` as gRPC names it: ``/sentiloop.v1.InferenceService/Predict``."""
    if _enabled:
        service, _, name = method.lstrip("/").partition("/")
        RPC_DURATION.labels(service, name, code).observe(seconds)


def observe_batch(size: int, queue_waits: Iterable[float]) -> None:
    if _enabled:
        BATCH_SIZE.observe(size)
        for wait in queue_waits:
            BATCH_QUEUE_WAIT.observe(wait)


def set_queue_depth(texts: int) -> None:
    if _enabled:
        BATCH_QUEUE_DEPTH.set(texts)


def count_predictions(answers: Iterable[tuple[str, str]]) -> None:
    """``answers``: (predicted label, model version) of each text."""
    if _enabled:
        for label, model_version in answers:
            PREDICTIONS.labels(label, model_version).inc()


def count_feedback(label: str, predicted_label: str | None) -> None:
    """``predicted_label``: the label of the prediction the feedback cites, if it cites one."""
    if _enabled:
        FEEDBACK.labels(label).inc()
        if predicted_label and predicted_label != label:
            FEEDBACK_DISAGREEMENTS.labels(predicted_label, label).inc()


def count_retraining_run(outcome: str) -> None:
    if _enabled:
        RETRAINING_RUNS.labels(outcome).inc()


def count_gate_decision(decision: str) -> None:
    if _enabled:
        GATE_DECISIONS.labels(decision).inc()


def observe_training(outcome: str, seconds: float) -> None:
    if _enabled and math.isfinite(seconds) and seconds >= 0:
        TRAINING_DURATION.labels(outcome).observe(seconds)


def set_served_model(version: str, engine: str, precision: str) -> None:
    if _enabled:
        SERVED_MODEL.clear()
        SERVED_MODEL.labels(version, engine, precision).set(1)


def set_drift(
    version: str, score: float, token_divergence: float, confidence_shift: float, window: int
) -> None:
    if _enabled:
        clear_drift()
        DRIFT_SCORE.labels(version).set(score)
        DRIFT_TOKEN_DIVERGENCE.labels(version).set(token_divergence)
        DRIFT_CONFIDENCE_SHIFT.labels(version).set(confidence_shift)
        DRIFT_WINDOW.labels(version).set(window)


def clear_drift() -> None:
    if _enabled:
        for gauge in (DRIFT_SCORE, DRIFT_TOKEN_DIVERGENCE, DRIFT_CONFIDENCE_SHIFT, DRIFT_WINDOW):
            gauge.clear()


def count_shadowed(shadow_version: str, texts: int, agreement: float) -> None:
    """``agreement``: the running share over this process's shadow so far."""
    if _enabled:
        SHADOW_PREDICTIONS.labels(shadow_version).inc(texts)
        SHADOW_AGREEMENT.clear()
        SHADOW_AGREEMENT.labels(shadow_version).set(agreement)


def count_shadow_skipped(shadow_version: str, texts: int) -> None:
    if _enabled:
        SHADOW_SKIPPED.labels(shadow_version).inc(texts)


def exposition() -> bytes:
    """This process's metrics in Prometheus' text format."""
    return prometheus_client.generate_latest()


class _Merged(Collector):
    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def merge(parts: Sequence[tuple[str, str, bytes | None]]) -> bytes:
    """One exposition from several processes' (``(service, instance, text)``; ``None``
    where a process could not be reached): each sample gets ``service`` and ``instance``
    labels, each family is written once, and ``sentiloop_scrape_up`` says which processes
    answered. Prometheus should scrape it with ``honor_labels: true``, so that these
    labels are kept rather than renamed."""
    families: dict[str, Metric] = {}
    up = Metric("sentiloop_scrape_up", "Whether the process answered this scrape", "gauge")
    for service, instance, text in parts:
        up.add_sample(
            "sentiloop_scrape_up",
            {"service": service, "instance": instance},
            0.0 if text is None else 1.0,
        )
        if text is None:
            continue
        for family in text_string_to_metric_families(text.decode("utf-8")):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for sample in family.samples:
                merged.add_sample(
                    sample.name,
                    {**sample.labels, "service": service, "instance": instance},
                    sample.value,
                    sample.timestamp,
                    sample.exemplar,
                )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged([*families.values(), up]))
    return prometheus_client.generate_latest(registry)
