"""Vector search where index scans go wrong: a filter that matches 1 % of a collection large
enough to have its HNSW index, and a small collection next to the large one. Both must fill
top_k and agree with the exact scan (recall@10 ≥ 0.95). The filtered search goes through the
index (an iterative scan) and falls back to the exact scan when that comes back short. And the
large collection through an index over its principal components (KENSAKU_VECTOR_PROJECTION)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from bench.corpus import sentences
from shared.config import Settings
from shared.db.bases import load_basis
from shared.db.embeddings import ModelTable, register_embedder
from shared.db.pool import create_pool
from shared.embed.embedder import Embedder, load_embedder
from shared.ingest import finalize
from shared.ingest.finalize import build_vector_index, rebuild_graph
from shared.search import (
    CollectionCache,
    SearchParams,
    _fetch_with,
    search,
    search_settings,
    search_sql,
)
from tests.helpers import db_fetch, wait_job

pytestmark = pytest.mark.integration

LARGE, SMALL = "scale-large", "scale-small"
LARGE_DOCS = 12_000  # one vector each: past KENSAKU_HNSW_MIN_ROWS (10,000), so it is indexed
SMALL_DOCS = 2_000
RARE_EVERY = 100  # 1 % of the large collection carries tag=rare


def _docs(n: int, prefix: str, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    pool = [s.rstrip("。") for s in sentences()]
    return [
        {
            "id": f"{prefix}-{i:05d}",
            "title": "",
            # Two sentences joined into one, and a number: one vector per document, all
            # different. (One sentence each gave groups of equal vectors, the same sentence in
            # about eight documents, which HNSW searches badly: a real corpus has no such groups.)
            "text": f"{rng.choice(pool)}、{rng.choice(pool)}（第{i}号）。",
            "metadata": {"tag": "rare" if i % RARE_EVERY == 0 else "common"},
        }
        for i in range(n)
    ]


def _upload(api: httpx.Client, collection: str, docs: list[dict[str, Any]]) -> None:
    for start in range(0, len(docs), 5_000):
        resp = api.post(
            "/v1/documents",
            json={"collection": collection, "documents": docs[start : start + 5_000]},
        )
        assert resp.status_code == 202, resp.text
        assert wait_job(api, resp.json()["job_id"], timeout=600)["status"] == "done"


@pytest.fixture(scope="module")
def collections(stack: Any, api: httpx.Client) -> None:
    _upload(api, LARGE, _docs(LARGE_DOCS, "l", 1))
    _upload(api, SMALL, _docs(SMALL_DOCS, "s", 2))


def test_filtered_and_small_collection_searches_match_the_exact_scan(
    stack: Any, collections: None
) -> None:
    settings = Settings(database_url=stack.database_url, redis_url=stack.redis_url)
    asyncio.run(_check(settings))


async def _check(settings: Settings) -> None:
    embedder = load_embedder(settings)
    pool = await create_pool(settings, min_size=1)
    rng = random.Random(3)
    queries = [s[: len(s) // 2] for s in rng.sample(sentences(), 20)]
    try:
        table = await register_embedder(pool, embedder)
        large = await pool.fetchval("SELECT id FROM collections WHERE name = $1", LARGE)
        small = await pool.fetchval("SELECT id FROM collections WHERE name = $1", SMALL)
        index = await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", table.index(large))
        assert index, "the large collection should have its vector index"
        assert not await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", table.index(small))
        rare = {"tag": "rare"}
        recalls: list[float] = []
        async with pool.acquire() as conn:
            for q in queries:
                for collection, flt in ((LARGE, rare), (SMALL, None), (LARGE, None)):
                    got_hits = await _hits(conn, embedder, table, settings, collection, q, flt)
                    async with _off(conn, "enable_indexscan"):  # the exact scan
                        want_hits = await _hits(conn, embedder, table, settings, collection, q, flt)
                    got, want = [h for h, _ in got_hits], [h for h, _ in want_hits]
                    assert len(got) == len(want) == 10, (collection, flt, q, got)
                    if flt:
                        tags = await conn.fetch(
                            "SELECT metadata->>'tag' AS tag FROM documents "
                            "WHERE collection_id = $1 AND external_id = ANY($2::text[])",
                            large,
                            got,
                        )
                        assert {r["tag"] for r in tags} == {"rare"}
                    if collection == SMALL:
                        assert got == want  # no index: the scan is exact
                    # Recall with ties: a hit as close as the exact scan's 10th counts (many
                    # documents share a sentence, and which of equals comes first is arbitrary).
                    tenth = min((score for _, score in want_hits), default=0.0)
                    recalls.append(sum(score >= tenth - 1e-6 for _, score in got_hits) / 10)
                # Hybrid under the 1 % filter fills top_k with matching documents too, even
                # when the index scan stops short (as at hnsw.max_scan_tuples in a collection
                # far larger than this one; here the iterative scan is turned off for that).
                async with _off(conn, "hnsw.iterative_scan"):
                    found = await _hits(conn, embedder, table, settings, LARGE, q, rare, "hybrid")
                hybrid = [h for h, _ in found]
                assert len(hybrid) == 10, (q, hybrid)
                tags = await conn.fetch(
                    "SELECT DISTINCT metadata->>'tag' AS tag FROM documents "
                    "WHERE collection_id = $1 AND external_id = ANY($2::text[])",
                    large,
                    hybrid,
                )
                assert [r["tag"] for r in tags] == ["rare"]
        assert sum(recalls) / len(recalls) >= 0.95, recalls
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def _off(conn: asyncpg.Connection, setting: str) -> AsyncIterator[None]:
    """``setting`` off on the connection for the block (a name from this module, not input)."""
    await conn.execute(f"SET {setting} = off")
    try:
        yield
    finally:
        await conn.execute(f"RESET {setting}")


async def _hits(
    db: asyncpg.Connection,
    embedder: Embedder,
    table: ModelTable,
    settings: Settings,
    collection: str,
    query: str,
    flt: dict[str, str] | None,
    mode: str = "vector",
) -> list[tuple[str, float]]:
    params = SearchParams(query=query, collection=collection, top_k=10, mode=mode, filter=flt)  # type: ignore[arg-type]
    result = await search(db, embedder, table, settings, params, CollectionCache())  # type: ignore[arg-type]
    return [(h["id"], h["score"]) for h in result["hits"]]


def test_a_large_partition_gets_a_wider_graph_and_search(stack: Any, collections: None) -> None:
    """HNSW parameters follow the partition's size (shared/db/graph.py): the 12,000-vector
    partition's graph is built with pgvector's ef_construction 64 and searched at the pool's
    ef_search; a partition the planner counts at 600,000 vectors is searched wider, for that
    search's transaction only."""
    settings = Settings(database_url=stack.database_url, redis_url=stack.redis_url)
    asyncio.run(_check_graph(settings))


