"""Storing an upload: documents and the job row in one transaction, enqueueing after commit.

Rows go through COPY into a temporary staging table and one upsert, so an upload of thousands of
documents is a handful of statements. If the broker is down after the commit nothing is lost: the
documents are pending in Postgres and the sweeper enqueues them later.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable, AsyncIterator, Sized
from dataclasses import dataclass, field

import asyncpg

from shared.db.queries import Q
from shared.ingest.validate import ValidDocument

_STAGING_COLUMNS = ["external_id", "title", "body", "metadata", "content_hash"]


@dataclass
class StoredUpload:
    job_id: uuid.UUID
    document_ids: list[int] = field(default_factory=list)
    unchanged: int = 0

    @property
    def accepted(self) -> int:
        return len(self.document_ids)


async def store_upload(
    pool: asyncpg.Pool,
    collection: str,
    documents: AsyncIterable[ValidDocument],
    rejected: Sized,
) -> StoredUpload | None:
    """Write the documents; return None, writing nothing, when the iterable yields none.

    ``rejected`` is the caller's list of rejected items, filled while ``documents`` streams; it is
    read once the stream is consumed, to record the count on the job.
    """
    job_id = uuid.uuid4()
    staged = 0

    async def records() -> AsyncIterator[tuple[str, str, str, str, bytes]]:
        nonlocal staged
        async for doc in documents:
            staged += 1
            yield doc.record()

    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            # Look up first: the upsert locks the collection's row until commit, which would
            # make concurrent uploads to one collection wait for each other.
            collection_id = await conn.fetchval(Q.collection_id, collection) or await conn.fetchval(
                Q.upsert_collection, collection
            )
            await conn.execute(Q.create_upload_staging)
            await conn.copy_records_to_table(
                "upload_staging", records=records(), columns=_STAGING_COLUMNS
            )
            if staged == 0:
                # Not even the collection is created by an upload that stores nothing.
                await tx.rollback()
                return None
            await conn.execute(Q.insert_job, job_id, collection_id, len(rejected))
            ids = [r["id"] for r in await conn.fetch(Q.upsert_documents, collection_id, job_id)]
            await conn.execute(Q.update_unchanged_metadata, collection_id)
            await conn.execute(Q.set_job_counts, job_id, len(ids), staged - len(ids))
        except BaseException:
            await tx.rollback()
            raise
        await tx.commit()
    return StoredUpload(job_id, ids, staged - len(ids))
