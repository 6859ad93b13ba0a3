"""Fan-out of stored events beyond the log (domain logic; no grpc here).

``EventPublisher`` is what every fan-out target implements: the in-process
``Broadcaster`` below (always on; it feeds the Subscribe streams) and, later, SNS."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from sentiloop.core.errors import SentiloopError, Unavailable
from sentiloop.notification.events import Event

log = logging.getLogger("sentiloop.notification")


class EventPublisher(Protocol):
    """Receives every event once it is stored, in id order. It must not block for
    long; a failure is logged and does not fail the Publish (the log has the event)."""

    async def publish(self, event: Event) -> None: ...


class Subscription:
    """One subscriber's bounded queue of live events."""

    def __init__(self, type_prefixes: Sequence[str], queue_size: int) -> None:
        self.type_prefixes = tuple(type_prefixes)
        self._queue_size = queue_size
        # Unbounded underneath: offer() keeps it to queue_size events, and end()
        # can always add the end marker.
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._ended = False
        self._failure: SentiloopError | None = None

    @property
    def ended(self) -> bool:
        return self._ended

    def check(self) -> None:
        """Raises the reason this subscription failed, if it did."""
        if self._failure is not None:
            raise self._failure

    def offer(self, event: Event) -> bool:
        """Queues the event without waiting; False when the subscriber fell behind."""
        if self._ended:
            return True
        if self._queue.qsize() >= self._queue_size:
            return False
        self._queue.put_nowait(event)
        return True

    def end(self, failure: SentiloopError | None = None) -> None:
        """Ends the stream: after what is queued when ``failure`` is None, at once otherwise."""
        if self._ended:
            return
        self._ended = True
        self._failure = failure
        if failure is not None:
            while not self._queue.empty():
                self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def events(self) -> AsyncIterator[Event]:
        """Live events until the subscription ends (raising its failure, if any)."""
        while True:
            event = await self._queue.get()
            if event is None:
                self.check()
                return
            yield event


class Broadcaster:
    """The in-process publisher behind Subscribe: one bounded queue per subscriber.

    Delivery never waits: a subscriber whose queue is full has fallen behind and its
    stream ends with ``Unavailable`` (it can resubscribe with ``after_id`` to catch up),
    so a slow subscriber holds up neither Publish nor the other subscribers."""

    def __init__(self, queue_size: int) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._queue_size = queue_size
        self._subscriptions: set[Subscription] = set()
        self._closed = False

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    async def publish(self, event: Event) -> None:
        self.deliver(event)

    def deliver(self, event: Event) -> None:
        for subscription in list(self._subscriptions):
            if not event.matches(subscription.type_prefixes):
                continue
            if not subscription.offer(event):
                self._subscriptions.discard(subscription)
                log.warning(
                    "subscriber fell behind; ending its stream",
                    extra={"fields": {"queue_size": self._queue_size, "event_id": event.id}},
                )
                subscription.end(
                    Unavailable(
                        f"subscriber fell behind: more than {self._queue_size} events were"
                        " waiting for it; subscribe again with after_id set to the id of"
                        " the last event it received to catch up"
                    )
                )

    def subscribe(self, type_prefixes: Sequence[str] = ()) -> Subscription:
        if self._closed:
            raise Unavailable("the notification service is shutting down")
        subscription = Subscription(type_prefixes, self._queue_size)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        subscription.end()

    def close(self) -> None:
        """Ends every stream (cleanly, after what is already queued) and refuses new ones."""
        self._closed = True
        for subscription in list(self._subscriptions):
            self.unsubscribe(subscription)
