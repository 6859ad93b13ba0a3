"""Dynamic batching (domain logic; no grpc here).

Every Predict and PredictBatch joins one queue; one dispatcher hands the model a batch at
a time. The model runs on one thread (torch already uses every core for a batch), so while
it works on one batch the next one forms from whatever arrives: throughput grows with load
instead of only the latency. When the model is idle a request is dispatched at once (no
added latency at low load), unless a wait to fill the batch is configured.

Each caller gets exactly its own answers; a batch that fails fails only its callers; a
caller that is cancelled or whose deadline passes leaves the queue before its batch forms;
a full queue refuses at once (ResourceExhausted) instead of growing without bound. The
predict path sorts a batch's texts by token length before it pads, so mixing requests of
different lengths costs little padding."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from sentiloop.core import metrics
from sentiloop.core.errors import ResourceExhausted

Answer = TypeVar("Answer")


@dataclass
class _Waiting(Generic[Answer]):
    texts: list[str]
    future: asyncio.Future[list[Answer]]
    length: float = field(init=False)
    enqueued: float = field(init=False)

    def __post_init__(self) -> None:
        self.length = sum(len(text) for text in self.texts) / len(self.texts)
        self.enqueued = time.perf_counter()


class Batcher(Generic[Answer]):
    def __init__(
        self,
        predict: Callable[[list[str]], Sequence[Answer]],
        executor: Executor,
        max_batch: int,
        max_queue: int,
        max_wait: float = 0.0,
        max_in_flight: int = 1,
    ) -> None:
        """``predict`` answers a list of texts in order (blocking; it runs on
        ``executor``); ``max_batch`` texts go in one batch at most (a larger request runs
        alone); ``max_queue`` texts may wait at most; ``max_wait`` seconds is how long an
        idle model waits for a batch to fill (0: not at all); ``max_in_flight`` batches
        run at once (1 for an in-process model, more for a remote endpoint)."""
        self._predict = predict
        self._executor = executor
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._max_wait = max_wait
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._pending: list[_Waiting[Answer]] = []
        self._queued = 0
        self._arrived = asyncio.Event()

    async def predict(self, texts: list[str]) -> list[Answer]:
        """The answers to ``texts``, in order, from a batch shared with other callers."""
        if self._queued + len(texts) > self._max_queue:
            raise ResourceExhausted(
                f"{self._queued} texts are waiting to be predicted (the limit is"
                f" {self._max_queue}); retry shortly"
            )
        waiting: _Waiting[Answer] = _Waiting(texts, asyncio.get_running_loop().create_future())
        self._pending.append(waiting)
        self._queued += len(texts)
        metrics.set_queue_depth(self._queued)
        self._arrived.set()
        # A cancelled caller (a client gone, a deadline passed) cancels the future, and
        # the dispatcher drops it from the queue.
        return await waiting.future

    async def run(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._pending:
                # A free engine first: what arrives meanwhile joins the next batch.
                await self._slots.acquire()
                if self._max_wait > 0 and self._queued < self._max_batch:
                    await asyncio.sleep(self._max_wait)
                batch = self._take()
                if not batch:
                    self._slots.release()
                    continue
                task = asyncio.create_task(self._dispatch(batch))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)

    async def _dispatch(self, batch: list[_Waiting[Answer]]) -> None:
        texts = [text for waiting in batch for text in waiting.texts]
        try:
            answers = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._predict, texts
            )
        except Exception as error:  # the batch's callers get it; the others never
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(error)
            return
        finally:
            self._slots.release()
        start = 0
        for waiting in batch:
            end = start + len(waiting.texts)
            if not waiting.future.done():
                waiting.future.set_result(list(answers[start:end]))
            start = end

    def _take(self) -> list[_Waiting[Answer]]:
        """The next batch: the oldest live request, then the waiting ones closest to it in
        text length while they fit (padding stays small and no request waits forever)."""
        live = [w for w in self._pending if not w.future.done()]
        self._pending = []
        self._queued = sum(len(w.texts) for w in live)
        if not live:
            return []
        oldest, rest = live[0], live[1:]
        batch, size = [oldest], len(oldest.texts)
        for waiting in sorted(rest, key=lambda w: abs(w.length - oldest.length)):
            if size + len(waiting.texts) <= self._max_batch:
                batch.append(waiting)
                size += len(waiting.texts)
        chosen = {id(w) for w in batch}
        self._pending = [w for w in rest if id(w) not in chosen]
        self._queued -= size
        taken = time.perf_counter()
        metrics.observe_batch(size, (taken - waiting.enqueued for waiting in batch))
        metrics.set_queue_depth(self._queued)
        return batch
