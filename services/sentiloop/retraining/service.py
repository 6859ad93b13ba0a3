"""Retraining: snapshot the data, train a candidate, put it through the promotion
gate, register it either way and promote it only when the gate says so (domain
logic; the mesh is reached through the MeshPort)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

from sentiloop.core import metrics
from sentiloop.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from sentiloop.core.validation import quoted
from sentiloop.core.vocabulary import EventType
from sentiloop.data.datasets import StoredDataset
from sentiloop.data.scoring import Comparison
from sentiloop.retraining.gate import Decision, GateRules, decide
from sentiloop.retraining.runs import HEARTBEAT_SECONDS, LEASE_SECONDS, Run, RunStore
from sentiloop.retraining.snapshot import Snapshot
from sentiloop.retraining.trigger import (
    READY,
    Drift,
    LastRuns,
    Pending,
    TriggerRules,
    TriggerState,
    trigger_state,
)

log = logging.getLogger("sentiloop.retraining")

MIN_FEEDBACK = 10
RECIPES = ("default", "naive")


@dataclass(frozen=True)
class Policy:
    enabled: bool
    # When a run starts: enough new labels, settled, and the cooldown (retraining.trigger).
    trigger: TriggerRules
    # The gate's evidence: the job trains this many fold models first, so that every
    # feedback label gets an out-of-fold prediction (retraining.gate).
    folds: int
    gate: GateRules
    preset: str
    seed: int  # of runs that do not name one (the policy's): reproducible runs
    # The default recipe: fine-tune the active model on the feedback, each label weighing
    # alike, plus as many replayed original rows (tuned on tweets and editorials with
    # benchmarks/recipe_search.py, movies kept aside; measured in benchmarks/feedback_loop.py;
    # the values are the settings' defaults, core.config).
    replay_ratio: float
    balance_feedback: bool
    feedback_weight: float
    epochs: float
    learning_rate: float


@dataclass(frozen=True)
class JobResult:
    status: str
    failure_reason: str
    artifact: str
    test_metrics: dict[str, Any]
    validation_accuracy: float


@dataclass(frozen=True)
class FeedbackCounts:
    total: int
    pending: Pending  # what came after the count asked about


class ActiveModel(NamedTuple):
    version: str
    path: str
    dataset_hash: str  # what it was trained on: retraining merges feedback into its dataset


class MeshPort(Protocol):
    async def feedback_counts(self, after_count: int = 0) -> FeedbackCounts: ...
    async def export_feedback(self) -> bytes: ...
    async def active_model(self) -> ActiveModel | None: ...
    async def base_dataset(self, dataset_hash: str) -> StoredDataset: ...
    async def snapshot(self, base: StoredDataset, feedback: bytes) -> Snapshot: ...
    async def prune_snapshots(self) -> list[str]:
        """Deletes the snapshots no model version references; returns their hashes."""
        ...

    async def start_training(
        self, channels: dict[str, str], dataset_hash: str, hyperparameters: dict[str, str]
    ) -> str: ...
    async def wait_for_job(self, job_name: str) -> JobResult: ...
    async def compare(
        self, candidate: str, baseline: str, seed: int
    ) -> tuple[Comparison, Comparison | None]: ...
    async def register(self, job_name: str, gate: dict[str, Any], activate: bool) -> str: ...
    async def notify(self, type: str, subject: str, message: str, **attributes: Any) -> object: ...
    async def drift(self) -> Drift | None:
        """InferenceService's drift state; None when it cannot be read."""
        ...


@dataclass(frozen=True)
class Outcome:
    message: str
    job_name: str
    test_metrics: dict[str, Any]
    validation_accuracy: float = 0.0
    model_version: str = ""
    decision: Decision | None = None
    feedback_samples: int = 0


