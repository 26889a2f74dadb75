"""Reads and deletes of single documents and jobs."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from shared.db.queries import Q
from shared.db.retry import retry_transaction
from shared.errors import NotFoundError

JOB_ERRORS_SHOWN = 10


async def require_collection(conn: asyncpg.Connection | asyncpg.Pool, name: str) -> int:
    cid = await conn.fetchval(Q.collection_id, name)
    if cid is None:
        raise NotFoundError(f"collection {name!r} not found")
    return int(cid)


async def get_document(pool: asyncpg.Pool, collection: str, external_id: str) -> dict[str, Any]:
    await require_collection(pool, collection)
    row = await pool.fetchrow(Q.get_document, collection, external_id)
    if row is None:
        raise NotFoundError(f"document {external_id!r} not found in collection {collection!r}")
    return {
        "id": row["external_id"],
        "collection": collection,
        "title": row["title"],
        "text": row["body"],
        "metadata": json.loads(row["metadata"]),
        "status": row["status"],
        "chunks": row["chunk_count"],
        "attempts": row["attempts"],
        "last_error": row["last_error"],
        "job_id": str(row["job_id"]) if row["job_id"] else None,
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


async def delete_document(pool: asyncpg.Pool, collection: str, external_id: str) -> None:
    """Delete the document with everything derived from it; a deadlock with a concurrent upload
    or worker on the same rows is retried."""
    await require_collection(pool, collection)

    async def delete(conn: asyncpg.Connection) -> None:
        doc_id = await conn.fetchval(Q.lock_document, collection, external_id)
        if doc_id is None:
            raise NotFoundError(f"document {external_id!r} not found in collection {collection!r}")
        await conn.execute(Q.delete_document_row, doc_id)

    await retry_transaction(pool, delete)


def _job_state(total: int, pending: int, queued: int, failed: int, finished: bool) -> str:
    if total == 0 or (pending == 0 and finished):
        if failed == 0:
            return "done"
        return "failed" if failed >= total else "partial"
    if pending >= total and queued == pending:
        return "queued"
    # Nothing pending but not finished yet: the finalize step (VACUUM, vector index) is running.
    return "running"


async def job_status(pool: asyncpg.Pool, job_id: str) -> dict[str, Any]:
    try:
        jid = uuid.UUID(job_id)
    except ValueError:
        raise NotFoundError(f"job {job_id!r} not found (not a job id)") from None
    row = await pool.fetchrow(Q.job_status, jid)
    if row is None:
        raise NotFoundError(f"job {job_id!r} not found")
    total = row["total"]
    queued, prepped, indexed, failed = row["queued"], row["prepped"], row["indexed"], row["failed"]
    finished_at = row["finished_at"]
    state = _job_state(total, queued + prepped, queued, failed, finished_at is not None)
    errors = await pool.fetch(Q.job_errors, jid, JOB_ERRORS_SHOWN)
    return {
        "job_id": str(jid),
        "collection": row["collection"],
        "status": state,
        "total": total,
        "queued": queued,
        "prepped": indexed + prepped,
        "indexed": indexed,
        "failed": failed,
        # Re-uploaded under a later job, or deleted, before this job finished them.
        "superseded": max(0, total - queued - prepped - indexed - failed),
        "unchanged": row["unchanged"],
        "rejected": row["rejected"],
        "errors": [
            {
                "id": e["external_id"],
                "stage": e["stage"],
                "error": e["message"],
                "at": e["at"].isoformat(),
            }
            for e in errors
        ],
        "created_at": row["created_at"].isoformat(),
        "finished_at": finished_at.isoformat() if finished_at else None,
    }
