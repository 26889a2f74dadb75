"""``kensaku bench vectors``: the vector index options at scale, side by side in one run.

Vectors: the default model's, of every sentence of a corpus (title + sentence, as kensaku
embeds them; ja_dev gives about 60,000), then, up to ``--rows``, the normalized sum of two
random real sentence vectors, which for this bag-of-words model is the vector of the two
sentences written together. Queries: the corpus's questions, encoded as the API encodes them.

For each KENSAKU_VECTOR_INDEX kind and each KENSAKU_VECTOR_DIMENSIONS value (reduced ones for
each ``--projection``: the first N dimensions, or PCA fitted at the build), on an embedded
PostgreSQL with one partition, as a collection's is: binary COPY load in rows/s, the index build
(kensaku's own `build_vector_index`) in seconds, table and index size, recall@10 of kensaku's
vector SQL (search.sql's vector fragment, with its re-ranking where the index is approximate)
against exact cosine ranking in numpy, and latency p50/p95 at concurrency 1 and 8. HNSW builds
are searched at each ``--ef-search`` value in turn (one build, several search breadths). Last,
the rate of a small upload into the indexed partition (rows/s, each row inserted into the
index as it is written).

The machine is shared and noisy: compare figures within one run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from shared.config import Settings, get_settings
from shared.db import graph
from shared.db.bases import load_basis
from shared.db.embeddings import (
    PROJECTIONS,
    ModelTable,
    copy_vectors,
    ensure_model_table,
    ensure_partition,
)
from shared.db.migrate import migrate
from shared.db.pool import create_pool
from shared.db.queries import Q
from shared.embed.embedder import load_embedder
from shared.evaluate import load_queries, percentile, read_corpus
from shared.ingest.finalize import build_vector_index
from shared.stack.services import EMBEDDED_POSTGRES_SETTINGS, start_postgres
from shared.text.normalize import normalize
from shared.text.pipeline import embedding_input, unit_texts

COLLECTION_ID = 1
TOP_K = 10
_LOAD_BATCH = 10_000
# Rows of the small upload timed after each build (``_insert_after``).
INSERT_ROWS = 2_000


def corpus_vectors(corpus: Path, queries: Path, rows: int, n_queries: int, seed: int = 7) -> Any:
    """(rows × d float32 unit vectors, n_queries × d query vectors, how many are real)."""
    embedder = load_embedder(get_settings())
    texts = [
        embedding_input(d["title"], s)
        for d in read_corpus(corpus)
        for s in unit_texts(normalize(d["text"]))
    ]
    real = embedder.encode_documents(texts[:rows]).astype(np.float32)
    vectors = with_sums(real, rows, seed)
    picked = random.Random(seed).sample(load_queries(queries), n_queries)
    q = np.stack([embedder.encode_query(normalize(x.text)) for x in picked]).astype(np.float32)
    return vectors, q, min(len(real), rows)


def with_sums(real: np.ndarray, rows: int, seed: int = 7) -> np.ndarray:
    """``real`` and, up to ``rows``, normalized sums of two random ones of them."""
    extra = rows - len(real)
    if extra <= 0:
        return real[:rows]
    a, b = np.random.default_rng(seed).integers(0, len(real), size=(2, extra))
    mixed = real[a] + real[b]
    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
    return np.vstack([real, mixed])


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int = TOP_K) -> list[set[int]]:
    """Exact cosine top k of every query over the vectors as stored (half precision)."""
    stored = vectors.astype(np.float16).astype(np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    out: list[set[int]] = []
    for start in range(0, len(queries), 64):
        scores = queries[start : start + 64] @ stored.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        out.extend(set(map(int, row)) for row in top)
    return out


def search_sql(table: ModelTable, rerank: int) -> str:
    """kensaku's vector fragment (shared/db/sql/search.sql) over the partition, ids only."""
    fragment = Q.fragment_vector_rerank if table.reranks else Q.fragment_vector
    sql = (
        "WITH "
        + fragment.replace("{vector_order}", table.vector_order)
        + " SELECT chunk_id FROM vector_hits ORDER BY cosine DESC LIMIT $2"
    )
    sql = sql.replace("{vector_filter}", "").replace("{rerank}", str(rerank))
    sql = sql.replace("LIMIT $3", "LIMIT $2").replace("$3 *", "$2 *").replace("{vec}", "$1")
    return table.sql(sql.replace("{red}", "$3"), COLLECTION_ID)


async def _latencies(
    pool: asyncpg.Pool, sql: str, args: list[tuple[Any, ...]], concurrency: int
) -> list[float]:
    times: list[float] = []
    order = list(range(len(args)))

    async def client(part: list[int]) -> None:
        for i in part:
            started = time.perf_counter()
            await pool.fetch(sql, *args[i])
            times.append(time.perf_counter() - started)

    await asyncio.gather(*(client(order[c::concurrency]) for c in range(concurrency)))
    return times


