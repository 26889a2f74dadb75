"""Each KENSAKU_VECTOR_INDEX kind, two over the first N dimensions (KENSAKU_VECTOR_DIMENSIONS) and
one over N principal components (KENSAKU_VECTOR_PROJECTION=pca), on the real database: finalize
builds it (and drops an index of another kind), search's query is the one that index serves (the
plan reads it), and vector and hybrid searches through it rank the sample corpus as the exact
scan does."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from shared.config import Settings
from shared.db.bases import load_basis
from shared.db.embeddings import INDEX_SUFFIXES, ModelTable, register_embedder
from shared.db.pool import create_pool
from shared.embed.embedder import Embedder, load_embedder
from shared.ingest import finalize
from shared.ingest.finalize import build_vector_index
from shared.search import CollectionCache, Mode, SearchParams, search, search_sql
from tests.helpers import wait_job
from tests.integration.test_ingest import upload

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "corpus.jsonl"
QUERIES = ["世界一高い電波塔", "地球が太陽を回る周期", "日本の伝統的な料理"]
MODES: tuple[Mode, ...] = ("vector", "hybrid")


@pytest.fixture(scope="module")
def sample_collection(stack: Any, api: httpx.Client) -> str:
    name = "vector-index-sample"
    docs = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    assert wait_job(api, upload(api, name, docs)["job_id"])["status"] == "done"
    return name


# Every kind over all the dimensions, two over the first N (KENSAKU_VECTOR_DIMENSIONS) and one
# over N principal components.
VARIANTS = [(k, 0, "prefix") for k in sorted(INDEX_SUFFIXES)] + [
    ("hnsw_halfvec", 64, "prefix"),
    ("hnsw_binary", 256, "prefix"),
    ("hnsw_halfvec", 64, "pca"),
]


@pytest.mark.parametrize(("kind", "dims", "projection"), VARIANTS)
def test_vector_index_kind(
    stack: Any, sample_collection: str, kind: str, dims: int, projection: str
) -> None:
    settings = Settings(
        database_url=stack.database_url,
        redis_url=stack.redis_url,
        hnsw_min_rows=1,
        vector_index=kind,  # type: ignore[arg-type]
        vector_dimensions=dims,
        vector_projection=projection,  # type: ignore[arg-type]
    )
    asyncio.run(_check_kind(settings, sample_collection, kind, dims, projection))


async def _check_kind(
    settings: Settings, collection: str, kind: str, dims: int, projection: str
) -> None:
    embedder = load_embedder(settings)
    pool = await create_pool(settings, min_size=1)
    try:
        default = await register_embedder(pool, embedder)
        table = dataclasses.replace(
            default, index_kind=kind, index_dimensions=dims, projection=projection
        )
        cid = await pool.fetchval("SELECT id FROM collections WHERE name = $1", collection)
        exact = {
            (q, mode): await _ids(pool, embedder, default, settings, collection, q, mode)
            for q in QUERIES
            for mode in MODES
        }
        async with pool.acquire() as conn:
            assert await build_vector_index(conn, table, cid, settings)
        present = {
            k
            for k in INDEX_SUFFIXES
            if await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", table.index(cid, k))
        }
        assert present == {kind}

        async with pool.acquire() as conn:
            # Forced onto the index (a partition this small is cheaper to scan): a query whose
            # ORDER BY the index does not serve would still plan a sequential scan.
            await conn.execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
            try:
                vector = embedder.encode_query(QUERIES[0])
                sql = table.sql(search_sql("vector", False, table, 4), cid)
                args: tuple[Any, ...] = (cid, 5, 50, "[]", vector)
                if table.pca:  # the build fitted the partition's basis: the query's projection
                    basis = await load_basis(conn, table, cid)
                    assert basis is not None and basis.components == dims
                    args += (basis.project(vector),)
                plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *args))
                assert table.index(cid) in plan, plan
                for (q, mode), want in exact.items():
                    got = await _ids(conn, embedder, table, settings, collection, q, mode)
                    assert got == want, (kind, q, mode)
            finally:
                await conn.execute("RESET enable_seqscan; RESET enable_bitmapscan")
        # The kind the stack runs with is rebuilt by its next finalize; leave none behind, and
        # no basis that the stack's writes would keep projecting on.
        await pool.execute(f"DROP INDEX {table.index(cid)}")
        await pool.execute(
            "DELETE FROM partition_bases WHERE table_name = $1 AND collection_id = $2",
            table.table,
            cid,
        )
    finally:
        await pool.close()


async def _ids(
    db: asyncpg.Pool | asyncpg.Connection,
    embedder: Embedder,
    table: ModelTable,
    settings: Settings,
    collection: str,
    query: str,
    mode: Mode,
) -> list[str]:
    # search() reads through whatever it is given: a pool, or one connection set up by the test.
    params = SearchParams(query=query, collection=collection, top_k=5, mode=mode)
    result = await search(db, embedder, table, settings, params, CollectionCache())  # type: ignore[arg-type]
    ids = [h["id"] for h in result["hits"]]
    assert ids, (query, mode)
    return ids


def test_a_parallel_build_without_the_shared_memory_builds_in_one_process(
    stack: Any,
    sample_collection: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A parallel HNSW build shares its graph in maintenance_work_mem's worth of shared memory;
    where /dev/shm cannot hold it (a container's 64 MB) the build is done by one process, and so
    is every later build of that process."""
    monkeypatch.setattr(finalize, "_parallel_failed", False)  # restored afterwards
    # More than any /dev/shm: the parallel build cannot allocate its segment.
    settings = Settings(
        database_url=stack.database_url,
        redis_url=stack.redis_url,
        hnsw_min_rows=1,
        hnsw_build_workers=2,
        hnsw_build_memory_mb=1024 * 1024,  # 1 TB (maintenance_work_mem allows up to 2)
    )
    with caplog.at_level(logging.INFO, logger=finalize.__name__):
        asyncio.run(_build_without_shared_memory(settings, sample_collection, builds=2))
    assert caplog.text.count("building it in one process") == 1, caplog.text
    assert caplog.text.count("(0 parallel workers asked for)") == 2, caplog.text


