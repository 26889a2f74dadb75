"""The prep stage: load queued documents, normalize, chunk, tokenize, and write the chunks with
their lexical index (postings, forward-index terms, BM25 statistics) in one transaction per batch.

A model that embeds the pipeline's own lexemes (the default static model) is run here too: its
vectors cost a table lookup per word, and prep has the lexemes of every sentence in hand, so the
documents go straight to ``indexed`` without a second task reading the chunks back. Other models
leave the documents ``prepped`` for the embed stage.

A document that cannot be prepared is marked failed with its error; the rest of the batch goes on.
Writes are idempotent (old chunks are deleted first; the chunks_deleted trigger takes their
postings, statistics and vectors with them) and only land for the document version that was
read, so a retried or duplicated task leaves the same rows.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import numpy as np
from pgvector import SparseVector

from shared import metrics
from shared.config import Settings
from shared.db.embeddings import ModelTable, copy_vectors, ensure_partition
from shared.db.queries import Q
from shared.db.registry import guard_active
from shared.db.retry import retry_transaction
from shared.files.extract import Extracted, ExtractionError, extract
from shared.files.formats import Format
from shared.text.pipeline import PreparedChunk, prepare_document, prepare_pages
from shared.text.terms import TERM_SPACE, FieldParams, chunk_key, chunk_terms

log = logging.getLogger(__name__)

STAGE = "prep"

_CHUNK_COLUMNS = [
    "id",
    "document_id",
    "collection_id",
    "ordinal",
    "text",
    "char_start",
    "char_end",
    "token_count",
    "lexeme_count",
    "key",
    "terms",
    "page",
]
_POSTING_COLUMNS = ["collection_id", "term", "impact", "key", "chunk_id"]


@dataclass(frozen=True)
class LexicalParams:
    word: FieldParams
    bigram: FieldParams

    @classmethod
    def from_settings(cls, s: Settings) -> LexicalParams:
        return cls(
            FieldParams(s.bm25_word_k1, s.bm25_word_b, s.bm25_word_avgdl),
            FieldParams(s.bm25_bigram_k1, s.bm25_bigram_b, s.bm25_bigram_avgdl),
        )


class LexemeEncoder(Protocol):
    device: str

    def encode_lexemes(self, docs: list[list[str]]) -> np.ndarray: ...


@dataclass(frozen=True)
class InlineEmbedding:
    """Embed in prep: the encoder of a model that takes lexemes, and its table."""

    encoder: LexemeEncoder
    table: ModelTable


@dataclass
class PrepResult:
    prepped: list[int] = field(default_factory=list)  # documents with chunks, ready to embed
    indexed: list[int] = field(default_factory=list)  # documents done (embedded here, or empty)
    failed: list[int] = field(default_factory=list)
    skipped: int = 0  # not queued any more (already done, deleted, or changed meanwhile)
    chunks: int = 0
    chunk_counts: dict[int, int] = field(default_factory=dict)  # of the prepped documents
    jobs: set[uuid.UUID] = field(default_factory=set)


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


@dataclass(frozen=True, slots=True)
class _ChunkRow:
    """A chunk with everything prep writes for it, built before the transaction (only the
    chunk id is allocated inside it)."""

    document_id: int
    collection_id: int
    chunk: PreparedChunk
    key: int
    words: dict[str, float]  # word → BM25 weight: the postings
    word_count: int
    terms: SparseVector  # both fields' weights: the forward index
    vectors: np.ndarray | None  # one per vector unit, when prep embeds

    def chunk_record(self, chunk_id: int) -> tuple[Any, ...]:
        c = self.chunk
        return (
            chunk_id,
            self.document_id,
            self.collection_id,
            c.ordinal,
            c.text,
            c.char_start,
            c.char_end,
            c.token_count,
            self.word_count,
            self.key,
            self.terms,
            c.page,
        )


def _build_rows(
    prepared: dict[int, list[PreparedChunk]],
    docs: dict[int, asyncpg.Record],
    lexical: LexicalParams,
    inline: InlineEmbedding | None,
) -> list[_ChunkRow]:
    items = [(doc_id, c) for doc_id, chunks in prepared.items() for c in chunks]
    vectors: list[np.ndarray | None] = [None] * len(items)
    if inline is not None:
        units = [u for _, c in items for u in c.units]
        started = time.perf_counter()
        encoded = inline.encoder.encode_lexemes(units) if units else None
        metrics.EMBED_BATCH_SIZE.observe(len(units))
        metrics.EMBED_BATCH_SECONDS.labels(inline.encoder.device).observe(
            time.perf_counter() - started
        )
        at = 0
        for i, (_, c) in enumerate(items):
            assert encoded is not None
            vectors[i] = encoded[at : at + len(c.units)]
            at += len(c.units)
    out = []
    for (doc_id, c), vecs in zip(items, vectors, strict=True):
        doc = docs[doc_id]
        t = chunk_terms(c.words, c.grams, lexical.word, lexical.bigram)
        out.append(
            _ChunkRow(
                doc_id,
                doc["collection_id"],
                c,
                chunk_key(doc["external_id"], c.ordinal),
                t.words,
                t.word_count,
                SparseVector(t.dimensions, TERM_SPACE),
                vecs,
            )
        )
    return out


def _extract(data: bytes, fmt: str, charset: str | None, max_bytes: int | None) -> Extracted:
    started = time.perf_counter()
    out = extract(data, Format(fmt), charset)
    metrics.FILE_EXTRACT_SECONDS.labels(fmt).observe(time.perf_counter() - started)
    size = len(out.text.encode("utf-8"))
    if max_bytes is not None and size > max_bytes:
        raise ExtractionError(
            f"its text is {size} bytes, over the limit of {max_bytes} (max_document_bytes)"
        )
    return out


async def prep_documents(
    pool: asyncpg.Pool,
    doc_ids: list[int],
    *,
    count_tokens: Callable[[str], int],
    max_tokens: int,
    overlap_tokens: int,
    lexical: LexicalParams,
    inline: InlineEmbedding | None = None,
    max_text_bytes: int | None = None,
    chunker: str | None = None,
) -> PrepResult:
    """``max_text_bytes``: the most text a file may yield (else the document fails).
    ``chunker``: recorded with each document (``Embedder.chunker``)."""
    started = time.perf_counter()
    result = PrepResult()
    rows = await pool.fetch(Q.load_for_prep, doc_ids)
    result.skipped = len(set(doc_ids)) - len(rows)

    prepared: dict[int, list[PreparedChunk]] = {}
    extracted: dict[int, tuple[str, str]] = {}  # from files: the title and text to store
    errors: dict[int, str] = {}
    options: dict[str, Any] = {
        "count_tokens": count_tokens,
        "max_tokens": max_tokens,
        "overlap_tokens": overlap_tokens,
        "tokens_are_lexemes": inline is not None,
        "vector_unit": inline.table.vector_unit if inline else "chunk",
    }
    for row in rows:
        doc_id = row["id"]
        try:
            if row["file_format"] is None:
                prepared[doc_id] = prepare_document(row["title"], row["body"], **options)
                continue
            # One file's bytes in memory at a time, however large the batch.
            data = await pool.fetchval(Q.load_file, doc_id)
            text = _extract(data, row["file_format"], row["file_charset"], max_text_bytes)
            title = text.title or row["title"]
            extracted[doc_id] = (title, text.text)
            if text.paged:
                prepared[doc_id] = prepare_pages(title, text.pages, **options)
            else:
                prepared[doc_id] = prepare_document(title, text.text, **options)
        except ExtractionError as exc:
            errors[doc_id] = f"cannot read the file: {exc}"
        except Exception as exc:  # one bad document must not fail the batch
            log.exception("prep failed for document %s", doc_id)
            errors[doc_id] = f"{type(exc).__name__}: {exc}"
    by_id = {r["id"]: r for r in rows}
    chunk_rows = _build_rows(prepared, by_id, lexical, inline)
    if inline is not None:
        for collection_id in {r["collection_id"] for r in rows}:
            await ensure_partition(pool, inline.table, collection_id)

    async def write(conn: asyncpg.Connection) -> None:
        result.prepped.clear()
        result.indexed.clear()
        result.failed.clear()
        result.chunks = 0
        result.chunk_counts.clear()
        if inline is not None:  # writes the active model's vectors (shared/db/registry.py)
            await guard_active(conn, inline.table.model)
        current = await conn.fetch(Q.lock_versions, list(by_id))
        # Only the version we read gets our chunks; a newer upload is queued again anyway.
        live = {
            r["id"]
            for r in current
            if r["version"] == by_id[r["id"]]["version"] and r["status"] == "queued"
        }
        result.skipped += len(by_id) - len(live)
        ok = [i for i in sorted(live) if i in prepared]
        # A new version that failed prep must not leave the old version's chunks searchable.
        await conn.execute(Q.delete_chunks, sorted(live))
        await conn.executemany(
            Q.set_extracted_text,
            [(i, *extracted[i]) for i in sorted(live) if i in extracted and i in prepared],
        )
        keep = [r for r in chunk_rows if r.document_id in live]
        ids = [r["id"] for r in await conn.fetch(Q.allocate_chunk_ids, len(keep))]
        await conn.copy_records_to_table(
            "chunks",
            records=[r.chunk_record(cid) for cid, r in zip(ids, keep, strict=True)],
            columns=_CHUNK_COLUMNS,
        )
        await conn.copy_records_to_table(
            "postings",
            records=[
                (r.collection_id, term, weight, r.key, cid)
                for cid, r in zip(ids, keep, strict=True)
                for term, weight in r.words.items()
            ],
            columns=_POSTING_COLUMNS,
        )
        if inline is not None:
            for collection_id in sorted({r.collection_id for r in keep}):
                await copy_vectors(
                    conn,
                    inline.table,
                    collection_id,
                    [
                        (cid, unit, v)
                        for cid, r in zip(ids, keep, strict=True)
                        if r.collection_id == collection_id and r.vectors is not None
                        for unit, v in enumerate(r.vectors)
                    ],
                )
        # The statistics rows are shared with every concurrent batch: touched last, so their
        # locks are held only until the commit.
        df = sorted(Counter((r.collection_id, w) for r in keep for w in r.words).items())
        await conn.execute(
            Q.add_lexeme_stats, [c for (c, _), _ in df], [w for (_, w), _ in df], [n for _, n in df]
        )
        colls = sorted({r.collection_id for r in keep})
        await conn.execute(
            Q.add_collection_stats,
            colls,
            [sum(1 for r in keep if r.collection_id == c) for c in colls],
            [sum(r.word_count for r in keep if r.collection_id == c) for c in colls],
        )
        result.chunks = len(keep)
        if inline is None:
            result.prepped = [i for i in ok if prepared[i]]
            result.indexed = [i for i in ok if not prepared[i]]
            result.chunk_counts = {i: len(prepared[i]) for i in result.prepped}
        else:
            result.indexed = ok
        await conn.execute(Q.mark_prepped, result.prepped, chunker)
        await conn.execute(Q.mark_indexed, result.indexed)
        await conn.execute(Q.set_chunker, result.indexed, chunker)
        for doc_id in sorted(live):
            if doc_id in errors:
                row = by_id[doc_id]
                await record_failure(
                    conn, doc_id, row["version"], row["job_id"], STAGE, errors[doc_id]
                )
                result.failed.append(doc_id)
        result.jobs = {by_id[i]["job_id"] for i in live if by_id[i]["job_id"] is not None}

    if by_id:
        await retry_transaction(pool, write)
    metrics.PREP_BATCH_SECONDS.observe(time.perf_counter() - started)
    metrics.CHUNKS_INGESTED.labels("prep").inc(result.chunks)
    metrics.DOCUMENTS_INGESTED.labels("prep").inc(len(result.prepped) + len(result.indexed))
    if inline is not None:
        metrics.DOCUMENTS_INGESTED.labels("embed").inc(len(result.indexed))
    return result
