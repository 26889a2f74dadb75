"""Stops a worker that has stopped consuming, so that its supervisor starts it again.

After Redis comes back, kombu 5.x now and then leaves a worker alive and connected but no longer
reading its queues (kombu#2492, #2629): the jobs stay queued for good, and nothing exits for a
supervisor to notice. A thread in the worker's main process watches for the sign of it: work
waits in the worker's queues, the worker holds none, and it has received nothing for
``worker_stall_seconds``. Then it stops the worker (a warm shutdown with exit code 1; a hard exit
if that hangs), and compose's restart policy, `kensaku up` or the test stack start a new one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from celery import Celery
from celery.platforms import EX_FAILURE
from celery.worker import state

from shared.broker import queue_depths

log = logging.getLogger(__name__)


@dataclass
class StallClock:
    """Decides, from one observation after another, whether the worker has stalled."""

    stall_seconds: float
    # Since when work has waited with nothing in hand, as observed without a break.
    since: float | None = None

    def observe(self, now: float, waiting: int | None, in_hand: int, last_received: float) -> bool:
        """``waiting``: messages in the worker's queues (None: the broker could not be asked);
        ``in_hand``: tasks the worker holds; ``last_received``: when it last received one."""
        if not waiting or in_hand:
            # Nothing to do, busy, or the broker is down (the consumer's own reconnects are at
            # work, with backoff): the clock starts again on the next round that sees work wait.
            self.since = None
            return False
        if self.since is None:
            self.since = now
        return now - max(self.since, last_received) >= self.stall_seconds


class Watchdog:
    """The thread. ``received()`` is called on every task the worker receives."""

    def __init__(self, app: Celery, queues: Sequence[str], stall_seconds: float, grace: float):
        self.app, self.queues, self.grace = app, tuple(queues), grace
        self.clock = StallClock(stall_seconds)
        self.interval = max(1.0, stall_seconds / 4)
        self.last_received = time.monotonic()

    def received(self) -> None:
        self.last_received = time.monotonic()

    def start(self) -> None:
        threading.Thread(target=self._run, name="kensaku-watchdog", daemon=True).start()

    def _waiting(self) -> int | None:
        try:
            depths = queue_depths(self.app, self.queues)
        except Exception as exc:  # whatever the broker raises: the next round asks again
            log.info("watchdog: queue depths not read (%s)", exc)
            return None
        return sum(depths.get(queue, 0) for queue in self.queues)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            waiting = self._waiting()
            in_hand = len(state.active_requests) + len(state.reserved_requests)
            if self.clock.observe(time.monotonic(), waiting, in_hand, self.last_received):
                break
        log.error(
            "worker stalled: %d messages wait in %s, it holds none and has received none for "
            "%.0f s; stopping it so that it is started again",
            waiting or 0,
            ",".join(self.queues),
            time.monotonic() - self.last_received,
        )
        stop_worker(self.grace)


def stop_worker(grace: float) -> None:
    """A warm shutdown with exit code 1, as SIGTERM's handler starts one (the consumer's loop
    checks the flag every round); the process ends without it if that has not happened within
    ``grace`` seconds (the loop itself may be what hangs)."""
    state.should_stop = EX_FAILURE
    time.sleep(grace)
    log.error("worker stalled: warm shutdown did not end within %.0f s; exiting", grace)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(EX_FAILURE)
