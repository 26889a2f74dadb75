"""The Celery application and the functions that put work on the queues.

The API and the workers build the same app from the same Settings; the API only sends tasks by
name. Only document ids travel through Redis: Postgres is the source of truth, Redis the signal.
"""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery

from shared.config import Settings
from shared.queues import (
    EMBED_QUEUE,
    EMBED_TASK,
    FINALIZE_TASK,
    MAINTAIN_QUEUE,
    PREP_QUEUE,
    PREP_TASK,
    TASK_ROUTES,
)


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
        task_ignore_result=True,
        # Without a visibility timeout longer than the slowest batch Redis would redeliver
        # long-running tasks to a second worker; a killed worker's tasks come back after it.
        broker_transport_options={"visibility_timeout": 3600},
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


def enqueue_finalize(app: Celery, job_ids: Sequence[object]) -> None:
    with app.producer_or_acquire() as producer:
        for job_id in job_ids:
            app.send_task(
                FINALIZE_TASK, args=[str(job_id)], queue=MAINTAIN_QUEUE, producer=producer
            )
