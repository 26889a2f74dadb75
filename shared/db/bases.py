"""Principal-component bases of a model's partitions (KENSAKU_VECTOR_PROJECTION=pca).

An index over N of a vector's dimensions is a coarse first pass whose candidates are re-ranked by
the full stored vectors. Which N matters: measured on 100,000 vectors of the default model
(bench/RESULTS.md), an exact first pass over the first 150 stored dimensions kept 0.957 of the
true top 10 after re-ranking, over the first 150 principal components of the collection's own
vectors 0.986; fitted on another text sample instead, 0.973. So each partition gets a basis of
its own, fitted on its own vectors, and the projection is kept in a column of its own
(``reduced``): the stored vectors stay as the model made them, so exact cosines, binary codes
and other indexes are untouched, and a search that does not know the basis yet ranks as with
all dimensions indexed, which is slower but still right.

When: by the writer that finds FIT_ROWS vectors in a partition without a basis, so a big load
projects all but its first FIT_ROWS rows as it writes them and only those are updated (a fill
of a whole partition leaves a dead version of every row behind); or by the partition's first
index build if that comes sooner, or if the basis is missing or of another size then
(KENSAKU_VECTOR_DIMENSIONS changed, or PCA turned on for a collection already loaded).

Numbers: the basis is the mean and the N leading eigenvectors of the sample's covariance
(numpy's ``eigh`` on a dimension × dimension matrix: 18 ms at 300 dimensions, 13 s at 4,000 on
this project's 2-core machines); a projection is ``(v - mean) @ axes``.

Refits: a basis fitted on a collection's first documents can miss what later ones are about.
Once a partition has doubled since its basis was fitted or last checked, the job's end (or
`kensaku model index`) checks it on a fresh sample: a basis fitted on half of the sample, and the
stored basis, each keep some share of the other half's variance (``drift``). Below REFIT_BELOW of
the fresh basis's share, the partition is refitted: its projections and its index are made
again, searches scanning the partition without an index meanwhile. On ja_dev's sentence vectors
in corpus order (bench/RESULTS.md), a basis of 64 components fitted on the first 5,000 kept 0.89
of a fresh one's share and gave recall@10 0.81 where a uniform sample gave 0.85; uniform samples
of the same rows score 1.01-1.02 (the fresh basis has seen half as many rows). Automatic refits
stop at AUTO_REFIT_MAX_ROWS, above which a refit's index build takes minutes: a bigger partition
that drifted is logged, and refitted by `kensaku model index --refit`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg
import numpy as np

from shared.db.queries import Q

if TYPE_CHECKING:  # embeddings.py writes through this module
    from shared.db.embeddings import ModelTable

__all__ = [
    "AUTO_REFIT_MAX_ROWS",
    "FIT_ROWS",
    "REFIT_BELOW",
    "Basis",
    "basis_for_write",
    "current_basis",
    "drift",
    "fit_basis",
    "fit_partition",
    "fit_when_due",
    "load_basis",
    "refit_due",
]

log = logging.getLogger(__name__)

# The partition size at which a writer fits the basis, and the most rows it is fitted on: on
# 100,000 vectors of the default model a basis fitted on 2,000 of them did as well as one on
# 20,000 (recall 0.986 against 0.985, bench/RESULTS.md). Small, because the rows written before
# the fit are updated, and each leaves a dead version behind.
FIT_ROWS = 5_000
# A writer fits only a partition smaller than this (counting it costs a scan of at most as many
# rows, and the fit updates them all); a bigger one without a basis waits for its index build.
_WRITER_FIT_MAX = 10 * FIT_ROWS

# Rows read, projected and written back per round while a partition's projections are filled.
_FILL_BATCH = 20_000

# Refits (see the module's docstring): a basis is checked again once its partition has grown
# REFIT_GROWTH-fold, and refitted when it keeps less than REFIT_BELOW of a fresh basis's share of
# the variance; 0.97 lies between drifted bases (0.89-0.96 at 64-150 components on ja_dev) and
# bases of the same rows (1.01-1.02). A refit rewrites every row's projection and rebuilds the
# index (31 s for 100,000 vectors with two build workers), so it is automatic only up to
# AUTO_REFIT_MAX_ROWS rows.
REFIT_GROWTH = 2
REFIT_BELOW = 0.97
AUTO_REFIT_MAX_ROWS = 200_000


@dataclass(frozen=True)
class Basis:
    mean: np.ndarray  # float32, (dimension,)
    axes: np.ndarray  # float32, (dimension, components), the leading principal axes first
    fitted_at: datetime | None = None
    checked_rows: int = 0  # the partition's rows at its fit or last check (REFIT_GROWTH)

    @property
    def components(self) -> int:
        return int(self.axes.shape[1])

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """The projections of one vector or a matrix of row vectors, as float16 (halfvec)."""
        v = np.asarray(vectors, dtype=np.float32)
        out: np.ndarray = ((v - self.mean) @ self.axes).astype(np.float16)
        return out

    def kept_variance(self, rows: np.ndarray) -> float:
        """The share of ``rows``' variance about this basis's mean that its axes keep."""
        centered = np.asarray(rows, dtype=np.float64) - self.mean
        total = float((centered**2).sum())
        return float(((centered @ self.axes) ** 2).sum()) / total if total > 0 else 1.0


def fit_basis(sample: np.ndarray, components: int) -> Basis:
    """The mean and the ``components`` leading principal axes of ``sample``'s rows."""
    x = np.asarray(sample, dtype=np.float64)
    if x.ndim != 2 or not 0 < components <= x.shape[1]:
        raise ValueError(f"cannot fit {components} components to a sample of shape {x.shape}")
    mean = x.mean(axis=0)
    centered = x - mean
    cov = centered.T @ centered / max(len(x) - 1, 1)
    values, vectors = np.linalg.eigh(cov)  # ascending
    order = np.argsort(values)[::-1][:components]
    # eigh's signs are arbitrary, and need not be fixed: rows and queries share the basis, so a
    # flipped axis flips both and leaves every cosine and Hamming distance as it is.
    axes = vectors[:, order]
    return Basis(mean.astype(np.float32), axes.astype(np.float32))


