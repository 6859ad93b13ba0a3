"""Following events: a service that must react to what another one did (InferenceService to
an activation) subscribes to NotificationService instead of polling the other service."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import grpc

from sentiloop.core.clients import Clients
from sentiloop.v1 import notification_pb2

log = logging.getLogger("sentiloop.follow")


class EventFollower:
    """Calls ``on_event`` for every event of ``type_prefixes``, and ``on_live`` each time a
    subscription goes live (the caller catches up there on whatever a gap hid: events are
    published best effort). After a dropped stream or a restart of NotificationService it
    subscribes again from the last event id it saw, backing off while the service is away."""

    def __init__(
        self,
        clients: Clients,
        type_prefixes: Sequence[str],
        on_event: Callable[[notification_pb2.Event], Awaitable[None]],
        on_live: Callable[[], Awaitable[None]],
        max_delay: float = 10.0,
    ) -> None:
        self._clients = clients
        self._types = list(type_prefixes)
        self._on_event = on_event
        self._on_live = on_live
        self._max_delay = max_delay
        self.last_id = 0  # 0 subscribes to new events only; then resume after this id

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                call = self._clients.notification.Subscribe(
                    notification_pb2.SubscribeRequest(
                        type_prefixes=self._types, after_id=self.last_id
                    )
                )
                await call.initial_metadata()  # the subscription is live from here on
                delay = 0.5
                await self._on_live()
                async for response in call:
                    self.last_id = max(self.last_id, response.event.id)
                    await self._on_event(response.event)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as error:
                log.info("event stream ended (%s); subscribing again", error.code().name)
            except Exception:
                log.exception("following events failed; subscribing again")
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_delay)
