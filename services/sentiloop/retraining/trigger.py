"""When the automatic policy starts a run: once enough labels wait, and they have settled.

Labels come in bursts (a labelling session, an import). Snapshotting the first part of a
burst trains on too few labels for the gate to judge and leaves the rest waiting, so the
policy waits for a quiet period with no new label (but never longer than a maximum after
the first waiting label). The cooldown between automatic runs stops a trickle of labels
from retraining back to back; it does not hold back labels that were already waiting
when the previous run ended: those start the next run as soon as it is over.

A pure function of what the stores say, so a restart changes nothing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

OFF = "off"
RUNNING = "running"
COLLECTING = "collecting"
COOLING_DOWN = "cooling_down"
SETTLING = "settling"
READY = "ready"


@dataclass(frozen=True)
class Pending:
    """The labels stored since the last run's snapshot."""

    count: int
    first_at: datetime | None  # when the first of them was stored
    latest_at: datetime | None  # when the newest was stored


@dataclass(frozen=True)
class TriggerRules:
    min_new_feedback: int
    quiet_seconds: float
    max_wait_seconds: float
    cooldown_seconds: float


@dataclass(frozen=True)
class LastRuns:
    """When the last automatic run started (the cooldown counts from it), and when the
    last run of any kind ended (labels that waited for it are a backlog)."""

    automatic_started_at: datetime | None
    any_ended_at: datetime | None


@dataclass(frozen=True)
class TriggerState:
    state: str  # one of the constants above
    reason: str
    next_run_at: datetime | None = None  # when it will run, once that is known


def trigger_state(
    now: datetime,
    rules: TriggerRules,
    pending: Pending,
    *,
    enabled: bool,
    running_job: str | None,
    last: LastRuns,
) -> TriggerState:
    if not enabled:
        return TriggerState(OFF, "automatic retraining is off (SENTILOOP_RETRAIN_AUTO)")
    if running_job is not None:
        return TriggerState(
            RUNNING,
            f"a run is in progress (training job {running_job or 'starting'});"
            f" {pending.count} labels wait for the next",
        )
    if pending.count < rules.min_new_feedback or pending.first_at is None:
        return TriggerState(
            COLLECTING,
            f"{pending.count} of {rules.min_new_feedback} new labels since the last run",
        )
    settled_at = pending.first_at + timedelta(seconds=rules.max_wait_seconds)
    if pending.latest_at is not None:
        settled_at = min(settled_at, pending.latest_at + timedelta(seconds=rules.quiet_seconds))
    cooled_at = now
    backlog = last.any_ended_at is not None and pending.first_at <= last.any_ended_at
    if last.automatic_started_at is not None and not backlog:
        cooled_at = last.automatic_started_at + timedelta(seconds=rules.cooldown_seconds)
    run_at = max(settled_at, cooled_at)
    if now >= run_at:
        return TriggerState(READY, f"{pending.count} new labels have settled", now)
    if cooled_at > now and cooled_at >= settled_at:
        return TriggerState(
            COOLING_DOWN,
            f"{pending.count} new labels; the last automatic run started less than"
            f" {rules.cooldown_seconds:g} s ago",
            run_at,
        )
    return TriggerState(
        SETTLING,
        f"{pending.count} new labels, still arriving: waiting for {rules.quiet_seconds:g} s"
        f" without a new one (at most {rules.max_wait_seconds:g} s after the first)",
        run_at,
    )
