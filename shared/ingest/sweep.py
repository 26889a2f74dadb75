"""The sweeper: Postgres is the source of truth, Redis only a work signal. Documents that stay
pending after a grace period while the queues are idle had their message lost (Redis restarted or
flushed, a worker killed with a task in hand) and are enqueued again. Tasks are idempotent, so a
document enqueued twice is harmless.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import redis.asyncio as aioredis
from celery import Celery

from shared.config import Settings
from shared.db.queries import Q
from shared.metrics import queue_depths
from shared.taskqueue import enqueue_embed, enqueue_finalize, enqueue_prep

log = logging.getLogger(__name__)

SWEEP_LIMIT = 50_000


async def sweep_once(
    pool: asyncpg.Pool, redis: aioredis.Redis, app: Celery, settings: Settings
) -> tuple[int, int]:
    """Re-enqueue lost work; return (prep, embed) document counts enqueued."""
    depths = await queue_depths(redis)
    # A backlog means messages are still on their way; its documents are not lost. Unacked
    # messages do not count: those of a killed worker stay there for the visibility timeout.
    if any(n for queue, n in depths.items() if queue != "unacked"):
        return 0, 0
    rows = await pool.fetch(Q.claim_pending, settings.sweep_grace_seconds, SWEEP_LIMIT)
    prep = [r["id"] for r in rows if r["status"] == "queued"]
    embed = [r["id"] for r in rows if r["status"] == "prepped"]
    if prep:
        await asyncio.to_thread(enqueue_prep, app, prep, settings.prep_batch_size)
    if embed:
        await asyncio.to_thread(enqueue_embed, app, embed, settings.prep_batch_size)
    if prep or embed:
        log.warning(
            "sweeper re-enqueued %d documents for prep and %d for embed", len(prep), len(embed)
        )
    jobs = [
        r["id"]
        for r in await pool.fetch(Q.stale_unfinished_jobs, settings.sweep_grace_seconds, 100)
    ]
    if jobs:
        await asyncio.to_thread(enqueue_finalize, app, jobs)
    return len(prep), len(embed)


async def sweep_forever(
    pool: asyncpg.Pool, redis: aioredis.Redis, app: Celery, settings: Settings
) -> None:
    while True:
        try:
            await sweep_once(pool, redis, app, settings)
        except asyncio.CancelledError:
            raise
        except Exception:  # the broker or database may be down; try again next round
            log.exception("sweep failed")
        await asyncio.sleep(settings.sweep_interval_seconds)
