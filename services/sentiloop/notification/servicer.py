"""NotificationService, not built yet (issue #4):
every RPC answers UNIMPLEMENTED naming that issue."""

from __future__ import annotations

from sentiloop.core.config import Settings
from sentiloop.core.server import ServiceApp
from sentiloop.core.unbuilt import not_built_yet, not_built_yet_stream
from sentiloop.v1 import notification_pb2_grpc as pb_grpc


class NotificationServicer(pb_grpc.NotificationServiceServicer):
    Publish = not_built_yet("Publish", 4)
    ListEvents = not_built_yet("ListEvents", 4)
    Subscribe = not_built_yet_stream("Subscribe", 4)


def create_app(settings: Settings) -> ServiceApp:
    servicer = NotificationServicer()
    return ServiceApp(
        name="notification",
        register=lambda server: pb_grpc.add_NotificationServiceServicer_to_server(servicer, server),
    )