class Retrainer:
    def __init__(self, runs: RunStore, mesh: MeshPort, policy: Policy) -> None:
        self._runs = runs
        self._mesh = mesh
        self.policy = policy
        self._tasks: set[asyncio.Task[Any]] = set()

    async def retrain(
        self,
        trigger: str = "manual",
        wait: bool = True,
        force: bool = False,
        recipe: str = "",
        seed: int = 0,
    ) -> Outcome:
        recipe = recipe or "default"
        if recipe not in RECIPES:
            choices = ", ".join(RECIPES)
            raise InvalidArgument({"recipe": f"{quoted(recipe)} is not one of {choices}"})
        seed = seed or self.policy.seed
        total = (await self._mesh.feedback_counts()).total
        if total < MIN_FEEDBACK:
            raise FailedPrecondition(
                f"retraining needs at least {MIN_FEEDBACK} labelled feedback samples;"
                f" there are {total}"
            )
        active = await self._mesh.active_model()
        if active is None:
            raise FailedPrecondition("no model is active yet: bootstrap one before retraining")
        run = await asyncio.to_thread(self._runs.begin, trigger, total, recipe, seed, force)
        # The claim on the run is renewed while this process works on it; other replicas
        # take a run that is no longer renewed for abandoned (runs.py).
        renewing = asyncio.ensure_future(self._renew(run.id))
        self._tasks.add(renewing)
        renewing.add_done_callback(self._tasks.discard)
        try:
            job_name, snapshot = await self._start(run, active)
        except BaseException as error:
            renewing.cancel()
            metrics.count_retraining_run("error")
            await asyncio.to_thread(self._runs.finish, run.id, "failed", {"error": str(error)})
            raise
        finished = asyncio.ensure_future(self._finish(run.id, job_name, snapshot, active.version))
        self._tasks.add(finished)
        finished.add_done_callback(self._tasks.discard)
        finished.add_done_callback(lambda _: renewing.cancel())
        if not wait:
            return Outcome(
                message=f"Retraining started: training job {job_name}; watch it with"
                f" GET /model-init/watch/{job_name}",
                job_name=job_name,
                test_metrics={},
                feedback_samples=snapshot.feedback,
            )
        # Shielded: a caller that goes away does not abandon the run half way.
        return await asyncio.shield(finished)

    async def _renew(self, run_id: int) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                if not await asyncio.to_thread(self._runs.heartbeat, run_id):
                    log.warning("retraining run %s is no longer this process's to renew", run_id)
                    return
            except Exception:
                log.exception("renewing retraining run %s failed", run_id)

    async def _start(self, run: Run, active: ActiveModel) -> tuple[str, Snapshot]:
        base = await self._mesh.base_dataset(active.dataset_hash)
        feedback = await self._mesh.export_feedback()
        snapshot = await self._mesh.snapshot(base, feedback)
        hyperparameters = {
            "preset": self.policy.preset,
            "seed": str(run.seed),
            "cross_fit_folds": str(self.policy.folds),
        }
        if run.recipe == "default":
            hyperparameters |= {
                "init_model_dir": active.path,
                "replay_ratio": str(self.policy.replay_ratio),
                "balance_feedback": str(self.policy.balance_feedback).lower(),
                "feedback_weight": str(self.policy.feedback_weight),
                "epochs": str(self.policy.epochs),
                "learning_rate": str(self.policy.learning_rate),
            }
        await self._mesh.notify(
            EventType.RETRAINING_TRIGGERED,
            f"run-{run.id}",
            f"retraining ({run.trigger}) on {snapshot.feedback} feedback samples",
            trigger=run.trigger,
            recipe=run.recipe,
            feedback_total=run.feedback_total,
            folds=self.policy.folds,
            dataset_hash=snapshot.content_hash,
        )
        job_name = await self._mesh.start_training(
            snapshot.channels, snapshot.content_hash, hyperparameters
        )
        await asyncio.to_thread(self._runs.set_job, run.id, job_name)
        return job_name, snapshot

    async def _finish(
        self, run_id: int, job_name: str, snapshot: Snapshot, baseline: str
    ) -> Outcome:
        run = await asyncio.to_thread(self._runs.get, run_id)
        try:
            outcome = await self._gate(run, job_name, snapshot, baseline)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.exception("retraining run %s failed", run_id)
            metrics.count_retraining_run("error")
            await self._prune()
            await asyncio.to_thread(self._runs.finish, run_id, "failed", {"error": str(error)})
            raise
        # The gate's verdict, or why there was none to give.
        metrics.count_retraining_run(
            outcome.decision.decision if outcome.decision else "training_failed"
        )
        await self._prune()
        status = "completed" if outcome.model_version else "failed"
        await asyncio.to_thread(
            self._runs.finish, run_id, status, {"message": outcome.message, "job": job_name}
        )
        return outcome

    async def _prune(self) -> None:
        """Retention: while this run still holds the single-flight slot (no other run can
        be using a snapshot), snapshots that no model version references are deleted: a
        failed job's, typically; every candidate, promoted or not, keeps its own."""
        try:
            deleted = await self._mesh.prune_snapshots()
        except Exception:
            log.exception("pruning retraining snapshots failed")
            return
        if deleted:
            log.info("deleted %d unreferenced snapshot(s)", len(deleted))

    async def _gate(self, run: Run, job_name: str, snapshot: Snapshot, baseline: str) -> Outcome:
        result = await self._mesh.wait_for_job(job_name)
        if result.status != "Completed":
            return Outcome(
                message=f"Retraining failed: training job {job_name} {result.status}:"
                f" {result.failure_reason}",
                job_name=job_name,
                test_metrics={},
                feedback_samples=snapshot.feedback,
            )
        test, feedback = await self._mesh.compare(result.artifact, baseline, run.seed)
        decision = decide(test, feedback, baseline, self.policy.gate, run.force)
        metrics.count_gate_decision(decision.decision)
        version = await self._mesh.register(job_name, decision.as_dict(), decision.promoted)
        event = {"promoted": EventType.MODEL_PROMOTED, "forced": EventType.MODEL_PROMOTED}.get(
            decision.decision, EventType.MODEL_REJECTED
        )
        await self._mesh.notify(
            event,
            version,
            decision.reason,
            decision=decision.decision,
            baseline_version=baseline,
            test_delta_macro_f1=test.delta_macro_f1,
            feedback_delta_macro_f1=feedback.delta_macro_f1 if feedback else None,
        )
        verdict = {
            "promoted": f"promoted: it now serves as {version}",
            "forced": f"promoted by force: it now serves as {version}",
            "rejected": f"rejected by the gate; {baseline} keeps serving",
        }[decision.decision]
        return Outcome(
            message=f"Retraining completed; the candidate {version} was {verdict}"
            f" ({decision.reason})",
            job_name=job_name,
            test_metrics=result.test_metrics,
            validation_accuracy=result.validation_accuracy,
            model_version=version,
            decision=decision,
            feedback_samples=snapshot.feedback,
        )

    async def recover(self, *, starting: bool = False) -> None:
        """A run whose process went away ends as failed, which frees the slot; its training
        job finishes on its own and can be deployed by hand. On SQLite one process owns
        the file, so at its start every run left running is an interrupted one; on
        PostgreSQL another replica may be running it, so only a run its owner stopped
        renewing is (``starting`` or not: a replica that dies mid-run is found by the
        others' next look)."""
        exclusive = starting and self._runs.database.engine == "sqlite"
        ended = await asyncio.to_thread(
            self._runs.interrupt, stale_after=None if exclusive else LEASE_SECONDS
        )
        for run in ended:
            log.warning("retraining run %s was interrupted: %s", run.id, run.result)

    # ---- the automatic policy

    async def trigger(self) -> tuple[TriggerState, Pending, Drift | None]:
        """What the policy would do now, the labels it counts (from the stores) and the
        drift it read. Drift is read from InferenceService on every check rather than
        followed as events: it is a level, not an edge, so each check sees the current
        one, including after a restart or a lost event (events are best effort)."""
        last = await asyncio.to_thread(self._runs.last)
        counts = await self._mesh.feedback_counts(last.feedback_total if last else 0)
        running = await asyncio.to_thread(self._runs.running)
        last_auto = await asyncio.to_thread(self._runs.last_automatic)
        drift = await self._mesh.drift()
        state = trigger_state(
            datetime.now(UTC),
            self.policy.trigger,
            counts.pending,
            enabled=self.policy.enabled,
            running_job=running.job_name if running else None,
            last=LastRuns(
                automatic_started_at=last_auto.started_at if last_auto else None,
                any_ended_at=last.ended_at if last else None,
            ),
            drift=drift,
            total_feedback=counts.total,
        )
        return state, counts.pending, drift

    async def check_policy(self) -> bool:
        """Starts a run when the policy says so; True when it did."""
        if not self.policy.enabled:
            return False
        state, _, _ = await self.trigger()
        if state.state != READY:
            return False
        try:
            await self.retrain(trigger=state.trigger or "policy", wait=False)
        except AlreadyExists as error:
            # Another replica's policy saw the same labels first.
            log.info("automatic retraining did not start: %s", error)
            return False
        except Exception as error:
            log.warning("automatic retraining did not start: %s", error)
            return False
        return True

    async def run_policy(self, interval: float) -> None:
        while True:
            try:
                await self.recover()
                await self.check_policy()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("checking the retraining policy failed")
            await asyncio.sleep(interval)

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def running_job(self) -> str:
        run = await asyncio.to_thread(self._runs.running)
        return run.job_name if run else ""
