"""Faults on the real stack, each ending with every accepted document indexed exactly once (or
failed with its reason): the worker SIGKILLed mid-job (main process, or one pool child), Redis
flushed, Redis killed and restarted on its data, PostgreSQL stopped and started mid-ingest, the
API killed mid-upload, and a document that kills its worker process every time."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from shared.broker import ALL_QUEUES, make_celery_app
from shared.config import Settings
from shared.stack.services import start_postgres, start_redis
from tests.helpers import active_table, db_fetch, spawn_patched_worker, wait_job
from tests.integration.test_ingest import make_docs, upload
from tests.poison_worker import MARKER

pytestmark = pytest.mark.integration


def assert_indexed_exactly_once(stack: Any, collection: str, n: int) -> None:
    table = active_table(stack)
    row = db_fetch(
        stack,
        f"""
        SELECT count(*) FILTER (WHERE d.status = 'indexed') AS indexed,
               count(*) AS documents,
               (SELECT count(*) FROM chunks k WHERE k.collection_id = c.id) AS chunks,
               (SELECT count(DISTINCT e.chunk_id) FROM chunks k JOIN {table} e ON e.chunk_id = k.id
                WHERE k.collection_id = c.id) AS embeddings,
               (SELECT count(*) FROM chunks k WHERE k.collection_id = c.id
                  AND NOT EXISTS (SELECT 1 FROM {table} e WHERE e.chunk_id = k.id)) AS missing,
               (SELECT count(*) FROM (SELECT document_id, ordinal FROM chunks k
                  WHERE k.collection_id = c.id GROUP BY 1, 2 HAVING count(*) > 1) x) AS dup
        FROM documents d JOIN collections c ON c.id = d.collection_id
        WHERE c.name = $1 GROUP BY c.id
        """,
        collection,
    )[0]
    assert row["documents"] == row["indexed"] == n, dict(row)
    assert row["missing"] == 0 and row["dup"] == 0, dict(row)
    assert row["embeddings"] == row["chunks"], dict(row)


def test_worker_sigkill_mid_job(stack: Any, api: httpx.Client, collection: str) -> None:
    n = 240  # 30 prep batches of 8, then as many embed batches
    body = upload(api, collection, make_docs(n, prefix="k"))
    job = body["job_id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = api.get(f"/v1/jobs/{job}").json()
        if status["prepped"] > 0:
            break
        time.sleep(0.02)
    assert status["indexed"] < n, "the job finished before the worker could be killed"
    worker = stack.procs["worker"]
    worker.signal_group(signal.SIGKILL)  # the main process and its children, no goodbye
    worker.popen.wait(10)
    mid = api.get(f"/v1/jobs/{job}").json()
    assert mid["status"] in ("queued", "running"), mid

    # Started again the way `kensaku up` does, with the same command line.
    assert stack.restart_exited() == ["worker"]
    assert stack.procs["worker"].alive()
    assert stack.restart_exited() == []
    final = wait_job(api, job, timeout=240)
    assert final["status"] == "done", final
    assert_indexed_exactly_once(stack, collection, n)


def test_redis_flush_after_upload_is_recovered(
    stack: Any, api: httpx.Client, collection: str
) -> None:
    # Stop the worker so the messages are still in Redis when it is flushed.
    stack.procs["worker"].stop()
    n = 20
    body = upload(api, collection, make_docs(n, prefix="f"))
    r = redis.Redis.from_url(stack.redis_url)
    assert r.llen("prep") > 0
    r.flushall()
    assert r.llen("prep") == 0
    stack.start_worker()
    # Nothing is left in the queue; only the sweeper (grace 3 s in tests) can bring it back.
    final = wait_job(api, body["job_id"], timeout=120)
    assert final["status"] == "done", final
    assert_indexed_exactly_once(stack, collection, n)


# --- more faults: each ends with every document indexed exactly once --------------------------


def _worker_children(stack: Any) -> list[int]:
    main = stack.procs["worker"].popen.pid
    out = subprocess.run(["pgrep", "-P", str(main)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _wait_for_progress(api: httpx.Client, job: str, n: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = api.get(f"/v1/jobs/{job}").json()
        if status["indexed"] > 0:
            assert status["indexed"] < n, "the job finished before the fault could hit it"
            return
        time.sleep(0.02)
    raise AssertionError(f"job {job} made no progress")


def test_pool_child_sigkill_mid_job(stack: Any, api: httpx.Client, collection: str) -> None:
    n = 240
    job = upload(api, collection, make_docs(n, prefix="c"))["job_id"]
    _wait_for_progress(api, job, n)
    children = _worker_children(stack)
    assert children, "no prefork children to kill"
    os.kill(children[0], signal.SIGKILL)  # its batch is redelivered; the main process forks anew
    final = wait_job(api, job, timeout=240)
    assert final["status"] == "done", final
    assert_indexed_exactly_once(stack, collection, n)


def test_redis_killed_and_restarted_on_its_data(
    stack: Any, api: httpx.Client, collection: str
) -> None:
    n = 240
    job = upload(api, collection, make_docs(n, prefix="r"))["job_id"]
    _wait_for_progress(api, job, n)
    port, data = stack.redis.port, stack.data_dir / "redis"
    stack.redis.process.kill()  # no goodbye; the append-only file has what was written
    stack.redis.process.wait(10)
    # Down longer than the 12 s of reconnects after which Celery's consumer stops a worker for
    # good unless told to keep trying (worker/celery_app.py).
    time.sleep(16)
    stack.redis = start_redis(data, port)
    # The worker reconnects, or, now and then, exits: Celery calls an error in kombu's closing
    # of the lost connection unrecoverable (a race). Then it is started again, as compose and
    # `kensaku up` start it (Stack.restart_exited).
    final = wait_job(api, job, timeout=240, each_round=stack.restart_exited)
    assert final["status"] == "done", final
    assert_indexed_exactly_once(stack, collection, n)


def test_a_worker_that_stops_consuming_is_stopped_and_started_again(
    stack: Any, api: httpx.Client, collection: str
) -> None:
    # What kombu's "catatonic" worker does after Redis comes back now and then (alive, connected,
    # no longer reading its queues; worker/watchdog.py), brought about on purpose: its
    # consumers are cancelled by remote control.
    control = make_celery_app(Settings(redis_url=stack.redis_url)).control
    worker = stack.procs["worker"]
    for queue in ALL_QUEUES:
        assert control.cancel_consumer(queue, reply=True, timeout=10), "no worker replied"
    try:
        n = 24
        job = upload(api, collection, make_docs(n, prefix="s"))["job_id"]
        # The stack's stall time is 15 s (tests/conftest.py): the watchdog stops the worker with
        # exit code 1, and it is started again as compose and `kensaku up` start it.
        final = wait_job(api, job, timeout=240, each_round=stack.restart_exited)
    finally:
        if stack.procs["worker"] is worker and worker.alive():  # not stopped: undo the fault
            for queue in ALL_QUEUES:
                control.add_consumer(queue, reply=True, timeout=10)
    assert final["status"] == "done", final
    assert stack.procs["worker"] is not worker, "the job finished without a new worker"
    assert worker.popen.returncode == 1, worker.tail()
    assert "worker stalled" in worker.log_path.read_text(errors="replace"), worker.tail()
    assert_indexed_exactly_once(stack, collection, n)


def test_postgres_stopped_and_started_mid_ingest(
    stack: Any, api: httpx.Client, collection: str
) -> None:
    n = 240
    job = upload(api, collection, make_docs(n, prefix="p"))["job_id"]
    _wait_for_progress(api, job, n)
    stack.postgres.stop()  # fast shutdown: every connection of the API and workers breaks
    time.sleep(3)
    stack.postgres = start_postgres(stack.postgres.data_dir)
    # The API answers again once its pool reconnects; the workers' batches retry with backoff.
    final = wait_job_through_errors(api, job, timeout=240)
    assert final["status"] == "done", final
    assert_indexed_exactly_once(stack, collection, n)


def test_api_killed_mid_ndjson_upload_leaves_nothing(
    stack: Any, api: httpx.Client, collection: str
) -> None:
    started = threading.Event()

    def body() -> Iterator[bytes]:
        for doc in make_docs(50, prefix="u"):
            yield (json.dumps(doc, ensure_ascii=False) + "\n").encode()
            started.set()
            time.sleep(0.1)

    def send() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(
                f"{stack.api_url}/v1/documents",
                params={"collection": collection},
                content=body(),
                headers={"Content-Type": "application/x-ndjson"},
                timeout=60,
            )

    sender = threading.Thread(target=send)
    sender.start()
    assert started.wait(30)
    time.sleep(1)  # some lines are in, the upload is not complete
    stack.procs["api"].signal_group(signal.SIGKILL)
    stack.procs["api"].popen.wait(10)
    sender.join(30)
    stack.start_api()
    stack.wait_ready(120)
    rows = db_fetch(
        stack,
        "SELECT count(*) AS n FROM documents d JOIN collections c ON c.id = d.collection_id "
        "WHERE c.name = $1",
        collection,
    )
    assert rows[0]["n"] == 0  # all of an upload or none of it


def test_a_document_that_kills_its_worker_fails_alone(
    stack: Any, api: httpx.Client, collection: str
) -> None:
    """A document whose processing kills the worker process every time (as the OOM killer
    would) ends failed with the reason after max_attempts; the rest of its batch is indexed."""
    stack.procs["worker"].stop()
    docs = make_docs(8, prefix="ok")
    docs.insert(3, {"id": "poison", "text": f"{MARKER}。"})
    job = upload(api, collection, docs)["job_id"]
    # A worker whose process dies whenever it prepares that document.
    proc = spawn_patched_worker(stack, "tests.poison_worker", "poison")
    try:
        final = wait_job(api, job, timeout=240)
    finally:
        proc.stop()
        stack.start_worker()
    assert final["status"] == "partial", final
    assert final["indexed"] == 8 and final["failed"] == 1, final
    doc = api.get(f"/v1/documents/{collection}/poison").json()
    assert doc["status"] == "failed" and "worker process died" in doc["last_error"], doc
    assert api.get(f"/v1/documents/{collection}/ok3").json()["status"] == "indexed"


def wait_job_through_errors(api: httpx.Client, job: str, timeout: float) -> dict[str, Any]:
    """Like wait_job, while the API may answer 503 (its database restarting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            resp = api.get(f"/v1/jobs/{job}")
        except httpx.HTTPError:
            resp = None
        if resp is not None and resp.status_code == 200:
            status: dict[str, Any] = resp.json()
            if status["status"] in ("done", "partial", "failed"):
                return status
        else:
            assert resp is None or resp.status_code == 503, resp.text
        time.sleep(0.3)
    raise AssertionError(f"job {job} did not finish in {timeout} s")
