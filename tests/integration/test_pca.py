"""A PCA index's basis on the real database (KENSAKU_VECTOR_PROJECTION=pca, shared/db/bases.py):
the writer that finds FIT_ROWS vectors in a partition fits it, every row then carries its
projection, the index build keeps that basis, and another N fits a new one and projects every
row again. Vectors near a planted subspace, written the way workers write them, into a model
table of the test's own."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from shared.config import Settings
from shared.db import bases
from shared.db.bases import FIT_ROWS, fit_partition, load_basis
from shared.db.embeddings import ModelTable, copy_vectors, ensure_model_table, ensure_partition
from shared.db.pool import create_pool
from shared.ingest.finalize import build_vector_index
from tests.helpers import db_fetch, wait_job
from tests.integration.test_ingest import upload

pytestmark = pytest.mark.integration

MODEL = "kensaku-test/pca-writer"
RACE_MODEL = "kensaku-test/pca-race"
GROWTH_MODEL = "kensaku-test/pca-growth"
DIM, RANK = 48, 8
COLLECTION = 2_000_000_001  # a partition of the test's table only: no collection row needed
BATCH = 1_000
SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "corpus.jsonl"


def _vectors(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors near a rank-RANK subspace, and an orthonormal basis of it (RANK × DIM)."""
    rng = np.random.default_rng(seed)
    span = np.linalg.qr(rng.standard_normal((DIM, RANK)))[0].T
    x = 0.5 + (rng.standard_normal((rows, RANK)) * np.linspace(4, 2, RANK)) @ span
    x += 0.02 * rng.standard_normal((rows, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), span


async def _register(pool: asyncpg.Pool, model: str) -> tuple[ModelTable, ModelTable]:
    """A model table of the test's own, and the same with a PCA index over RANK components."""
    base = await ensure_model_table(
        pool,
        model=model,
        dimension=DIM,
        backend="torch",
        vector_unit="chunk",
        query_prompt=None,
        document_prompt=None,
    )
    return base, dataclasses.replace(base, index_dimensions=RANK, projection="pca")


async def _unregister(pool: asyncpg.Pool, base: ModelTable) -> None:
    await pool.execute(f"DROP TABLE IF EXISTS {base.table}")
    await pool.execute("DELETE FROM partition_bases WHERE table_name = $1", base.table)
    await pool.execute("DELETE FROM embedding_models WHERE name = $1", base.model)


def test_a_writer_fits_the_basis_and_every_row_gets_its_projection(stack: Any) -> None:
    settings = Settings(database_url=stack.database_url, redis_url=stack.redis_url, hnsw_min_rows=1)
    asyncio.run(_check(settings))


async def _check(settings: Settings) -> None:
    pool = await create_pool(settings, min_size=1)
    base, table = await _register(pool, MODEL)
    try:
        vectors, span = _vectors(FIT_ROWS + 3 * BATCH, seed=5)
        for at in range(0, len(vectors), BATCH):
            await ensure_partition(pool, table, COLLECTION)  # as the embed and prep tasks do
            basis = await load_basis(pool, table, COLLECTION)
            # Fitted by the first write that finds FIT_ROWS vectors there, not before.
            assert (basis is not None) == (at >= FIT_ROWS), at
            async with pool.acquire() as conn, conn.transaction():
                rows = [(i, 0, vectors[i]) for i in range(at, min(at + BATCH, len(vectors)))]
                await copy_vectors(conn, table, COLLECTION, rows)
        basis = await load_basis(pool, table, COLLECTION)
        assert basis is not None and basis.components == RANK
        # The axes span the planted subspace.
        assert np.linalg.svd(span @ basis.axes, compute_uv=False).min() > 0.99
        await _check_projections(pool, table, basis.components)

        async with pool.acquire() as conn:
            assert await build_vector_index(conn, table, COLLECTION, settings)
        assert await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", table.index(COLLECTION))
        kept = await load_basis(pool, table, COLLECTION)
        assert kept is not None and kept.fitted_at == basis.fitted_at  # the build kept it

        # Another N: the build fits a basis of that size, and drops the index over the old one.
        smaller = dataclasses.replace(table, index_dimensions=RANK // 2)
        async with pool.acquire() as conn:
            assert await build_vector_index(conn, smaller, COLLECTION, settings)
        refit = await load_basis(pool, smaller, COLLECTION)
        assert refit is not None and refit.components == RANK // 2
        assert not await pool.fetchval(
            "SELECT to_regclass($1) IS NOT NULL", table.index(COLLECTION)
        )
        await _check_projections(pool, smaller, RANK // 2)
    finally:
        await _unregister(pool, base)
        await pool.close()


async def _check_projections(
    pool: asyncpg.Pool, table: ModelTable, components: int, rows: int = FIT_ROWS + 3 * BATCH
) -> None:
    """Every one of the partition's ``rows`` rows holds its vector's projection on its current
    basis."""
    basis = await load_basis(pool, table, COLLECTION)
    assert basis is not None
    found = await pool.fetch(
        f"SELECT embedding, reduced FROM {table.partition(COLLECTION)} ORDER BY chunk_id"
    )
    assert len(found) == rows
    assert all(r["reduced"] is not None for r in found)
    stored = np.stack([r["embedding"].to_numpy() for r in found]).astype(np.float32)
    reduced = np.stack([r["reduced"].to_numpy() for r in found]).astype(np.float32)
    assert reduced.shape == (rows, components)
    want = basis.project(stored).astype(np.float32)
    assert np.abs(reduced - want).max() < 1e-2


@pytest.mark.parametrize("case", ["automatic", "above-the-cap", "refit-fails"])
def test_a_basis_the_collection_outgrew_is_refitted(
    stack: Any, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """A collection that doubles with more of the same keeps its basis (the check is recorded);
    one that has not doubled since is not checked; one that doubles with rows of another kind
    gets a new basis, every row's projection on it, and its index again: at the job's end, or,
    above AUTO_REFIT_MAX_ROWS, only when asked (`kensaku model index --refit`). A refit that
    fails (here a trigger refuses the fill's updates) keeps the old basis and indexes again."""
    if case == "above-the-cap":
        monkeypatch.setattr(bases, "AUTO_REFIT_MAX_ROWS", 3 * (FIT_ROWS + BATCH))
    settings = Settings(database_url=stack.database_url, redis_url=stack.redis_url, hnsw_min_rows=1)
    asyncio.run(_growth(settings, case))


async def _growth(settings: Settings, case: str) -> None:
    pool = await create_pool(settings, min_size=1)
    base, table = await _register(pool, GROWTH_MODEL)
    partition = table.partition(COLLECTION)
    start = FIT_ROWS + BATCH
    same, _ = _vectors(2 * start, seed=11)
    other, _ = _vectors(2 * start, seed=12)  # another subspace
    written = 0

    async def grow(vectors: np.ndarray) -> None:
        """Write every one of ``vectors`` after the rows already there, as workers do."""
        nonlocal written
        for at in range(0, len(vectors), 2 * BATCH):
            await ensure_partition(pool, table, COLLECTION)
            batch = vectors[at : at + 2 * BATCH]
            async with pool.acquire() as conn, conn.transaction():
                rows = [(written + at + i, 0, v) for i, v in enumerate(batch)]
                await copy_vectors(conn, table, COLLECTION, rows)
        written += len(vectors)

    async def finalize(refit: bool = False) -> bool:
        # A job as large as these gets VACUUM (ANALYZE) first, which counts the partition.
        await pool.execute(f"ANALYZE {partition}")
        async with pool.acquire() as conn:
            return await build_vector_index(conn, table, COLLECTION, settings, refit=refit)

    async def index_oid() -> int | None:
        oid: int | None = await pool.fetchval(
            "SELECT to_regclass($1)::oid", table.index(COLLECTION)
        )
        return oid

    try:
        await grow(same[:start])
        assert await finalize()  # the first index, and its basis
        first = await load_basis(pool, table, COLLECTION)
        assert first is not None and first.checked_rows == start
        await grow(same[start:])  # doubled, with more of the same
        assert not await finalize()
        kept = await load_basis(pool, table, COLLECTION)
        assert kept is not None and kept.fitted_at == first.fitted_at
        assert kept.checked_rows == 2 * start  # the next check waits for twice this
        await grow(other[:start])  # of another kind, but not doubled yet: not checked
        assert not await finalize()
        unchecked = await load_basis(pool, table, COLLECTION)
        assert unchecked is not None and unchecked.fitted_at == first.fitted_at
        assert unchecked.checked_rows == 2 * start
        await grow(other[start:])  # doubled, and half of it is of another kind
        before = await index_oid()
        assert before is not None
        if case == "above-the-cap":  # too big for a job's end: logged and recorded; when asked
            assert not await finalize()
            stale = await load_basis(pool, table, COLLECTION)
            assert stale is not None and stale.fitted_at == first.fitted_at
            assert stale.checked_rows == 4 * start
            assert await finalize(refit=True)
        elif case == "refit-fails":
            await pool.execute(
                "CREATE OR REPLACE FUNCTION kensaku_test_no_updates() RETURNS trigger "
                "LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'no space left (test)'; END$$"
            )
            await pool.execute(
                f"CREATE TRIGGER no_updates BEFORE UPDATE ON {partition} "
                "FOR EACH ROW EXECUTE FUNCTION kensaku_test_no_updates()"
            )
            assert await finalize()  # indexed again, over the old projections
            assert await index_oid() not in (None, before)
            failed = await load_basis(pool, table, COLLECTION)
            assert failed is not None and failed.fitted_at == first.fitted_at
            assert failed.checked_rows == 4 * start  # not retried at every job's end
            await _check_projections(pool, table, RANK, rows=4 * start)
            assert not await finalize()
            return
        else:
            assert await finalize()
        refit = await load_basis(pool, table, COLLECTION)
        assert refit is not None and refit.fitted_at != first.fitted_at
        assert refit.checked_rows == 4 * start
        assert await index_oid() not in (None, before)  # built again over the new projections
        await _check_projections(pool, table, RANK, rows=4 * start)
        assert not await finalize()  # not grown since: nothing to do
    finally:
        await _unregister(pool, base)  # (the trigger goes with the table)
        await pool.execute("DROP FUNCTION IF EXISTS kensaku_test_no_updates()")
        await pool.close()


def test_two_fits_at_once_make_one_basis(stack: Any) -> None:
    """Two processes that find the same partition due (two writers, or two finalizers): the
    second waits for the first and takes its basis, instead of both updating the rows (which
    deadlocked while the fit's lock did not exclude a second fit)."""
    settings = Settings(database_url=stack.database_url, redis_url=stack.redis_url)
    asyncio.run(_race(settings))


async def _race(settings: Settings) -> None:
    pool = await create_pool(settings, min_size=2)
    base, table = await _register(pool, RACE_MODEL)
    try:
        vectors, _ = _vectors(2 * BATCH, seed=6)
        await ensure_partition(pool, table, COLLECTION)
        async with pool.acquire() as conn, conn.transaction():
            await copy_vectors(conn, table, COLLECTION, [(i, 0, v) for i, v in enumerate(vectors)])

        async def fit() -> Any:
            async with pool.acquire() as conn:
                return await fit_partition(conn, table, COLLECTION, RANK)

        first, second = await asyncio.gather(fit(), fit())
        assert first.fitted_at == second.fitted_at is not None
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM partition_bases WHERE table_name = $1", base.table
            )
            == 1
        )
        assert not await pool.fetchval(
            f"SELECT count(*) FROM {table.partition(COLLECTION)} WHERE reduced IS NULL"
        )
    finally:
        await _unregister(pool, base)
        await pool.close()


def test_model_index_builds_a_pca_index_for_a_loaded_collection(stack: Any, api: Any) -> None:
    """`kensaku model index` after KENSAKU_VECTOR_DIMENSIONS is set: a collection loaded before
    gets its basis and its index over the principal components without another upload."""
    name = "pca-model-index"
    docs = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    assert wait_job(api, upload(api, name, docs)["job_id"])["status"] == "done"
    env = stack.env() | {"KENSAKU_VECTOR_DIMENSIONS": "32", "KENSAKU_HNSW_MIN_ROWS": "1"}
    unknown = subprocess.run(
        [sys.executable, "-m", "shared.cli", "model", "index", "--collection", "no-such"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert unknown.returncode == 1 and "no vectors" in unknown.stderr, unknown.stderr
    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", "model", "index", "--collection", name],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = db_fetch(
        stack,
        "SELECT m.table_name, c.id, b.components FROM embedding_models m "
        "JOIN collections c ON c.name = $1 "
        "LEFT JOIN partition_bases b ON b.table_name = m.table_name AND b.collection_id = c.id "
        "WHERE m.active",
        name,
    )
    table, cid, components = rows[0]["table_name"], rows[0]["id"], rows[0]["components"]
    index = ModelTable("m", table, 300, index_dimensions=32, projection="pca").index(cid)
    try:
        assert components == 32
        assert f"built {index}" in done.stdout, done.stdout
        assert db_fetch(stack, "SELECT to_regclass($1) IS NOT NULL AS present", index)[0]["present"]
        # --refit checks the basis now; fitted on these same rows, it is kept.
        again = subprocess.run(
            [sys.executable, "-m", "shared.cli", "model", "index", "--refit", "--collection", name],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert again.returncode == 0, again.stderr
        assert "index present and its PCA basis kept" in again.stdout, again.stdout
    finally:  # nothing the stack's own writes would keep projecting on
        db_fetch(stack, f"DROP INDEX IF EXISTS {index}")
        db_fetch(
            stack,
            "DELETE FROM partition_bases WHERE table_name = $1 AND collection_id = $2",
            table,
            cid,
        )
