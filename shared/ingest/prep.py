"""The prep stage: load queued documents, normalize, chunk, tokenize, and write the chunks with
their lexemes (and the BM25 statistics) in one transaction per batch.

A document that cannot be prepared is marked failed with its error; the rest of the batch goes on.
Writes are idempotent (old chunks are deleted first) and only land for the document version that
was read, so a retried or duplicated task leaves the same rows.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from shared import metrics
from shared.db.queries import Q
from shared.db.retry import retry_transaction
from shared.text.pipeline import (
    PreparedChunk,
    prepare_document,
    term_frequencies,
    tsvector_literal,
)

log = logging.getLogger(__name__)

STAGE = "prep"


@dataclass
class PrepResult:
    prepped: list[int] = field(default_factory=list)  # documents with chunks, ready to embed
    indexed: list[int] = field(default_factory=list)  # documents with no chunks: nothing to embed
    failed: list[int] = field(default_factory=list)
    skipped: int = 0  # not queued any more (already done, deleted, or changed meanwhile)
    chunks: int = 0


async def record_failure(
    conn: asyncpg.Connection,
    doc_id: int,
    version: int,
    job_id: uuid.UUID | None,
    stage: str,
    message: str,
) -> None:
    await conn.execute(Q.mark_failed, doc_id, message[:2000], version)
    await conn.execute(Q.insert_error, doc_id, job_id, stage, message[:2000])
    metrics.record_failure(stage, final=True)


async def prep_documents(
    pool: asyncpg.Pool,
    doc_ids: list[int],
    *,
    count_tokens: Callable[[str], int],
    max_tokens: int,
    overlap_tokens: int,
    tokens_are_lexemes: bool = False,
    bm25_k1: float = 1.2,
    bm25_b: float = 0.75,
) -> PrepResult:
    started = time.perf_counter()
    result = PrepResult()
    rows = await pool.fetch(Q.load_for_prep, doc_ids)
    result.skipped = len(set(doc_ids)) - len(rows)

    prepared: dict[int, list[PreparedChunk]] = {}
    errors: dict[int, str] = {}
    for row in rows:
        try:
            prepared[row["id"]] = prepare_document(
                row["title"],
                row["body"],
                count_tokens=count_tokens,
                max_tokens=max_tokens,
                overlap_tokens=overlap_tokens,
                tokens_are_lexemes=tokens_are_lexemes,
            )
        except Exception as exc:  # one bad document must not fail the batch
            log.exception("prep failed for document %s", row["id"])
            errors[row["id"]] = f"{type(exc).__name__}: {exc}"
    by_id = {r["id"]: r for r in rows}

    async def write(conn: asyncpg.Connection) -> None:
        result.prepped.clear()
        result.indexed.clear()
        result.failed.clear()
        result.chunks = 0
        current = await conn.fetch(Q.lock_versions, list(by_id))
        # Only the version we read gets our chunks; a newer upload is queued again anyway.
        live = [
            r["id"]
            for r in current
            if r["version"] == by_id[r["id"]]["version"] and r["status"] == "queued"
        ]
        result.skipped += len(by_id) - len(live)
        ok = [i for i in live if i in prepared]
        await conn.execute(Q.delete_chunks_with_stats, ok)
        await conn.execute(Q.create_chunk_staging)
        records = [
            (
                doc_id,
                by_id[doc_id]["collection_id"],
                c.ordinal,
                c.text,
                c.char_start,
                c.char_end,
                c.token_count,
                len(c.lexemes),
                tsvector_literal(c.lexemes),
                term_frequencies(c.lexemes),
            )
            for doc_id in ok
            for c in prepared[doc_id]
        ]
        await conn.copy_records_to_table("chunk_staging", records=records)
        await conn.execute(Q.insert_staged_chunks, bm25_k1, bm25_b)
        result.chunks = len(records)
        result.prepped = [i for i in ok if prepared[i]]
        result.indexed = [i for i in ok if not prepared[i]]
        await conn.execute(Q.mark_prepped, result.prepped)
        await conn.execute(Q.mark_indexed, result.indexed)
        for doc_id in live:
            if doc_id in errors:
                row = by_id[doc_id]
                await record_failure(
                    conn, doc_id, row["version"], row["job_id"], STAGE, errors[doc_id]
                )
                result.failed.append(doc_id)

    if by_id:
        await retry_transaction(pool, write)
    metrics.PREP_BATCH_SECONDS.observe(time.perf_counter() - started)
    metrics.CHUNKS_INGESTED.labels("prep").inc(result.chunks)
    metrics.DOCUMENTS_INGESTED.labels("prep").inc(len(result.prepped) + len(result.indexed))
    return result
