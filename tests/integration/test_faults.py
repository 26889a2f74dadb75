"""Faults on the real stack: a worker SIGKILLed mid-job, Redis flushed after an upload."""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
import pytest
import redis

from tests.helpers import active_table, db_fetch, wait_job
from tests.integration.test_ingest import make_docs, upload

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

    stack.start_worker()
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