async def _check_graph(settings: Settings) -> None:
    pool = await create_pool(settings, min_size=1)
    try:
        table = await register_embedder(pool, load_embedder(settings))
        large = await pool.fetchval("SELECT id FROM collections WHERE name = $1", LARGE)
        options = await pool.fetchval(
            "SELECT reloptions FROM pg_class WHERE oid = to_regclass($1)", table.index(large)
        )
        assert "ef_construction=64" in options, options
        info = await CollectionCache().get(pool, table, LARGE)
        assert LARGE_DOCS / 2 < info.estimated_rows < LARGE_DOCS * 2, info
        assert search_settings(table, info, settings) == {}
        async with pool.acquire() as conn:
            faked = conn.transaction()
            await faked.start()
            try:
                # The planner's count as a large partition would have it, rolled back after.
                await conn.execute(
                    "UPDATE pg_class SET reltuples = 600000 WHERE oid = to_regclass($1)",
                    table.partition(large),
                )
                big = await CollectionCache().get(conn, table, LARGE)  # type: ignore[arg-type]
            finally:
                await faked.rollback()
            local = search_settings(table, big, settings)
            assert local == {"hnsw.ef_search": "200"}, big
            # Set explicitly, the setting holds at any size.
            fixed = settings.model_copy(update={"hnsw_ef_search": 60})
            assert search_settings(table, big, fixed) == {}
            read = "SELECT current_setting('hnsw.ef_search')"
            assert await _fetch_with(conn, local, read, (), 5) == [("200",)]
            assert await conn.fetchval(read) == "100"  # the pool's, again after that search
    finally:
        await pool.close()


