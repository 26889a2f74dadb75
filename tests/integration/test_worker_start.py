"""A worker starts reliably whatever its model costs to load: children report to Celery's main
process at once and load the model on their first task (worker/runtime.py), so with a model
slower to load than Celery's 4-second window for a replacement child to report up, a child that
dies is replaced once, not killed and restarted forever."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import httpx
import pytest

from tests.helpers import spawn_patched_worker, wait_job
from tests.integration.test_ingest import make_docs, upload
from tests.slow_model_worker import SECONDS

pytestmark = pytest.mark.integration


def test_a_model_slower_to_load_than_the_child_start_timeout(
    stack: Any, api: httpx.Client, collection: str
) -> None:
    assert SECONDS > 4  # Celery's worker_proc_alive_timeout
    stack.procs["worker"].stop()
    log_path = stack.procs["worker"].log_path
    start = log_path.stat().st_size if log_path.exists() else 0
    proc = spawn_patched_worker(stack, "tests.slow_model_worker", "slow")
    try:
        # The first children load the model on their first task.
        first = upload(api, collection, make_docs(20, prefix="s"))["job_id"]
        assert wait_job(api, first, timeout=180)["status"] == "done"
        # Celery holds a replacement child to the 4 s (not the children it starts with): one
        # killed, its replacement must report up in time, model or not.
        children = subprocess.run(
            ["pgrep", "-P", str(proc.popen.pid)], capture_output=True, text=True
        ).stdout.split()
        assert children, "no prefork children"
        os.kill(int(children[0]), signal.SIGKILL)
        killed = time.monotonic()
        second = upload(api, collection, make_docs(20, prefix="t"))["job_id"]
        final = wait_job(api, second, timeout=180)
        # Past the replacement's window and its model's load, had it loaded at start-up.
        time.sleep(max(0.0, killed + 4 + SECONDS + 2 - time.monotonic()))
    finally:
        proc.stop()
        stack.start_worker()
    with open(log_path, "rb") as f:
        f.seek(start)
        log = f.read().decode(errors="replace")
    assert final["status"] == "done", (final, log[-3000:])
    assert "Timed out waiting for UP message" not in log, log[-3000:]
    assert log.count("exited with 'signal 9") == 1, log[-3000:]  # only the one killed here
    assert "slow@" in log  # the log read is this worker's
