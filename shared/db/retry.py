"""Run a unit of work in a transaction, retrying when Postgres aborts it for a deadlock or a
serialization failure (concurrent workers updating the same BM25 statistics rows can deadlock).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

T = TypeVar("T")

_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


async def retry_transaction(
    pool: asyncpg.Pool,
    work: Callable[[asyncpg.Connection], Awaitable[T]],
    *,
    attempts: int = 5,
) -> T:
    for attempt in range(1, attempts + 1):
        try:
            async with pool.acquire() as conn, conn.transaction():
                return await work(conn)
        except _RETRYABLE:
            if attempt == attempts:
                raise
            await asyncio.sleep(random.uniform(0.01, 0.05) * attempt)
    raise AssertionError("unreachable")
