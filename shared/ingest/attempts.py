"""Attempts per document, counted in Postgres, so that no document is tried forever, and
counted only for real tries, so that a document delivered twice is not failed for it.

A prep or embed task holds one database connection for its whole run and claims
its documents on it: for each document it takes a session-level advisory lock on (document,
version, stage) and counts an attempt. The lock says "a live task is working on this very
version at this stage right now": it ends with the task, or with its process, since Postgres
drops a dead client's session and its locks at once. So:

- a second task for the same work (the sweeper re-enqueueing a document whose message sat in a
  backlog, a batch left over from an earlier upload of a document re-uploaded since) finds the
  lock taken and leaves the document to the task that holds it, without counting;
- a document whose processing kills the worker process (a crash, the OOM killer, a hard time
  limit) never reaches the task's error handling: the broker delivers the batch again, and the
  count is what notices. A batch that comes back with documents tried before is split into one
  task per document (without counting: the split does no work), so the one that keeps failing
  is isolated and the rest are indexed; a document past ``max_attempts`` is marked failed with
  the reason.

Attempts count per stage: a document prepared starts its embed stage at zero.
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
    held: int = 0  # being worked on by another live task: left to it
    jobs: set[uuid.UUID] = field(default_factory=set)  # jobs of the failed ones


async def release_held(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    """End a task's hold on ``conn``, the connection its claims were made on: its locks go,
    and it returns to the pool."""
    try:
        await conn.execute(Q.release_claims)
    except Exception:
        conn.terminate()  # the session ends, and its locks with it
    await pool.release(conn)


async def claim_attempt(
    pool: asyncpg.Pool,
    conn: asyncpg.Connection,
    doc_ids: list[int],
    status: str,
    stage: str,
    max_attempts: int,
) -> Claim:
    """Claim the documents of ``doc_ids`` still in ``status`` on ``conn`` (held by the task
    until it ends, then given to ``release_held``), count an attempt for each, and say what to
    do with them."""
    rows = await conn.fetch(Q.lock_claims, doc_ids, status)
    locked = [r for r in rows if r["locked"]]
    claim = Claim(held=len(rows) - len(locked))
    if len(locked) > 1 and any(r["attempts"] > 0 for r in locked):
        # Let go first: the single tasks may start before this one ends.
        await conn.execute(Q.release_claims)
        claim.split = [r["id"] for r in locked]
        return claim
    counted = await conn.fetch(
        Q.count_attempts, [r["id"] for r in locked], [r["version"] for r in locked], status
    )
    over = [r for r in counted if r["attempts"] > max_attempts]
    claim.run = [r["id"] for r in counted if r["attempts"] <= max_attempts]
    if over:

        async def fail(tx: asyncpg.Connection) -> None:
            current = {r["id"]: r for r in await tx.fetch(Q.lock_versions, [r["id"] for r in over])}
            for r in over:
                now = current.get(r["id"])
                if now is None or now["version"] != r["version"] or now["status"] != status:
                    continue  # changed meanwhile: the new version has its own attempts
                message = (
                    f"gave up after {max_attempts} attempts at {stage}: each one failed or its "
                    "worker process died while handling this document (a crash, memory, or "
                    "the task time limit)"
                )
                await record_failure(tx, r["id"], r["version"], r["job_id"], stage, message)
                claim.failed.append(r["id"])
                if r["job_id"] is not None:
                    claim.jobs.add(r["job_id"])

        await retry_transaction(pool, fail)
    return claim


async def give_up(
    pool: asyncpg.Pool, doc_ids: list[int], status: str, stage: str, message: str
) -> set[uuid.UUID]:
    """After a task's last retry: mark failed those of its documents still in ``status`` that
    no other live task holds (a newer upload's task may be at work on them: its outcome
    stands). Returns the jobs of the ones failed."""
    conn = await pool.acquire()
    try:
        rows = await conn.fetch(Q.lock_claims, doc_ids, status)
        mine = {r["id"]: r["version"] for r in rows if r["locked"]}
        jobs: set[uuid.UUID] = set()

        async def fail(tx: asyncpg.Connection) -> None:
            jobs.clear()
            for r in await tx.fetch(Q.lock_versions, list(mine)):
                if r["status"] == status and r["version"] == mine[r["id"]]:
                    await record_failure(tx, r["id"], r["version"], r["job_id"], stage, message)
                    if r["job_id"] is not None:
                        jobs.add(r["job_id"])

        await retry_transaction(pool, fail)
        return jobs
    finally:
        await release_held(pool, conn)
