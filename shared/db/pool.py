"""asyncpg pools: one per process, with pgvector's codec registered on every connection."""

from __future__ import annotations

import asyncpg
from pgvector.asyncpg import register_vector

from shared.config import Settings
from shared.db import graph


async def _init(conn: asyncpg.Connection) -> None:
    await register_vector(conn)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's default reset, a round trip (advisory unlock, CLOSE ALL,
    UNLISTEN, RESET ALL) on every release: kensaku keeps no session state on pooled connections
    (settings are SET LOCAL, the one session lock is released in a finally), and an open
    transaction is still rolled back by the pool."""


async def create_pool(
    settings: Settings, *, min_size: int | None = None, role: str = "api"
) -> asyncpg.Pool:
    """The process's pool. ``role`` "api" or "worker" picks the statement timeout."""
    timeout_ms = (
        settings.api_statement_timeout_ms if role == "api" else settings.worker_statement_timeout_ms
    )
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min if min_size is None else min_size,
        max_size=settings.db_pool_max,
        init=_init,
        reset=_keep_session,
        # Search reads these per connection, so a query stays one round trip (no SET first).
        # relaxed_order iterative scans keep filtered index scans returning top_k rows.
        server_settings={
            "hnsw.ef_search": str(graph.ef_search(0, settings.hnsw_ef_search)),
            "hnsw.iterative_scan": "relaxed_order",
            "ivfflat.probes": str(settings.ivfflat_probes),
            "ivfflat.iterative_scan": "relaxed_order",
            # Exact (index-less) vector plans sort rows carrying their vectors; 4 MB spills.
            "work_mem": "32MB",
            "statement_timeout": str(timeout_ms),
            # A transaction left open by a vanished client is ended by the server.
            "idle_in_transaction_session_timeout": "60000",
            "application_name": f"kensaku-{role}",
        },
        # asyncpg's own limit on every call, a little above the server's, for a server that
        # no longer answers at all.
        command_timeout=timeout_ms / 1000 + 5,
    )
    assert pool is not None
    return pool
