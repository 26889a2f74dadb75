"""The query path: normalize, analyze and embed the query with the same pipeline and model as
ingestion, then rank in PostgreSQL in one round trip (vector, lexical BM25, or hybrid); the SQL
and its measured choices are in shared/db/sql/search.sql.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import time
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
import numpy as np

from shared import metrics
from shared.config import Settings
from shared.db import graph
from shared.db.bases import Basis, current_basis
from shared.db.embeddings import ModelTable
from shared.db.queries import Q
from shared.embed.embedder import Embedder
from shared.errors import NotFoundError, RetryableError
from shared.text.pipeline import QueryTerms, query_terms
from shared.text.terms import BIGRAM, WORD, bigram_idf, term_dimension

Mode = Literal["hybrid", "vector", "lexical"]
FilterValue = str | int | float | bool


@dataclass(frozen=True)
class SearchParams:
    query: str
    collection: str = "default"
    top_k: int = 10
    mode: Mode = "hybrid"
    filter: dict[str, FilterValue | list[FilterValue]] | None = None


def _compose(
    query: str, *, filtered: bool, vec: str, red: str, table: ModelTable, rerank: int
) -> str:
    """A search query with the shared fragments of search.sql put in, for ``table``'s kind of
    index (the partition and the dimension are ModelTable.sql's to fill)."""
    vector = Q.fragment_vector_rerank if table.reranks else Q.fragment_vector
    sql = (
        query.replace("{lexical}", Q.fragment_lexical)
        .replace("{vector}", vector.replace("{vector_order}", table.vector_order))
        .replace("{best_per_document}", Q.fragment_best_per_document)
        .replace("{rerank}", str(int(rerank)))
    )
    if filtered:
        sql = sql.replace("{posting_filter}", Q.fragment_posting_filter)
        sql = sql.replace("{vector_filter}", Q.fragment_vector_filter)
    else:
        # A constant test keeps $4 typed and is evaluated once; the joins disappear.
        sql = sql.replace("{posting_filter}", "AND $4::jsonb IS NOT NULL")
        sql = sql.replace(
            "{vector_filter}", "WHERE $1::integer IS NOT NULL AND $4::jsonb IS NOT NULL"
        )
    return sql.replace("{vec}", vec).replace("{red}", red)


# Each mode's query and its parameters for the query vector and, for a PCA index, the vector's
# projection (the last parameter, passed only when the partition has a basis).
_SOURCES: dict[Mode, tuple[str, str, str]] = {
    "lexical": (Q.search_lexical, "", ""),
    "vector": (Q.search_vector, "$5", "$6"),
    "hybrid": (Q.search_hybrid, "$11", "$13"),
}


@functools.cache
def search_sql(mode: Mode, filtered: bool, table: ModelTable, rerank: int) -> str:
    """The query of ``mode`` for ``table`` (its partition left as a placeholder), composed once."""
    query, vec, red = _SOURCES[mode]
    return _compose(query, filtered=filtered, vec=vec, red=red, table=table, rerank=rerank)


def _storable(value: object) -> bool:
    """A string metadata could hold (uploads refuse NUL and lone surrogates anywhere)."""
    if not isinstance(value, str):
        return True
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def matchable(flt: dict[str, FilterValue | list[FilterValue]] | None) -> bool:
    """False when some key, or every value of some key, is a string no document can hold: no
    document passes such a filter, and PostgreSQL could not even read it."""
    for key, value in (flt or {}).items():
        values = value if isinstance(value, list) else [value]
        if not _storable(key) or not any(_storable(v) for v in values):
            return False
    return True


def filter_groups(flt: dict[str, FilterValue | list[FilterValue]] | None) -> str:
    """The metadata filter as jsonb for the SQL: every key must match, a list means any-of."""
    groups = []
    for key, value in (flt or {}).items():
        values = value if isinstance(value, list) else [value]
        groups.append([{key: v} for v in values if _storable(v)])
    return json.dumps(groups, ensure_ascii=False)


@dataclass(frozen=True)
class CollectionInfo:
    id: int
    has_vectors: bool
    basis: Basis | None = None  # for a PCA index (shared/db/bases.py), once it is fitted
    estimated_rows: float = 0  # the planner's count of the partition's vectors (graph.ef_search)


class CollectionCache:
    """Collection name → id, whether its vector partition exists and its basis, kept for a few
    seconds so a search is one round trip. A collection's id never changes while it exists; a
    partition appears with the collection's first vectors. A basis, though, is checked at every
    search (one primary-key read of its stamp): a refit of the same size (bases.refit_due)
    changes the axes and their signs, and a query projected on the old ones would find next to
    nothing among rows projected on the new."""

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self._entries: dict[tuple[str, str], tuple[float, CollectionInfo]] = {}

    async def get(self, pool: asyncpg.Pool, table: ModelTable, name: str) -> CollectionInfo:
        key = (table.table, name)
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            info = hit[1]
            if info.basis is None:
                return info
            basis = await current_basis(pool, table, info.id, info.basis)
            if basis is info.basis:
                return info
            info = dataclasses.replace(info, basis=basis)
            self._entries[key] = (hit[0], info)
            return info
        cid = await pool.fetchval(Q.collection_id, name)
        if cid is None:
            self._entries.pop(key, None)
            raise NotFoundError(f"collection {name!r} not found")
        state = await pool.fetchrow(Q.partition_state, table.partition(cid), table.index(cid))
        present = bool(state and state["present"])
        basis = None
        if present and table.pca:
            known = hit[1].basis if hit is not None else None
            basis = await current_basis(pool, table, int(cid), known)
        rows = float(state["estimated_rows"] or 0) if present and state else 0.0
        info = CollectionInfo(int(cid), present, basis, rows)
        # Without vectors yet, look again soon: the first ones may be a moment away.
        self._entries[key] = (now + (self.ttl if info.has_vectors else 1.0), info)
        if len(self._entries) > 10_000:
            self._entries.clear()
        return info


@dataclass(frozen=True)
class LexicalQuery:
    words: list[str]
    word_dims: list[int]
    bigram_dims: list[int]
    bigram_weights: list[float]


def lexical_query(terms: QueryTerms, settings: Settings) -> LexicalQuery:
    """The query's words (the SQL keeps the rarest ``max_query_terms`` the collection has) and
    bigrams (the ``max_query_terms`` with the highest reference idf), deduplicated."""
    words = list(dict.fromkeys(terms.words))
    grams = sorted(set(terms.grams), key=lambda g: (-bigram_idf(g), g))
    grams = grams[: settings.max_query_terms]
    return LexicalQuery(
        words,
        [term_dimension(WORD, w) for w in words],
        [term_dimension(BIGRAM, g) for g in grams],
        [settings.bigram_weight * bigram_idf(g) for g in grams],
    )


async def search(
    pool: asyncpg.Pool,
    embedder: Embedder,
    table: ModelTable,
    settings: Settings,
    params: SearchParams,
    collections: CollectionCache,
) -> dict[str, Any]:
    started = time.perf_counter()
    info = await collections.get(pool, table, params.collection)
    flt = filter_groups(params.filter)
    filtered = flt != "[]"
    # Enough chunk candidates that top_k distinct documents survive the best-chunk grouping.
    candidates = max(settings.search_candidates, params.top_k * 4)
    common = (info.id, params.top_k, candidates, flt)
    rerank = settings.binary_rerank_factor
    mode = params.mode
    if mode == "hybrid" and not info.has_vectors:
        mode = "lexical"  # nothing embedded yet: lexical ranking is all there is
    rows: list[asyncpg.Record] = []
    timeout = settings.search_timeout_ms / 1000
    terms = query_terms(params.query)
    try:
        if not matchable(params.filter):
            pass  # nothing can pass the filter
        elif mode == "lexical":
            q = lexical_query(terms, settings)
            if q.words:
                rows = await pool.fetch(
                    search_sql("lexical", filtered, table, rerank),
                    *common,
                    *_lexical_args(q, settings),
                    timeout=timeout,
                )
        elif info.has_vectors:
            vector = await _encode_query(embedder, params.query, terms)
            ranked, projected = _projection(table, info.basis, vector)
            sql = ranked.sql(search_sql(mode, filtered, ranked, rerank), info.id)
            if mode == "vector":
                args: tuple[Any, ...] = (*common, vector, *projected)
            else:
                q = lexical_query(terms, settings)
                args = (
                    *common,
                    *_lexical_args(q, settings),
                    vector,
                    settings.hybrid_vector_weight,
                    *projected,
                )
            if local := search_settings(table, info, settings):
                rows = await _fetch_with(pool, local, sql, args, timeout)
            else:
                rows = await pool.fetch(sql, *args, timeout=timeout)
            if filtered and len(rows) < params.top_k:
                # An index scan under a selective filter can stop short (pgvector ends an
                # iterative scan at hnsw.max_scan_tuples), in hybrid too when the lexical
                # channel does not make up for it: the exact scan settles whether fewer
                # documents match. Exact by the full vectors, whatever the index's first pass
                # (N dimensions, sign bits), so without the projection's parameter.
                exact = table.exact()
                exact_sql = exact.sql(search_sql(mode, filtered, exact, rerank), info.id)
                rows = await _fetch_with(
                    pool, _EXACT, exact_sql, args[: len(args) - len(projected)], timeout
                )
    except (TimeoutError, asyncpg.QueryCanceledError) as exc:
        raise RetryableError(
            f"search took longer than {settings.search_timeout_ms} ms (search_timeout_ms)"
        ) from exc
    took = time.perf_counter() - started
    metrics.observe_search(params.mode, took)
    return {
        "hits": [
            {
                "id": r["external_id"],
                "title": r["title"],
                "text": r["text"],
                "chunk": r["ordinal"],
                "page": r["page"],
                "score": float(r["score"]),
                "metadata": json.loads(r["metadata"]),
            }
            for r in rows
        ],
        "took_ms": round(took * 1000, 3),
        "mode": params.mode,
    }


def search_settings(table: ModelTable, info: CollectionInfo, settings: Settings) -> dict[str, str]:
    """Server settings a vector search of this partition needs beyond the pool's (none: the
    search stays one round trip): a large partition's graph needs a wider search."""
    ef = graph.ef_search(info.estimated_rows, settings.hnsw_ef_search)
    if table.index_kind.startswith("hnsw") and ef != graph.ef_search(0, settings.hnsw_ef_search):
        return {"hnsw.ef_search": str(ef)}
    return {}


_EXACT = {"enable_indexscan": "off"}  # exact over the collection's partition


async def _fetch_with(
    db: asyncpg.Pool | asyncpg.Connection,
    local: dict[str, str],
    sql: str,
    args: tuple[Any, ...],
    limit_s: float,
) -> list[asyncpg.Record]:
    """``sql`` run with the server settings ``local`` for its transaction only."""

    async def run(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        async with conn.transaction():
            for name, value in local.items():
                await conn.execute(Q.set_local, name, value)
            return list(await conn.fetch(sql, *args, timeout=limit_s))

    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            return await run(conn)
    return await run(db)


def _projection(
    table: ModelTable, basis: Basis | None, vector: Any
) -> tuple[ModelTable, tuple[np.ndarray, ...]]:
    """How the partition is ranked, and the extra parameter that takes: a PCA index is read
    with the query projected on the partition's basis; before the basis of the index's size
    is fitted, the partition is ranked as with all dimensions indexed."""
    if not table.pca:
        return table, ()
    if basis is None or basis.components != table.index_dimensions:
        return table.unprojected(), ()
    return table, (basis.project(np.asarray(vector, dtype=np.float32)),)


async def _encode_query(embedder: Embedder, text: str, terms: QueryTerms) -> Any:
    if embedder.takes_lexemes:
        # The query's lexemes are at hand (a table lookup and a sum, ~0.1 ms): no second Sudachi
        # pass, no thread hop; the vector equals encode_query's (tests/unit/test_lexeme_path.py).
        return embedder.encode_query_lexemes(terms.lexemes)
    # A transformer runs off the event loop: the endpoint keeps serving other requests.
    return await asyncio.to_thread(embedder.encode_query, text)


def _lexical_args(q: LexicalQuery, settings: Settings) -> tuple[Any, ...]:
    return (
        q.words,
        q.word_dims,
        q.bigram_dims,
        q.bigram_weights,
        settings.lexical_postings_per_term,
        settings.max_query_terms,
    )
