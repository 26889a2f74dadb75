"""`kensaku bench collection` loads its passages through kensaku's own path (upload, prep in two
processes, the job's end) and measures search() in every mode: on 10,000 passages made from the
project's evaluation set, in the stack's database, every passage is one chunk with one vector,
the job's end builds the graph, every mode fills top_k, and the vector modes read the graph."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bench.cli import JA_EVAL
from bench.collection import load, measure, passages
from shared.config import Settings
from shared.db.embeddings import register_embedder
from shared.db.pool import create_pool
from shared.db.queries import Q
from shared.embed.embedder import load_embedder
from shared.evaluate import load_queries
from shared.text.chunk import split_sentences

pytestmark = pytest.mark.integration

# The stack's hnsw_min_rows: its worker's sweeper may finish the job before the benchmark does.
ROWS, APPEND = 10_000, 200


def test_passages_are_real_sentences_one_per_chunk() -> None:
    texts = passages(JA_EVAL / "corpus.jsonl", ROWS)
    assert len(texts) == ROWS and len(set(texts)) > 0.95 * ROWS
    assert all(len(split_sentences(body)) == 1 for _, body in texts)
    # The corpus's own sentences first, then two of them written as one.
    assert "、" in texts[-1][1] and all(title for title, _ in texts)


def test_a_large_collection_is_loaded_and_searched_as_kensaku_does(stack: Any) -> None:
    settings = Settings(database_url=stack.database_url, redis_url=stack.redis_url)
    embedder = load_embedder(settings)
    texts = passages(JA_EVAL / "corpus.jsonl", ROWS + APPEND)
    questions = [q.text for q in load_queries(JA_EVAL / "queries.jsonl")[:30]]
    collection = "bench-collection-test"

    async def run() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        pool = await create_pool(settings, min_size=1, role="worker")
        try:
            table = await register_embedder(pool, embedder)
            took = await load(pool, settings, table, collection, texts[:ROWS])
            cid = await pool.fetchval(Q.collection_id, collection)
            before = dict(
                await pool.fetchrow(
                    "SELECT (SELECT count(*) FROM chunks WHERE collection_id = $1) AS chunks, "
                    "(SELECT count(*) FROM " + table.partition(cid) + ") AS vectors, "
                    "to_regclass($2) IS NOT NULL AS indexed",
                    cid,
                    table.index(cid),
                )
            )
            results = await measure(settings, embedder, table, collection, questions)
            await load(pool, settings, table, collection, texts[ROWS:], first=ROWS)
            after = dict(
                await pool.fetchrow(
                    "SELECT (SELECT count(*) FROM " + table.partition(cid) + ") AS vectors, "
                    "(SELECT count(*) FROM documents WHERE collection_id = $1 "
                    "AND status = 'indexed') AS indexed",
                    cid,
                )
            )
            assert took["prep_s"] > 0
            return before, results, after
        finally:
            await pool.close()

    before, results, after = asyncio.run(run())
    assert before == {"chunks": ROWS, "vectors": ROWS, "indexed": True}, before
    assert [r["mode"] for r in results] == ["lexical", "vector", "hybrid"]
    for r in results:
        assert r["full"] == 1.0 and 0 < r["p50_ms_c1"] <= r["p95_ms_c1"], r
        assert r["index_used"] == (r["mode"] != "lexical"), r
    # The second job's passages joined the collection (and its graph) under new ids.
    assert after == {"vectors": ROWS + APPEND, "indexed": ROWS + APPEND}, after
