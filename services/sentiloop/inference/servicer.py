"""InferenceService, not built yet (issue #3):
every RPC answers UNIMPLEMENTED naming that issue."""

from __future__ import annotations

from sentiloop.core.config import Settings
from sentiloop.core.server import ServiceApp
from sentiloop.core.unbuilt import not_built_yet
from sentiloop.v1 import inference_pb2_grpc as pb_grpc


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    Predict = not_built_yet("Predict", 3)
    PredictBatch = not_built_yet("PredictBatch", 3)


def create_app(settings: Settings) -> ServiceApp:
    servicer = InferenceServicer()
    return ServiceApp(
        name="inference",
        register=lambda server: pb_grpc.add_InferenceServiceServicer_to_server(servicer, server),
    )
