"""The end of a job: make what it loaded fast to search at once, then mark it finished.

A job reports ``done`` only after this ran, so "done" means "searchable at full speed":

- ``VACUUM (ANALYZE)`` of the tables a job wrote, when the job is large for its collection: the
  planner gets row counts for the new rows, and the visibility map lets the postings index be
  read without visiting the table. Right after a bulk load both are missing until autovacuum
  comes by; the landed system answered the same queries 4× slower then (40 ms hybrid p50 at
  once, 9.2 ms 90 s later, on 11,144 passages). VACUUM skips pages that are already all-visible,
  so its cost follows what the job added.
- The HNSW index of the collection's vector partition, built in one pass once the partition holds
  ``hnsw_min_rows`` vectors: building at the end is far cheaper than inserting into a graph row
  by row during the load (bench/RESULTS.md), and until then the partition is scanned exactly.
  Once the index exists, later loads insert into it.
- After the job is marked done, that graph is built again, beside the old one, when the
  partition has grown past the size its candidate list was chosen for (``rebuild_graph``,
  shared/db/graph.py): automatically up to AUTO_REBUILD_MAX_ROWS vectors.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from shared.config import Settings
from shared.db import graph
from shared.db.bases import REFIT_GROWTH, Basis, fit_partition, load_basis, refit_due
from shared.db.embeddings import ModelTable
from shared.db.queries import Q

log = logging.getLogger(__name__)

# Jobs smaller than this share of their collection leave VACUUM to autovacuum.
VACUUM_SHARE = 0.1
_BUILD_LOCK = 0x6B656E73
_JOB_LOCK = 0x6B656E6A
# Client-side limit for VACUUM and index builds (the pool's default is for ordinary tasks).
_LONG = 24 * 3600.0
# A job's end builds a graph again beside the old one (rebuild_graph) up to this many vectors:
# 260 s at 300,000 on two cores, minutes of the database's cores beyond.
AUTO_REBUILD_MAX_ROWS = 500_000
# Set once a parallel build could not get its shared memory: later builds skip the attempt.
_parallel_failed = False


async def finalize_job(
    pool: asyncpg.Pool, table: ModelTable | None, settings: Settings, job_id: uuid.UUID
) -> bool:
    """Finish the job if nothing of it is pending; True when it is finished now."""
    job = await pool.fetchrow(Q.job_for_finalize, job_id)
    if job is None or job["pending"] > 0:
        return False
    if job["finished_at"] is not None:
        return True
    collection_id = job["collection_id"]
    started = time.perf_counter()
    # One finalizer per job at a time (the sweeper may send a second while an index builds).
    lock = (_JOB_LOCK, int.from_bytes(job_id.bytes[:4], "big", signed=True))
    async with pool.acquire() as conn:
        if not await conn.fetchval(Q.try_advisory_lock, *lock):
            return False
        # VACUUM and an index build may run long; the pool's statement limit is for tasks.
        await conn.execute(Q.set_session, "statement_timeout", "0")
        try:
            if job["total"] >= VACUUM_SHARE * max(job["documents"], 1):
                tables = "documents, chunks, postings, lexeme_stats, collection_stats"
                if table is not None and await _has_partition(conn, table, collection_id):
                    tables += f", {table.partition(collection_id)}"
                # VACUUM runs outside a transaction; the names come from the registry.
                await conn.execute(Q.vacuum_tables.format(tables=tables), timeout=_LONG)
            if table is not None:
                await build_vector_index(conn, table, collection_id, settings)
            finished = await conn.fetchval(Q.finish_job, job_id)
            if finished is not None and table is not None:
                # After the job is done: its documents are searchable while the graph grows.
                try:
                    await rebuild_graph(conn, table, collection_id, settings, automatic=True)
                except asyncpg.PostgresError as exc:  # e.g. a full disk; the old graph serves
                    log.warning("graph rebuild after job %s failed: %s", job_id, exc)
        finally:
            await conn.execute(Q.reset_statement_timeout)
            await conn.execute(Q.advisory_unlock, *lock)
    log.info(
        "job %s finished (collection %s, %d documents) after %.1f s of finalizing",
        job_id,
        collection_id,
        job["total"],
        time.perf_counter() - started,
    )
    return finished is not None


async def jobs_to_finalize(pool: asyncpg.Pool, jobs: set[uuid.UUID]) -> list[uuid.UUID]:
    """The jobs among ``jobs`` with nothing pending that are not finished yet."""
    if not jobs:
        return []
    return [r["id"] for r in await pool.fetch(Q.jobs_to_finalize, list(jobs))]


async def _has_partition(conn: asyncpg.Connection, table: ModelTable, collection_id: int) -> bool:
    state = await conn.fetchrow(
        Q.partition_state, table.partition(collection_id), table.index(collection_id)
    )
    return bool(state and state["present"])


async def _build(
    conn: asyncpg.Connection, create: str, collection_id: int, settings: Settings, workers: int
) -> None:
    async with conn.transaction():
        # One builder per collection; a second finalize finds the index there afterwards.
        await conn.execute(Q.advisory_xact_lock, _BUILD_LOCK, collection_id)
        await conn.execute(
            Q.set_local, "maintenance_work_mem", f"{settings.hnsw_build_memory_mb}MB"
        )
        await conn.execute(Q.set_local, "max_parallel_maintenance_workers", str(workers))
        await conn.execute(create, timeout=_LONG)


async def _parallel_or_alone(
    build: Callable[[int], Awaitable[None]], settings: Settings, index: str
) -> int:
    """``build(workers)`` with the parallel workers asked for, again in one process when the
    parallel build cannot get its shared memory; the workers it ran with."""
    global _parallel_failed
    workers = 0 if _parallel_failed else settings.hnsw_build_workers
    try:
        await build(workers)
    except asyncpg.InsufficientResourcesError as exc:
        # A parallel build shares its graph through shared memory of maintenance_work_mem's
        # size, more than a container's /dev/shm may hold (Docker's default is 64 MB). Any
        # other shortage (the disk, the server's memory) would fail a second build as well.
        if workers == 0 or "shared memory" not in str(exc):
            raise
        _parallel_failed = True  # this process builds alone from now on
        log.warning(
            "parallel build of %s failed (%s); building it in one process, as every later one",
            index,
            exc,
        )
        workers = 0
        await build(workers)
    return workers


async def _fit_basis(
    conn: asyncpg.Connection,
    table: ModelTable,
    collection_id: int,
    rows: int,
    replacing: Basis | None,
) -> None:
    """Fit the partition's principal components for a PCA index (shared/db/bases.py): its first
    basis, one of another size, or one for ``replacing``, which has drifted."""
    # Filling in the projections updates every row, and with it every index of the partition
    # (an HNSW graph inserts row by row): the old vector indexes go first, and searches scan the
    # partition without an index until the new one is built. Dropped outside the fit's
    # transaction: DROP INDEX locks the table against reads until commit, and the fit may take a
    # while. Should a first fit fail, the job's next finalize builds again.
    for row in await conn.fetch(Q.partition_indexes, table.partition(collection_id)):
        await conn.execute(Q.drop_partition_index.replace("{index}", row["name"]))
    if replacing is None:
        await fit_partition(conn, table, collection_id, table.index_dimensions)
    else:
        try:
            await fit_partition(
                conn, table, collection_id, table.index_dimensions, replacing=replacing.fitted_at
            )
        except asyncpg.PostgresError as exc:
            # The fill rewrites every row (a full disk is the likely failure). Rolled back, the
            # rows keep their projections on the old basis, which is still the recorded one:
            # index them again rather than leave the partition unindexed and every later job
            # retrying the refit. The next try waits for the partition to double.
            log.warning(
                "refit of %s failed (%s); keeping its basis", table.partition(collection_id), exc
            )
            await conn.execute(
                Q.record_basis_check, table.table, collection_id, replacing.fitted_at, rows
            )
            return
    # The update left a dead version of every row; VACUUM runs outside a transaction.
    await conn.execute(Q.vacuum_tables.format(tables=table.partition(collection_id)), timeout=_LONG)


async def build_vector_index(
    conn: asyncpg.Connection,
    table: ModelTable,
    collection_id: int,
    settings: Settings,
    *,
    refit: bool = False,
) -> bool:
    """Build the partition's index (KENSAKU_VECTOR_INDEX) if it is missing and the partition is
    large enough, then drop any of another kind. A PCA index (KENSAKU_VECTOR_PROJECTION) first
    gets its basis fitted on the partition's vectors, and is made again when the partition has
    outgrown its basis (bases.refit_due; ``refit``: check now, whatever the partition's size).
    Writes to the partition wait during the build; searches go on without the index. True when
    an index was built."""
    state = await conn.fetchrow(
        Q.partition_state, table.partition(collection_id), table.index(collection_id)
    )
    if state is None or not state["present"] or (state["indexed"] and not table.pca):
        return False
    # One builder per collection from the decision to the build: two finalizers that both found
    # a basis drifted would otherwise refit and rebuild it twice.
    lock = (_BUILD_LOCK, collection_id)
    await conn.execute(Q.advisory_lock, *lock, timeout=_LONG)  # (another may be building)
    try:
        return await _build_locked(conn, table, collection_id, settings, refit)
    finally:
        await conn.execute(Q.advisory_unlock, *lock)


async def _build_locked(
    conn: asyncpg.Connection, table: ModelTable, collection_id: int, settings: Settings, refit: bool
) -> bool:
    state = await conn.fetchrow(
        Q.partition_state, table.partition(collection_id), table.index(collection_id)
    )
    if state is None or not state["present"]:
        return False
    indexed = bool(state["indexed"])
    basis = await load_basis(conn, table, collection_id) if table.pca else None
    if basis is not None and basis.components != table.index_dimensions:
        basis = None  # of another KENSAKU_VECTOR_DIMENSIONS: fitted anew below
    if indexed:
        if basis is None:
            return False
        # Every job's end comes here: the planner's count (kept by the VACUUM a large job gets,
        # and by autovacuum) tells whether the partition may have doubled, without a scan.
        due_at = REFIT_GROWTH * max(basis.checked_rows, 1)
        if not refit and (state["estimated_rows"] or 0) < due_at:
            return False
    rows = await conn.fetchval(table.sql(Q.count_partition, collection_id))
    if not indexed and (rows < settings.hnsw_min_rows or (table.pca and rows == 0)):
        return False  # (a basis needs vectors to be fitted on)
    drifted = basis is not None and await refit_due(
        conn, table, collection_id, basis, rows, forced=refit
    )
    if indexed and not drifted:
        return False
    ef_construction = graph.ef_construction(
        rows, m=settings.hnsw_m, setting=settings.hnsw_ef_construction
    )
    method = table.index_method(rows, m=settings.hnsw_m, ef_construction=ef_construction)
    create = table.sql(Q.create_partition_index, collection_id).replace("{index_method}", method)
    if table.pca and (basis is None or drifted):
        await _fit_basis(conn, table, collection_id, rows, basis if drifted else None)
    started = time.perf_counter()
    workers = await _parallel_or_alone(
        lambda w: _build(conn, create, collection_id, settings, w),
        settings,
        table.index(collection_id),
    )
    log.info(
        "built %s (%s) over %d vectors in %.1f s (%d parallel workers asked for)",
        table.index(collection_id),
        method,
        rows,
        time.perf_counter() - started,
        workers,
    )
    # Any other vector index on the partition (another kind or dimensions): it only slows writes.
    keep = table.index(collection_id)
    for row in await conn.fetch(Q.partition_indexes, table.partition(collection_id)):
        if row["name"] != keep:
            await conn.execute(Q.drop_partition_index.replace("{index}", row["name"]))
    return True


async def rebuild_graph(
    conn: asyncpg.Connection,
    table: ModelTable,
    collection_id: int,
    settings: Settings,
    *,
    automatic: bool = False,
) -> int | None:
    """Build the partition's HNSW graph again when it was built with a shorter candidate list
    than its size now calls for (graph.ef_construction): a collection that reached
    KENSAKU_HNSW_MIN_ROWS in small uploads keeps the graph built then, and later rows only
    join it. The new graph is built beside the old one (CREATE INDEX CONCURRENTLY), so writes
    and indexed searches go on; the two swap names in one short transaction, and the old one
    is dropped concurrently. ``automatic`` (a
    job's end): judged by the planner's row count, without a scan, and only up to
    AUTO_REBUILD_MAX_ROWS vectors; a larger partition is logged for `kensaku model index
    --rebuild`. Returns the new graph's ef_construction, or None when nothing was rebuilt. A
    PCA index is made again by ``build_vector_index(refit=True)`` instead."""
    if table.pca or not table.index_kind.startswith("hnsw"):
        return None
    await _drop_leftovers(conn, table, collection_id)
    index = table.index(collection_id)
    built_with = await conn.fetchval(Q.index_ef_construction, index)
    if built_with is None:
        return None  # no index yet: build_vector_index builds it at this size
    m, setting = settings.hnsw_m, settings.hnsw_ef_construction
    if automatic:
        state = await conn.fetchrow(Q.partition_state, table.partition(collection_id), index)
        estimated = int(max(state["estimated_rows"] or 0, 0))
        if graph.ef_construction(estimated, m=m, setting=setting) <= built_with:
            return None
        if estimated > AUTO_REBUILD_MAX_ROWS:
            log.warning(
                "%s (about %d vectors) has a graph built with ef_construction %d; "
                "`kensaku model index --rebuild` builds the one its size calls for",
                index,
                estimated,
                built_with,
            )
            return None
    rows = await conn.fetchval(table.sql(Q.count_partition, collection_id))
    wanted = graph.ef_construction(rows, m=m, setting=setting)
    if int(built_with) >= wanted:
        return None
    # One builder per collection; another finalizer or `model index` may be at it already.
    if not await conn.fetchval(Q.try_advisory_lock, _BUILD_LOCK, collection_id):
        return None
    try:
        return await _rebuild(conn, table, collection_id, settings, rows, wanted, built_with)
    finally:
        await conn.execute(Q.advisory_unlock, _BUILD_LOCK, collection_id)


def _aside(table: ModelTable, collection_id: int) -> tuple[str, str]:
    """The names of a rebuild's new index while it is built and of the old one once replaced:
    never a configured index's name (those end in h…, i…, d… or p…), nor longer than one."""
    partition = table.partition(collection_id)
    return f"{partition}_nx", f"{partition}_ox"


async def _drop_leftovers(conn: asyncpg.Connection, table: ModelTable, collection_id: int) -> None:
    """Drop what an interrupted rebuild left (an invalid new index, which every write would
    maintain, or the replaced one), unless a rebuild of the partition is running now."""
    aside = set(_aside(table, collection_id))
    names = {
        r["name"] for r in await conn.fetch(Q.partition_indexes, table.partition(collection_id))
    }
    if not names & aside:
        return
    if not await conn.fetchval(Q.try_advisory_lock, _BUILD_LOCK, collection_id):
        return
    try:
        for name in names & aside:
            await conn.execute(Q.drop_index_concurrently.replace("{index}", name), timeout=_LONG)
    finally:
        await conn.execute(Q.advisory_unlock, _BUILD_LOCK, collection_id)


async def _rebuild(
    conn: asyncpg.Connection,
    table: ModelTable,
    collection_id: int,
    settings: Settings,
    rows: int,
    wanted: int,
    built_with: int,
) -> int:
    index = table.index(collection_id)
    next_index, old_index = _aside(table, collection_id)
    partition = table.partition(collection_id)
    method = table.index_method(rows, m=settings.hnsw_m, ef_construction=wanted)
    create = (
        Q.create_index_concurrently.replace("{index}", next_index)
        .replace("{partition}", partition)
        .replace("{method}", method)
    )

    # Every drop here is concurrent: a plain DROP INDEX locks the partition against searches.
    async def build(workers: int) -> None:
        # A failed try's invalid index first (this one's, when parallel workers found no memory).
        await conn.execute(Q.drop_index_concurrently.replace("{index}", next_index), timeout=_LONG)
        await conn.execute(Q.set_session, "max_parallel_maintenance_workers", str(workers))
        await conn.execute(create, timeout=_LONG)

    await conn.execute(Q.drop_index_concurrently.replace("{index}", old_index), timeout=_LONG)
    await conn.execute(Q.set_session, "maintenance_work_mem", f"{settings.hnsw_build_memory_mb}MB")
    started = time.perf_counter()
    try:
        await _parallel_or_alone(build, settings, index)
        # Renaming an index takes SHARE UPDATE EXCLUSIVE on it, which searches and writes do
        # not wait on; a DROP INDEX here would queue every search behind the longest running.
        async with conn.transaction():
            await conn.execute(
                Q.rename_index.replace("{index}", index).replace("{name}", old_index)
            )
            await conn.execute(
                Q.rename_index.replace("{index}", next_index).replace("{name}", index)
            )
    except BaseException:
        with contextlib.suppress(Exception):  # on a connection that is gone: drop_leftovers
            await conn.execute(
                Q.drop_index_concurrently.replace("{index}", next_index), timeout=_LONG
            )
        raise
    finally:
        with contextlib.suppress(Exception):
            await conn.execute(Q.reset_build_settings)
    # The old graph goes once the searches reading it are done, blocking none.
    await conn.execute(Q.drop_index_concurrently.replace("{index}", old_index), timeout=_LONG)
    log.info(
        "rebuilt %s (%s) over %d vectors in %.1f s, its graph built with ef_construction %d before",
        index,
        method,
        rows,
        time.perf_counter() - started,
        built_with,
    )
    return wanted
