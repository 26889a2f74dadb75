"""Attempts per document, counted in Postgres, so that no document is tried forever.

Every prep or embed task first counts an attempt for each of its documents, in its own
committed transaction. A document whose processing kills the worker process (a crash, the OOM
killer, a hard time limit) never reaches the task's error handling: the broker just delivers the
batch again. The count is what notices. A batch that comes back with documents tried before is
split into one task per document, so the one that keeps failing is isolated and the rest are
indexed; a document past ``max_attempts`` is marked failed with the reason.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import asyncpg

from shared.db.queries import Q
from shared.db.retry import retry_transaction
from shared.ingest.prep import record_failure


@dataclass
class Claim:
    run: list[int] = field(default_factory=list)  # process these now
    split: list[int] = field(default_factory=list)  # tried before: one task each instead
    failed: list[int] = field(default_factory=list)  # out of attempts: marked failed here
    jobs: set[uuid.UUID] = field(default_factory=set)  # jobs of the failed ones


async def claim_attempt(
    pool: asyncpg.Pool, doc_ids: list[int], status: str, stage: str, max_attempts: int
) -> Claim:
    """Count an attempt for the documents of ``doc_ids`` still in ``status`` and say what to do
    with them."""
    rows = await pool.fetch(Q.claim_attempt, doc_ids, status)
    claim = Claim()
    over = [r for r in rows if r["attempts"] > max_attempts]
    live = [r for r in rows if r["attempts"] <= max_attempts]
    if over:

        async def fail(conn: asyncpg.Connection) -> None:
            current = {
                r["id"]: r for r in await conn.fetch(Q.lock_versions, [r["id"] for r in over])
            }
            for r in over:
                now = current.get(r["id"])
                if now is None or now["version"] != r["version"] or now["status"] != status:
                    continue  # changed meanwhile: the new version has its own attempts
                message = (
                    f"gave up after {max_attempts} attempts at {stage}: each one failed or its "
                    "worker process died while handling this document (a crash, memory, or "
                    "the task time limit)"
                )
                await record_failure(conn, r["id"], r["version"], r["job_id"], stage, message)
                claim.failed.append(r["id"])
                if r["job_id"] is not None:
                    claim.jobs.add(r["job_id"])

        await retry_transaction(pool, fail)
    ids = [r["id"] for r in live]
    if len(ids) > 1 and any(r["attempts"] > 1 for r in live):
        claim.split = ids
    else:
        claim.run = ids
    return claim
