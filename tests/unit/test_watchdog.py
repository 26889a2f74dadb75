"""worker/watchdog.py's decision: when a worker counts as stalled."""

from __future__ import annotations

from worker.watchdog import StallClock


def test_work_waiting_with_nothing_in_hand_or_received_for_the_stall_time_is_a_stall() -> None:
    clock = StallClock(60)
    assert not clock.observe(100, waiting=5, in_hand=0, last_received=0)  # the clock starts
    assert not clock.observe(159, waiting=5, in_hand=0, last_received=0)
    assert clock.observe(160, waiting=5, in_hand=0, last_received=0)


def test_a_receive_during_the_wait_starts_the_time_again() -> None:
    clock = StallClock(60)
    clock.observe(100, waiting=5, in_hand=0, last_received=0)
    assert not clock.observe(170, waiting=5, in_hand=0, last_received=150)
    assert clock.observe(210, waiting=5, in_hand=0, last_received=150)


def test_a_busy_worker_an_empty_queue_or_a_broker_that_cannot_be_asked_breaks_the_wait() -> None:
    for breaks in (
        {"waiting": 5, "in_hand": 2},
        {"waiting": 0, "in_hand": 0},
        {"waiting": None, "in_hand": 0},
    ):
        clock = StallClock(60)
        clock.observe(100, waiting=5, in_hand=0, last_received=0)
        assert not clock.observe(130, last_received=0, **breaks)  # type: ignore[arg-type]
        # The wait counts from the next round that sees work wait (180), not from 100: after
        # Redis comes back, the consumer may still be between two reconnects.
        assert not clock.observe(180, waiting=5, in_hand=0, last_received=0)
        assert clock.observe(240, waiting=5, in_hand=0, last_received=0)
