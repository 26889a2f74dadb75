"""Switching the active model without downtime (`kensaku reembed --model M`, `kensaku model
rollback`).

M is marked as building; its table is filled from the chunks already stored by ``fill`` tasks on
the embed queue, while search and ingestion go on with the active model; M's partitions get their
vector indexes; then the registry flips to M in one transaction, which succeeds only when every
indexed chunk has a vector in M's table (shared/db/registry.py). Documents indexed meanwhile are
found at the next look and filled too, so the loop ends once the workers keep up with uploads.

The chunks are shared by every model (and by lexical search): a switch needs M to cut text as the
stored chunks were cut. A model with another tokenizer or budget needs the chunks cut again,
which is a re-index in place (`--in-place`), not a switch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
from celery import Celery

from shared.broker import embed_batches, enqueue_fill
from shared.config import Settings
from shared.db import registry
from shared.db.embeddings import ModelTable
from shared.db.queries import Q
from shared.errors import ConfigError
from shared.ingest.finalize import build_vector_index

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    model: str
    embedded: int  # indexed chunks with a vector in the model's table
    total: int  # indexed chunks
    documents_left: int

    @property
    def percent(self) -> float:
        return 100.0 * self.embedded / self.total if self.total else 100.0


async def check_chunker(pool: asyncpg.Pool, model: str, chunker: str) -> None:
    """A clear error unless every stored chunk was cut as ``model`` cuts (``chunker``)."""
    foreign = {c: n for c, n in (await registry.chunkers_in_use(pool)).items() if c != chunker}
    if foreign:
        described = ", ".join(f"{n} as {c or 'unrecorded'}" for c, n in foreign.items())
        raise ConfigError(
            f"{model} cuts chunks as {chunker}, but documents were cut otherwise ({described}): "
            "a switch without downtime embeds the stored chunks, and these would be truncated "
            "or mis-sized. Re-index in place instead: `kensaku reembed --model "
            f"{model} --in-place` (search serves a partly filled table until it is done)"
        )


async def build_indexes(pool: asyncpg.Pool, table: ModelTable, settings: Settings) -> int:
    """The vector indexes of ``table``'s partitions that are large enough and lack one."""
    built = 0
    async with pool.acquire() as conn:
        await conn.execute(Q.set_session, "statement_timeout", "0")
        try:
            for row in await conn.fetch(Q.model_partitions, table.table):
                built += await build_vector_index(conn, table, row["id"], settings)
        finally:
            await conn.execute(Q.reset_statement_timeout)
    return built


async def switch_model(
    pool: asyncpg.Pool,
    celery: Celery,
    table: ModelTable,
    settings: Settings,
    *,
    report: Callable[[Progress], None],
    poll_seconds: float = 1.0,
    resend_seconds: float = 120.0,
    in_flight: int = 4,
) -> None:
    """Build ``table``'s model and make it the active one (see the module's docstring). Stopped
    half-way, the build resumes where it was when run again.

    At most ``in_flight`` fill batches wait in the embed queue at a time, so an upload's embed
    tasks never queue behind the whole corpus; documents whose fill task was lost are sent
    again after ``resend_seconds``. The look at what is missing (an anti-join over every
    indexed chunk) is spaced to at least three times what it took."""
    await registry.start_build(pool, table.model)
    sent: dict[int, float] = {}
    budget = in_flight * settings.embed_batch_size  # chunks
    while True:
        if (await registry.serving(pool)).building != table.model:
            raise ConfigError(f"the switch to {table.model} was cancelled")
        started = time.monotonic()
        missing = await registry.gaps(pool, table)
        total = await registry.indexed_chunks(pool)
        looked = time.monotonic() - started
        report(Progress(table.model, total - sum(missing.values()), total, len(missing)))
        if not missing:
            built = await build_indexes(pool, table, settings)
            if built:
                log.info("built %d vector indexes for %s", built, table.model)
            if await registry.flip(pool, table):
                return
            continue  # documents indexed while the indexes were built: fill them too
        now = time.monotonic()
        sent = {d: t for d, t in sent.items() if d in missing and now - t < resend_seconds}
        room = budget - sum(missing[d] for d in sent)
        due: dict[int, int] = {}
        for doc_id, chunks in missing.items():
            if room <= 0:
                break
            if doc_id not in sent:
                due[doc_id] = chunks
                room -= chunks
        if due:
            enqueue_fill(celery, embed_batches(due, settings.embed_batch_size), table.model)
            sent.update(dict.fromkeys(due, now))
        await asyncio.sleep(max(poll_seconds, 3 * looked))
