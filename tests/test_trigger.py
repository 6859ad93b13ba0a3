"""The automatic policy's trigger on constructed histories: a burst settles into one run,
a trickle waits at most the maximum, the cooldown holds back new labels but not a backlog
left by the previous run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sentiloop.retraining.trigger import (
    COLLECTING,
    COOLING_DOWN,
    OFF,
    READY,
    RUNNING,
    SETTLING,
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
