"""EvaluationService: scores model versions on collected feedback and the held-out
test set, keeps the reports, and compares a candidate with the active model."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from functools import partial
from typing import Any

import grpc

from sentiloop.core.clients import Clients, mesh_error
from sentiloop.core.config import Settings
from sentiloop.core.convert import metrics_to_proto, timestamp
from sentiloop.core.db import open_service_database
from sentiloop.core.errors import InvalidArgument
from sentiloop.core.follow import EventFollower
from sentiloop.core.objectstore import ObjectStore, open_object_store
from sentiloop.core.server import ServiceApp
from sentiloop.core.validation import page_size
from sentiloop.core.vocabulary import EventType
from sentiloop.data.datasets import lineage_dataset
from sentiloop.data.scoring import (
    Comparison,
    CrossFitted,
    Labelled,
    read_labelled_csv,
)
from sentiloop.evaluation.evaluator import (
    EvaluationStore,
    Evaluator,
    FeedbackRecord,
    Models,
    Scored,
)
from sentiloop.evaluation.reports import Report, ReportStore
from sentiloop.v1 import common_pb2, feedback_pb2, notification_pb2, registry_pb2
from sentiloop.v1 import evaluation_pb2 as pb
from sentiloop.v1 import evaluation_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]
log = logging.getLogger("sentiloop.evaluation")


class LatestOnly:
    """Runs ``work`` for the latest value offered, one at a time: values offered while it
    runs are replaced by newer ones (only the latest activation is worth preparing)."""

    def __init__(self, work: Callable[[str], Awaitable[None]]) -> None:
        self._work = work
        self._latest: str | None = None
        self._offered = asyncio.Event()

    def offer(self, value: str) -> None:
        self._latest = value
        self._offered.set()

    async def run(self) -> None:
        while True:
            await self._offered.wait()
            self._offered.clear()
            value, self._latest = self._latest, None
            if value is None:
                continue
            try:
                await self._work(value)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("preparing %s failed", value)


def comparison_to_proto(comparison: Comparison | None) -> common_pb2.ModelComparison | None:
    return common_pb2.ModelComparison(**asdict(comparison)) if comparison else None


def report_to_proto(report: Report) -> pb.EvaluateResponse:
    feedback = report.feedback
    return pb.EvaluateResponse(
        accuracy=float(feedback.get("accuracy", 0.0)),
        total_samples=int(feedback.get("total_samples", 0)),
        correct_predictions=int(feedback.get("correct_predictions", 0)),
        feedback_count=report.feedback_count,
        model_version=report.model_version,
        feedback_metrics=metrics_to_proto(feedback),
        test_metrics=metrics_to_proto(report.test),
        evaluation_id=report.id,
        created_at=timestamp(report.created_at),
    )


class GrpcFeedbackPages:
    """The feedback service's records, a page at a time (ListFeedback)."""

    def __init__(self, clients: Clients) -> None:
        self._clients = clients

    async def page(self, after_id: int, size: int) -> tuple[list[FeedbackRecord], bool, int]:
        try:
            answer = await self._clients.feedback.ListFeedback(
                feedback_pb2.ListFeedbackRequest(
                    page_size=size, page_token=str(after_id) if after_id else ""
                ),
                timeout=30,
            )
        except grpc.aio.AioRpcError as error:
            raise mesh_error("feedback", error) from error
        records = [
            FeedbackRecord(r.id, r.text, r.user_label, r.model_version, r.model_prediction)
            for r in answer.feedback
        ]
        return records, bool(answer.next_page_token), int(answer.total_count)


