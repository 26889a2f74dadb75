"""`kensaku-bench search --corpus C --queries Q`: retrieval quality and latency on a real corpus,
loaded through the whole pipeline, next to the BM25 libraries a user would pick instead, in one
run on one machine.

1. Sudachi's two-core limit on the corpus (one process tokenizing title + text, doubled).
2. An embedded stack (PostgreSQL + pgvector, Redis, API, a worker with 2 processes); the corpus
   uploaded as NDJSON; ingest docs/s until the job reports done.
3. At once after the job is done, then after ``VACUUM (ANALYZE)``: per mode MRR@10, recall@10,
   nDCG@10 (every query, concurrency 1) and latency p50/p95 at concurrency 1 and 8.
4. Mixed load: 8 hybrid searchers for ``--mixed-seconds`` while another client uploads new
   documents in batches; every request must be answered and every uploaded document indexed.
5. The peers (bench/peers.py) on the same corpus and queries, in-process, after the stack stops.

The machine is shared and noisy: compare figures within one run.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from shared.config import get_settings
from shared.evaluate import (
    Query,
    ingest_documents,
    load_queries,
    metrics_for,
    percentile,
    read_corpus,
    search_ids,
)
from shared.stack.stack import Stack, settings_env
from shared.text.normalize import normalize
from shared.text.pipeline import embedding_input
from shared.text.tokenize import get_tokenizer

MODES = ("lexical", "vector", "hybrid")
COLLECTION = "bench"


def sudachi_limit(docs: list[dict[str, str]]) -> float:
    """Documents per second Sudachi alone tokenizes (title + text), on two cores."""
    tok = get_tokenizer()
    texts = [embedding_input(d["title"], normalize(d["text"])) for d in docs]
    started = time.perf_counter()
    for t in texts:
        tok.analyze(t)
    return 2 * len(texts) / (time.perf_counter() - started)


def quality(api: str, queries: list[Query], mode: str) -> dict[str, float]:
    latencies: list[float] = []
    rankings: list[list[str]] = []
    with httpx.Client(base_url=api, timeout=60) as client:
        for q in queries:
            started = time.perf_counter()
            rankings.append(search_ids(client, COLLECTION, mode, q.text))
            latencies.append((time.perf_counter() - started) * 1000)
    out = metrics_for(rankings, queries)
    out |= {"p50_ms": statistics.median(latencies), "p95_ms": percentile(latencies, 95)}
    return out


def load_test(api: str, texts: list[str], mode: str, concurrency: int, n: int) -> dict[str, Any]:
    """n searches spread over ``concurrency`` clients: latency percentiles, QPS, errors."""
    local = threading.local()

    def one(i: int) -> tuple[float, int]:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=api, timeout=60)
        started = time.perf_counter()
        resp = client.post(
            "/v1/search",
            json={"query": texts[i % len(texts)], "collection": COLLECTION, "mode": mode},
        )
        return (time.perf_counter() - started) * 1000, resp.status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - started
    latencies = [r[0] for r in results]
    return {
        "p50_ms": statistics.median(latencies),
        "p95_ms": percentile(latencies, 95),
        "qps": n / wall,
        "errors": sum(1 for r in results if r[1] != 200),
    }


def vacuum_analyze(database_url: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            # What autovacuum does some time after a bulk load.
            await conn.execute("VACUUM (ANALYZE)")
        finally:
            await conn.close()

    asyncio.run(run())


def vector_storage(database_url: str) -> str:
    """The size of the vectors' partitions and of their indexes, as a line."""
    import asyncio

    import asyncpg

    async def run() -> asyncpg.Record:
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetchrow(
                """
                SELECT count(DISTINCT i.indexrelid) AS indexes,
                       coalesce(sum(pg_relation_size(i.indexrelid)), 0) AS index_bytes,
                       (SELECT coalesce(sum(pg_relation_size(c.oid)), 0) FROM pg_class c
                        WHERE c.relname ~ '^emb_.*_c[0-9]+$' AND c.relkind = 'r') AS table_bytes
                FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid
                WHERE x.relname ~ '^emb_.*_c[0-9]+_[a-z0-9]+$' AND NOT i.indisprimary
                """
            )
        finally:
            await conn.close()

    r = asyncio.run(run())
    mb = 1024 * 1024
    return (
        f"vectors: {r['table_bytes'] / mb:.1f} MB in the partitions, {r['indexes']} vector "
        f"index(es) of {r['index_bytes'] / mb:.1f} MB"
    )


