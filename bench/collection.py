"""``kensaku bench collection``: search latency of every mode in one large collection, loaded
through kensaku's own ingest path.

Passages: every sentence of a corpus with its article's title (ja_dev gives about 60,000), then,
up to ``--rows``, two random real sentences written as one (the first's closing 。 becomes 、),
so the default model embeds each passage as one sentence: one chunk, one vector. The text is
real Japanese and the postings of common words grow with the collection as a real one's do.

Load: one upload job (``store_upload``, as an NDJSON upload stores it), prep in batches in two
processes (``prep_documents`` with the default model embedding inside prep, as a worker runs it),
then the job's end (``finalize_job``: VACUUM and the HNSW build, at the size's ef_construction).
Search: kensaku's ``search()`` (the query's analysis and vector, then its one SQL round trip) for
real questions in each mode, at concurrency 1 and 8, on the embedded PostgreSQL with the
embedded stack's settings (EMBEDDED_POSTGRES_SETTINGS). What is left out is HTTP.

The machine is shared and noisy: compare figures within one run.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg

from shared.config import Settings, get_settings
from shared.db.embeddings import ModelTable, register_embedder
from shared.db.migrate import migrate
from shared.db.pool import create_pool
from shared.db.queries import Q
from shared.embed.embedder import Embedder, load_embedder
from shared.evaluate import load_queries, percentile, read_corpus
from shared.ingest.finalize import finalize_job
from shared.ingest.prep import InlineEmbedding, LexicalParams, prep_documents
from shared.ingest.store import Record, store_upload
from shared.search import CollectionCache, Mode, SearchParams, search
from shared.stack.services import EMBEDDED_POSTGRES_SETTINGS, start_postgres
from shared.text.chunk import split_sentences
from shared.text.normalize import normalize
from shared.text.pipeline import normalized_content_hash, unit_texts

MODES: tuple[Mode, ...] = ("lexical", "vector", "hybrid")
TOP_K = 10
_PREP_BATCH = 500  # documents per prep transaction (a worker's are prep_batch_size, 64)
_PREP_PROCESSES = 2  # as the embedded stack's worker runs prep
_CLOSING = re.compile(r"[。．.！!？?]+$")


def passages(corpus: Path, rows: int, seed: int = 7) -> list[tuple[str, str]]:
    """``rows`` (title, text) passages: the corpus's sentences, then pairs of them as one."""
    sentences = [
        (d["title"], s) for d in read_corpus(corpus) for s in unit_texts(normalize(d["text"]))
    ]
    out = sentences[:rows]
    rng = random.Random(seed)
    while len(out) < rows:
        (title, first), (_, second) = rng.choice(sentences), rng.choice(sentences)
        joined = f"{_CLOSING.sub('', first)}、{second}"
        if len(split_sentences(joined)) == 1:  # (a sentence that ends in a bracket stays two)
            out.append((title, joined))
    return out


def _records(texts: list[tuple[str, str]], first: int) -> Iterator[Record]:
    for i, (title, body) in enumerate(texts, start=first):
        # As the API stores a JSON document: the hash is of the normalized text.
        digest = normalized_content_hash(normalize(title), normalize(body))
        yield (f"p{i}", title, body, "{}", digest, None, None, None, None)


def _prep_part(settings: Settings, ids: list[int], progress: bool) -> float:
    """Prep ``ids`` in batches in a process of its own, as a worker's pool child does; the
    seconds it took, from its model loaded to its last batch written."""
    embedder = load_embedder(settings)

    async def run() -> float:
        pool = await create_pool(settings, min_size=1, role="worker")
        try:
            table = await _table(pool, settings, embedder)
            started = time.perf_counter()
            for at in range(0, len(ids), _PREP_BATCH):
                result = await prep_documents(
                    pool,
                    ids[at : at + _PREP_BATCH],
                    count_tokens=embedder.count_tokens,
                    max_tokens=embedder.chunk_tokens(settings.chunk_tokens),
                    overlap_tokens=settings.chunk_overlap_tokens,
                    lexical=LexicalParams.from_settings(settings),
                    inline=InlineEmbedding(embedder, table),
                    max_text_bytes=settings.max_document_bytes,
                    chunker=embedder.chunker(settings.chunk_tokens, settings.chunk_overlap_tokens),
                )
                assert not result.failed, f"prep failed for {len(result.failed)} documents"
                done = at + _PREP_BATCH
                if progress and done % 25_000 < _PREP_BATCH:
                    rate = _PREP_PROCESSES * done / (time.perf_counter() - started)
                    print(
                        f"    prepped about {_PREP_PROCESSES * done:,} ({rate:,.0f} docs/s)",
                        flush=True,
                    )
            return time.perf_counter() - started
        finally:
            await pool.close()

    return asyncio.run(run())


