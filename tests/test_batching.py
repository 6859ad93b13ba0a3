"""The dynamic batcher's mechanics, with an engine whose pace the test controls: a
blocking function that answers each text with its upper-case form once it is let go.
(Over the wire with the real model: tests/test_inference_batching.py.)"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from sentiloop.core.errors import ResourceExhausted, Unavailable
from sentiloop.inference.batching import Batcher


class Engine:
    """Answers a batch once ``release`` is set; records every batch it got."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()
        self.busy = threading.Event()

    def __call__(self, texts: list[str]) -> list[str]:
        self.batches.append(list(texts))
        self.busy.set()
        self.release.wait(10)
        if any("boom" in text for text in texts):
            raise Unavailable("the engine failed on this batch")
        return [text.upper() for text in texts]


async def started(
    engine: Engine, max_batch: int = 8, max_queue: int = 64, in_flight: int = 1
) -> tuple[Batcher[str], asyncio.Task[None], ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(in_flight)
    batcher: Batcher[str] = Batcher(
        engine, executor, max_batch=max_batch, max_queue=max_queue, max_in_flight=in_flight
    )
    return batcher, asyncio.create_task(batcher.run()), executor


async def hold(engine: Engine, batcher: Batcher[str]) -> asyncio.Task[list[str]]:
    """Keeps the engine busy with one request until ``engine.release`` is set."""
    engine.release.clear()
    engine.busy.clear()
    blocker = asyncio.create_task(batcher.predict(["first"]))
    await asyncio.to_thread(engine.busy.wait, 5)
    return blocker


def test_an_idle_engine_takes_a_request_at_once_and_each_caller_gets_its_own() -> None:
    async def scenario() -> None:
        engine = Engine()
        batcher, task, executor = await started(engine)
        assert await batcher.predict(["a", "b"]) == ["A", "B"]
        assert engine.batches == [["a", "b"]]
        task.cancel()
        executor.shutdown()

    asyncio.run(scenario())


def test_requests_that_arrive_while_the_engine_works_share_the_next_batch() -> None:
    async def scenario() -> None:
        engine = Engine()
        batcher, task, executor = await started(engine, max_batch=8)
        blocker = await hold(engine, batcher)
        callers = [asyncio.create_task(batcher.predict([f"t{i}"])) for i in range(12)]
        await asyncio.sleep(0.05)
        engine.release.set()
        answers = await asyncio.gather(*callers)
        assert answers == [[f"T{i}"] for i in range(12)]
        assert await blocker == ["FIRST"]
        # One batch for the blocker, then 12 waiting texts in batches of at most 8.
        assert [len(b) for b in engine.batches] == [1, 8, 4]
        task.cancel()
        executor.shutdown()

    asyncio.run(scenario())


def test_a_failing_batch_fails_only_its_callers() -> None:
    async def scenario() -> None:
        engine = Engine()
        batcher, task, executor = await started(engine, max_batch=2)
        blocker = await hold(engine, batcher)
        doomed = asyncio.create_task(batcher.predict(["boom"]))
        neighbour = asyncio.create_task(batcher.predict(["ok"]))  # same batch as boom
        later = asyncio.create_task(batcher.predict(["fine", "too"]))  # the next batch
        await asyncio.sleep(0.05)
        engine.release.set()
        await blocker
        with pytest.raises(Unavailable):
            await doomed
        with pytest.raises(Unavailable):
            await neighbour
        assert await later == ["FINE", "TOO"]
        task.cancel()
        executor.shutdown()

    asyncio.run(scenario())


def test_a_cancelled_caller_leaves_the_queue() -> None:
    async def scenario() -> None:
        engine = Engine()
        batcher, task, executor = await started(engine)
        blocker = await hold(engine, batcher)
        gone = asyncio.create_task(batcher.predict(["gone"]))
        stays = asyncio.create_task(batcher.predict(["stays"]))
        await asyncio.sleep(0.05)
        gone.cancel()
        await asyncio.sleep(0)
        engine.release.set()
        await blocker
        assert await stays == ["STAYS"]
        assert all("gone" not in batch for batch in engine.batches)
        task.cancel()
        executor.shutdown()

    asyncio.run(scenario())


def test_a_full_queue_refuses_at_once() -> None:
    async def scenario() -> None:
        engine = Engine()
        batcher, task, executor = await started(engine, max_queue=3)
        blocker = await hold(engine, batcher)
        waiting = asyncio.create_task(batcher.predict(["a", "b"]))
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted, match="2 texts are waiting"):
            await batcher.predict(["c", "d"])
        assert await batcher_answer_after_release(engine, waiting) == ["A", "B"]
        await blocker
        task.cancel()
        executor.shutdown()

    asyncio.run(scenario())


async def batcher_answer_after_release(
    engine: Engine, waiting: asyncio.Task[list[str]]
) -> list[str]:
    engine.release.set()
    return await waiting


def test_an_engine_that_takes_concurrent_calls_gets_batches_in_parallel() -> None:
    # A SageMaker endpoint: several invocations may run at once.
    async def scenario() -> None:
        engine = Engine()
        batcher, task, executor = await started(engine, in_flight=2)
        blocker = await hold(engine, batcher)
        second = asyncio.create_task(batcher.predict(["second"]))
        await asyncio.to_thread(lambda: wait_until(lambda: len(engine.batches) == 2))
        assert engine.batches == [["first"], ["second"]]  # not held up by the first
        engine.release.set()
        assert await second == ["SECOND"] and await blocker == ["FIRST"]
        task.cancel()
        executor.shutdown()

    asyncio.run(scenario())


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.01)
