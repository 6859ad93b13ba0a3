"""ModelRegistryService, not built yet (issue #3):
every RPC answers UNIMPLEMENTED naming that issue."""

from __future__ import annotations

from sentiloop.core.config import Settings
from sentiloop.core.server import ServiceApp
from sentiloop.core.unbuilt import not_built_yet
from sentiloop.v1 import registry_pb2_grpc as pb_grpc


class ModelRegistryServicer(pb_grpc.ModelRegistryServiceServicer):
    ListModels = not_built_yet("ListModels", 3)
    GetModel = not_built_yet("GetModel", 3)
    RegisterModel = not_built_yet("RegisterModel", 3)
    ActivateModel = not_built_yet("ActivateModel", 3)
    Rollback = not_built_yet("Rollback", 3)
    ListActivations = not_built_yet("ListActivations", 3)


def create_app(settings: Settings) -> ServiceApp:
    servicer = ModelRegistryServicer()
    return ServiceApp(
        name="registry",
        register=lambda server: pb_grpc.add_ModelRegistryServiceServicer_to_server(
            servicer, server
        ),
    )