async def load(
    pool: asyncpg.Pool,
    settings: Settings,
    table: ModelTable,
    collection: str,
    texts: list[tuple[str, str]],
    first: int = 0,
) -> dict[str, float]:
    """Upload, prep and finish one job of ``texts`` (ids from p``first`` on); seconds of each
    step."""
    started = time.perf_counter()
    stored = await store_upload(pool, collection, lambda: _records(texts, first), len(texts), 0)
    assert stored is not None
    stored_s = time.perf_counter() - started
    ids = stored.document_ids
    # Spawned, not forked: this process has an event loop and a pool of its own.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(_PREP_PROCESSES, mp_context=ctx) as ex:
        parts = [ids[i::_PREP_PROCESSES] for i in range(_PREP_PROCESSES)]
        loop = asyncio.get_running_loop()
        took = await asyncio.gather(
            *(
                loop.run_in_executor(ex, _prep_part, settings, part, i == 0)
                for i, part in enumerate(parts)
            )
        )
    prep_s = max(took)  # (not the processes' start: each loads the model first)
    started = time.perf_counter()
    # Another finalizer (a stack's sweeper, when the database is a running stack's) may hold the
    # job's lock and be building the index: wait for it to finish the job.
    deadline = time.monotonic() + 3600
    while not await finalize_job(pool, table, settings, stored.job_id):
        assert time.monotonic() < deadline, "the job did not finish"
        await asyncio.sleep(1.0)
    return {"store_s": stored_s, "prep_s": prep_s, "finalize_s": time.perf_counter() - started}


async def _latencies(
    run: Any, params: list[SearchParams], concurrency: int
) -> tuple[list[float], list[int]]:
    times: list[float] = []
    hits: list[int] = []

    async def client(part: list[SearchParams]) -> None:
        for p in part:
            started = time.perf_counter()
            found = await run(p)
            times.append(time.perf_counter() - started)
            hits.append(len(found["hits"]))

    await asyncio.gather(*(client(params[c::concurrency]) for c in range(concurrency)))
    return times, hits


async def _reads_index(
    pool: asyncpg.Pool, embedder: Embedder, table: ModelTable, settings: Settings, p: SearchParams
) -> bool:
    """Whether search() answers ``p`` through the partition's vector index: the scans of the
    index counted in the search's own transaction (pg_stat_get_xact_numscans)."""
    async with pool.acquire() as conn, conn.transaction():
        cid = await conn.fetchval(Q.collection_id, p.collection)
        await search(conn, embedder, table, settings, p, CollectionCache())
        return bool(
            await conn.fetchval(
                "SELECT pg_stat_get_xact_numscans(to_regclass($1)) > 0", table.index(cid)
            )
        )


async def measure(
    settings: Settings, embedder: Embedder, table: ModelTable, collection: str, questions: list[str]
) -> list[dict[str, Any]]:
    pool = await create_pool(settings, min_size=8)
    cache = CollectionCache()
    out = []
    try:

        def run(p: SearchParams) -> Any:
            return search(pool, embedder, table, settings, p, cache)

        by_mode = {m: [SearchParams(q, collection, TOP_K, m) for q in questions] for m in MODES}
        # The collection is larger than shared_buffers: measured first, a mode would pay for
        # reading in the pages the others share with it.
        for params in by_mode.values():
            await _latencies(run, params, 1)
        for mode, params in by_mode.items():
            c1, hits = await _latencies(run, params, 1)
            c8, _ = await _latencies(run, params, 8)
            out.append(
                {
                    "mode": mode,
                    "p50_ms_c1": 1000 * percentile(c1, 50),
                    "p95_ms_c1": 1000 * percentile(c1, 95),
                    "p50_ms_c8": 1000 * percentile(c8, 50),
                    "p95_ms_c8": 1000 * percentile(c8, 95),
                    "full": sum(h == TOP_K for h in hits) / len(hits),
                    "index_used": await _reads_index(pool, embedder, table, settings, params[0]),
                }
            )
    finally:
        await pool.close()
    return out


async def _sizes(pool: asyncpg.Pool, table: ModelTable, cid: int) -> dict[str, Any]:
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM chunks WHERE collection_id = $1) AS chunks, "
        "(SELECT count(*) FROM postings WHERE collection_id = $1) AS postings, "
        "pg_total_relation_size('chunks') AS chunks_b, "
        "pg_total_relation_size('postings') AS postings_b, "
        "pg_table_size($2::regclass) AS vectors_b, pg_relation_size($3::regclass) AS index_b, "
        "(SELECT count(*) FROM " + table.partition(cid) + ") AS vectors",
        cid,
        table.partition(cid),
        table.index(cid),
    )
    return dict(row)


