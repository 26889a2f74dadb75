"""`kensaku-bench langchain --corpus C --queries Q --docs N`: kensaku next to the LangChain script
a user would write instead (bench/langchain_script.py: PGVector + HuggingFaceEmbeddings), on the
same passages, questions, model and PostgreSQL build, run in turn in one run:

- LangChain: an embedded PostgreSQL of its own; the script's add_documents timed from its first
  split to its last insert (the model loaded and warm), then similarity_search (k=10) per question
  in its process, at concurrency 1.
- kensaku: the embedded stack with the configured model and backend (2 worker processes); upload
  until the job is done, then a vector search per question through the API, at concurrency 1.

Each round runs both; the model must be a sentence-transformers model the script can load
(KENSAKU_MODEL=minilm, or a model directory). The script's virtual environment comes from
`make bench-langchain-env`.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench.ingest import count_chunks
from bench.search import COLLECTION, quality
from shared.config import get_settings
from shared.embed.embedder import load_embedder, model_source
from shared.errors import ConfigError
from shared.evaluate import Query, ingest_documents, load_queries, metrics_for, read_corpus
from shared.stack.services import EMBEDDED_POSTGRES_SETTINGS, start_postgres
from shared.stack.stack import Stack, settings_env

ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = ROOT / ".venv-langchain/bin/python"
SCRIPT = Path(__file__).with_name("langchain_script.py")
TOP_K = 10


def sample(
    corpus: Path, queries: Path, n_docs: int, n_queries: int
) -> tuple[list[dict[str, str]], list[Query]]:
    """The corpus's first ``n_docs`` passages and up to ``n_queries`` questions answered in them."""
    docs = read_corpus(corpus)[:n_docs]
    ids = {d["id"] for d in docs}
    answered = [q for q in load_queries(queries) if q.relevant & ids]
    if not answered:
        raise ConfigError(f"no question of {queries} is answered in the first {n_docs} passages")
    return docs, answered[:n_queries]


def langchain_round(
    docs: list[dict[str, str]], queries: list[Query], model_path: str, chunk_tokens: int
) -> dict[str, Any]:
    job = {
        "model_path": model_path,
        "chunk_tokens": chunk_tokens,
        "docs": docs,
        "queries": [q.text for q in queries],
        "k": TOP_K,
    }
    with tempfile.TemporaryDirectory(prefix="kensaku-bench-langchain-") as tmp:
        postgres = start_postgres(Path(tmp) / "postgres", settings=EMBEDDED_POSTGRES_SETTINGS)
        try:
            job["database_url"] = postgres.url
            done = subprocess.run(
                [str(PEER_PYTHON), str(SCRIPT)],
                input=json.dumps(job, ensure_ascii=False),
                capture_output=True,
                text=True,
                check=False,
            )
        finally:
            postgres.stop()
    if done.returncode != 0:
        raise RuntimeError(f"the LangChain script failed:\n{done.stderr[-4000:]}")
    out: dict[str, Any] = json.loads(done.stdout)
    out |= metrics_for(out["rankings"], queries)
    out["p50_ms"] = statistics.median(out["latencies_ms"])
    out["docs_per_s"] = len(docs) / out["ingest_s"]
    return out


def kensaku_round(docs: list[dict[str, str]], queries: list[Query]) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="kensaku-bench-") as tmp,
        Stack(
            Path(tmp), flower=False, worker_concurrency=2, extra_env=settings_env(get_settings())
        ) as stack,
        httpx.Client(base_url=stack.api_url, timeout=1200) as client,
    ):
        ingested = ingest_documents(client, docs, COLLECTION)
        out: dict[str, Any] = quality(stack.api_url, queries, "vector")
        out["chunks"] = asyncio.run(count_chunks(stack.database_url))
    out["ingest_s"] = ingested.done_seconds
    out["docs_per_s"] = len(docs) / ingested.done_seconds
    return out


def main(corpus: Path, queries_path: Path, docs: int, sample_queries: int, rounds: int) -> int:
    if not PEER_PYTHON.exists():
        raise ConfigError(
            f"the LangChain script's environment is missing ({PEER_PYTHON}): "
            "run `make bench-langchain-env`"
        )
    settings = get_settings()
    embedder = load_embedder(settings, threads=1)
    if embedder.takes_lexemes:
        raise ConfigError(
            f"the LangChain script needs a sentence-transformers model; {settings.model} is a "
            "word-vector model (run with KENSAKU_MODEL=minilm or a model directory)"
        )
    model_path = model_source(settings)
    chunk_tokens = embedder.chunk_tokens(settings.chunk_tokens)
    del embedder
    passages, queries = sample(corpus, queries_path, docs, sample_queries)
    print(
        f"bench langchain: {len(passages)} passages of {corpus}, {len(queries)} questions; "
        f"model {settings.model}, kensaku on {settings.backend}, LangChain on torch; chunks of "
        f"at most {chunk_tokens} tokens in both"
    )
    header = f"{'':<22}{'docs/s':>8}{'chunks':>8}{'vector p50 ms':>15}{'MRR@10':>8}"
    for r in range(1, rounds + 1):
        peer = langchain_round(passages, queries, model_path, chunk_tokens)
        ours = kensaku_round(passages, queries)
        print(f"\nround {r}\n{header}")
        for name, row in (("LangChain PGVector", peer), (f"kensaku {settings.backend}", ours)):
            print(
                f"{name:<22}{row['docs_per_s']:>8.1f}{row['chunks']:>8}"
                f"{row['p50_ms']:>15.1f}{row['mrr@10']:>8.3f}"
            )
        print(
            f"ratio kensaku / LangChain: ingest {ours['docs_per_s'] / peer['docs_per_s']:.2f}, "
            f"vector p50 {ours['p50_ms'] / peer['p50_ms']:.2f}"
        )
    return 0
