"""How the other services emit events: best effort, so that their own work never
fails because NotificationService is down or slow."""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc
from google.protobuf import struct_pb2

from sentiloop.core.clients import Clients
from sentiloop.v1 import notification_pb2

log = logging.getLogger("sentiloop.notify")


class Notifier:
    def __init__(self, clients: Clients, timeout: float = 2.0) -> None:
        self._clients = clients
        self._timeout = timeout

    async def emit(self, type: str, subject: str, message: str, **attributes: Any) -> bool:
        """Publishes the event; logs (never raises) when that fails, and says whether it
        was published. Attribute values that are not JSON (datetimes, paths, ...) are
        sent as their ``str()``."""
        try:
            struct = struct_pb2.Struct()
            struct.update(json.loads(json.dumps(attributes, default=str)))
            request = notification_pb2.PublishRequest(
                type=type, subject=subject, message=message, attributes=struct
            )
            await self._clients.notification.Publish(request, timeout=self._timeout)
            return True
        except Exception as error:
            reason = (
                f"{error.code().name}: {error.details()}"
                if isinstance(error, grpc.aio.AioRpcError)
                else repr(error)
            )
            log.warning(
                "could not publish event %s (%s): %s",
                type,
                subject,
                reason,
                extra={"fields": {"event_type": type, "subject": subject}},
            )
            return False
