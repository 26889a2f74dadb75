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
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

PROC_STAT = Path("/proc/stat")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
# Counters of one look must be this far apart to measure anything (they tick at 100 Hz).
MIN_WINDOW_S = 0.2
# Measured up to 2 threads (bench/RESULTS.md); past 4, one short text has little left to split.
MAX_THREADS = 4
# /proc/stat's columns after the name: user nice system idle iowait irq softirq steal ...
_IDLE_COLUMNS = (3, 4)

_Look = tuple[float, dict[str, int], float]


def _cpu_set() -> list[int]:
    affinity = getattr(os, "sched_getaffinity", None)
    return sorted(affinity(0)) if affinity else list(range(os.cpu_count() or 1))


def quota_cores(path: Path = CGROUP_CPU_MAX) -> int | None:
    """Whole cores a cgroup v2 CPU quota allows (``--cpus`` of a container), if one is set:
    a quota does not shrink the affinity set, so it is read on its own."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


class IdleCores:
    """``free()``: cores of the process's CPU set that other processes did not use in the
    window between the last two looks (at least ``MIN_WINDOW_S`` apart), rounded to whole
    cores, at least 1 and at most ``MAX_THREADS`` or a cgroup quota. A look happens at each
    ``free()`` (the API also calls it every second, so a window is never hours long). Where
    /proc/stat is missing (not Linux), every core counts as free."""

    def __init__(
        self,
        stat: Path = PROC_STAT,
        clock: Callable[[], float] = time.monotonic,
        own_cpu: Callable[[], float] = time.process_time,
        quota: int | None = None,
    ) -> None:
        self._stat = stat
        self._clock = clock
        self._own_cpu = own_cpu
        self._cpus = {f"cpu{c}" for c in _cpu_set()}
        self._limit = min(len(self._cpus), MAX_THREADS, quota or quota_cores() or MAX_THREADS)
        self._tick = 1 / os.sysconf("SC_CLK_TCK")
        self._lock = threading.Lock()
        self._last = self._look()
        self._free = self._limit
        self._inflight = 0

    @property
    def limit(self) -> int:
        """The most threads ``free()`` ever answers."""
        return self._limit

    def _look(self) -> _Look | None:
        """(wall seconds, busy ticks per CPU of the set, this process's CPU seconds)."""
        try:
            lines = self._stat.read_text().splitlines()
        except OSError:
            return None
        busy = {}
        for line in lines:
            name, _, rest = line.partition(" ")
            if name in self._cpus:
                ticks = [int(v) for v in rest.split()[:8]]
                busy[name] = sum(ticks) - sum(ticks[i] for i in _IDLE_COLUMNS)
        return self._clock(), busy, self._own_cpu()

    def free(self) -> int:
        """The cores free now, looking again if the last look is old enough."""
        with self._lock:
            if self._last is None:
                return self._limit
            if self._clock() - self._last[0] < MIN_WINDOW_S:
                return self._free  # too soon to measure: the last answer stands
            now = self._look()
            if now is None:
                return self._limit
            # CPUs in both looks only: one taken offline or back between them says nothing.
            common = now[1].keys() & self._last[1].keys()
            busy = sum(now[1][c] - self._last[1][c] for c in common) * self._tick
            wall = now[0] - self._last[0]
            others = max(0.0, busy - (now[2] - self._last[2])) / wall
            self._last = now
            # A core counts as free when others used less than half of it.
            self._free = max(1, min(self._limit, int(len(common) - others + 0.5)))
            return self._free

    @contextlib.contextmanager
    def share(self) -> Iterator[int]:
        """Threads for one encode: the free cores shared among the encodes running at once in
        this process (at least 1 each). An encode already running keeps the threads it got."""
        with self._lock:
            self._inflight += 1
            inflight = self._inflight
        try:
            yield max(1, self.free() // inflight)
        finally:
            with self._lock:
                self._inflight -= 1
