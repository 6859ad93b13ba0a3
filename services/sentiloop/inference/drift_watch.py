"""The drift score on a schedule: every interval, one computation on a thread of its own
(never on the event loop, never per request), its report kept for GetDrift, its numbers in
the metrics, and an event when it crosses the threshold.

Replicas share the prediction log, so each scores the same window (all of the traffic);
the crossings they share too (drift.Crossings), so one crossing is one event."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from sentiloop.core import metrics
from sentiloop.inference.drift import (
    DRIFTED,
    OK,
    Crossings,
    DriftMonitor,
    DriftReport,
    drift_event,
)
from sentiloop.inference.engine import LoadedVersion

NEW_VERSION_CHECK_SECONDS = 2.0
log = logging.getLogger("sentiloop.inference.drift")


class DriftWatcher:
    def __init__(
        self,
        monitor: DriftMonitor,
        served: Callable[[], LoadedVersion | None],
        dataset_hash: Callable[[str], Awaitable[str]],
        notify: Callable[..., Awaitable[bool]],
        interval: float,
        crossings: Crossings,
    ) -> None:
        self._monitor = monitor
        self._crossings = crossings
        self._served = served
        self._dataset_hash = dataset_hash
        self._notify = notify
        self._interval = interval
        # One thread: a computation never overlaps the previous one.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drift")
        self._datasets: dict[str, str] = {}  # version -> the dataset it trained on
        self.report: DriftReport = replace(
            monitor.compute(None, ""), reason="not computed yet", computed_at=None
        )

    async def run(self) -> None:
        while True:
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("computing the drift score failed")
            # A version served since the last score (the first after start, a new
            # activation) is scored within seconds, not an interval later.
            served = self._served()
            changed = (served.version if served else "") != self.report.reference_version
            await asyncio.sleep(
                min(self._interval, NEW_VERSION_CHECK_SECONDS) if changed else self._interval
            )

    async def check_once(self) -> DriftReport:
        loaded = self._served()
        dataset = ""
        if loaded is not None:
            if loaded.version not in self._datasets:
                # Asked once per version ("" for one registered without lineage: the
                # built-in dataset); a registry that does not answer raises, and the next
                # interval asks again rather than scoring against a guess.
                self._datasets = {loaded.version: await self._dataset_hash(loaded.version)}
            dataset = self._datasets[loaded.version]
        report = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._monitor.compute, loaded, dataset
        )
        self.report = report
        if report.state in (OK, DRIFTED):
            metrics.set_drift(
                report.reference_version,
                report.score,
                report.token_divergence,
                report.confidence_shift,
                report.window_size,
            )
        else:
            metrics.clear_drift()
        await self._announce(report)
        return report

    async def _announce(self, report: DriftReport) -> None:
        announced = await asyncio.to_thread(self._crossings.drifted_version)
        event = drift_event(report.state, report.reference_version, announced)
        if event is None:
            return
        now = report.reference_version if report.state == DRIFTED else None
        if not await asyncio.to_thread(self._crossings.move, announced, now):
            return  # another replica announces this crossing
        attributes: dict[str, Any] = {
            "score": round(report.score, 4),
            "token_divergence": round(report.token_divergence, 4),
            "confidence_shift": round(report.confidence_shift, 4),
            "threshold": report.threshold,
            "window_size": report.window_size,
            "reference_dataset": report.reference_dataset,
        }
        if announced is not None:
            attributes["drifted_version"] = announced
        if not await self._notify(event, report.reference_version, report.reason, **attributes):
            # Published best effort: handed back, the crossing is tried again next interval.
            await asyncio.to_thread(self._crossings.move, now, announced)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._crossings.close()
