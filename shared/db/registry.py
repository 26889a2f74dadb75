"""Which model serves: the registry's active model, the one being built, and the switch.

Every process follows the registry, not its own KENSAKU_MODEL: search ranks with the active model
and ingestion embeds for it. KENSAKU_MODEL only names the model a fresh database starts with.

A switch (`kensaku reembed --model M`, shared/ingest/switch.py) marks M as building, fills M's
table from the chunks already stored while the active model keeps serving, and flips the active
flag in one transaction once every indexed chunk has a vector in M's table. The flip takes an
exclusive advisory lock that every write of the active model's vectors takes shared
(``guard_active``): a write that began before the flip ends before it, and one that begins after
it sees that its model is no longer active and its task runs it again at once for the new one
(worker/tasks.py). So the table that becomes active is never missing a chunk of an indexed document.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.db.embeddings import ModelTable
from shared.db.queries import Q
from shared.errors import ConfigError, RetryableError

# (class, key) of the two-int advisory lock between vector writes (shared) and the flip. The
# class is this lock's own: finalize's (class, collection id) locks must never be this one.
SWITCH_LOCK_CLASS = 0x6B656E77
_SWITCH_LOCK = (SWITCH_LOCK_CLASS, 0)


class ModelSwitched(RetryableError):
    """The model a write was for stopped being active: the task runs again for the new one."""


@dataclass(frozen=True)
class Serving:
    active: str | None
    building: str | None

    @property
    def names(self) -> set[str]:
        return {n for n in (self.active, self.building) if n}


async def serving(conn: asyncpg.Pool | asyncpg.Connection) -> Serving:
    rows = await conn.fetch(Q.serving_models)
    active = next((r["name"] for r in rows if r["active"]), None)
    building = next((r["name"] for r in rows if r["building"]), None)
    return Serving(active, building)


@contextlib.contextmanager
def loading_from_registry(name: str) -> Iterator[None]:
    """Say where the name came from when a model named by the registry fails to load."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(
            f"the registry's model {name} cannot be loaded here: {exc} (KENSAKU_MODEL names only "
            "a fresh database's first model; every process serves the registry's)"
        ) from exc


async def guard_active(conn: asyncpg.Connection, model: str) -> None:
    """Inside a transaction that writes ``model``'s vectors and marks documents indexed: hold
    the switch lock shared until commit, and fail if ``model`` is no longer the active one."""
    await conn.execute(Q.advisory_xact_lock_shared, *_SWITCH_LOCK)
    if not await conn.fetchval(Q.model_is_active, model):
        raise ModelSwitched(f"{model} is no longer the active model")


@dataclass(frozen=True)
class ModelState:
    name: str
    table: str
    dimension: int
    backend: str
    active: bool
    building: bool
    retired_at: datetime | None


async def model_states(pool: asyncpg.Pool) -> list[ModelState]:
    return [
        ModelState(
            r["name"],
            r["table_name"],
            r["dimension"],
            r["backend"],
            r["active"],
            r["building"],
            r["retired_at"],
        )
        for r in await pool.fetch(Q.model_states)
    ]


async def start_build(pool: asyncpg.Pool, model: str) -> None:
    """Mark ``model`` (registered) as the one being built; resuming its own build is fine."""
    async with pool.acquire() as conn, conn.transaction():
        other = await conn.fetchval(Q.building_model)
        if other == model:
            return
        if other is not None:
            raise ConfigError(
                f"a switch to {other} is in progress: let it finish, or cancel it with "
                "`kensaku model cancel`"
            )
        if await conn.fetchval(Q.start_build, model) is None:
            raise ConfigError(f"{model} is already the active model")


async def cancel_build(pool: asyncpg.Pool) -> str | None:
    """Stop building; the vectors written so far stay (a later switch reuses them)."""
    name = await pool.fetchval(Q.cancel_build)
    return str(name) if name is not None else None


async def previous_model(pool: asyncpg.Pool) -> str | None:
    name = await pool.fetchval(Q.previous_model)
    return str(name) if name is not None else None


async def indexed_chunks(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval(Q.indexed_chunks))


async def gaps(conn: asyncpg.Pool | asyncpg.Connection, table: ModelTable) -> dict[int, int]:
    """Indexed documents with chunks that have no vector in ``table``: id → how many."""
    return {r["id"]: r["chunks"] for r in await conn.fetch(table.sql(Q.model_gaps))}


async def chunkers_in_use(pool: asyncpg.Pool) -> dict[str | None, int]:
    return {r["chunker"]: r["documents"] for r in await pool.fetch(Q.chunkers_in_use)}


async def flip(pool: asyncpg.Pool, table: ModelTable, *, complete: bool = True) -> bool:
    """Make ``table``'s model the active one if no indexed chunk lacks its vector; False (and
    nothing changed) if some do, as when documents were indexed since the last look.
    ``complete=False``: at once, whatever its table holds (a re-embed in place)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(Q.advisory_xact_lock, *_SWITCH_LOCK)
        if complete and await gaps(conn, table):
            return False
        await conn.execute(Q.retire_active, table.model)
        await conn.execute(Q.activate_model, table.model)
        return True
