"""The embed stage: load the chunks of prepped documents, encode them in length-sorted,
token-budget batches, and bulk-load the vectors with binary COPY into the model's table.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg
import numpy as np

from shared import metrics
from shared.db.embeddings import ModelTable, replace_embeddings
from shared.db.queries import Q
from shared.db.retry import retry_transaction
from shared.ingest.prep import record_failure
from shared.text.pipeline import embedding_input

log = logging.getLogger(__name__)

STAGE = "embed"


class DocumentEncoder(Protocol):
    takes_lexemes: bool
    device: str

    def encode_documents(self, texts: list[str]) -> np.ndarray: ...

    def encode_lexemes(self, docs: list[list[str]]) -> np.ndarray: ...


@dataclass
class EmbedResult:
    indexed: list[int] = field(default_factory=list)
    skipped: int = 0
    chunks: int = 0


async def embed_documents(
    pool: asyncpg.Pool, encoder: DocumentEncoder, table: ModelTable, doc_ids: list[int]
) -> EmbedResult:
    result = EmbedResult()
    # A model that takes the pipeline's lexemes reads those prep stored instead of the text,
    # so no chunk is tokenized twice.
    query = Q.load_lexemes_for_embed if encoder.takes_lexemes else Q.load_for_embed
    rows = await pool.fetch(query, doc_ids)
    versions = {r["document_id"]: r["version"] for r in rows}
    chunk_ids = [r["chunk_id"] for r in rows]
    result.skipped = len(set(doc_ids)) - len(versions)
    if not rows:
        return result

    started = time.perf_counter()
    # A model failure on a whole batch is most likely transient (OOM, device): it propagates so
    # the task retries; after the last retry the task marks the documents failed.
    if encoder.takes_lexemes:
        vectors = encoder.encode_lexemes([list(r["lexemes"]) for r in rows])
    else:
        vectors = encoder.encode_documents([embedding_input(r["title"], r["text"]) for r in rows])
    elapsed = time.perf_counter() - started
    metrics.EMBED_BATCH_SIZE.observe(len(rows))
    metrics.EMBED_BATCH_SECONDS.labels(encoder.device).observe(elapsed)

    async def write(conn: asyncpg.Connection) -> None:
        current = await conn.fetch(Q.lock_versions, list(versions))
        live = {
            r["id"]
            for r in current
            if r["version"] == versions[r["id"]] and r["status"] == "prepped"
        }
        keep = [i for i, r in enumerate(rows) if r["document_id"] in live]
        await replace_embeddings(conn, table, [chunk_ids[i] for i in keep], vectors[keep])
        result.indexed = sorted(live)
        result.skipped += len(versions) - len(live)
        result.chunks = len(keep)
        await conn.execute(Q.mark_indexed, result.indexed)

    await retry_transaction(pool, write)
    metrics.DOCUMENTS_INGESTED.labels("embed").inc(len(result.indexed))
    metrics.CHUNKS_INGESTED.labels("embed").inc(result.chunks)
    return result


async def fail_documents(pool: asyncpg.Pool, doc_ids: list[int], stage: str, message: str) -> None:
    """Mark documents failed after the task gave up retrying (keeps their current version)."""
    async with pool.acquire() as conn, conn.transaction():
        for r in await conn.fetch(Q.lock_versions, doc_ids):
            if r["status"] in ("queued", "prepped"):
                await record_failure(conn, r["id"], r["version"], r["job_id"], stage, message)
