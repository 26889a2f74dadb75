"""The embedding-model registry: one table per model, because a pgvector column has one fixed
dimension. Starting with a model whose dimension disagrees with its table is a clear ConfigError,
not a failure deep inside a COPY.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

import asyncpg
import numpy as np

from shared.db.queries import Q
from shared.errors import ConfigError

TABLE_NAME = re.compile(r"^emb_[a-z0-9_]{1,59}$")
# pgvector indexes `vector` up to 2,000 dimensions and `halfvec` up to 4,000.
HALFVEC_ABOVE = 2000
_REGISTRY_LOCK = 0x6B656E73616B76


@dataclass(frozen=True)
class ModelTable:
    model: str
    table: str
    dimension: int

    @property
    def vector_type(self) -> str:
        kind = "halfvec" if self.dimension > HALFVEC_ABOVE else "vector"
        return f"{kind}({self.dimension})"

    def sql(self, query: str, *, exact: bool = False) -> str:
        """A named query with this model's table filled in (validated, never user input).
        ``exact`` orders by a distance expression the HNSW index cannot serve: a full scan."""
        if not TABLE_NAME.match(self.table):
            raise ConfigError(f"invalid embedding table name {self.table!r}")
        kind = "halfvec" if self.dimension > HALFVEC_ABOVE else "vector"
        return query.format(
            table=self.table,
            vector_type=self.vector_type,
            opclass=f"{kind}_cosine_ops",
            exact_scan=" + 0" if exact else "",
        )


def table_name_for(model: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")[:40] or "model"
    digest = hashlib.sha1(model.encode("utf-8")).hexdigest()[:8]
    return f"emb_{slug}_{digest}"


async def ensure_model_table(
    pool: asyncpg.Pool,
    *,
    model: str,
    dimension: int,
    backend: str,
    query_prompt: str | None,
    document_prompt: str | None,
    activate: bool = True,
) -> ModelTable:
    """Register the model (once), create its table and HNSW index, check the dimension."""
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
                query_prompt,
                document_prompt,
            )
            row = await conn.fetchrow(Q.model_row, model)
        mt = ModelTable(model, row["table_name"], row["dimension"])
        if mt.dimension != dimension:
            raise ConfigError(
                f"model {model!r} produces {dimension}-dimensional embeddings but its registry "
                f"row and table {mt.table} were created for {mt.dimension}; use another model "
                "name or drop that table and its registry row"
            )
        await conn.execute(mt.sql(Q.create_embedding_table))
        await conn.execute(mt.sql(Q.create_embedding_index))
        actual = await conn.fetchval(Q.table_column_type, mt.table)
        if actual != mt.vector_type:
            raise ConfigError(
                f"table {mt.table} has column type {actual}, expected {mt.vector_type} "
                f"for model {model!r}"
            )
        if activate:
            await conn.execute(Q.activate_model, model)
        return mt


class EmbedderInfo(Protocol):
    name: str
    dimension: int
    backend: str
    query_prompt: str | None
    document_prompt: str | None


async def register_embedder(pool: asyncpg.Pool, embedder: EmbedderInfo) -> ModelTable:
    """``ensure_model_table`` for a loaded model, which is then the active one."""
    return await ensure_model_table(
        pool,
        model=embedder.name,
        dimension=embedder.dimension,
        backend=embedder.backend,
        query_prompt=embedder.query_prompt,
        document_prompt=embedder.document_prompt,
    )


async def replace_embeddings(
    conn: asyncpg.Connection, mt: ModelTable, chunk_ids: list[int], vectors: np.ndarray
) -> None:
    """Idempotent write: delete then binary COPY, inside the caller's transaction."""
    await conn.execute(mt.sql(Q.delete_embeddings), chunk_ids)
    await conn.copy_records_to_table(
        mt.table,
        records=zip(chunk_ids, vectors, strict=True),
        columns=["chunk_id", "embedding"],
    )
