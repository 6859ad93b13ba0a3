"""When the automatic policy starts a run: once enough labels wait, and they have settled.

Labels come in bursts (a labelling session, an import). Snapshotting the first part of a
burst trains on too few labels for the gate to judge and leaves the rest waiting, so the
policy waits for a quiet period with no new label (but never longer than a maximum after
the first waiting label). The cooldown between automatic runs stops a trickle of labels
from retraining back to back; it does not hold back labels that were already waiting
when the previous run ended: those start the next run as soon as it is over.

Drift (InferenceService's drift score at or over its threshold) waives the count: the
served model is answering texts unlike its training data, so the labels that wait are
worth a run now rather than after ``min_new_feedback`` of them. It waives nothing else:
a run still needs ``min_total_feedback`` labels in all and at least one new one (a run on
nothing new would train the same model again, and again every cooldown while the drift
lasts), and the labels still settle and the cooldown still holds.

A pure function of what the stores say, so a restart changes nothing."""

from __future__ import annotations

from dataclasses import dataclass, replace
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
    on_drift: bool = False  # detected drift waives min_new_feedback
    min_total_feedback: int = 10  # labels in all that any run needs


@dataclass(frozen=True)
class Drift:
    """What InferenceService says of its recent inputs (GET /predict/drift)."""

    state: str  # "ok", "drifted", "not_enough_traffic", "no_model"
    score: float
    threshold: float

    @property
    def detected(self) -> bool:
        return self.state == "drifted"

    def describe(self) -> str:
        if self.state in ("ok", "drifted"):
            relation = "at or over" if self.detected else "under"
            return f"drift score {self.score:.3f}, {relation} its threshold {self.threshold:g}"
        return f"drift: {self.state.replace('_', ' ')}"


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
    trigger: str = ""  # what the run it waits for is triggered by: "policy" or "drift"


def trigger_state(
    now: datetime,
    rules: TriggerRules,
    pending: Pending,
    *,
    enabled: bool,
    running_job: str | None,
    last: LastRuns,
    drift: Drift | None = None,
    total_feedback: int = 0,
) -> TriggerState:
    if not enabled:
        return TriggerState(OFF, "automatic retraining is off (SENTILOOP_RETRAIN_AUTO)")
    found = _labels_state(now, rules, pending, running_job, last, drift, total_feedback)
    if drift is None:
        if not rules.on_drift:
            return found
        return replace(
            found, reason=f"{found.reason}; drift unknown (InferenceService did not say)"
        )
    return replace(found, reason=f"{found.reason}; {_drift_note(rules, drift)}")


def _drift_note(rules: TriggerRules, drift: Drift) -> str:
    if drift.detected and not rules.on_drift:
        return f"{drift.describe()} (drift-triggered runs are off: SENTILOOP_RETRAIN_ON_DRIFT)"
    return drift.describe()


def _labels_state(
    now: datetime,
    rules: TriggerRules,
    pending: Pending,
    running_job: str | None,
    last: LastRuns,
    drift: Drift | None,
    total_feedback: int,
) -> TriggerState:
    if running_job is not None:
        return TriggerState(
            RUNNING,
            f"a run is in progress (training job {running_job or 'starting'});"
            f" {pending.count} labels wait for the next",
        )
    counted = pending.count >= rules.min_new_feedback and pending.first_at is not None
    by_drift = (
        not counted
        and rules.on_drift
        and drift is not None
        and drift.detected
        and pending.first_at is not None
        and total_feedback >= rules.min_total_feedback
    )
    if not counted and not by_drift:
        collecting = f"{pending.count} of {rules.min_new_feedback} new labels since the last run"
        if rules.on_drift and drift is not None and drift.detected:
            if total_feedback < rules.min_total_feedback:
                collecting += (
                    f"; drift detected, but a run needs at least {rules.min_total_feedback}"
                    f" labels in all (there are {total_feedback})"
                )
            else:
                collecting += "; drift detected: the first new label starts a run"
        return TriggerState(COLLECTING, collecting)
    assert pending.first_at is not None
    trigger = "drift" if by_drift else "policy"
    labels = f"{pending.count} new labels" + (
        f" (drift waives the {rules.min_new_feedback} the policy waits for)" if by_drift else ""
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
        return TriggerState(READY, f"{labels} have settled", now, trigger)
    if cooled_at > now and cooled_at >= settled_at:
        return TriggerState(
            COOLING_DOWN,
            f"{labels}; the last automatic run started less than {rules.cooldown_seconds:g} s ago",
            run_at,
            trigger,
        )
    return TriggerState(
        SETTLING,
        f"{labels}, still arriving: waiting for {rules.quiet_seconds:g} s"
        f" without a new one (at most {rules.max_wait_seconds:g} s after the first)",
        run_at,
        trigger,
    )
