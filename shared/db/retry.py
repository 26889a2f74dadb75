"""Run a unit of work in a transaction, retrying when Postgres aborts it for a deadlock or a
serialization failure (concurrent uploads, workers and deletes touching the same documents or
statistics rows), with tenacity's jittered backoff.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random

T = TypeVar("T")

RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


async def retry_transaction(
    pool: asyncpg.Pool,
    work: Callable[[asyncpg.Connection], Awaitable[T]],
    *,
    attempts: int = 5,
) -> T:
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(RETRYABLE),
        stop=stop_after_attempt(attempts),
        wait=wait_random(0.01, 0.05),
        reraise=True,
    ):
        with attempt:
            async with pool.acquire() as conn, conn.transaction():
                return await work(conn)
    raise AssertionError("unreachable")
