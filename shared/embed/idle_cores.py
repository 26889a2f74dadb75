"""How many of this process's cores other processes left idle lately: what sizes the intra-op
threads of one query encode when ``KENSAKU_QUERY_THREADS`` is unset.

One short query encodes faster on two threads than on one while the cores are free (MiniLM on
torch: 31 vs 42 ms), and much slower once an embed worker or PostgreSQL keeps them busy (94 vs
47 ms): bench/RESULTS.md. The kernel's per-CPU counters (/proc/stat) say how busy the cores this
process may run on were since the last look; this process's own CPU time is taken out, so a
query does not count its own threads as load. Hand-written rather than with psutil: it would
read the same file, and a new dependency is more than the few lines of arithmetic here.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

PROC_STAT = Path("/proc/stat")
# Counters of one look must be this far apart to measure anything (they tick at 100 Hz).
MIN_WINDOW_S = 0.2
# /proc/stat's columns after the name: user nice system idle iowait irq softirq steal ...
_IDLE_COLUMNS = (3, 4)


class IdleCores:
    """``free()``: cores of the process's CPU set that other processes did not use in the
    window since the previous look (at least ``MIN_WINDOW_S`` long), rounded down to a whole
    core, at least 1. Where /proc/stat is missing (not Linux), every core counts as free."""

    def __init__(
        self,
        stat: Path = PROC_STAT,
        clock: Callable[[], float] = time.monotonic,
        own_cpu: Callable[[], float] = time.process_time,
    ) -> None:
        self._stat = stat
        self._clock = clock
        self._own_cpu = own_cpu
        self._cpus = sorted(os.sched_getaffinity(0))
        self._tick = 1 / os.sysconf("SC_CLK_TCK")
        self._lock = threading.Lock()
        self._last = self._look()
        self._free = len(self._cpus)
        self._inflight = 0

    def _look(self) -> tuple[float, float, float] | None:
        """(wall seconds, busy seconds of the CPU set, this process's CPU seconds)."""
        try:
            lines = self._stat.read_text().splitlines()
        except OSError:
            return None
        wanted = {f"cpu{c}" for c in self._cpus}
        busy = 0
        for line in lines:
            name, _, rest = line.partition(" ")
            if name in wanted:
                ticks = [int(v) for v in rest.split()[:8]]
                busy += sum(ticks) - sum(ticks[i] for i in _IDLE_COLUMNS)
        return self._clock(), busy * self._tick, self._own_cpu()

    def free(self) -> int:
        with self._lock:
            if self._last is None:
                return len(self._cpus)
            if self._clock() - self._last[0] < MIN_WINDOW_S:
                return self._free  # too soon to measure: the last answer stands
            now = self._look()
            if now is None:
                return len(self._cpus)
            wall = now[0] - self._last[0]
            others = max(0.0, (now[1] - self._last[1]) - (now[2] - self._last[2])) / wall
            self._last = now
            # A core counts as free when others used less than half of it.
            self._free = max(1, min(len(self._cpus), int(len(self._cpus) - others + 0.5)))
            return self._free

    @contextlib.contextmanager
    def share(self) -> Iterator[int]:
        """Threads for one encode: the free cores shared among the encodes running at once in
        this process (at least 1 each)."""
        with self._lock:
            self._inflight += 1
            inflight = self._inflight
        try:
            yield max(1, self.free() // inflight)
        finally:
            with self._lock:
                self._inflight -= 1
