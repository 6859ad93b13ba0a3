"""NotificationService: protobuf <-> the event log and its fan-out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from sentiloop.core.config import Settings
from sentiloop.core.convert import timestamp
from sentiloop.core.db import open_service_database
from sentiloop.core.server import ServiceApp
from sentiloop.core.validation import page_size
from sentiloop.notification.broadcast import Broadcaster, EventPublisher
from sentiloop.notification.events import Event, EventLog
from sentiloop.notification.hub import Notifications
from sentiloop.notification.sns import open_sns_publisher
from sentiloop.v1 import notification_pb2 as pb
from sentiloop.v1 import notification_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def to_proto(event: Event) -> pb.Event:
    attributes = struct_pb2.Struct()
    attributes.update(event.attributes)
    return pb.Event(
        id=event.id,
        type=event.type,
        subject=event.subject,
        message=event.message,
        attributes=attributes,
        created_at=timestamp(event.created_at),
    )


def attributes_of(struct: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(struct)


class NotificationServicer(pb_grpc.NotificationServiceServicer):
    def __init__(self, notifications: Notifications) -> None:
        self._notifications = notifications

    async def Publish(self, request: pb.PublishRequest, context: Context) -> pb.PublishResponse:
        event = await self._notifications.publish(
            request.type, request.subject, request.message, attributes_of(request.attributes)
        )
        return pb.PublishResponse(event=to_proto(event))

    async def ListEvents(
        self, request: pb.ListEventsRequest, context: Context
    ) -> pb.ListEventsResponse:
        limit = page_size(request.page_size)
        events = await self._notifications.list(request.type_prefix, limit)
        return pb.ListEventsResponse(events=[to_proto(e) for e in events])

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Context
    ) -> AsyncIterator[pb.SubscribeResponse]:
        async with self._notifications.subscribe(
            list(request.type_prefixes), request.after_id
        ) as events:
            # The response headers tell the client that the subscription is live: an
            # event published after they arrive is in the stream (Envoy and HTTP
            # clients see them at once, not only with the first event).
            await context.send_initial_metadata(())
            async for event in events:
                yield pb.SubscribeResponse(event=to_proto(event))


def configured_publishers(settings: Settings) -> list[EventPublisher]:
    """Fan-out targets besides the in-process broadcaster: the SNS topic that
    ``SENTILOOP_SNS_TOPIC_ARN`` names, checked at start (a topic that does not exist or
    credentials that are missing stop the service with a configuration error)."""
    if not settings.sns_topic_arn:
        return []
    return [open_sns_publisher(settings.sns_topic_arn)]


def create_app(settings: Settings) -> ServiceApp:
    events = EventLog(open_service_database(settings, "notification", "events.db"))
    notifications = Notifications(
        events, Broadcaster(settings.notification_queue_size), configured_publishers(settings)
    )
    servicer = NotificationServicer(notifications)

    async def before_stop() -> None:
        # Subscribe streams never end on their own: end them so that stopping the
        # server does not wait out the whole grace period.
        notifications.end_streams()

    async def shutdown() -> None:
        events.close()

    return ServiceApp(
        name="notification",
        register=lambda server: pb_grpc.add_NotificationServiceServicer_to_server(servicer, server),
        before_stop=before_stop,
        shutdown=shutdown,
    )
