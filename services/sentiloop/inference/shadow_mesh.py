"""Shadow evaluation's view of the mesh over gRPC (the registry for candidates and their
reports, FeedbackService for labels), and its report as protobuf."""

from __future__ import annotations

import grpc
from google.protobuf import json_format

from sentiloop.core.clients import Clients, mesh_error
from sentiloop.core.notify import Notifier
from sentiloop.data.shadow import ShadowReport
from sentiloop.inference.shadow import Candidate, FeedbackLabel
from sentiloop.v1 import common_pb2, feedback_pb2, registry_pb2


def report_to_proto(report: ShadowReport) -> common_pb2.ShadowReport:
    return json_format.ParseDict(report.as_dict(), common_pb2.ShadowReport())


class GrpcShadowMesh:
    def __init__(self, clients: Clients) -> None:
        self._clients = clients
        self.notify = Notifier(clients).emit

    async def candidate(self, version: str) -> Candidate:
        try:
            answer = await self._clients.registry.GetModel(
                registry_pb2.GetModelRequest(version=version), timeout=10
            )
        except grpc.aio.AioRpcError as error:
            raise mesh_error("registry", error, field="version") from error
        model = answer.model
        return Candidate(version=model.version, path=model.path, status=model.status)

    async def feedback_page(
        self, page_token: str, page_size: int
    ) -> tuple[list[FeedbackLabel], str]:
        try:
            page = await self._clients.feedback.ListFeedback(
                feedback_pb2.ListFeedbackRequest(page_size=page_size, page_token=page_token),
                timeout=30,
            )
        except grpc.aio.AioRpcError as error:
            raise mesh_error("feedback", error) from error
        labels = [
            FeedbackLabel(id=r.id, prediction_id=r.prediction_id, user_label=r.user_label)
            for r in page.feedback
        ]
        return labels, page.next_page_token

    async def record_report(self, report: ShadowReport) -> None:
        try:
            await self._clients.registry.RecordShadowReport(
                registry_pb2.RecordShadowReportRequest(
                    version=report.shadow_version, report=report_to_proto(report)
                ),
                timeout=10,
            )
        except grpc.aio.AioRpcError as error:
            raise mesh_error("registry", error) from error