class EvaluationServicer(pb_grpc.EvaluationServiceServicer):
    def __init__(
        self,
        clients: Clients,
        store: ObjectStore,
        reports: ReportStore,
        evaluator: Evaluator,
    ) -> None:
        self._clients = clients
        self._store = store
        self._reports = reports
        self._evaluator = evaluator
        # Model work runs on one thread: torch already uses every core.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluate")

    async def _run(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, partial(func, *args)
        )

    async def _model(self, version: str) -> registry_pb2.ModelVersion:
        try:
            answer = await self._clients.registry.GetModel(
                registry_pb2.GetModelRequest(version=version or "active"), timeout=10
            )
        except grpc.aio.AioRpcError as error:
            raise mesh_error("registry", error, field="model_version") from error
        return answer.model

    def _test_set(self, dataset_hash: str) -> Labelled:
        """The test split of the dataset the model belongs to (see lineage_dataset)."""
        dataset = lineage_dataset(self._store, dataset_hash)
        return read_labelled_csv(self._store.get_bytes(dataset.channels["test"] + "test.csv"))

    async def _score(self, version: str) -> tuple[registry_pb2.ModelVersion, int, Scored, Scored]:
        model = await self._model(version)
        count = await self._evaluator.sync_feedback()
        test = await asyncio.to_thread(self._test_set, model.dataset_hash)
        started = time.monotonic()
        on_feedback = await self._run(self._evaluator.score_feedback, model.path, model.version)
        on_test = await self._run(self._evaluator.score, model.path, test)
        log.info(
            "scored %s: %d texts predicted now, the rest known",
            model.version,
            on_feedback.predicted_now + on_test.predicted_now,
            extra={
                "fields": {
                    "version": model.version,
                    "predicted_now": on_feedback.predicted_now + on_test.predicted_now,
                    "seconds": round(time.monotonic() - started, 3),
                }
            },
        )
        return model, count, on_feedback, on_test

    async def prepare(self, version: str) -> None:
        """Scores a version as soon as it becomes active, so that the first Evaluate of
        it answers from kept scores instead of predicting every feedback text (minutes
        with a real model and a large feedback table)."""
        await self._score(version)

    async def Evaluate(self, request: pb.EvaluateRequest, context: Context) -> pb.EvaluateResponse:
        model, count, on_feedback, on_test = await self._score(request.model_version)
        report = await asyncio.to_thread(
            self._reports.add, model.version, on_feedback.metrics, on_test.metrics, count
        )
        return report_to_proto(report)

    async def CompareModels(
        self, request: pb.CompareModelsRequest, context: Context
    ) -> pb.CompareModelsResponse:
        if not request.candidate_path:
            raise InvalidArgument({"candidate_path": "is required"})
        if request.cross_fitted and request.feedback_key:
            raise InvalidArgument(
                {"cross_fitted": "compare on the out-of-fold predictions or on feedback_key,"
                 " not both"}
            )  # fmt: skip
        baseline = await self._model(request.baseline_version)
        feedback: Labelled | CrossFitted | None = None
        if request.cross_fitted:  # before the test set: a candidate without it fails fast
            feedback = await self._run(self._evaluator.crossfitted, request.candidate_path)
        elif request.feedback_key:
            content = await asyncio.to_thread(self._store.get_bytes, request.feedback_key)
            feedback = read_labelled_csv(content)
        test = await asyncio.to_thread(self._test_set, baseline.dataset_hash)
        on_test, on_feedback = await self._run(
            self._evaluator.compare_models,
            request.candidate_path,
            baseline.path,
            test,
            feedback,
            request.seed or 13,
        )
        return pb.CompareModelsResponse(
            test=comparison_to_proto(on_test),
            feedback=comparison_to_proto(on_feedback),
            baseline_version=baseline.version,
        )

    async def ListEvaluations(
        self, request: pb.ListEvaluationsRequest, context: Context
    ) -> pb.ListEvaluationsResponse:
        reports = await asyncio.to_thread(
            self._reports.recent, request.model_version, page_size(request.page_size)
        )
        return pb.ListEvaluationsResponse(evaluations=[report_to_proto(r) for r in reports])

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def create_app(settings: Settings) -> ServiceApp:
    store = open_object_store(settings)
    service_dir = settings.service_dir("evaluation")
    # On PostgreSQL both land in the schema "evaluation": their tables do not clash.
    reports = ReportStore(open_service_database(settings, "evaluation", "evaluations.db"))
    clients = Clients(settings)
    models = Models(store, service_dir / "models")
    scores = EvaluationStore(open_service_database(settings, "evaluation", "scores.db"))
    evaluator = Evaluator(scores, models, GrpcFeedbackPages(clients))
    servicer = EvaluationServicer(clients, store, reports, evaluator)
    activated = LatestOnly(servicer.prepare)
    tasks: list[asyncio.Task[None]] = []

    async def on_event(event: notification_pb2.Event) -> None:
        activated.offer(event.subject)

    async def nothing_to_catch_up() -> None:
        # A missed activation only means a slower first Evaluate of that version.
        return None

    async def startup() -> None:
        follower = EventFollower(
            clients, [EventType.MODEL_ACTIVATED], on_event, nothing_to_catch_up
        )
        tasks.append(asyncio.create_task(follower.run()))
        tasks.append(asyncio.create_task(activated.run()))

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        servicer.close()
        await clients.close()
        reports.close()
        scores.close()

    return ServiceApp(
        name="evaluation",
        register=lambda server: pb_grpc.add_EvaluationServiceServicer_to_server(servicer, server),
        startup=startup,
        shutdown=shutdown,
    )
