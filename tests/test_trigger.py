"""The automatic policy's trigger on constructed histories: a burst settles into one run,
a trickle waits at most the maximum, the cooldown holds back new labels but not a backlog
left by the previous run."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sentiloop.retraining.trigger import (
    COLLECTING,
    COOLING_DOWN,
    OFF,
    READY,
    RUNNING,
    SETTLING,
    Drift,
    LastRuns,
    Pending,
    TriggerRules,
    trigger_state,
)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
NO_RUNS = LastRuns(automatic_started_at=None, any_ended_at=None)
RULES = TriggerRules(
    min_new_feedback=50, quiet_seconds=60, max_wait_seconds=600, cooldown_seconds=600
)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def state(
    pending: Pending, last: LastRuns = NO_RUNS, **kwargs: object
) -> tuple[str, datetime | None]:
    options: dict[str, object] = {"enabled": True, "running_job": None} | kwargs
    found = trigger_state(NOW, RULES, pending, last=last, **options)  # type: ignore[arg-type]
    assert found.reason
    return found.state, found.next_run_at


def test_off_and_running_come_first() -> None:
    burst = Pending(400, ago(900), ago(900))
    assert state(burst, enabled=False)[0] == OFF
    assert state(burst, running_job="sentiloop-retraining-1")[0] == RUNNING


def test_too_few_labels_keep_collecting() -> None:
    assert state(Pending(49, ago(900), ago(900))) == (COLLECTING, None)
    assert state(Pending(0, None, None)) == (COLLECTING, None)


def test_a_burst_still_arriving_settles_first() -> None:
    # 91 of 400 labels are in, the newest 5 s ago: the run waits for the quiet period.
    assert state(Pending(91, ago(20), ago(5))) == (SETTLING, ago(5) + timedelta(seconds=60))
    # Once nothing new came for the quiet period, it runs on everything.
    assert state(Pending(400, ago(200), ago(61))) == (READY, NOW)


def test_a_steady_trickle_waits_at_most_the_maximum() -> None:
    assert state(Pending(80, ago(599), ago(1)))[0] == SETTLING
    assert state(Pending(80, ago(600), ago(1))) == (READY, NOW)


def test_the_cooldown_holds_back_labels_that_came_after_the_last_run() -> None:
    last = LastRuns(automatic_started_at=ago(300), any_ended_at=ago(200))
    pending = Pending(60, ago(150), ago(100))
    assert state(pending, last) == (COOLING_DOWN, ago(300) + timedelta(seconds=600))
    assert state(pending, LastRuns(ago(601), ago(500)))[0] == READY


def test_a_backlog_left_by_the_last_run_does_not_wait_out_the_cooldown() -> None:
    # 309 labels arrived while the last run trained: they go as soon as they settled.
    last = LastRuns(automatic_started_at=ago(180), any_ended_at=ago(10))
    assert state(Pending(309, ago(170), ago(100)), last) == (READY, NOW)
    # ... and settle first when they are still arriving.
    assert state(Pending(309, ago(170), ago(5)), last) == (SETTLING, ago(5) + timedelta(seconds=60))


def test_a_backlog_left_by_a_manual_run_counts_too() -> None:
    # The last automatic run started 100 s ago; a manual run since ended 5 s ago, and the
    # labels that arrived while it trained go without waiting for the cooldown.
    last = LastRuns(automatic_started_at=ago(100), any_ended_at=ago(5))
    assert state(Pending(60, ago(90), ago(80)), last) == (READY, NOW)
    # Labels that came after it still wait.
    assert state(Pending(60, ago(4), ago(3)), last)[0] == COOLING_DOWN


DRIFT_RULES = replace(RULES, on_drift=True, min_total_feedback=10)
DRIFTED = Drift("drifted", 0.12, 0.07)
CALM = Drift("ok", 0.03, 0.07)


def with_drift(
    pending: Pending,
    drift: Drift | None,
    total: int = 40,
    last: LastRuns = NO_RUNS,
    rules: TriggerRules = DRIFT_RULES,
) -> tuple[str, str, datetime | None, str]:
    found = trigger_state(
        NOW,
        rules,
        pending,
        enabled=True,
        running_job=None,
        last=last,
        drift=drift,
        total_feedback=total,
    )
    return found.state, found.trigger, found.next_run_at, found.reason


def test_drift_waives_the_count_of_new_labels() -> None:
    few = Pending(3, ago(200), ago(100))
    assert with_drift(few, CALM)[:2] == (COLLECTING, "")
    state, trigger, run_at, reason = with_drift(few, DRIFTED)
    assert (state, trigger, run_at) == (READY, "drift", NOW)
    assert "drift score 0.120, at or over its threshold 0.07" in reason
    # Enough labels anyway: an ordinary run, whatever the drift.
    assert with_drift(Pending(60, ago(200), ago(100)), DRIFTED)[:2] == (READY, "policy")


def test_drift_still_needs_the_labels_any_run_needs_and_something_new() -> None:
    few = Pending(3, ago(200), ago(100))
    state, _, _, reason = with_drift(few, DRIFTED, total=9)
    assert state == COLLECTING and "at least 10 labels in all (there are 9)" in reason
    # No label since the last run: a run would learn nothing the served model did not.
    state, _, _, reason = with_drift(Pending(0, None, None), DRIFTED)
    assert state == COLLECTING and "the first new label starts a run" in reason


def test_drift_keeps_the_settling_and_the_cooldown() -> None:
    arriving = Pending(3, ago(20), ago(5))
    assert with_drift(arriving, DRIFTED)[:3] == (SETTLING, "drift", ago(5) + timedelta(seconds=60))
    last = LastRuns(automatic_started_at=ago(300), any_ended_at=ago(200))
    state, trigger, run_at, _ = with_drift(Pending(3, ago(150), ago(100)), DRIFTED, last=last)
    assert (state, trigger, run_at) == (COOLING_DOWN, "drift", ago(300) + timedelta(seconds=600))
    running = trigger_state(
        NOW,
        DRIFT_RULES,
        Pending(3, ago(150), ago(100)),
        enabled=True,
        running_job="sentiloop-retraining-1",
        last=NO_RUNS,
        drift=DRIFTED,
        total_feedback=40,
    )
    assert running.state == RUNNING and "at or over its threshold" in running.reason


def test_drift_triggered_runs_can_be_turned_off() -> None:
    off = replace(DRIFT_RULES, on_drift=False)
    state, _, _, reason = with_drift(Pending(3, ago(200), ago(100)), DRIFTED, rules=off)
    assert state == COLLECTING
    assert "drift-triggered runs are off: SENTILOOP_RETRAIN_ON_DRIFT" in reason


def test_the_reason_says_the_drift_state() -> None:
    assert with_drift(Pending(3, ago(200), ago(100)), CALM)[3].endswith(
        "drift score 0.030, under its threshold 0.07"
    )
    waiting = Drift("not_enough_traffic", 0.0, 0.07)
    assert with_drift(Pending(3, ago(200), ago(100)), waiting)[3].endswith(
        "drift: not enough traffic"
    )
    assert "drift unknown" in with_drift(Pending(3, ago(200), ago(100)), None)[3]
