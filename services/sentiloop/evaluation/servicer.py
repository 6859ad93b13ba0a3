"""EvaluationService: scores model versions on collected feedback and the held-out
test set, keeps the reports, and compares a candidate with the active model."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from functools import partial
from typing import Any

import grpc

from sentiloop.core.clients import Clients, mesh_error
from sentiloop.core.config import Settings
from sentiloop.core.convert import metrics_to_proto, timestamp
from sentiloop.core.errors import InvalidArgument
from sentiloop.core.objectstore import ObjectStore, open_object_store
from sentiloop.core.server import ServiceApp
from sentiloop.core.validation import page_size
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
)
from sentiloop.evaluation.reports import Report, ReportStore
from sentiloop.v1 import common_pb2, feedback_pb2, registry_pb2
from sentiloop.v1 import evaluation_pb2 as pb
from sentiloop.v1 import evaluation_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


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

    async def Evaluate(self, request: pb.EvaluateRequest, context: Context) -> pb.EvaluateResponse:
        model = await self._model(request.model_version)
        count = await self._evaluator.sync_feedback()
        test = await asyncio.to_thread(self._test_set, model.dataset_hash)
        on_feedback = await self._run(self._evaluator.score_feedback, model.path, model.version)
        on_test = await self._run(self._evaluator.score, model.path, test)
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
    reports = ReportStore(service_dir / "evaluations.db")
    clients = Clients(settings)
    models = Models(store, service_dir / "models")
    scores = EvaluationStore(service_dir / "scores.db")
    evaluator = Evaluator(scores, models, GrpcFeedbackPages(clients))
    servicer = EvaluationServicer(clients, store, reports, evaluator)

    async def shutdown() -> None:
        servicer.close()
        await clients.close()
        reports.close()
        scores.close()

    return ServiceApp(
        name="evaluation",
        register=lambda server: pb_grpc.add_EvaluationServiceServicer_to_server(servicer, server),
        shutdown=shutdown,
    )