async def measure(
    settings: Settings,
    vectors: np.ndarray,
    queries: np.ndarray,
    truth: list[set[int]],
    kinds: list[str],
    dimensions: list[int],
    ef_search: list[int],
    projections: list[str],
    insert_rows: int = INSERT_ROWS,
) -> list[dict[str, Any]]:
    """One build per kind, dimensions and projection; recall and latency for each ef_search on
    it (HNSW kinds; IVFFlat is measured once, at its probes); then ``insert_rows`` more rows
    written into it as uploads write them."""
    results = []
    pool = await create_pool(settings, min_size=1, role="worker")
    try:
        base = await ensure_model_table(
            pool,
            model="kensaku-bench/vectors",
            dimension=vectors.shape[1],
            backend="torch",
            vector_unit="chunk",
            query_prompt=None,
            document_prompt=None,
        )
        variants = [
            (kind, dims, proj)
            for kind in kinds
            for dims in dimensions
            for proj in (projections if 0 < dims < vectors.shape[1] else projections[:1])
        ]
        for kind, dims, proj in variants:
            table = dataclasses.replace(
                base, index_kind=kind, index_dimensions=dims, projection=proj
            )
            built = await _build(pool, settings, table, vectors)
            efs = ef_search if kind.startswith("hnsw") else [settings.hnsw_ef_search]
            measured = []
            for ef in efs:
                tuned = settings.model_copy(update={"hnsw_ef_search": ef})
                r = built | await _search(tuned, table, queries, truth)
                if not kind.startswith("hnsw"):
                    r["ef_search"] = None  # IVFFlat searches by its probes
                measured.append(r)
                shown = ef if kind.startswith("hnsw") else "-"
                print(
                    f"  {kind:<13} {r['dimensions']:>5} {r['projection']:>6} {shown:>5} "
                    f"{r['load_rows_per_s']:>9,.0f} {r['build_s']:>8.1f} {r['table_mb']:>8.1f} "
                    f"{r['index_mb']:>8.1f} {r['recall@10']:>7.3f} {r['p50_ms_c1']:>7.2f} "
                    f"{r['p95_ms_c1']:>7.2f} {r['p50_ms_c8']:>7.2f} {r['p95_ms_c8']:>7.2f}",
                    flush=True,
                )
            # Last, so that the searches above see only the vectors their truth was made of.
            inserted = await _insert_after(pool, settings, table, vectors, insert_rows)
            print(
                f"    then {insert_rows:,} rows into the indexed partition in batches of "
                f"{settings.embed_batch_size}: {inserted:,.0f} rows/s",
                flush=True,
            )
            results += [r | {"insert_rows_per_s": inserted} for r in measured]
    finally:
        await pool.close()
    return results


async def _build(
    pool: asyncpg.Pool, settings: Settings, table: ModelTable, vectors: np.ndarray
) -> dict[str, Any]:
    partition = table.partition(COLLECTION_ID)
    await pool.execute(f"DROP TABLE IF EXISTS {partition}")  # and with it any basis it had
    started = time.perf_counter()
    for at in range(0, len(vectors), _LOAD_BATCH):
        # As a worker writes: a PCA basis is fitted once the partition holds enough vectors, and
        # every later row is written with its projection.
        await ensure_partition(pool, table, COLLECTION_ID)
        async with pool.acquire() as conn, conn.transaction():
            await copy_vectors(
                conn,
                table,
                COLLECTION_ID,
                [(i, 0, vectors[i]) for i in range(at, min(at + _LOAD_BATCH, len(vectors)))],
            )
    load_s = time.perf_counter() - started
    await pool.execute(f"VACUUM (ANALYZE) {partition}")
    started = time.perf_counter()
    async with pool.acquire() as conn:
        await conn.execute(Q.set_session, "statement_timeout", "0")
        built = await build_vector_index(conn, table, COLLECTION_ID, settings)
        await conn.execute(Q.reset_statement_timeout)
    build_s = time.perf_counter() - started
    assert built, f"no index built for {table.index_kind}"
    sizes = await pool.fetchrow(
        "SELECT pg_table_size($1::regclass) AS t, pg_relation_size($2::regclass) AS i",
        partition,
        table.index(COLLECTION_ID),
    )
    return {
        "index": table.index_kind,
        "dimensions": table.dimensions_stored,
        "projection": table.projection if table.reduced else "-",
        "rows": len(vectors),
        "load_rows_per_s": len(vectors) / load_s,
        "build_s": build_s,
        "table_mb": sizes["t"] / 2**20,
        "index_mb": sizes["i"] / 2**20,
    }


async def _insert_after(
    pool: asyncpg.Pool, settings: Settings, table: ModelTable, vectors: np.ndarray, rows: int
) -> float:
    """Rows/s of a small upload into the partition once its index exists: COPY in batches of
    an embed task's size, one transaction each, so every row goes into the index on its own
    (the per-row insertion a job's deferred build avoids). New chunk ids only, so none of an
    embed task's DELETE of a document's old vectors."""
    fresh = with_sums(vectors, len(vectors) + rows, seed=11)[len(vectors) :]
    batch = settings.embed_batch_size
    started = time.perf_counter()
    for at in range(0, rows, batch):
        async with pool.acquire() as conn, conn.transaction():
            await copy_vectors(
                conn,
                table,
                COLLECTION_ID,
                [(len(vectors) + i, 0, fresh[i]) for i in range(at, min(at + batch, rows))],
            )
    return rows / (time.perf_counter() - started)


