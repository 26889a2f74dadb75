"""`kensaku bench ingest --docs N`: end-to-end ingestion through the real API → Redis → workers →
Postgres path, against the raw encode speed of the same model on the same texts, in one run.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.corpus import generate_documents
from shared.config import get_settings
from shared.embed.embedder import load_embedder
from shared.stack.stack import Stack, settings_env
from shared.text.pipeline import embedding_input, prepare_document


def raw_encode(docs: list[dict[str, str]], backend: str | None = None) -> dict[str, float]:
    """The model alone: encode exactly the vector units the pipeline will feed it (for the
    default model, the lexemes of each sentence), no queue, no database; on ``backend``
    (default: the configured one), one process on every core."""
    settings = get_settings()
    if backend:
        settings = settings.model_copy(update={"backend": backend})
    embedder = load_embedder(settings, threads=len(os.sched_getaffinity(0)))
    chunks = [
        (d["title"], c)
        for d in docs
        for c in prepare_document(
            d["title"],
            d["text"],
            count_tokens=embedder.count_tokens,
            max_tokens=embedder.chunk_tokens(settings.chunk_tokens),
            overlap_tokens=settings.chunk_overlap_tokens,
            tokens_are_lexemes=embedder.takes_lexemes,
            vector_unit=embedder.vector_unit,
        )
    ]
    plain = None
    if embedder.takes_lexemes:
        units = [u for _, c in chunks for u in c.units]
        encode = lambda: embedder.encode_lexemes(units)  # noqa: E731
    else:
        inputs = [embedding_input(title, c.text) for title, c in chunks]
        encode = lambda: embedder.encode_documents(inputs)  # noqa: E731
        if settings.backend == "torch":
            # What a LangChain script's HuggingFaceEmbeddings runs: the model's own encode with
            # its defaults (batches of 32 after its own sort by length).
            model: Any = embedder.model
            plain = lambda: model.encode(inputs, show_progress_bar=False)  # noqa: E731
    encode()  # warm-up
    started = time.perf_counter()
    encode()
    seconds = time.perf_counter() - started
    out = {
        "chunks": len(chunks),
        "seconds": seconds,
        "docs_per_s": len(docs) / seconds,
        "chunks_per_s": len(chunks) / seconds,
    }
    if plain is not None:
        started = time.perf_counter()
        plain()
        out["plain_seconds"] = time.perf_counter() - started
    return out


async def count_chunks(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM chunks"))
    finally:
        await conn.close()


def end_to_end(docs: list[dict[str, str]], concurrency: int) -> dict[str, float]:
    settings = get_settings()
    with (
        tempfile.TemporaryDirectory(prefix="kensaku-bench-") as tmp,
        Stack(
            Path(tmp),
            flower=False,
            worker_concurrency=concurrency,
            extra_env=settings_env(settings),
        ) as stack,
        httpx.Client(base_url=stack.api_url, timeout=30) as api,
    ):
        body = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode()
        started = time.perf_counter()
        resp = api.post(
            "/v1/documents",
            params={"collection": "bench"},
            content=body,
            headers={"Content-Type": "application/x-ndjson"},
            timeout=600,
        )
        resp.raise_for_status()
        accepted_s = time.perf_counter() - started
        job = resp.json()["job_id"]
        # One client, five looks a second: a new client per look (its TLS context) at 20 a
        # second took a third of a core from the workers it measures.
        while True:
            status = api.get(f"/v1/jobs/{job}").json()
            if status["status"] in ("done", "partial", "failed"):
                break
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        n_chunks = asyncio.run(count_chunks(stack.database_url))
    if status["status"] != "done":
        raise RuntimeError(f"bench job ended {status['status']}: {status['errors']}")
    return {
        "seconds": seconds,
        "upload_seconds": accepted_s,
        "chunks": n_chunks,
        "docs_per_s": len(docs) / seconds,
        "chunks_per_s": n_chunks / seconds,
    }


def main(docs: int = 2000, concurrency: int = 2) -> int:
    corpus = generate_documents(docs)
    chars = sum(len(d["text"]) for d in corpus)
    settings = get_settings()
    print(
        f"bench ingest: {docs} documents, {chars / docs:.0f} characters each on average, "
        f"model {settings.model}, worker concurrency {concurrency}"
    )
    raw = raw_encode(corpus)
    # On an exported backend, torch's raw encode too: what a plain sentence-transformers
    # script (LangChain's, say) is bounded by on the same machine.
    reference = raw_encode(corpus, "torch") if settings.backend != "torch" else None
    e2e = end_to_end(corpus, concurrency)
    print(
        f"raw encode on {settings.backend} (model only, 1 process): {raw['chunks']} chunks in "
        f"{raw['seconds']:.2f} s = {raw['docs_per_s']:.1f} docs/s, "
        f"{raw['chunks_per_s']:.1f} chunks/s"
    )
    if reference:
        print(
            f"raw encode on torch: {reference['seconds']:.2f} s = "
            f"{reference['docs_per_s']:.1f} docs/s"
        )
    torch_raw = reference or raw
    if "plain_seconds" in torch_raw:
        print(
            "plain sentence-transformers encode() on torch (batches of 32, as a LangChain "
            f"script calls it): {torch_raw['plain_seconds']:.2f} s = "
            f"{len(corpus) / torch_raw['plain_seconds']:.1f} docs/s"
        )
    print(
        f"end to end (API→Redis→workers→Postgres): {e2e['chunks']} chunks in "
        f"{e2e['seconds']:.2f} s (upload {e2e['upload_seconds']:.2f} s) = "
        f"{e2e['docs_per_s']:.1f} docs/s, {e2e['chunks_per_s']:.1f} chunks/s"
    )
    print(f"ratio end-to-end / raw encode: {e2e['docs_per_s'] / raw['docs_per_s']:.2f}")
    if reference:
        ratio = e2e["docs_per_s"] / reference["docs_per_s"]
        print(f"ratio end-to-end / raw torch encode: {ratio:.2f}")
    if "plain_seconds" in torch_raw:
        ratio = torch_raw["plain_seconds"] / e2e["seconds"]
        print(f"ratio end-to-end / plain sentence-transformers encode: {ratio:.2f}")
    return 0
