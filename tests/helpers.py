"""Helpers for tests that talk to the real stack."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx


@contextlib.contextmanager
def data_dir(prefix: str) -> Iterator[Path]:
    """A stack's data directory, removed afterwards. Not pytest's tmp_path: that tree is private
    to root, and PostgreSQL (run by pgserver as its own user when we are root) must be able to
    reach its data directory."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def wait_job(
    api: httpx.Client,
    job_id: str,
    timeout: float = 120,
    each_round: Callable[[], object] | None = None,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if each_round is not None:
            each_round()
        status = api.get(f"/v1/jobs/{job_id}").json()
        if status["status"] in ("done", "partial", "failed"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {status}")


def wait_ready(url: str, timeout: float = 120) -> None:
    """Until the API at ``url`` answers /readyz with 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready within {timeout:.0f} s")


def db_fetch(stack: Any, sql: str, *args: Any) -> list[Any]:
    import asyncpg

    async def run() -> list[Any]:
        conn = await asyncpg.connect(stack.database_url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def active_table(stack: Any) -> str:
    rows = db_fetch(stack, "SELECT table_name FROM embedding_models WHERE active")
    assert len(rows) == 1, rows
    return str(rows[0]["table_name"])


def spawn_patched_worker(stack: Any, module: str, name: str) -> Any:
    """The stack's worker, run through a test module that patches kensaku before the pool forks
    (``python -m <module> -A worker.celery_app worker ...``), in place of the usual one."""
    argv = ["-A", "worker.celery_app", "worker", "-Q", "prep,embed,maintain", "-P", "prefork"]
    argv += ["-c", "2", "-n", f"{name}@%h", "--loglevel", "INFO"]
    argv += ["--without-mingle", "--without-gossip"]
    return stack._spawn("worker", [sys.executable, "-m", module, *argv])
