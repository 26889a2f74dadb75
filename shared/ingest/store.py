"""Storing an accepted upload: documents and the job row in one transaction; the caller enqueues
after commit.

Rows go through COPY into a temporary staging table and one upsert, so an upload of thousands of
documents is a handful of statements, and the transaction lasts only as long as those do (the
API has the documents validated and spooled before it starts). If the broker is down after the
commit nothing is lost: the documents are pending in Postgres and the sweeper enqueues them later.
A deadlock with a concurrent upload, worker or delete on the same documents is retried.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import asyncpg

from shared.db.queries import Q
from shared.db.retry import retry_transaction

_STAGING_COLUMNS = [
    "external_id",
    "title",
    "body",
    "metadata",
    "content_hash",
    "file_name",
    "file_format",
    "file_charset",
    "file_data",
]

# external_id, title, body, metadata (JSON), content hash, then for a file: its name, format,
# declared charset and bytes (None for a JSON document).
Record = tuple[str, str, str, str, bytes, str | None, str | None, str | None, bytes | None]


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
    records: Callable[[], Iterable[Record]],
    count: int,
    rejected: int,
    *,
    has_files: bool = False,
) -> StoredUpload | None:
    """Write ``count`` documents (``records()`` yields them; called once per attempt); None,
    writing nothing, when there are none. ``has_files``: some records carry a file."""
    if count == 0:
        # Not even the collection is created by an upload that stores nothing.
        return None
    job_id = uuid.uuid4()

    async def write(conn: asyncpg.Connection) -> StoredUpload:
        # Look up first: the upsert locks the collection's row until commit, which would make
        # concurrent uploads to one collection wait for each other.
        collection_id = await conn.fetchval(Q.collection_id, collection) or await conn.fetchval(
            Q.upsert_collection, collection
        )
        await conn.execute(Q.create_upload_staging)
        await conn.copy_records_to_table(
            "upload_staging", records=records(), columns=_STAGING_COLUMNS
        )
        await conn.execute(Q.insert_job, job_id, collection_id, rejected)
        ids = [r["id"] for r in await conn.fetch(Q.upsert_documents, collection_id, job_id)]
        if ids:
            await conn.execute(Q.delete_files, ids)
            if has_files:
                await conn.execute(Q.insert_files, collection_id, ids)
        await conn.execute(Q.update_unchanged_metadata, collection_id)
        await conn.execute(Q.set_job_counts, job_id, len(ids), count - len(ids))
        return StoredUpload(job_id, ids, count - len(ids))

    return await retry_transaction(pool, write)
