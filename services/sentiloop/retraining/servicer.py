"""RetrainingService, not built yet (issue #4):
every RPC answers UNIMPLEMENTED naming that issue."""

from __future__ import annotations

from sentiloop.core.config import Settings
from sentiloop.core.server import ServiceApp
from sentiloop.core.unbuilt import not_built_yet
from sentiloop.v1 import retraining_pb2_grpc as pb_grpc


class RetrainingServicer(pb_grpc.RetrainingServiceServicer):
    Retrain = not_built_yet("Retrain", 4)
    GetPolicy = not_built_yet("GetPolicy", 4)


def create_app(settings: Settings) -> ServiceApp:
    servicer = RetrainingServicer()
    return ServiceApp(
        name="retraining",
        register=lambda server: pb_grpc.add_RetrainingServiceServicer_to_server(servicer, server),
    )
