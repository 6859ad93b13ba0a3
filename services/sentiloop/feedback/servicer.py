"""FeedbackService: protobuf <-> the feedback store."""

from __future__ import annotations

import asyncio
import hashlib
import random
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from sentiloop.core import metrics
from sentiloop.core.clients import Clients, mesh_error
from sentiloop.core.config import Settings
from sentiloop.core.convert import timestamp
from sentiloop.core.db import open_service_database
from sentiloop.core.errors import InvalidArgument
from sentiloop.core.objectstore import ObjectStore, open_object_store
from sentiloop.core.server import ServiceApp
from sentiloop.core.validation import decimal, page_size
from sentiloop.feedback.export import ExportConfig, FeedbackExporter
from sentiloop.feedback.linking import LoggedPrediction, PredictionLookup, resolve
from sentiloop.feedback.requests import Candidate, RecentPredictions, build_queue, check_request
from sentiloop.feedback.store import (
    Feedback,
    FeedbackStore,
    NewFeedback,
)
from sentiloop.v1 import feedback_pb2 as pb
from sentiloop.v1 import feedback_pb2_grpc as pb_grpc
from sentiloop.v1 import inference_pb2

Context = grpc.aio.ServicerContext[Any, Any]


def to_proto(record: Feedback) -> pb.FeedbackRecord:
    created_at = Timestamp()
    created_at.FromDatetime(record.created_at)
    return pb.FeedbackRecord(
        id=record.id,
        text=record.text,
        model_prediction=record.model_prediction,
        user_label=record.user_label,
        prediction_id=record.prediction_id,
        model_version=record.model_version,
        created_at=created_at,
        audit=record.audit,
    )


def page_after(token: str) -> int:
    if not token:
        return 0
    after = decimal(token)
    if after is None:
        raise InvalidArgument({"page_token": "is not a token this service returned"})
    return after


