"""`kensaku eval`: ingest a BEIR-like corpus into a fresh collection through the real API and
workers, run every query per mode, and print recall@1, recall@10, MRR@10, nDCG@10 and latency.

Corpus lines: {"id", "title", "text"}; query lines: {"qid", "query", "relevant": [ids]}.
"""

from __future__ import annotations

import json
import math
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


@dataclass(frozen=True)
class Query:
    qid: str
    text: str
    relevant: frozenset[str]


def load_queries(path: Path) -> list[Query]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            q = json.loads(line)
            out.append(Query(str(q["qid"]), q["query"], frozenset(map(str, q["relevant"]))))
    return out


def recall_at(ranked: list[str], relevant: frozenset[str], k: int) -> float:
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr_at(ranked: list[str], relevant: frozenset[str], k: int = 10) -> float:
    for i, doc in enumerate(ranked[:k], 1):
        if doc in relevant:
            return 1.0 / i
    return 0.0


def ndcg_at(ranked: list[str], relevant: frozenset[str], k: int = 10) -> float:
    dcg = sum(1.0 / math.log2(i + 1) for i, d in enumerate(ranked[:k], 1) if d in relevant)
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(len(relevant), k) + 1))
    return dcg / ideal if ideal else 0.0


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[idx]


def metrics_for(rankings: list[list[str]], queries: list[Query]) -> dict[str, float]:
    """Mean recall@1, recall@10, MRR@10 and nDCG@10 of ranked ids, one list per query."""
    n = max(len(queries), 1)
    sums = {"recall@1": 0.0, "recall@10": 0.0, "mrr@10": 0.0, "ndcg@10": 0.0}
    for ranked, q in zip(rankings, queries, strict=True):
        sums["recall@1"] += recall_at(ranked, q.relevant, 1)
        sums["recall@10"] += recall_at(ranked, q.relevant, 10)
        sums["mrr@10"] += mrr_at(ranked, q.relevant)
        sums["ndcg@10"] += ndcg_at(ranked, q.relevant)
    return {k: v / n for k, v in sums.items()}


def search_ids(client: httpx.Client, collection: str, mode: str, text: str) -> list[str]:
    resp = client.post(
        "/v1/search", json={"query": text, "collection": collection, "top_k": 10, "mode": mode}
    )
    resp.raise_for_status()
    return [h["id"] for h in resp.json()["hits"]]


def score_mode(
    client: httpx.Client, collection: str, mode: str, queries: list[Query]
) -> dict[str, float]:
    rankings: list[list[str]] = []
    latencies: list[float] = []
    for q in queries:
        started = time.perf_counter()
        rankings.append(search_ids(client, collection, mode, q.text))
        latencies.append((time.perf_counter() - started) * 1000)
    out = metrics_for(rankings, queries)
    out["p50_ms"] = statistics.median(latencies) if latencies else 0.0
    out["p95_ms"] = percentile(latencies, 95)
    return out


def read_corpus(path: Path) -> list[dict[str, str]]:
    docs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            docs.append({"id": str(d["id"]), "title": d.get("title") or "", "text": d["text"]})
    return docs


@dataclass(frozen=True)
class Ingested:
    """A finished upload: the job's final status, and seconds from the upload's start until every
    document was searchable (all indexed; the job then still builds its indexes) and until the
    job was done."""

    status: dict[str, Any]
    searchable_seconds: float
    done_seconds: float


def ingest_documents(client: httpx.Client, docs: list[dict[str, str]], collection: str) -> Ingested:
    """Upload as streamed NDJSON (no per-request document cap) and wait for the job. Raises when
    the job does not end ``done``."""
    started = time.perf_counter()
    body = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")
    resp = client.post(
        "/v1/documents",
        params={"collection": collection},
        content=body,
        headers={"Content-Type": "application/x-ndjson"},
    )
    resp.raise_for_status()
    job: str = resp.json()["job_id"]
    searchable: float | None = None
    while True:
        status: dict[str, Any] = client.get(f"/v1/jobs/{job}").raise_for_status().json()
        now = time.perf_counter() - started
        # Nothing left queued or prepped-but-not-embedded ("prepped" counts the indexed too).
        if searchable is None and status["queued"] == 0 and status["prepped"] == status["indexed"]:
            searchable = now
        if status["status"] in ("done", "partial", "failed"):
            if status["status"] != "done":
                raise RuntimeError(f"ingest ended {status['status']}: {status}")
            return Ingested(status, now if searchable is None else searchable, now)
        time.sleep(0.1)


def evaluate(
    api: str,
    headers: dict[str, str],
    corpus: Path,
    queries_path: Path,
    modes: list[str],
    *,
    collection: str | None = None,
) -> dict[str, dict[str, float]]:
    collection = collection or f"eval-{uuid.uuid4().hex[:8]}"
    queries = load_queries(queries_path)
    with httpx.Client(base_url=api, headers=headers, timeout=120) as client:
        ingest_documents(client, read_corpus(corpus), collection)
        client.post("/v1/search", json={"query": "ウォームアップ", "collection": collection})
        return {mode: score_mode(client, collection, mode, queries) for mode in modes}


def format_table(results: dict[str, dict[str, float]]) -> str:
    cols = ["recall@1", "recall@10", "mrr@10", "ndcg@10", "p50_ms", "p95_ms"]
    lines = ["mode     " + "".join(f"{c:>11}" for c in cols)]
    for mode, r in results.items():
        lines.append(f"{mode:<9}" + "".join(f"{r[c]:>11.3f}" for c in cols))
    return "\n".join(lines)


def run_eval(
    api: str | None,
    headers: dict[str, str],
    corpus: Path,
    queries: Path,
    modes: list[str],
    *,
    collection: str | None = None,
) -> dict[str, Any]:
    """Against a running API, or (api None / unreachable) a temporary embedded stack."""
    if api is not None:
        try:
            httpx.get(f"{api}/healthz", timeout=2)
        except httpx.HTTPError:
            api = None
    if api is None:
        import tempfile

        from shared.stack.stack import Stack

        with (
            tempfile.TemporaryDirectory(prefix="kensaku-eval-") as tmp,
            Stack(Path(tmp), flower=False) as stack,
        ):
            results = evaluate(
                stack.api_url, headers, corpus, queries, modes, collection=collection
            )
    else:
        results = evaluate(api, headers, corpus, queries, modes, collection=collection)
    print(f"corpus {corpus}, queries {queries}")
    print(format_table(results))
    return results
