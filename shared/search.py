"""The query path: normalize, tokenize and embed the query with the same pipeline and model as
ingestion, then rank in PostgreSQL in one round trip (vector, lexical BM25, or fused hybrid).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

from shared import metrics
from shared.config import Settings
from shared.db.embeddings import ModelTable
from shared.db.queries import Q
from shared.embed.embedder import Embedder
from shared.errors import NotFoundError
from shared.text.pipeline import query_lexemes

Mode = Literal["hybrid", "vector", "lexical"]
MODES: tuple[Mode, ...] = ("hybrid", "vector", "lexical")
FilterValue = str | int | float | bool


@dataclass(frozen=True)
class SearchParams:
    query: str
    collection: str = "default"
    top_k: int = 10
    mode: Mode = "hybrid"
    filter: dict[str, FilterValue | list[FilterValue]] | None = None


def _compose(query: str, vector_param: str | None = None) -> str:
    """A search query with the shared fragments of search.sql put in, once at import."""
    sql = (
        query.replace("{vector_candidates}", Q.fragment_vector_candidates)
        .replace("{bm25_candidates}", Q.fragment_bm25_candidates)
        .replace("{best_chunk_per_document}", Q.fragment_best_chunk_per_document)
    )
    return sql.replace("{vec}", vector_param) if vector_param else sql


SEARCH_VECTOR = _compose(Q.search_vector, "$5")
SEARCH_LEXICAL = _compose(Q.search_lexical)
SEARCH_HYBRID = _compose(Q.search_hybrid, "$9")


def filter_groups(flt: dict[str, FilterValue | list[FilterValue]] | None) -> str:
    """The metadata filter as jsonb for the SQL: every key must match, a list means any-of."""
    groups = []
    for key, value in (flt or {}).items():
        values = value if isinstance(value, list) else [value]
        groups.append([{key: v} for v in values])
    return json.dumps(groups, ensure_ascii=False)


async def search(
    pool: asyncpg.Pool,
    embedder: Embedder,
    table: ModelTable,
    settings: Settings,
    params: SearchParams,
) -> dict[str, Any]:
    started = time.perf_counter()
    found = await pool.fetchrow(Q.collection_for_search, params.collection)
    if found is None:
        raise NotFoundError(f"collection {params.collection!r} not found")
    collection_id = found["id"]
    exact = found["chunk_count"] < settings.exact_search_below
    flt = filter_groups(params.filter)
    # Enough chunk candidates that top_k distinct documents survive the best-chunk grouping.
    candidates = max(settings.search_candidates, params.top_k * 4)
    lexemes = sorted(set(query_lexemes(params.query)))
    common = (collection_id, flt, params.top_k, candidates)

    lexical_args = (
        lexemes,
        settings.bm25_k1,
        settings.bm25_b,
        settings.lexical_postings_per_term,
    )
    if params.mode == "lexical":
        rows = await pool.fetch(SEARCH_LEXICAL, *common, *lexical_args) if lexemes else []
    else:
        # Off the event loop: the endpoint keeps serving other requests meanwhile.
        vector = await asyncio.to_thread(embedder.encode_query, params.query)
        if params.mode == "vector":
            rows = await pool.fetch(table.sql(SEARCH_VECTOR, exact=exact), *common, vector)
        else:
            rows = await pool.fetch(
                table.sql(SEARCH_HYBRID, exact=exact),
                *common,
                *lexical_args,
                vector,
                settings.hybrid_lexical_weight,
            )
    took = time.perf_counter() - started
    metrics.observe_search(params.mode, took)
    return {
        "hits": [
            {
                "id": r["external_id"],
                "title": r["title"],
                "text": r["text"],
                "chunk": r["ordinal"],
                "score": float(r["score"]),
                "metadata": json.loads(r["metadata"]),
            }
            for r in rows
        ],
        "took_ms": round(took * 1000, 3),
        "mode": params.mode,
    }