def drift(basis: Basis, sample: np.ndarray) -> float:
    """How well ``basis`` still fits rows like ``sample``'s: the share of the sample's second half's
    variance it keeps, over the share a basis fitted on the first half keeps (held-out rows, so
    that the fresh basis does not win by having seen them). About 1 or more: still fits."""
    half = len(sample) // 2
    fresh = fit_basis(sample[:half], basis.components)
    held = sample[half:]
    return basis.kept_variance(held) / max(fresh.kept_variance(held), 1e-12)


def _decode(row: asyncpg.Record, dimension: int) -> Basis:
    n = int(row["components"])
    mean = np.frombuffer(row["mean"], dtype=np.float32)
    axes = np.frombuffer(row["axes"], dtype=np.float32).reshape(dimension, n)
    return Basis(mean, axes, row["fitted_at"], int(row["checked_rows"]))


async def load_basis(
    db: asyncpg.Pool | asyncpg.Connection, table: ModelTable, collection_id: int
) -> Basis | None:
    """The partition's basis, None if it has none yet."""
    row = await db.fetchrow(
        Q.partition_basis, table.table, collection_id, table.partition(collection_id)
    )
    return None if row is None else _decode(row, table.dimension)


async def current_basis(
    db: asyncpg.Pool | asyncpg.Connection,
    table: ModelTable,
    collection_id: int,
    cached: Basis | None,
) -> Basis | None:
    """The partition's basis, reusing ``cached`` when it is still the one recorded: one
    primary-key read of its stamp instead of the whole matrix (dimension × N floats)."""
    stamp = await db.fetchval(
        Q.partition_basis_stamp, table.table, collection_id, table.partition(collection_id)
    )
    if stamp is None:
        return None
    if cached is not None and cached.fitted_at == stamp:
        return cached
    return await load_basis(db, table, collection_id)


# Writers' cache: (table, collection) → the basis last written with. A refit (another N)
# changes the stamp, which every write reads, so a stale basis is never used to write.
_written: dict[tuple[str, int], Basis] = {}


async def basis_for_write(
    conn: asyncpg.Connection, table: ModelTable, collection_id: int
) -> Basis | None:
    """Inside the writer's transaction, before it writes vectors to the partition: locks the
    partition against a concurrent fit, then returns the basis the rows must be projected on.
    Every write pays the lock and one primary-key read, with PCA configured or not: a basis
    fitted under another setting still has to be kept up. The read sees a fit committed while
    the lock was awaited because transactions here are READ COMMITTED (asyncpg's default)."""
    await conn.execute(table.sql(Q.lock_partition_for_write, collection_id))
    key = (table.table, collection_id)
    basis = await current_basis(conn, table, collection_id, _written.get(key))
    if basis is None:
        _written.pop(key, None)
    else:
        if len(_written) > 1_000:
            _written.clear()
        _written[key] = basis
    return basis


async def fit_when_due(pool: asyncpg.Pool, table: ModelTable, collection_id: int) -> None:
    """Before a write of vectors to the partition (outside its transaction): fit the basis of a
    PCA index once the partition holds FIT_ROWS vectors. A partition without a basis that is
    already ten times as big, or has a vector index, is left to its next index build, which fits it
    anyway: a writer's task should not rewrite a whole collection."""
    if not table.pca:
        return
    key = (table.table, collection_id)
    known = _written.get(key)
    if known is not None and known.components == table.index_dimensions:
        return
    rows = await pool.fetchval(table.sql(Q.count_partition_upto, collection_id), _WRITER_FIT_MAX)
    if not FIT_ROWS <= rows < _WRITER_FIT_MAX:
        return
    basis = await load_basis(pool, table, collection_id)
    if basis is not None and basis.components == table.index_dimensions:
        return
    # An index over the rows would take the fill's updates one by one: the build does it.
    if await pool.fetch(Q.partition_indexes, table.partition(collection_id)):
        return
    async with pool.acquire() as conn:
        await fit_partition(conn, table, collection_id, table.index_dimensions)


