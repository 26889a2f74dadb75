"""The query encoder's thread count: cores other processes left idle, from /proc/stat."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from shared.config import Settings
from shared.embed.embedder import Embedder, load_embedder
from shared.embed.idle_cores import MAX_THREADS, MIN_WINDOW_S, IdleCores, quota_cores
from tests.unit.test_embedder import tiny_model

CPUS = sorted(os.sched_getaffinity(0))
HZ = os.sysconf("SC_CLK_TCK")
LIMIT = min(len(CPUS), MAX_THREADS)  # what "every core" comes to


class Machine:
    """A /proc/stat file and the clocks IdleCores reads, moved forward by the test."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.now = 100.0
        self.own = 5.0
        self.busy = {c: 0 for c in CPUS}
        self.foreign_busy = 0  # a CPU outside this process's set
        self.write()

    def write(self) -> None:
        lines = ["cpu  1 2 3 4 5 6 7 8 9 10"]
        for c in CPUS:
            # user nice system idle iowait irq softirq steal: busy in user, the rest idle.
            lines.append(f"cpu{c} {self.busy[c]} 0 0 {10**6} 7 0 0 0 0 0")
        lines.append(f"cpu{max(CPUS) + 1} {self.foreign_busy} 0 0 0 0 0 0 0 0 0")
        lines.append("intr 12345")
        self.path.write_text("\n".join(lines) + "\n")

    def run(self, seconds: float, others: float, own: float = 0.0) -> None:
        """``seconds`` pass; other processes keep ``others`` cores busy, this one ``own``."""
        # Whole CPUs first, the rest on the next one: the ticks add up to the load exactly.
        left = round((others + own) * seconds * HZ)
        for c in CPUS:
            self.busy[c] += min(left, round(seconds * HZ))
            left -= min(left, round(seconds * HZ))
        self.foreign_busy += round(seconds * HZ)  # always busy: must not count
        self.own += own * seconds
        self.now += seconds
        self.write()

    def cores(self) -> IdleCores:
        return IdleCores(
            self.path, clock=lambda: self.now, own_cpu=lambda: self.own, quota=len(CPUS)
        )


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path / "stat")


def test_idle_cores_are_all_free(machine: Machine) -> None:
    idle = machine.cores()
    machine.run(1.0, others=0.0)
    assert idle.free() == LIMIT


def test_cores_busy_with_other_processes_are_not_free(machine: Machine) -> None:
    idle = machine.cores()
    machine.run(1.0, others=float(len(CPUS)))
    assert idle.free() == 1
    machine.run(1.0, others=0.0)
    assert idle.free() == LIMIT  # and free again once they stop


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two cores")
def test_one_busy_core_leaves_the_others(machine: Machine) -> None:
    idle = machine.cores()
    machine.run(1.0, others=1.0)
    assert idle.free() == min(LIMIT, len(CPUS) - 1)


def test_a_core_half_used_by_others_is_not_free(machine: Machine) -> None:
    idle = machine.cores()
    machine.run(1.0, others=0.6)
    assert idle.free() == max(1, min(LIMIT, len(CPUS) - 1))
    machine.run(1.0, others=0.4)
    assert idle.free() == LIMIT


def test_this_process_does_not_count_as_load(machine: Machine) -> None:
    idle = machine.cores()
    machine.run(1.0, others=0.0, own=float(len(CPUS)))
    assert idle.free() == LIMIT


def test_a_look_too_soon_keeps_the_last_answer(machine: Machine) -> None:
    idle = machine.cores()
    machine.run(1.0, others=float(len(CPUS)))
    assert idle.free() == 1
    machine.run(MIN_WINDOW_S / 2, others=0.0)
    assert idle.free() == 1  # half a window: not measured yet
    machine.run(MIN_WINDOW_S, others=0.0)
    assert idle.free() == LIMIT


def test_without_proc_stat_every_core_counts(tmp_path: Path) -> None:
    assert IdleCores(tmp_path / "missing", quota=len(CPUS)).free() == LIMIT


def test_a_cgroup_quota_caps_the_threads(machine: Machine, tmp_path: Path) -> None:
    idle = IdleCores(machine.path, clock=lambda: machine.now, own_cpu=lambda: machine.own, quota=1)
    machine.run(1.0, others=0.0)
    assert idle.free() == 1
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert quota_cores(tmp_path / "cpu.max") == 2  # 1.5 CPUs: two threads may run
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert quota_cores(tmp_path / "cpu.max") is None


def test_a_cpu_missing_from_one_look_is_left_out(machine: Machine) -> None:
    idle = machine.cores()
    machine.run(1.0, others=0.0)
    idle.free()
    machine.path.write_text(
        "".join(
            line + "\n"
            for line in machine.path.read_text().splitlines()
            if not line.startswith(f"cpu{CPUS[0]} ")
        )
    )  # taken offline: its counters leave the file
    machine.now += 1.0
    assert idle.free() == max(1, min(LIMIT, len(CPUS) - 1))


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two cores")
def test_encodes_at_once_share_the_free_cores(machine: Machine) -> None:
    idle = machine.cores()
    machine.run(1.0, others=0.0)
    with idle.share() as first:
        with idle.share() as second:
            assert second == max(1, LIMIT // 2)
        assert first == LIMIT


@pytest.fixture
def embedder(tmp_path: Path) -> Embedder:
    return load_embedder(Settings(model=str(tiny_model(tmp_path / "model", None)), device="cpu"))


def _query_in_a_thread(embedder: Embedder, text: str) -> tuple[int, int, np.ndarray]:
    """(torch threads during the model's encode, after it, the vector), in a fresh thread as
    the API's encode threads are."""
    import torch

    during: list[int] = []
    encode = type(embedder)._encode_query

    def counting(self: Embedder, t: str) -> np.ndarray:
        during.append(torch.get_num_threads())
        return encode(self, t)

    out: list[tuple[int, int, np.ndarray]] = []

    def run() -> None:
        embedder._encode_query = counting.__get__(embedder)  # type: ignore[method-assign]
        try:
            vector = embedder.encode_query(text)
        finally:
            del embedder._encode_query
        out.append((during[0], torch.get_num_threads(), vector))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out[0]


def test_query_encodes_take_the_free_cores(embedder: Embedder, machine: Machine) -> None:
    _, _, reference = _query_in_a_thread(embedder, "東京 の 天気")
    embedder.follow_idle_cores(machine.cores())
    assert embedder.query_threads() == list(range(1, LIMIT + 1))
    machine.run(1.0, others=0.0)
    during, after, vector = _query_in_a_thread(embedder, "東京 の 天気")
    assert during == LIMIT
    assert after == 1  # put back: threads started later do not inherit the query's count
    np.testing.assert_allclose(vector, reference, atol=1e-6)
    machine.run(1.0, others=float(len(CPUS)))
    assert _query_in_a_thread(embedder, "東京 の 天気")[0] == 1