class GrpcPredictionLookup:
    def __init__(self, clients: Clients) -> None:
        self._clients = clients

    async def get(self, prediction_id: str) -> LoggedPrediction:
        try:
            answer = await self._clients.inference.GetPrediction(
                inference_pb2.GetPredictionRequest(prediction_id=prediction_id), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            raise mesh_error("inference", error, field="prediction_id") from error
        p = answer.prediction
        return LoggedPrediction(text=p.text, label=p.label, model_version=p.model_version)


class GrpcRecentPredictions:
    def __init__(self, clients: Clients) -> None:
        self._clients = clients

    async def recent(self, limit: int) -> list[Candidate]:
        try:
            answer = await self._clients.inference.ListRecentPredictions(
                inference_pb2.ListRecentPredictionsRequest(page_size=limit), timeout=10
            )
        except grpc.aio.AioRpcError as error:
            raise mesh_error("inference", error) from error
        return [
            Candidate(
                prediction_id=p.id,
                text=p.text,
                label=p.label,
                confidence=p.confidence,
                scores=dict(p.scores),
                model_version=p.model_version,
                created_at=p.created_at.ToDatetime(tzinfo=UTC),
            )
            for p in answer.predictions
        ]


@dataclass(frozen=True)
class LabelRequestConfig:
    window: int
    audit_share: float

    @classmethod
    def from_settings(cls, settings: Settings) -> LabelRequestConfig:
        return cls(settings.label_requests_window, settings.label_requests_audit_share)


class FeedbackServicer(pb_grpc.FeedbackServiceServicer):
    def __init__(
        self,
        store: FeedbackStore,
        lookup: PredictionLookup,
        objects: ObjectStore,
        recent: RecentPredictions,
        label_requests: LabelRequestConfig,
    ) -> None:
        self._store = store
        self._lookup = lookup
        self._objects = objects
        self._recent = recent
        self._label_requests = label_requests
        # Audit samples must be unpredictable to whoever sends the traffic.
        self._rng = random.SystemRandom()

    async def SubmitFeedback(
        self, request: pb.SubmitFeedbackRequest, context: Context
    ) -> pb.SubmitFeedbackResponse:
        new = NewFeedback(
            text=request.text,
            user_label=request.user_label,
            model_prediction=request.model_prediction,
            prediction_id=request.prediction_id,
            model_version=request.model_version,
            idempotency_key=request.idempotency_key,
        )
        new = await resolve(new, self._lookup)
        record, duplicate = await asyncio.to_thread(self._store.submit, new)
        if not duplicate:
            metrics.count_feedback(record.user_label, record.model_prediction)
        message = "Feedback already recorded" if duplicate else "Feedback recorded"
        return pb.SubmitFeedbackResponse(
            message=message, feedback=to_proto(record), duplicate=duplicate, id=record.id
        )

    async def ListFeedback(
        self, request: pb.ListFeedbackRequest, context: Context
    ) -> pb.ListFeedbackResponse:
        limit = page_size(request.page_size)
        after = page_after(request.page_token)
        records = await asyncio.to_thread(self._store.list, after, limit + 1)
        total = await asyncio.to_thread(self._store.count)  # not stats(): a page stays cheap
        page = records[:limit]
        next_token = str(page[-1].id) if len(records) > limit else ""
        return pb.ListFeedbackResponse(
            feedback=[to_proto(r) for r in page], next_page_token=next_token, total_count=total
        )

    async def ExportFeedback(
        self, request: pb.ExportFeedbackRequest, context: Context
    ) -> pb.ExportFeedbackResponse:
        content, count, latest_id = await asyncio.to_thread(self._store.export)
        content_hash = hashlib.sha256(content).hexdigest()
        key = f"feedback/snapshots/{content_hash}.jsonl"
        # Content-addressed: an existing snapshot is never rewritten.
        await asyncio.to_thread(self._objects.put_bytes_if_absent, key, content)
        return pb.ExportFeedbackResponse(
            content_hash=content_hash,
            location=self._objects.uri(key),
            key=key,
            record_count=count,
            latest_id=latest_id,
        )

    async def GetFeedbackStats(
        self, request: pb.GetFeedbackStatsRequest, context: Context
    ) -> pb.GetFeedbackStatsResponse:
        stats = await asyncio.to_thread(self._store.stats, request.after_count)
        return pb.GetFeedbackStatsResponse(
            total=stats.total,
            by_label=stats.by_label,
            disagreements=stats.disagreements,
            with_model_prediction=stats.with_model_prediction,
            latest_id=stats.latest_id,
            new_count=stats.new_count,
            first_new_time=timestamp(stats.first_new_at),
            latest_time=timestamp(stats.latest_at),
            audit=stats.audit,
        )

    async def ListLabelRequests(
        self, request: pb.ListLabelRequestsRequest, context: Context
    ) -> pb.ListLabelRequestsResponse:
        check_request(request.page_size, request.strategy)  # before asking inference
        config = self._label_requests
        window = await self._recent.recent(config.window)
        ids = [c.prediction_id for c in window]
        answered_ids, answered_texts = await asyncio.to_thread(
            self._store.answered, ids, [c.text for c in window]
        )
        issued = await asyncio.to_thread(self._store.audit_requests, ids)
        queue = build_queue(
            window,
            answered_ids=answered_ids,
            answered_texts=answered_texts,
            issued_audits=issued,
            page_size=request.page_size,
            audit_share=config.audit_share,
            strategy=request.strategy,
            rng=self._rng,
        )
        # Recorded before they are answered: feedback citing one is then marked audit.
        await asyncio.to_thread(
            self._store.issue_audit_requests,
            [r.prediction.prediction_id for r in queue.requests if r.audit],
        )
        return pb.ListLabelRequestsResponse(
            requests=[
                pb.LabelRequest(
                    prediction_id=r.prediction.prediction_id,
                    text=r.prediction.text,
                    label=r.prediction.label,
                    confidence=r.prediction.confidence,
                    scores=r.prediction.scores,
                    model_version=r.prediction.model_version,
                    created_at=timestamp(r.prediction.created_at),
                    uncertainty=r.uncertainty,
                    audit=r.audit,
                    duplicates=r.duplicates,
                )
                for r in queue.requests
            ],
            strategy=queue.strategy,
            window=queue.window,
            unlabelled=queue.unlabelled,
            audit_share=config.audit_share,
        )


def create_app(settings: Settings) -> ServiceApp:
    database = open_service_database(settings, "feedback", "feedback.db")
    store = FeedbackStore(database, settings.max_text_length)
    clients = Clients(settings)
    objects = open_object_store(settings)
    servicer = FeedbackServicer(
        store,
        GrpcPredictionLookup(clients),
        objects,
        GrpcRecentPredictions(clients),
        LabelRequestConfig.from_settings(settings),
    )
    export = ExportConfig.from_settings(settings)
    exporter = FeedbackExporter(store, objects, export) if export.enabled else None

    async def startup() -> None:
        if exporter is not None:
            exporter.start()

    async def shutdown() -> None:
        if exporter is not None:
            await exporter.stop()
        await clients.close()
        store.close()

    return ServiceApp(
        name="feedback",
        register=lambda server: pb_grpc.add_FeedbackServiceServicer_to_server(servicer, server),
        startup=startup,
        shutdown=shutdown,
    )