async def refit_due(
    conn: asyncpg.Connection,
    table: ModelTable,
    collection_id: int,
    basis: Basis,
    rows: int,
    *,
    forced: bool = False,
) -> bool:
    """Whether the partition, of ``rows`` vectors now, needs a new basis of the same size: it has
    grown REFIT_GROWTH-fold since its basis was fitted or last checked, and the basis has drifted
    (``drift`` below REFIT_BELOW on a fresh sample). A check that keeps the basis is recorded, so
    the next waits for the partition to double again. ``forced`` (`kensaku model index --refit`):
    check now, and refit a drifted basis whatever the partition's size."""
    if not forced and rows < REFIT_GROWTH * max(basis.checked_rows, 1):
        return False
    partition = table.partition(collection_id)
    sample = await conn.fetch(table.sql(Q.sample_partition, collection_id), FIT_ROWS)
    if len(sample) < 4 * basis.components:  # each half of the sample: at least 2N rows
        return False
    score = drift(basis, np.stack([r["embedding"].to_numpy() for r in sample]))
    due = score < REFIT_BELOW and (forced or rows <= AUTO_REFIT_MAX_ROWS)
    if not due:
        await conn.execute(Q.record_basis_check, table.table, collection_id, basis.fitted_at, rows)
    if score >= REFIT_BELOW:
        log.info("the basis of %s still fits its %d rows (drift %.3f)", partition, rows, score)
    elif due:
        log.info("the basis of %s has drifted at %d rows (%.3f): refitting", partition, rows, score)
    else:
        log.warning(
            "the basis of %s has drifted (%.3f < %.2f), but %d rows are more than a job's end "
            "refits (%d): `kensaku model index --refit` refits it (searches then scan it "
            "unindexed until its index is built again)",
            partition,
            score,
            REFIT_BELOW,
            rows,
            AUTO_REFIT_MAX_ROWS,
        )
    return due


async def fit_partition(
    conn: asyncpg.Connection,
    table: ModelTable,
    collection_id: int,
    components: int,
    *,
    replacing: datetime | None = None,
) -> Basis:
    """Fit the partition's basis on a sample of its vectors and fill in every row's projection,
    in one transaction during which writes to the partition wait. If the partition has a basis
    of this size already, that one, unless it is the one ``replacing`` names (a refit; a basis
    another process fitted meanwhile is kept). The caller has dropped any index over an earlier
    basis's projections (they change here)."""
    started = time.perf_counter()
    partition = table.partition(collection_id)
    async with conn.transaction():
        await conn.execute(table.sql(Q.lock_partition_for_fit, collection_id))
        done = await load_basis(conn, table, collection_id)
        if done is not None and done.components == components and done.fitted_at != replacing:
            return done
        sample = await conn.fetch(table.sql(Q.sample_partition, collection_id), FIT_ROWS)
        if not sample:
            raise ValueError(f"{partition} has no vectors to fit a basis on")
        basis = fit_basis(np.stack([r["embedding"].to_numpy() for r in sample]), components)
        counted = await conn.fetchval(table.sql(Q.count_partition, collection_id))
        stamp = await conn.fetchval(
            Q.save_partition_basis,
            table.table,
            collection_id,
            partition,
            components,
            basis.mean.tobytes(),
            basis.axes.tobytes(),
            len(sample),
            counted,
        )
        basis = dataclasses.replace(basis, fitted_at=stamp, checked_rows=counted)
        await conn.execute(Q.create_projection_staging)
        filled = 0
        cursor = await conn.cursor(table.sql(Q.read_partition_vectors, collection_id))
        while rows := await cursor.fetch(_FILL_BATCH):
            projected = basis.project(np.stack([r["embedding"].to_numpy() for r in rows]))
            await conn.copy_records_to_table(
                "projection_staging",
                records=[
                    (r["chunk_id"], r["unit"], p) for r, p in zip(rows, projected, strict=True)
                ],
            )
            await conn.execute(table.sql(Q.fill_projections, collection_id))
            await conn.execute(Q.truncate_projection_staging)
            filled += len(rows)
    log.info(
        "fitted %d principal components of %s on %d of its vectors and projected all %d in %.1f s",
        components,
        partition,
        len(sample),
        filled,
        time.perf_counter() - started,
    )
    return basis
