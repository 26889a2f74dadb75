"""The broker side of kensaku in one place: queue and task names and their routing, the Celery
application, publishing document ids to the queues, and reading the queues' depth.

The API and the workers build the same app from the same Settings; the API only sends tasks by
name. Only document ids travel through Redis: Postgres is the source of truth, Redis the signal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery

from shared.config import Settings

PREP_QUEUE = "prep"
EMBED_QUEUE = "embed"
# Short database work at the end of a job (VACUUM, an index build): not behind a prep backlog.
MAINTAIN_QUEUE = "maintain"
ALL_QUEUES = (PREP_QUEUE, EMBED_QUEUE, MAINTAIN_QUEUE)

PREP_TASK = "kensaku.prep"
EMBED_TASK = "kensaku.embed"
FINALIZE_TASK = "kensaku.finalize"
# Vectors of indexed documents for a model being switched to (shared/ingest/switch.py).
FILL_TASK = "kensaku.fill"

# CPU preprocessing and (GPU) embedding scale separately, each on its own queue.
TASK_ROUTES: dict[str, dict[str, str]] = {
    PREP_TASK: {"queue": PREP_QUEUE},
    EMBED_TASK: {"queue": EMBED_QUEUE},
    FILL_TASK: {"queue": EMBED_QUEUE},
    FINALIZE_TASK: {"queue": MAINTAIN_QUEUE},
}


def make_celery_app(settings: Settings) -> Celery:
    app = Celery("kensaku", broker=settings.redis_url)
    app.conf.update(
        task_routes=TASK_ROUTES,
        task_default_queue=PREP_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        # Work is acknowledged after it is done, so a killed worker's batch is redelivered;
        # the tasks are idempotent, so running one twice is harmless.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A batch that runs away is stopped: soft limit first (the task fails and retries),
        # then the child is killed (the batch is redelivered; attempts are counted in Postgres).
        task_soft_time_limit=settings.task_time_limit_seconds,
        task_time_limit=settings.task_time_limit_seconds + 30,
        # Publishing from the API gives up after a few seconds when Redis is gone: the
        # documents are stored, and the sweeper enqueues them later.
        broker_connection_timeout=4,
        broker_connection_max_retries=3,
        task_ignore_result=True,
        # Without a visibility timeout longer than the slowest batch Redis would redeliver
        # long-running tasks to a second worker; a killed worker's tasks come back after it.
        broker_transport_options={
            "visibility_timeout": 3600,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            "retry_on_timeout": True,
        },
        broker_connection_retry_on_startup=True,
        # Flower shows tasks live only with events on.
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
    )
    return app


def _batches(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


def _enqueue(
    app: Celery, task: str, queue: str, ids: Sequence[int], batch_size: int, job_id: str | None
) -> int:
    # The job id rides along only for logs and Flower; the task reads everything else from
    # Postgres by document id.
    batches = _batches(ids, batch_size)
    with app.producer_or_acquire() as producer:
        for batch in batches:
            app.send_task(
                task, args=[batch], kwargs={"job_id": job_id}, queue=queue, producer=producer
            )
    return len(batches)


def enqueue_prep(
    app: Celery, ids: Sequence[int], batch_size: int, job_id: str | None = None
) -> int:
    return _enqueue(app, PREP_TASK, PREP_QUEUE, ids, batch_size, job_id)


def enqueue_embed(
    app: Celery, ids: Sequence[int], batch_size: int, job_id: str | None = None
) -> int:
    return _enqueue(app, EMBED_TASK, EMBED_QUEUE, ids, batch_size, job_id)


def embed_batches(chunk_counts: dict[int, int], max_chunks: int) -> list[list[int]]:
    """Documents grouped so that no embed task carries more than ``max_chunks`` chunks (a
    document with more goes alone): every task stays well inside the broker's visibility
    timeout however long the documents are."""
    batches: list[list[int]] = []
    current: list[int] = []
    size = 0
    for doc_id, n in chunk_counts.items():
        if current and size + n > max_chunks:
            batches.append(current)
            current, size = [], 0
        current.append(doc_id)
        size += n
    if current:
        batches.append(current)
    return batches


def _send_batches(app: Celery, task: str, batches: list[list[int]], kwargs: dict[str, Any]) -> None:
    with app.producer_or_acquire() as producer:
        for batch in batches:
            app.send_task(
                task,
                args=[batch],
                kwargs=kwargs,
                queue=TASK_ROUTES[task]["queue"],
                producer=producer,
            )


def enqueue_embed_batches(app: Celery, batches: list[list[int]], job_id: str | None) -> None:
    _send_batches(app, EMBED_TASK, batches, {"job_id": job_id})


def enqueue_fill(app: Celery, batches: list[list[int]], model: str) -> None:
    _send_batches(app, FILL_TASK, batches, {"model": model})


def enqueue_finalize(app: Celery, job_ids: Sequence[object]) -> None:
    with app.producer_or_acquire() as producer:
        for job_id in job_ids:
            app.send_task(
                FINALIZE_TASK, args=[str(job_id)], queue=MAINTAIN_QUEUE, producer=producer
            )


def queue_depths(app: Celery, queues: Sequence[str] = ALL_QUEUES) -> dict[str, int]:
    """Messages waiting in each queue, as the broker counts them (kombu's passive declare),
    plus ``unacked``: delivered to a worker, not yet acknowledged, where the transport keeps
    such a count (Redis). Blocking: call from a thread in async code."""
    from kombu.exceptions import ChannelError

    depths: dict[str, int] = {}
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        for queue in queues:
            try:
                depths[queue] = int(channel.queue_declare(queue=queue, passive=True).message_count)
            except ChannelError:
                depths[queue] = 0  # never declared: no worker has consumed it yet, and no message
                channel = conn.default_channel  # the failed declare closed the channel
        unacked_key = getattr(channel, "unacked_key", None)
        client = getattr(channel, "client", None)
        if unacked_key and client is not None:
            depths["unacked"] = int(client.hlen(unacked_key))
    return depths
