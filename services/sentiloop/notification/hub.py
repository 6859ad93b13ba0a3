"""What NotificationService does (domain logic; no grpc here): store each event,
then hand it to every publisher; stream stored and live events to subscribers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

from sentiloop.notification.broadcast import Broadcaster, EventPublisher, Subscription
from sentiloop.notification.events import Event, EventLog, check_type_prefixes

log = logging.getLogger("sentiloop.notification")

REPLAY_BATCH = 500
PUBLISHER_TIMEOUT_SECONDS = 5.0


class Notifications:
    """The event log plus its fan-out. ``broadcaster`` (in-process, feeding Subscribe)
    always gets every event; ``publishers`` are further targets (SNS, later)."""

    def __init__(
        self,
        events: EventLog,
        broadcaster: Broadcaster,
        publishers: Sequence[EventPublisher] = (),
    ) -> None:
        self._events = events
        self._broadcaster = broadcaster
        self._publishers = list(publishers)
        # Stores and broadcasts one event at a time, so that subscribers see ids in order.
        self._order = asyncio.Lock()

    async def publish(
        self, type: str, subject: str, message: str, attributes: dict[str, Any]
    ) -> Event:
        """Stores the event durably, then fans it out. Once stored, the fan-out runs to
        the end even if the caller goes away (a subscriber must never miss it)."""
        return await asyncio.shield(self._publish(type, subject, message, attributes))

    async def _publish(
        self, type: str, subject: str, message: str, attributes: dict[str, Any]
    ) -> Event:
        async with self._order:
            event = await asyncio.to_thread(
                self._events.publish, type, subject, message, attributes
            )
            self._broadcaster.deliver(event)
        if self._publishers:
            await asyncio.gather(*(self._publish_to(p, event) for p in self._publishers))
        return event

    async def _publish_to(self, publisher: EventPublisher, event: Event) -> None:
        try:
            await asyncio.wait_for(publisher.publish(event), PUBLISHER_TIMEOUT_SECONDS)
        except Exception:
            log.exception(
                "publisher %s failed for event %d (it is stored all the same)",
                type(publisher).__name__,
                event.id,
                extra={"fields": {"event_id": event.id, "publisher": type(publisher).__name__}},
            )

    async def list(self, type_prefix: str = "", limit: int = 0) -> list[Event]:
        return await asyncio.to_thread(self._events.list, type_prefix, limit)

    def subscribe(self, type_prefixes: Sequence[str] = (), after_id: int = 0) -> EventStream:
        """A stream of the stored events with an id above ``after_id`` (none when it is 0;
        all when it is negative), oldest first, then of live ones: no gap, no duplicate.
        The subscription is live as soon as this returns."""
        prefixes = check_type_prefixes(type_prefixes)
        return EventStream(self._events, self._broadcaster, prefixes, after_id)

    def end_streams(self) -> None:
        """Ends every open stream (after the events already queued for it) and refuses
        new ones: the service is stopping."""
        self._broadcaster.close()


class EventStream:
    """One subscriber's events; use as ``async with hub.subscribe(...) as events``."""

    def __init__(
        self,
        events: EventLog,
        broadcaster: Broadcaster,
        type_prefixes: Sequence[str],
        after_id: int,
    ) -> None:
        self._events = events
        self._broadcaster = broadcaster
        self._type_prefixes = list(type_prefixes)
        self._after_id = after_id
        # Live delivery starts before the replay is read: an event stored meanwhile is
        # both in the replay and in the queue, and the queue's copy is dropped by id.
        self._subscription: Subscription = broadcaster.subscribe(type_prefixes)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._broadcaster.unsubscribe(self._subscription)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[Event]:
        last_id = max(self._after_id, 0)
        if self._after_id != 0:
            while not self._subscription.ended:
                batch = await asyncio.to_thread(
                    self._events.after, last_id, self._type_prefixes, REPLAY_BATCH
                )
                for event in batch:
                    yield event
                    last_id = event.id
                if len(batch) < REPLAY_BATCH:
                    break
        async for event in self._subscription.events():
            if event.id > last_id:
                last_id = event.id
                yield event
