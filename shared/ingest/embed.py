"""The embed stage: load the chunks of prepped documents, encode their vector units (the chunk,
or each sentence for a bag-of-words model) in length-sorted, token-budget batches, and bulk-load
the vectors with binary COPY into the collection's partition of the model's table.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg
import numpy as np

from shared import metrics
from shared.db.embeddings import ModelTable, ensure_partition, replace_embeddings
from shared.db.queries import Q
from shared.db.registry import guard_active
from shared.db.retry import retry_transaction
from shared.text.pipeline import embedding_input, unit_texts

log = logging.getLogger(__name__)

STAGE = "embed"


class DocumentEncoder(Protocol):
    device: str

    def encode_documents(self, texts: list[str]) -> np.ndarray: ...


@dataclass
class EmbedResult:
    indexed: list[int] = field(default_factory=list)
    # Cut for another chunker: sent back to prep, to be enqueued there.
    reprep: list[int] = field(default_factory=list)
    skipped: int = 0
    chunks: int = 0
    jobs: set[uuid.UUID] = field(default_factory=set)


def unit_inputs(table: ModelTable, title: str, text: str) -> list[str]:
    """The embedding inputs of one chunk: one per sentence or one for the chunk, as the model's
    table was made."""
    if table.vector_unit == "sentence":
        return [embedding_input(title, s) for s in unit_texts(text)]
    return [embedding_input(title, text)]


async def embed_documents(
    pool: asyncpg.Pool,
    encoder: DocumentEncoder,
    table: ModelTable,
    doc_ids: list[int],
    chunker: str | None = None,
    *,
    fill: bool = False,
) -> EmbedResult:
    """``chunker``: the encoder's (``Embedder.chunker``). Documents cut by another one go back
    to prep rather than have the model truncate chunks sized for a different tokenizer.

    The active model's vectors of prepped documents, which are then indexed; or with ``fill``,
    the vectors of indexed documents for a model being switched to (shared/ingest/switch.py),
    which leaves their status alone."""
    result = EmbedResult()
    status = "indexed" if fill else "prepped"
    rows = await pool.fetch(Q.load_for_embed, doc_ids, status)
    foreign = {r["document_id"] for r in rows if chunker and r["chunker"] not in (None, chunker)}
    # Sent back once; a second time (prep and embed disagree) it is embedded as it is.
    stale = sorted(
        {
            r["document_id"]
            for r in rows
            if r["document_id"] in foreign and r["chunker_bounces"] == 0
        }
    )
    if len(foreign) > len(stale):
        log.warning(
            "%d documents were cut for another chunker again: embedded as they are "
            "(prep and embed disagree on the chunker: check their settings)",
            len(foreign) - len(stale),
        )
    rows = [r for r in rows if r["document_id"] not in set(stale)]
    versions = {r["document_id"]: r["version"] for r in rows}
    result.skipped = len(set(doc_ids)) - len(versions) - len(stale)

    async def send_back(conn: asyncpg.Connection) -> None:
        result.reprep = [r["id"] for r in await conn.fetch(Q.send_back_to_prep, stale)]
        if result.reprep:
            log.info("%d documents were cut for another chunker: back to prep", len(result.reprep))

    if not rows:
        if stale:
            await retry_transaction(pool, send_back)
        return result

    inputs = [unit_inputs(table, r["title"], r["text"]) for r in rows]
    started = time.perf_counter()
    # A model failure on a whole batch is most likely transient (OOM, device): it propagates so
    # the task retries; after the last retry the task marks the documents failed.
    flat = encoder.encode_documents([t for units in inputs for t in units])
    elapsed = time.perf_counter() - started
    metrics.EMBED_BATCH_SIZE.observe(len(flat))
    metrics.EMBED_BATCH_SECONDS.labels(encoder.device).observe(elapsed)
    for collection_id in {r["collection_id"] for r in rows}:
        await ensure_partition(pool, table, collection_id)

    async def write(conn: asyncpg.Connection) -> None:
        if not fill:
            # Documents become indexed for the active model only: a switch waits for this write,
            # or this write sees the switch (the task then runs again for the new model).
            await guard_active(conn, table.model)
        current = await conn.fetch(Q.lock_versions, list(versions))
        live = {
            r["id"] for r in current if r["version"] == versions[r["id"]] and r["status"] == status
        }
        by_collection: dict[int, list[tuple[int, int, np.ndarray]]] = {}
        chunk_ids: dict[int, list[int]] = {}
        at = 0
        for r, units in zip(rows, inputs, strict=True):
            vecs = flat[at : at + len(units)]
            at += len(units)
            if r["document_id"] not in live:
                continue
            coll = r["collection_id"]
            chunk_ids.setdefault(coll, []).append(r["chunk_id"])
            by_collection.setdefault(coll, []).extend(
                (r["chunk_id"], u, v) for u, v in enumerate(vecs)
            )
        for coll in sorted(by_collection):
            await replace_embeddings(conn, table, coll, chunk_ids[coll], by_collection[coll])
        result.indexed = sorted(live)
        result.skipped += len(versions) - len(live)
        result.chunks = sum(len(v) for v in chunk_ids.values())
        if fill:
            return
        await conn.execute(Q.mark_indexed, result.indexed)
        result.jobs = {r["job_id"] for r in current if r["id"] in live and r["job_id"]}
        # In the same transaction: if encoding fails, the task's retry sees them again.
        await send_back(conn)

    await retry_transaction(pool, write)
    stage = "fill" if fill else "embed"
    metrics.DOCUMENTS_INGESTED.labels(stage).inc(len(result.indexed))
    metrics.CHUNKS_INGESTED.labels(stage).inc(result.chunks)
    return result
