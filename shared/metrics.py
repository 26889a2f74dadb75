"""Prometheus metrics for the API and the workers.

Two kinds:

* Event metrics (counters, histograms) recorded where the work happens. API servers run several
  uvicorn processes and Celery's prefork pool runs tasks in child processes, so when
  ``PROMETHEUS_MULTIPROC_DIR`` is set, prometheus_client writes every process's values to files in
  that directory and a scrape merges them (multiprocess mode). The variable must be set in the
  environment *before* this module is imported (prometheus_client picks its value class at
  import) and the directory must be emptied when the process group starts
  (``reset_multiproc_dir``); the Docker image's entrypoint does that.
* State gauges (queue depth, documents per status) computed at scrape time from Redis and
  Postgres, which hold the truth; counting them in-process would drift and double count.
  ``await collect_gauges(pool, redis_url)`` refreshes them, then ``render_latest()`` serializes.

Labels stay low-cardinality: stages, modes, route *templates*; never collections, ids or paths.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.broker import queue_depths
from shared.db.queries import Q

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A scrape must answer even when Postgres or Redis hangs; the gauges then report the dependency
# as down instead of blocking Prometheus until its own scrape timeout (10 s by default).
GAUGE_TIMEOUT_S = 2.0

STAGES = ("api", "prep", "embed", "sweep", "search")
SEARCH_MODES = ("vector", "lexical", "hybrid")

# --- event metrics ----------------------------------------------------------------------------
DOCUMENTS_INGESTED = Counter(
    "kensaku_documents_ingested",
    "Documents through a pipeline stage: api (accepted), prep (chunked), embed (indexed), "
    "fill (embedded for a model being switched to)",
    ["stage"],
)
CHUNKS_INGESTED = Counter(
    "kensaku_chunks_ingested",
    "Chunks written by prep (stage=prep), embedded (stage=embed), or embedded for a model being "
    "switched to (stage=fill)",
    ["stage"],
)
FAILURES = Counter(
    "kensaku_failures",
    "Failures by pipeline stage; outcome=retry will be retried, outcome=failed is final",
    ["stage", "outcome"],
)
EMBED_TRUNCATED = Counter(
    "kensaku_embed_truncated",
    "Texts longer than the model's sequence limit, so cut by the model (chunks are sized to fit: "
    "any count here means chunks cut for another model's tokenizer or budget)",
)
EMBED_BATCH_SIZE = Histogram(
    "kensaku_embed_batch_size",
    "Texts per model encode batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
)
EMBED_BATCH_SECONDS = Histogram(
    "kensaku_embed_batch_seconds",
    "Wall time of one model encode batch, by device (cpu/cuda/mps)",
    ["device"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
FILE_EXTRACT_SECONDS = Histogram(
    "kensaku_file_extract_seconds",
    "Time to extract the text of one uploaded file, by format",
    ["format"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120),
)
PREP_BATCH_SECONDS = Histogram(
    "kensaku_prep_batch_seconds",
    "Wall time of one prep task (normalize, tokenize, chunk, COPY) over a batch of documents",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
SEARCH_SECONDS = Histogram(
    "kensaku_search_seconds",
    "Search latency inside the API (query embedding + SQL), by mode",
    ["mode"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
HTTP_REQUEST_SECONDS = Histogram(
    "kensaku_http_request_seconds",
    "HTTP request latency by method, route template and status code",
    ["method", "route", "status"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def record_failure(stage: str, *, final: bool) -> None:
    """Count a failure; unknown stages are folded into "other" to keep the label set fixed."""
    FAILURES.labels(stage if stage in STAGES else "other", "failed" if final else "retry").inc()


def observe_search(mode: str, seconds: float) -> None:
    SEARCH_SECONDS.labels(mode if mode in SEARCH_MODES else "other").observe(seconds)


# --- scrape-time gauges -----------------------------------------------------------------------
class _Pool(Protocol):
    async def fetch(self, query: str, *args: Any) -> list[Any]: ...


async def pending_counts(pool: _Pool) -> dict[str, int]:
    """Documents per status (queued / prepped / indexed / failed) straight from Postgres."""
    rows = await pool.fetch(Q.status_counts)
    return {str(row[0]): int(row[1]) for row in rows}


class _GaugeSnapshot(Collector):
    """Serves the values of the last `collect_gauges` call; emits nothing before the first."""

    def __init__(self) -> None:
        self.documents: dict[str, int] | None = None
        self.queues: dict[str, int] | None = None
        self.up: dict[str, bool] = {}

    def collect(self) -> Iterable[Metric]:
        if self.up:
            up = GaugeMetricFamily(
                "kensaku_dependency_up",
                "1 when the dependency answered the last metrics scrape",
                labels=["dependency"],
            )
            for name, ok in sorted(self.up.items()):
                up.add_metric([name], 1.0 if ok else 0.0)
            yield up
        if self.documents is not None:
            docs = GaugeMetricFamily(
                "kensaku_documents", "Documents by status (from Postgres)", labels=["status"]
            )
            for status, n in sorted(self.documents.items()):
                docs.add_metric([status], n)
            yield docs
        if self.queues is not None:
            depth = GaugeMetricFamily(
                "kensaku_queue_depth",
                "Messages waiting per Celery queue; queue=unacked: reserved by workers, not acked",
                labels=["queue"],
            )
            for q, n in sorted(self.queues.items()):
                depth.add_metric([q], n)
            yield depth


GAUGES = _GaugeSnapshot()
REGISTRY.register(GAUGES)


async def _guarded(name: str, coro: Awaitable[dict[str, int]]) -> dict[str, int] | None:
    try:
        result = await asyncio.wait_for(coro, GAUGE_TIMEOUT_S)
    except Exception as exc:  # a scrape reports the outage; it must not fail
        log.warning("metrics: %s unavailable: %s", name, exc)
        GAUGES.up[name] = False
        return None
    GAUGES.up[name] = True
    return result


# Documents per status is a scan of the documents table: at most once per this many seconds,
# however often /metrics is scraped (or requested by a client).
DOCUMENT_COUNTS_TTL_S = 15.0
_counted_at = -float("inf")


async def collect_gauges(pool: _Pool | None, app: Celery | None) -> None:
    """Refresh the scrape-time gauges; call right before `render_latest()` in GET /metrics."""
    global _counted_at
    tasks: dict[str, Awaitable[dict[str, int] | None]] = {}
    now = time.monotonic()
    if pool is not None and (GAUGES.documents is None or now - _counted_at > DOCUMENT_COUNTS_TTL_S):
        _counted_at = now
        tasks["postgres"] = _guarded("postgres", pending_counts(pool))
    if app is not None:
        tasks["redis"] = _guarded("redis", asyncio.to_thread(queue_depths, app))
    results = dict(zip(tasks, await asyncio.gather(*tasks.values()), strict=True))
    if "postgres" in results:
        GAUGES.documents = results["postgres"]
    if "redis" in results:
        GAUGES.queues = results["redis"]


# --- exposition -------------------------------------------------------------------------------
def multiproc_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def reset_multiproc_dir(path: str | os.PathLike[str]) -> Path:
    """Empty (or create) the multiprocess directory; call once in the parent, before any fork.

    Files of dead processes would otherwise be merged into the new run's values, and a reused
    pid (common in containers) would even continue an old process's counters.
    """
    p = Path(path)
    if p.exists():
        shutil.rmtree(p)
    p.mkdir(parents=True)
    return p


def scrape_registry() -> CollectorRegistry:
    """The registry to serialize: all processes' files in multiprocess mode, else this process."""
    if multiproc_dir() is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(GAUGES)
    return registry


