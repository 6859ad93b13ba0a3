"""FeedbackService: protobuf <-> the feedback store."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from sentiloop.core.config import Settings
from sentiloop.core.errors import InvalidArgument
from sentiloop.core.server import ServiceApp
from sentiloop.feedback.store import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    Feedback,
    FeedbackStore,
    NewFeedback,
)
from sentiloop.v1 import feedback_pb2 as pb
from sentiloop.v1 import feedback_pb2_grpc as pb_grpc

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
    )


def page_size(requested: int) -> int:
    if requested < 0 or requested > MAX_PAGE_SIZE:
        raise InvalidArgument({"page_size": f"must be between 1 and {MAX_PAGE_SIZE}"})
    return requested or DEFAULT_PAGE_SIZE


def page_after(token: str) -> int:
    if not token:
        return 0
    if not token.isdigit():
        raise InvalidArgument({"page_token": "is not a token this service returned"})
    return int(token)


class FeedbackServicer(pb_grpc.FeedbackServiceServicer):
    def __init__(self, store: FeedbackStore) -> None:
        self._store = store

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
        record, duplicate = await asyncio.to_thread(self._store.submit, new)
        message = "Feedback already recorded" if duplicate else "Feedback recorded"
        return pb.SubmitFeedbackResponse(
            message=message, feedback=to_proto(record), duplicate=duplicate
        )

    async def ListFeedback(
        self, request: pb.ListFeedbackRequest, context: Context
    ) -> pb.ListFeedbackResponse:
        limit = page_size(request.page_size)
        after = page_after(request.page_token)
        records = await asyncio.to_thread(self._store.list, after, limit + 1)
        stats = await asyncio.to_thread(self._store.stats)
        page = records[:limit]
        next_token = str(page[-1].id) if len(records) > limit else ""
        return pb.ListFeedbackResponse(
            feedback=[to_proto(r) for r in page],
            next_page_token=next_token,
            total_count=stats.total,
        )

    async def GetFeedbackStats(
        self, request: pb.GetFeedbackStatsRequest, context: Context
    ) -> pb.GetFeedbackStatsResponse:
        stats = await asyncio.to_thread(self._store.stats)
        return pb.GetFeedbackStatsResponse(
            total=stats.total,
            by_label=stats.by_label,
            disagreements=stats.disagreements,
            with_model_prediction=stats.with_model_prediction,
            latest_id=stats.latest_id,
        )


def create_app(settings: Settings) -> ServiceApp:
    store = FeedbackStore(
        settings.service_dir("feedback") / "feedback.db", settings.max_text_length
    )
    servicer = FeedbackServicer(store)

    async def shutdown() -> None:
        store.close()

    return ServiceApp(
        name="feedback",
        register=lambda server: pb_grpc.add_FeedbackServiceServicer_to_server(servicer, server),
        shutdown=shutdown,
    )