async def _search(
    settings: Settings, table: ModelTable, queries: np.ndarray, truth: list[set[int]]
) -> dict[str, Any]:
    """Recall and latency through a pool of its own (hnsw.ef_search is a connection setting)."""
    pool = await create_pool(settings, min_size=1, role="worker")
    try:
        sql = search_sql(table, settings.binary_rerank_factor)
        args: list[tuple[Any, ...]] = [(q, TOP_K) for q in queries]
        if table.pca:  # the query's projection on the basis the build fitted
            basis = await load_basis(pool, table, COLLECTION_ID)
            assert basis is not None, "the PCA build fitted no basis"
            args = [(q, TOP_K, p) for q, p in zip(queries, basis.project(queries), strict=True)]
        plan = "\n".join(r[0] for r in await pool.fetch("EXPLAIN " + sql, *args[0]))
        assert table.index(COLLECTION_ID) in plan, plan  # the index is what answers
        found = [{r["chunk_id"] for r in await pool.fetch(sql, *a)} for a in args]
        recall = float(np.mean([len(f & t) / TOP_K for f, t in zip(found, truth, strict=True)]))
        await _latencies(pool, sql, args[:20], 1)  # warm the index's pages
        c1 = await _latencies(pool, sql, args, 1)
        c8 = await _latencies(pool, sql, args, 8)
    finally:
        await pool.close()
    return {
        "ef_search": settings.hnsw_ef_search,
        "recall@10": recall,
        "p50_ms_c1": 1000 * percentile(c1, 50),
        "p95_ms_c1": 1000 * percentile(c1, 95),
        "p50_ms_c8": 1000 * percentile(c8, 50),
        "p95_ms_c8": 1000 * percentile(c8, 95),
    }


def server_shared_buffers(url: str) -> str:
    """The server's shared_buffers, as SHOW prints it (e.g. "128MB")."""

    async def read() -> str:
        conn = await asyncpg.connect(url)
        try:
            return str(await conn.fetchval("SHOW shared_buffers"))
        finally:
            await conn.close()

    return asyncio.run(read())


def main(
    corpus: Path,
    queries: Path,
    rows: list[int],
    kinds: list[str],
    dimensions: list[int],
    n_queries: int = 200,
    ef_search: list[int] | None = None,
    projections: list[str] | None = None,
    shared_buffers: list[int] | None = None,
) -> int:
    """``shared_buffers``: a server of its own for each value (MB), every build in each; the
    default is the embedded server's own (EMBEDDED_POSTGRES_SETTINGS, 1 GB)."""
    base = get_settings()
    projs = projections or [base.vector_projection]
    if unknown := [p for p in projs if p not in PROJECTIONS]:
        print(f"--projection {unknown}: one of {', '.join(PROJECTIONS)}", file=sys.stderr)
        return 2
    if bad := [e for e in ef_search or [] if not 1 <= e <= 1000]:
        print(f"--ef-search {bad}: outside pgvector's 1 to 1000", file=sys.stderr)
        return 2
    vectors_all, q, real = corpus_vectors(corpus, queries, max(rows), n_queries)
    sizes: list[int | None] = [*shared_buffers] if shared_buffers else [None]
    for buffers in sizes:
        server = (
            EMBEDDED_POSTGRES_SETTINGS if buffers is None else {"shared_buffers": f"{buffers}MB"}
        )
        with tempfile.TemporaryDirectory(prefix="kensaku-bench-") as tmp:
            pg = start_postgres(Path(tmp) / "postgres", settings=server)
            try:
                asyncio.run(migrate(pg.url))
                for n in rows:
                    vectors = vectors_all[:n]
                    # Unset, the breadth search would use on a partition of n vectors.
                    efs = ef_search or [graph.ef_search(n, base.hnsw_ef_search)]
                    print(
                        f"{n:,} vectors of {vectors.shape[1]} dimensions ({min(real, n):,} real "
                        f"sentences, the rest sums of two), {len(q)} real questions, top {TOP_K}, "
                        f"ef_search {','.join(map(str, efs))}, probes {base.ivfflat_probes}, "
                        f"re-rank × {base.binary_rerank_factor}, shared_buffers "
                        f"{server_shared_buffers(pg.url)}",
                        flush=True,
                    )
                    truth = exact_top(vectors, q)
                    print(
                        f"  {'index':<13} {'dims':>5} {'proj':>6} {'ef':>5} {'load r/s':>9} "
                        f"{'build s':>8} "
                        f"{'table MB':>8} {'index MB':>8} {'rec@10':>7} {'p50 c1':>7} "
                        f"{'p95 c1':>7} {'p50 c8':>7} {'p95 c8':>7}"
                    )
                    settings = base.model_copy(update={"database_url": pg.url, "hnsw_min_rows": 0})
                    asyncio.run(measure(settings, vectors, q, truth, kinds, dimensions, efs, projs))
            finally:
                pg.stop()
    return 0
