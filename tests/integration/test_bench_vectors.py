"""`kensaku bench vectors` measures kensaku's own vector SQL: on 12,000 vectors made from real
sentences, in the stack's database, each HNSW kind is built, answers through its index (the
benchmark checks the plan), and agrees with the exact ranking."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from bench.corpus import sentences
from bench.index_sizes import MODEL, measure_sizes
from bench.vectors import exact_top, measure, server_shared_buffers, with_sums
from shared.config import Settings
from shared.embed.embedder import load_embedder
from shared.stack.services import EMBEDDED_POSTGRES_SETTINGS, start_postgres
from tests.helpers import db_fetch

pytestmark = pytest.mark.integration


def test_every_index_kind_is_measured_through_its_index(stack: Any) -> None:
    settings = Settings(database_url=stack.database_url, redis_url=stack.redis_url, hnsw_min_rows=0)
    embedder = load_embedder(settings)
    texts = sentences()
    # Enough rows for the planner to prefer each index over a scan, as at a benchmark's size.
    vectors = with_sums(embedder.encode_documents(texts).astype(np.float32), 12_000)
    queries = np.stack(
        [embedder.encode_query(t[: len(t) // 2]) for t in texts[:: len(texts) // 20]]
    )
    truth = exact_top(vectors, queries)
    # Not ivfflat: over 12 lists the planner rightly prefers the exact scan at this size.
    kinds = ["hnsw", "hnsw_halfvec", "hnsw_binary"]
    # Each build is searched at two ef_search values, each through a pool of its own (at 12,000
    # rows the planner rightly prefers the exact scan to an HNSW search much wider than 100).
    # 64 dimensions both ways: the first 64, and 64 principal components.
    results = asyncio.run(
        measure(
            settings,
            vectors,
            queries,
            truth,
            kinds,
            [0, 64],
            [40, 100],
            ["pca", "prefix"],
            insert_rows=300,
        )
    )
    # The last build's partition also holds the small upload timed after its searches.
    table = db_fetch(
        stack, "SELECT table_name FROM embedding_models WHERE name = 'kensaku-bench/vectors'"
    )[0]["table_name"]
    assert db_fetch(stack, f"SELECT count(*) AS n FROM {table}")[0]["n"] == len(vectors) + 300
    variants = [(k, 300, "-") for k in kinds]
    variants += [(k, 64, p) for k in kinds for p in ("pca", "prefix")]
    assert sorted(
        (r["index"], r["dimensions"], r["projection"], r["ef_search"]) for r in results
    ) == sorted((k, d, p, ef) for k, d, p in variants for ef in (40, 100))
    for r in results:
        assert r["rows"] == len(vectors) and r["index_mb"] > 0 and r["load_rows_per_s"] > 0
        assert r["insert_rows_per_s"] > 0
    full = {(r["index"], r["ef_search"]): r["recall@10"] for r in results if r["dimensions"] == 300}
    assert full["hnsw_halfvec", 100] >= 0.9 and full["hnsw", 100] >= 0.9, full
    for kind in kinds:  # a wider search finds at least as much (0.01: two results of 200)
        assert full[kind, 100] >= full[kind, 40] - 0.01, full
    reduced = {
        (r["projection"], r["ef_search"]): r["recall@10"]
        for r in results
        if r["index"] == "hnsw_halfvec" and r["dimensions"] == 64
    }
    # Both first passes find most of the true top 10 once re-ranked (0.92 each on these
    # sentences; a query projected on another basis than the rows' would find almost none).
    assert min(reduced.values()) >= 0.85, reduced


def test_index_sizes_are_measured_per_vector_and_kind(stack: Any) -> None:
    """`kensaku bench index-sizes`: each kind's bytes per vector at two dimensions, in the
    stack's database. The binary index's advantage grows with the dimension (its per-element
    header and neighbour list stay the same size), which is what the benchmark is for."""
    settings = Settings(database_url=stack.database_url, redis_url=stack.redis_url, hnsw_min_rows=0)
    kinds = ["hnsw", "hnsw_halfvec", "hnsw_binary"]
    try:
        results = asyncio.run(measure_sizes(settings, [64, 512], kinds, 2_000))
    finally:
        for d in (64, 512):
            model = MODEL.format(dimension=d)
            rows = db_fetch(stack, "SELECT table_name FROM embedding_models WHERE name = $1", model)
            for r in rows:
                db_fetch(stack, f"DROP TABLE IF EXISTS {r['table_name']}")
            db_fetch(stack, "DELETE FROM embedding_models WHERE name = $1", model)
    size = {(r["dimension"], r["index"]): r for r in results}
    assert sorted(size) == sorted((d, k) for d in (64, 512) for k in kinds)
    for d in (64, 512):
        b = [size[d, k]["bytes_per_vector"] for k in kinds]
        assert b[0] > b[1] > b[2] > 0, (d, b)
        assert size[d, "hnsw"]["float_over_this"] == 1.0
        # At least the value's bytes: 4 per float dimension.
        assert size[d, "hnsw"]["bytes_per_vector"] > 4 * d
    assert (
        size[512, "hnsw_binary"]["float_over_this"] > 2 * size[64, "hnsw_binary"]["float_over_this"]
    )


def test_a_benchmark_server_starts_with_the_settings_asked_for(tmp_path: Path) -> None:
    """`kensaku bench vectors --shared-buffers`: settings that apply only at a server's start
    (shared_buffers) are in effect once start_postgres returns. A server already running with
    them is not restarted; one asked for another value is."""
    data = tmp_path / "postgres"
    pg = start_postgres(data, settings={"shared_buffers": "48MB"})
    try:
        assert server_shared_buffers(pg.url) == "48MB"
        started = postmaster_start(pg.url)
        # The same size in other units: PostgreSQL sees it is the running value.
        again = start_postgres(data, settings={"shared_buffers": "6144"})
        assert postmaster_start(again.url) == started
        other = start_postgres(data, settings={"shared_buffers": "40MB"})
        assert server_shared_buffers(other.url) == "40MB"
        assert postmaster_start(other.url) > started
        pg = other
    finally:
        pg.stop()


def test_the_embedded_server_runs_with_its_own_shared_buffers(stack: Any) -> None:
    """The embedded stack's PostgreSQL holds a large index in shared_buffers, not in 128 MB."""
    assert (
        db_fetch(stack, "SHOW shared_buffers")[0][0] == EMBEDDED_POSTGRES_SETTINGS["shared_buffers"]
    )


def postmaster_start(url: str) -> Any:
    return db_fetch(SimpleNamespace(database_url=url), "SELECT pg_postmaster_start_time()")[0][0]