def test_a_graph_built_too_small_is_rebuilt_beside_the_old_one(
    stack: Any,
    collections: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`kensaku model index --rebuild`: the large partition's graph (ef_construction 64) is
    built again with the candidate list asked for, under the index's own name, and a second
    run finds nothing to do. Searches keep an index throughout: the old one stays until the
    new one is complete (checked by the query plan while the build runs). A job's end does the
    same without being asked, up to finalize.AUTO_REBUILD_MAX_ROWS vectors."""
    env = stack.env() | {"KENSAKU_HNSW_EF_CONSTRUCTION": "100"}
    table = db_fetch(stack, "SELECT table_name FROM embedding_models WHERE active")[0][0]
    large = db_fetch(stack, "SELECT id FROM collections WHERE name = $1", LARGE)[0][0]
    partition = ModelTable("m", table, 300).partition(large)
    index = ModelTable("m", table, 300).index(large)
    before = db_fetch(stack, "SELECT $1::regclass::oid", index)[0][0]
    command = [sys.executable, "-m", "shared.cli", "model", "index", "--rebuild"]
    rebuild = subprocess.Popen(
        [*command, "--collection", LARGE], env=env, stdout=subprocess.PIPE, text=True
    )
    plans: list[str] = []
    while rebuild.poll() is None:  # the partition is searched through an index meanwhile
        plans.append(_plan(stack, partition))
        time.sleep(0.2)
    out, _ = rebuild.communicate()
    assert rebuild.returncode == 0, out
    assert f"rebuilt {index} with ef_construction 100" in out, out
    assert plans and all("Index Scan using" in p for p in plans), plans
    after = db_fetch(
        stack,
        "SELECT c.oid, c.reloptions, x.indisvalid FROM pg_class c "
        "JOIN pg_index x ON x.indexrelid = c.oid WHERE c.oid = to_regclass($1)",
        index,
    )[0]
    assert after["oid"] != before and after["indisvalid"], after
    assert "ef_construction=100" in after["reloptions"], after
    assert _aside_indexes(stack) == []
    again = subprocess.run(
        [*command, "--collection", LARGE], env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0 and "rebuilt" not in again.stdout, again.stdout
    # A job's end does the same by itself (judged by the planner's count), up to a size.
    settings = Settings(database_url=stack.database_url, redis_url=stack.redis_url)
    asyncio.run(_rebuilt_at_a_jobs_end(settings, large, monkeypatch, caplog))
    options = db_fetch(stack, "SELECT reloptions FROM pg_class WHERE oid = to_regclass($1)", index)
    assert "ef_construction=120" in options[0][0], options
    assert _aside_indexes(stack) == []


async def _rebuilt_at_a_jobs_end(
    settings: Settings,
    large: int,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = await create_pool(settings, min_size=1)
    try:
        table = await register_embedder(pool, load_embedder(settings))
        wider = settings.model_copy(update={"hnsw_ef_construction": 120})
        async with pool.acquire() as conn:
            # Graphs of the size asked for (64 at 12,000 vectors, 100 since the CLI): kept.
            assert await rebuild_graph(conn, table, large, settings, automatic=True) is None
            with monkeypatch.context() as patched:
                patched.setattr(finalize, "AUTO_REBUILD_MAX_ROWS", 1_000)
                assert await rebuild_graph(conn, table, large, wider, automatic=True) is None
            assert "kensaku model index --rebuild" in caplog.text, caplog.text
            assert await rebuild_graph(conn, table, large, wider, automatic=True) == 120
            # What an interrupted rebuild leaves beside the index is dropped at the next check,
            # whether or not a rebuild is due.
            await conn.execute(
                f"CREATE INDEX {table.partition(large)}_nx ON {table.partition(large)} "
                "USING hnsw (embedding halfvec_cosine_ops)"
            )
            assert await rebuild_graph(conn, table, large, wider, automatic=True) is None
    finally:
        await pool.close()


def _aside_indexes(stack: Any) -> list[Any]:
    """Indexes a rebuild builds or keeps beside the partition's own (finalize._aside)."""
    return db_fetch(
        stack, "SELECT relname FROM pg_class WHERE relname LIKE '%\\_nx' OR relname LIKE '%\\_ox'"
    )


def _plan(stack: Any, partition: str) -> str:
    nearest = (
        f"SELECT chunk_id FROM {partition} "
        f"ORDER BY embedding <=> (SELECT embedding FROM {partition} LIMIT 1) LIMIT 10"
    )
    return "\n".join(r[0] for r in db_fetch(stack, "EXPLAIN " + nearest))


def test_a_pca_index_over_the_large_collection_matches_the_exact_scan(
    stack: Any, collections: None
) -> None:
    """KENSAKU_VECTOR_PROJECTION=pca on a collection already loaded: the build fits the basis
    on its vectors and projects every row; vector searches through the index over 64 principal
    components, unfiltered and under a 1 % filter, fill top_k with recall@10 ≥ 0.95 against the
    exact scan, and hybrid fills top_k."""
    settings = Settings(database_url=stack.database_url, redis_url=stack.redis_url)
    asyncio.run(_check_pca(settings))


async def _check_pca(settings: Settings) -> None:
    embedder = load_embedder(settings)
    pool = await create_pool(settings, min_size=1)
    queries = [s[: len(s) // 2] for s in random.Random(4).sample(sentences(), 20)]
    try:
        table = await register_embedder(pool, embedder)
        pca = dataclasses.replace(table, index_dimensions=64, projection="pca")
        large = await pool.fetchval("SELECT id FROM collections WHERE name = $1", LARGE)
        async with pool.acquire() as conn:
            assert await build_vector_index(conn, pca, large, settings)
        assert await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", pca.index(large))
        basis = await load_basis(pool, pca, large)
        assert basis is not None and basis.components == 64
        recalls: list[float] = []
        async with pool.acquire() as conn:
            vector = embedder.encode_query(queries[0])
            sql = pca.sql(search_sql("vector", False, pca, settings.binary_rerank_factor), large)
            args = (large, 10, 50, "[]", vector, basis.project(vector))
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *args))
            assert pca.index(large) in plan, plan
            for q in queries:
                got_hits = await _hits(conn, embedder, pca, settings, LARGE, q, None)
                async with _off(conn, "enable_indexscan"):  # the exact scan
                    want_hits = await _hits(conn, embedder, table, settings, LARGE, q, None)
                assert len(got_hits) == len(want_hits) == 10, (q, got_hits)
                tenth = min(score for _, score in want_hits)
                recalls.append(sum(score >= tenth - 1e-6 for _, score in got_hits) / 10)
                hybrid = await _hits(conn, embedder, pca, settings, LARGE, q, None, "hybrid")
                assert len(hybrid) == 10, (q, hybrid)
                # Under the 1 % filter, with the index scan made to stop short (no iterative
                # scan): the exact fallback runs, without the projection's parameter, and gives
                # the exact ranking.
                rare = {"tag": "rare"}
                async with _off(conn, "hnsw.iterative_scan"):
                    filtered = await _hits(conn, embedder, pca, settings, LARGE, q, rare)
                async with _off(conn, "enable_indexscan"):
                    exact = await _hits(conn, embedder, table, settings, LARGE, q, rare)
                assert [h for h, _ in filtered] == [h for h, _ in exact], q
        assert sum(recalls) / len(recalls) >= 0.95, recalls
        # The API's cache sees a refit (a new stamp, the same N) at the next search, not after
        # its ttl: a query projected on the old axes would find almost nothing.
        cache = CollectionCache(ttl=3600)
        cached = await cache.get(pool, pca, LARGE)
        assert cached.basis is not None and cached.basis.fitted_at == basis.fitted_at
        stamp = await pool.fetchval(
            "UPDATE partition_bases SET fitted_at = now() "
            "WHERE table_name = $1 AND collection_id = $2 RETURNING fitted_at",
            table.table,
            large,
        )
        seen = await cache.get(pool, pca, LARGE)
        assert seen.basis is not None and seen.basis.fitted_at == stamp != basis.fitted_at
    finally:
        # Back to the index the stack's workers build, and no basis for their writes to keep.
        async with pool.acquire() as conn:
            await conn.execute(f"DROP INDEX IF EXISTS {pca.index(large)}")
            await conn.execute(
                "DELETE FROM partition_bases WHERE table_name = $1 AND collection_id = $2",
                table.table,
                large,
            )
            await build_vector_index(conn, table, large, settings)
        await pool.close()
