"""``kensaku bench index-sizes``: bytes per vector of each HNSW kind at several model dimensions.

The index's size per vector is its layout's, not its data's: pgvector 0.8's HNSW element is a
72-byte header (room for ten heap TIDs among it) plus the stored value, and each element has a
neighbour tuple of 4 + 6 × 2m bytes at layer 0 (196 at m 16), so a quantized value saves less
the smaller the model. Random unit vectors therefore measure it as well as real ones, and for
dimensions no packaged model has. Each kind is built with kensaku's own DDL
(``build_vector_index``), on an embedded PostgreSQL, one model table per dimension.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.vectors import _build
from shared.config import Settings, get_settings
from shared.db import graph
from shared.db.embeddings import ensure_model_table
from shared.db.migrate import migrate
from shared.db.pool import create_pool
from shared.stack.services import start_postgres

MODEL = "kensaku-bench/index-sizes-{dimension}"


async def measure_sizes(
    settings: Settings, dimensions: list[int], kinds: list[str], rows: int
) -> list[dict[str, Any]]:
    """One build per dimension and kind over ``rows`` random unit vectors: bytes per vector, and
    each kind's size against the float index (``hnsw``) of the same dimension."""
    out: list[dict[str, Any]] = []
    pool = await create_pool(settings, min_size=1, role="worker")
    try:
        for dimension in dimensions:
            v = np.random.default_rng(dimension).standard_normal((rows, dimension))
            v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
            base = await ensure_model_table(
                pool,
                model=MODEL.format(dimension=dimension),
                dimension=dimension,
                backend="torch",
                vector_unit="chunk",
                query_prompt=None,
                document_prompt=None,
            )
            per_vector: dict[str, float] = {}
            for kind in kinds:
                table = dataclasses.replace(base, index_kind=kind, index_dimensions=0)
                built = await _build(pool, settings, table, v)
                per_vector[kind] = built["index_mb"] * 2**20 / rows
            for kind in kinds:
                float_size = per_vector.get("hnsw")
                out.append(
                    {
                        "dimension": dimension,
                        "index": kind,
                        "bytes_per_vector": per_vector[kind],
                        "float_over_this": float_size / per_vector[kind] if float_size else None,
                    }
                )
    finally:
        await pool.close()
    return out


def main(dimensions: list[int], kinds: list[str], rows: int) -> int:
    base = get_settings()
    ef_construction = graph.ef_construction(rows, m=base.hnsw_m, setting=base.hnsw_ef_construction)
    print(
        f"{rows:,} random unit vectors per dimension, m {base.hnsw_m}, "
        f"ef_construction {ef_construction}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="kensaku-bench-") as tmp:
        pg = start_postgres(Path(tmp) / "postgres")
        try:
            asyncio.run(migrate(pg.url))
            settings = base.model_copy(update={"database_url": pg.url, "hnsw_min_rows": 0})
            results = asyncio.run(measure_sizes(settings, dimensions, kinds, rows))
        finally:
            pg.stop()
    print(f"  {'dims':>5} {'index':<13} {'bytes/vector':>12} {'hnsw / this':>11}")
    for r in results:
        ratio = "-" if r["float_over_this"] is None else f"{r['float_over_this']:.2f}×"
        print(f"  {r['dimension']:>5} {r['index']:<13} {r['bytes_per_vector']:>12,.0f} {ratio:>11}")
    return 0