async def _build_without_shared_memory(settings: Settings, collection: str, builds: int) -> None:
    pool = await create_pool(settings, min_size=1)
    try:
        table = await register_embedder(pool, load_embedder(settings))
        cid = await pool.fetchval("SELECT id FROM collections WHERE name = $1", collection)
        index = table.index(cid)
        # The planner would give a partition this small no worker; the table setting does.
        await pool.execute(f"ALTER TABLE {table.partition(cid)} SET (parallel_workers = 2)")
        try:
            for _ in range(builds):
                await pool.execute(f"DROP INDEX IF EXISTS {index}")
                async with pool.acquire() as conn:
                    assert await build_vector_index(conn, table, cid, settings)
                assert await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", index)
        finally:
            await pool.execute(f"ALTER TABLE {table.partition(cid)} RESET (parallel_workers)")
    finally:
        await pool.close()


def test_a_rebuild_without_the_shared_memory_builds_in_one_process(
    stack: Any,
    sample_collection: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The graph rebuilt beside the old one (rebuild_graph) falls back the same way: its failed
    parallel try leaves an invalid index under the new name, which the try in one process must
    replace, and the old graph serves until the swap."""
    monkeypatch.setattr(finalize, "_parallel_failed", False)
    plain = Settings(database_url=stack.database_url, redis_url=stack.redis_url, hnsw_min_rows=1)
    wider = plain.model_copy(
        update={
            "hnsw_build_workers": 2,
            "hnsw_build_memory_mb": 1024 * 1024,
            "hnsw_ef_construction": 100,  # above the 64 the first build used at this size
        }
    )

    async def run() -> tuple[int | None, Any, list[str]]:
        pool = await create_pool(plain, min_size=1)
        try:
            table = await register_embedder(pool, load_embedder(plain))
            cid = await pool.fetchval(
                "SELECT id FROM collections WHERE name = $1", sample_collection
            )
            index, partition = table.index(cid), table.partition(cid)
            await pool.execute(f"DROP INDEX IF EXISTS {index}")
            async with pool.acquire() as conn:
                assert await build_vector_index(conn, table, cid, plain)
            await pool.execute(f"ALTER TABLE {partition} SET (parallel_workers = 2)")
            try:
                async with pool.acquire() as conn:
                    got = await finalize.rebuild_graph(conn, table, cid, wider)
            finally:
                await pool.execute(f"ALTER TABLE {partition} RESET (parallel_workers)")
            state = await pool.fetchrow(
                "SELECT i.indisvalid, c.reloptions FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = $1",
                index,
            )
            names = [
                r["indexname"]
                for r in await pool.fetch(
                    "SELECT indexname FROM pg_indexes WHERE tablename = $1", partition
                )
            ]
            # Leave the graph of the stack's own settings for the tests that follow.
            await pool.execute(f"DROP INDEX {index}")
            async with pool.acquire() as conn:
                assert await build_vector_index(conn, table, cid, plain)
            return got, state, names
        finally:
            await pool.close()

    with caplog.at_level(logging.INFO, logger=finalize.__name__):
        got, state, names = asyncio.run(run())
    assert got == 100
    assert caplog.text.count("building it in one process") == 1, caplog.text
    assert state["indisvalid"] and "ef_construction=100" in state["reloptions"], state
    assert not [n for n in names if n.endswith(("_nx", "_ox"))], names
