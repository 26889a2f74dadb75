"""The sweeper: Postgres is the source of truth, Redis only a work signal. Documents that stay
pending past a grace period had their message lost (Redis restarted or flushed, a worker killed
with a task in hand) and are enqueued again; jobs with nothing pending whose finalize task was
lost get it again. Tasks are idempotent, so a document enqueued twice is harmless, only wasted
work, which is why the grace period depends on the stage's queue:

- the stage's queue is empty: nothing is on its way, ``sweep_grace_seconds`` suffices;
- it has a backlog: the documents may still be in it, so only those pending ten times longer
  are taken. Lost work is recovered under steady load too, and a backlog on one stage never
  holds up the other.

Each stage is handled on its own; queue depths come from the broker through kombu.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from celery import Celery

from shared.broker import (
    EMBED_QUEUE,
    PREP_QUEUE,
    enqueue_embed,
    enqueue_finalize,
    enqueue_prep,
    queue_depths,
)
from shared.config import Settings
from shared.db.queries import Q

log = logging.getLogger(__name__)

SWEEP_LIMIT = 50_000
BACKLOG_FACTOR = 10


async def sweep_once(pool: asyncpg.Pool, app: Celery, settings: Settings) -> tuple[int, int]:
    """Re-enqueue lost work; return (prep, embed) document counts enqueued."""
    depths = await asyncio.to_thread(queue_depths, app, (PREP_QUEUE, EMBED_QUEUE))
    grace = settings.sweep_grace_seconds
    counts = []
    for status, queue, enqueue in (
        ("queued", PREP_QUEUE, enqueue_prep),
        ("prepped", EMBED_QUEUE, enqueue_embed),
    ):
        age = grace if depths.get(queue, 0) == 0 else grace * BACKLOG_FACTOR
        rows = await pool.fetch(Q.claim_pending, status, age, SWEEP_LIMIT)
        ids = [r["id"] for r in rows]
        if ids:
            await asyncio.to_thread(enqueue, app, ids, settings.prep_batch_size)
            log.warning("sweeper re-enqueued %d %s documents on %s", len(ids), status, queue)
        counts.append(len(ids))
    jobs = [r["id"] for r in await pool.fetch(Q.stale_unfinished_jobs, grace, 100)]
    if jobs:
        await asyncio.to_thread(enqueue_finalize, app, jobs)
    return counts[0], counts[1]


async def sweep_forever(pool: asyncpg.Pool, app: Celery, settings: Settings) -> None:
    while True:
        try:
            await sweep_once(pool, app, settings)
        except asyncio.CancelledError:
            raise
        except Exception:  # the broker or database may be down; try again next round
            log.exception("sweep failed")
        await asyncio.sleep(settings.sweep_interval_seconds)