def render_latest(registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """Body and content type for GET /metrics."""
    return generate_latest(registry or scrape_registry()), CONTENT_TYPE_LATEST


def start_worker_metrics_server(port: int, addr: str = "0.0.0.0") -> Any:
    """Serve /metrics from a worker host; call once in the Celery main process (worker_init).

    Under the prefork pool, tasks run in child processes: without PROMETHEUS_MULTIPROC_DIR their
    metrics would never reach this server, so say so loudly.
    """
    if multiproc_dir() is None:
        log.warning(
            "metrics: %s is not set; metrics from prefork child processes will be missing",
            MULTIPROC_ENV,
        )
    return start_http_server(port, addr=addr, registry=scrape_registry())


# --- HTTP middleware --------------------------------------------------------------------------
Scope = MutableMapping[str, Any]
Message = Mapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class PrometheusMiddleware:
    """Pure ASGI middleware timing each HTTP request into HTTP_REQUEST_SECONDS.

    The route label is the matched route's template (``/v1/jobs/{job_id}``), read from
    ``scope["route"]`` after routing; unmatched paths share one label so that scanners probing
    random URLs cannot create unbounded series.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client sees when the app raises before starting a response
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            HTTP_REQUEST_SECONDS.labels(scope.get("method", ""), template, str(status)).observe(
                time.perf_counter() - start
            )
