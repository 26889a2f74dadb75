"""`kensaku bench search`: query latency through HTTP at concurrency 1 and 8, QPS, per mode, at
several collection sizes, plus the HNSW index's recall@10 against exact search, in one run.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import httpx
from pgvector.asyncpg import register_vector

from bench.corpus import ROOT, generate_documents
from shared.config import get_settings
from shared.db.queries import Q
from shared.embed.embedder import load_embedder
from shared.evaluate import percentile
from shared.stack.stack import Stack, settings_env

MODES = ("vector", "lexical", "hybrid")


def bench_queries() -> list[str]:
    path = ROOT / "bench/data/ja_eval/queries.jsonl"
    return [json.loads(line)["query"] for line in path.read_text().splitlines() if line.strip()]


def load(stack: Stack, n_chunks: int) -> float:
    """Ingest short documents (about one chunk each) until the collection has n_chunks."""
    docs = generate_documents(n_chunks, seed=n_chunks)
    for d in docs:  # short documents: one chunk each, so documents ≈ chunks
        d["text"] = d["text"][:240]
    started = time.perf_counter()
    body = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode()
    resp = httpx.post(
        f"{stack.api_url}/v1/documents", params={"collection": "bench"}, content=body,
        headers={"Content-Type": "application/x-ndjson"}, timeout=1200,
    )  # fmt: skip
    resp.raise_for_status()
    job = resp.json()["job_id"]
    while httpx.get(f"{stack.api_url}/v1/jobs/{job}", timeout=30).json()["status"] not in (
        "done", "partial", "failed"
    ):  # fmt: skip
        time.sleep(0.5)
    return time.perf_counter() - started


def latency(api: str, queries: list[str], mode: str, concurrency: int, n: int) -> dict[str, float]:
    client = httpx.Client(base_url=api, timeout=60)

    def one(i: int) -> float:
        q = queries[i % len(queries)]
        t = time.perf_counter()
        r = client.post("/v1/search", json={"query": q, "collection": "bench", "mode": mode})
        r.raise_for_status()
        return (time.perf_counter() - t) * 1000

    for i in range(10):  # warm-up
        one(i)
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        times = list(pool.map(one, range(n)))
    wall = time.perf_counter() - started
    client.close()
    return {"p50": statistics.median(times), "p95": percentile(times, 95), "qps": n / wall}


async def hnsw_recall(
    database_url: str, table: str, queries: list[str], ef_search: int
) -> tuple[float, float]:
    """Recall@10 of the index against exact search: by chunk id, and tie-aware (a hit counts
    when it is no farther than the exact 10th neighbour, as ann-benchmarks counts it) — the
    benchmark corpus repeats sentences, so many chunks have identical vectors."""
    embedder = load_embedder(get_settings())
    conn = await asyncpg.connect(database_url)
    await register_vector(conn)
    try:
        await conn.execute(f"SET hnsw.ef_search = {int(ef_search)}")
        by_id = by_distance = 0
        sql = Q.nearest_chunks.format(table=table)
        for q in queries:
            vec = embedder.encode_query(q)
            ann = await conn.fetch(sql, vec, 10)
            async with conn.transaction():
                # Exact: no index, a full scan ordered by true distance.
                await conn.execute("SET LOCAL enable_indexscan = off")
                exact = await conn.fetch(sql, vec, 10)
            by_id += len({r["chunk_id"] for r in ann} & {r["chunk_id"] for r in exact})
            kth = exact[-1]["distance"] if exact else 0.0
            by_distance += sum(1 for r in ann if r["distance"] <= kth + 1e-6)
        n = 10 * len(queries)
        return by_id / n, by_distance / n
    finally:
        await conn.close()


async def analyze(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(Q.vacuum_analyze)
    finally:
        await conn.close()


def main(sizes: list[int] | None = None) -> int:
    sizes = sizes or [10_000, 100_000]
    settings = get_settings()
    queries = bench_queries()
    print(f"bench search: model {settings.model}, sizes {sizes}, {len(queries)} distinct queries,"
          f" ef_search {settings.hnsw_ef_search}")  # fmt: skip
    for size in sizes:
        with (
            tempfile.TemporaryDirectory(prefix="kensaku-bench-") as tmp,
            Stack(Path(tmp), flower=False, extra_env=settings_env(settings)) as stack,
        ):
            load_s = load(stack, size)
            db_url = stack.database_url

            async def stats(db_url: str = db_url) -> tuple[int, str]:
                conn = await asyncpg.connect(db_url)
                try:
                    n = int(await conn.fetchval(Q.count_chunks))
                    table = str((await conn.fetchrow(Q.active_model))["table_name"])
                    return n, table
                finally:
                    await conn.close()

            n_chunks, table = asyncio.run(stats())
            # What autovacuum does soon after a bulk load; without fresh estimates the planner
            # may pick an exact scan over the HNSW index.
            asyncio.run(analyze(db_url))
            print(f"\n{n_chunks} chunks loaded through the pipeline in {load_s:.1f} s")
            print(f"{'mode':<8} {'conc':>4} {'p50 ms':>8} {'p95 ms':>8} {'QPS':>8}")
            for mode in MODES:
                for conc, n in ((1, 200), (8, 400)):
                    r = latency(stack.api_url, queries, mode, conc, n)
                    print(f"{mode:<8} {conc:>4} {r['p50']:>8.2f} {r['p95']:>8.2f} {r['qps']:>8.1f}")
            # The configured breadth, and others beside it for choosing one.
            for ef in sorted({100, settings.hnsw_ef_search, 400}):
                by_id, by_distance = asyncio.run(hnsw_recall(db_url, table, queries[:100], ef))
                print(
                    f"HNSW recall@10 against exact search, ef_search {ef} "
                    f"({min(100, len(queries))} queries): "
                    f"{by_id:.3f} by chunk id, {by_distance:.3f} tie-aware"
                )
    return 0
