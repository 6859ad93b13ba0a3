"""EvaluationService, not built yet (issue #4):
every RPC answers UNIMPLEMENTED naming that issue."""

from __future__ import annotations

from sentiloop.core.config import Settings
from sentiloop.core.server import ServiceApp
from sentiloop.core.unbuilt import not_built_yet
from sentiloop.v1 import evaluation_pb2_grpc as pb_grpc


class EvaluationServicer(pb_grpc.EvaluationServiceServicer):
    Evaluate = not_built_yet("Evaluate", 4)
    CompareModels = not_built_yet("CompareModels", 4)
    ListEvaluations = not_built_yet("ListEvaluations", 4)


def create_app(settings: Settings) -> ServiceApp:
    servicer = EvaluationServicer()
    return ServiceApp(
        name="evaluation",
        register=lambda server: pb_grpc.add_EvaluationServiceServicer_to_server(servicer, server),
    )