def mixed_load(
    api: str, texts: list[str], docs: list[dict[str, str]], seconds: float
) -> dict[str, Any]:
    """8 hybrid searchers while one client uploads batches of new documents."""
    stop = threading.Event()
    searches: list[tuple[float, int]] = []
    uploads: list[tuple[int, str]] = []
    lock = threading.Lock()

    def searcher(k: int) -> None:
        with httpx.Client(base_url=api, timeout=60) as client:
            i = k
            while not stop.is_set():
                started = time.perf_counter()
                resp = client.post(
                    "/v1/search",
                    json={"query": texts[i % len(texts)], "collection": COLLECTION},
                )
                with lock:
                    searches.append(((time.perf_counter() - started) * 1000, resp.status_code))
                i += 8

    def uploader() -> None:
        with httpx.Client(base_url=api, timeout=120) as client:
            batch = 0
            while not stop.is_set():
                new = [
                    dict(d, id=f"mixed-{batch}-{d['id']}")
                    for d in docs[(batch * 50) % len(docs) :][:50]
                ]
                resp = client.post(
                    "/v1/documents", json={"collection": COLLECTION, "documents": new}
                )
                uploads.append((resp.status_code, resp.json().get("job_id", "")))
                batch += 1
                time.sleep(0.5)

    threads = [threading.Thread(target=searcher, args=(k,)) for k in range(8)]
    threads.append(threading.Thread(target=uploader))
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    accepted = lost = 0
    with httpx.Client(base_url=api, timeout=60) as client:
        for status, job in uploads:
            if status != 202:
                continue
            while (s := client.get(f"/v1/jobs/{job}").json())["status"] not in (
                "done",
                "partial",
                "failed",
            ):
                time.sleep(0.2)
            accepted += s["total"]
            lost += s["total"] - s["indexed"]
    latencies = [s[0] for s in searches]
    return {
        "searches": len(searches),
        "search_errors": sum(1 for s in searches if s[1] != 200),
        "searches_per_s": len(searches) / wall,
        "p50_ms": statistics.median(latencies),
        "p95_ms": percentile(latencies, 95),
        "uploads": len(uploads),
        "upload_errors": sum(1 for u in uploads if u[0] != 202),
        "documents_uploaded": accepted,
        "documents_not_indexed": lost,
    }


def _table(rows: dict[str, dict[str, float]], cols: list[str]) -> str:
    lines = [f"{'':<24}" + "".join(f"{c:>11}" for c in cols)]
    for name, r in rows.items():
        lines.append(f"{name:<24}" + "".join(f"{r.get(c, float('nan')):>11.3f}" for c in cols))
    return "\n".join(lines)


def _run_stack(
    stack: Stack,
    docs: list[dict[str, str]],
    queries: list[Query],
    limit: float,
    load_queries_n: int,
    mixed_seconds: float,
) -> None:
    texts = [q.text for q in queries]
    metric_cols = ["mrr@10", "recall@10", "ndcg@10", "p50_ms", "p95_ms"]
    load_cols = ["p50_ms", "p95_ms", "qps", "errors"]
    with httpx.Client(base_url=stack.api_url, timeout=1200) as client:
        ingested = ingest_documents(client, docs, COLLECTION)
    for what, seconds in (
        ("every document was searchable", ingested.searchable_seconds),
        ("the job was done (indexes built)", ingested.done_seconds),
    ):
        rate = len(docs) / seconds
        print(
            f"ingest through the API until {what}: {seconds:.1f} s = {rate:.0f} docs/s, "
            f"{rate / limit:.2f}x Sudachi's two-core limit"
        )
    print(vector_storage(stack.database_url))
    for phase in ("at once after the job was done", "after VACUUM (ANALYZE)"):
        if phase.startswith("after"):
            vacuum_analyze(stack.database_url)
        print(f"\n{phase}: every query, concurrency 1")
        print(_table({m: quality(stack.api_url, queries, m) for m in MODES}, metric_cols))
        print(f"{phase}: {load_queries_n} searches per mode and concurrency")
        rows = {
            f"{m} c={c}": load_test(stack.api_url, texts, m, c, load_queries_n)
            for m in MODES
            for c in (1, 8)
        }
        print(_table(rows, load_cols))
    if mixed_seconds > 0:
        mixed = mixed_load(stack.api_url, texts, docs, mixed_seconds)
        print(
            f"\nmixed load, {mixed_seconds:.0f} s: 8 hybrid searchers + 1 uploader "
            "(batches of 50 new documents)"
        )
        for k, v in mixed.items():
            print(f"  {k:<22} {v:.2f}" if isinstance(v, float) else f"  {k:<22} {v}")


def main(
    corpus: Path,
    queries_path: Path,
    *,
    load_queries_n: int = 400,
    mixed_seconds: float = 20.0,
    peers: bool = True,
) -> int:
    settings = get_settings()
    docs = read_corpus(corpus)
    queries = load_queries(queries_path)
    print(
        f"bench search: {corpus} ({len(docs)} documents), {queries_path} "
        f"({len(queries)} queries), model {settings.model}, vector index {settings.vector_index}"
    )
    limit = sudachi_limit(docs)
    print(f"Sudachi alone (title + text, 2 cores): {limit:.0f} docs/s")
    with tempfile.TemporaryDirectory(prefix="kensaku-bench-") as tmp:
        # PostgreSQL (run by pgserver as its own user when we are root) must reach its data.
        Path(tmp).chmod(0o755)
        with Stack(Path(tmp), flower=False, extra_env=settings_env(settings)) as stack:
            _run_stack(stack, docs, queries, limit, load_queries_n, mixed_seconds)
    if peers:
        from bench.peers import Corpus, run_peers

        peer_corpus = Corpus(
            [d["id"] for d in docs],
            [embedding_input(d["title"], normalize(d["text"])) for d in docs],
        )
        print("\npeers, in-process on the same corpus and queries (p50: one query, no HTTP)")
        cols = ["mrr@10", "recall@10", "ndcg@10", "p50_ms"]
        print(_table(run_peers(peer_corpus, queries), cols))
    return 0