def main(
    corpus: Path,
    queries: Path,
    rows: list[int],
    n_queries: int = 200,
    append: int = 2000,
    shared_buffers: list[int] | None = None,
) -> int:
    """``append``: passages uploaded as a second job once the searches are measured, which
    prep writes into the built graph row by row. ``shared_buffers``: the searches are measured
    once per value (MB; the server restarted with it after the load); by default once, with the
    embedded server's own (EMBEDDED_POSTGRES_SETTINGS)."""
    base = get_settings()
    embedder = load_embedder(base)
    if not embedder.takes_lexemes:
        print("bench collection measures the default model (embedded inside prep)", file=sys.stderr)
        return 2
    texts = passages(corpus, max(rows) + append)
    questions = [q.text for q in random.Random(7).sample(load_queries(queries), n_queries)]
    with tempfile.TemporaryDirectory(prefix="kensaku-bench-") as tmp:
        data = Path(tmp) / "postgres"
        pg = start_postgres(data, settings=EMBEDDED_POSTGRES_SETTINGS)
        try:
            asyncio.run(migrate(pg.url))
            for n in rows:
                settings = base.model_copy(update={"database_url": pg.url})
                asyncio.run(_load(settings, embedder, texts[:n]))
                sizes: list[int | None] = [*shared_buffers] if shared_buffers else [None]
                for buffers in sizes:
                    if buffers is not None:
                        pg.stop()
                        pg = start_postgres(data, settings={"shared_buffers": f"{buffers}MB"})
                        settings = base.model_copy(update={"database_url": pg.url})
                    asyncio.run(_searches(settings, embedder, n, questions))
                if append:
                    asyncio.run(_append(settings, embedder, texts[n : n + append], n))
        finally:
            pg.stop()
    return 0


async def _table(pool: asyncpg.Pool, settings: Settings, embedder: Embedder) -> ModelTable:
    return await register_embedder(
        pool,
        embedder,
        settings.vector_index,
        settings.vector_dimensions,
        settings.vector_projection,
    )


async def _load(settings: Settings, embedder: Embedder, texts: list[tuple[str, str]]) -> None:
    """A collection of ``texts``, named for its size, loaded as one job."""
    collection = f"bench-{len(texts)}"
    pool = await create_pool(settings, min_size=1, role="worker")
    try:
        table = await _table(pool, settings, embedder)
        print(f"{collection}: {len(texts):,} passages, loading", flush=True)
        took = await load(pool, settings, table, collection, texts)
        cid = int(await pool.fetchval(Q.collection_id, collection))
        built_with = await pool.fetchval(Q.index_ef_construction, table.index(cid))
        print(
            f"  stored in {took['store_s']:.0f} s, prepped in {took['prep_s']:.0f} s "
            f"({len(texts) / took['prep_s']:,.0f} docs/s, {_PREP_PROCESSES} processes), "
            f"job end (VACUUM, {table.index_kind} build, ef_construction {built_with}) in "
            f"{took['finalize_s']:.0f} s",
            flush=True,
        )
        size = await _sizes(pool, table, cid)
        print(
            f"  {size['chunks']:,} chunks, {size['vectors']:,} vectors, {size['postings']:,} "
            f"postings; MB on disk: chunks {size['chunks_b'] / 2**20:,.0f}, postings "
            f"{size['postings_b'] / 2**20:,.0f}, vectors {size['vectors_b'] / 2**20:,.0f}, "
            f"vector index {size['index_b'] / 2**20:,.0f}",
            flush=True,
        )
    finally:
        await pool.close()


async def _searches(
    settings: Settings, embedder: Embedder, rows: int, questions: list[str]
) -> None:
    pool = await create_pool(settings, min_size=1)
    try:
        table = await _table(pool, settings, embedder)
        buffers = await pool.fetchval("SHOW shared_buffers")
    finally:
        await pool.close()
    print(
        f"  {len(questions)} real questions, top {TOP_K}, through search(), shared_buffers "
        f"{buffers}, after one pass of every question in every mode"
    )
    print(
        f"  {'mode':<8} {'p50 c1':>7} {'p95 c1':>7} {'p50 c8':>7} {'p95 c8':>7} "
        f"{'top_k full':>10} {'vector index':>12}"
    )
    for r in await measure(settings, embedder, table, f"bench-{rows}", questions):
        print(
            f"  {r['mode']:<8} {r['p50_ms_c1']:>7.2f} {r['p95_ms_c1']:>7.2f} "
            f"{r['p50_ms_c8']:>7.2f} {r['p95_ms_c8']:>7.2f} {r['full']:>10.1%} "
            f"{'read' if r['index_used'] else 'not read':>12}",
            flush=True,
        )


async def _append(
    settings: Settings, embedder: Embedder, more: list[tuple[str, str]], rows: int
) -> None:
    """A second job into collection ``bench-{rows}``: its vectors join the graph row by row."""
    pool = await create_pool(settings, min_size=1, role="worker")
    try:
        table = await _table(pool, settings, embedder)
        took = await load(pool, settings, table, f"bench-{rows}", more, first=rows)
    finally:
        await pool.close()
    print(
        f"  a second job of {len(more):,} passages, inserted into the graph row by row: "
        f"prepped at {len(more) / took['prep_s']:,.0f} docs/s, job end in "
        f"{took['finalize_s']:.1f} s",
        flush=True,
    )
