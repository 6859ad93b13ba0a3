"""ModelInitService, not built yet (issue #3):
every RPC answers UNIMPLEMENTED naming that issue."""

from __future__ import annotations

from sentiloop.core.config import Settings
from sentiloop.core.server import ServiceApp
from sentiloop.core.unbuilt import not_built_yet, not_built_yet_stream
from sentiloop.v1 import model_init_pb2_grpc as pb_grpc


class ModelInitServicer(pb_grpc.ModelInitServiceServicer):
    Bootstrap = not_built_yet("Bootstrap", 3)
    GetTrainingStatus = not_built_yet("GetTrainingStatus", 3)
    ListTrainingJobs = not_built_yet("ListTrainingJobs", 3)
    StopTrainingJob = not_built_yet("StopTrainingJob", 3)
    Deploy = not_built_yet("Deploy", 3)
    GetEndpointStatus = not_built_yet("GetEndpointStatus", 3)
    WatchTrainingJob = not_built_yet_stream("WatchTrainingJob", 3)


def create_app(settings: Settings) -> ServiceApp:
    servicer = ModelInitServicer()
    return ServiceApp(
        name="model_init",
        register=lambda server: pb_grpc.add_ModelInitServiceServicer_to_server(servicer, server),
    )
