"""Per-process resources of a worker: event loop, asyncpg pool, tokenizer and model.

Created once per process after the fork (prefork children each get their own; CUDA is never
touched in the parent), on the first task or eagerly from ``worker_process_init``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from shared.config import Settings, get_settings
from shared.db.embeddings import ModelTable, register_embedder
from shared.db.pool import create_pool
from shared.embed.embedder import Embedder, load_embedder
from shared.text.tokenize import get_tokenizer

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Runtime:
    settings: Settings
    loop: asyncio.AbstractEventLoop
    pool: asyncpg.Pool
    embedder: Embedder
    table: ModelTable
    pid: int

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self, timeout: float = 10.0) -> None:
        """Close the pool within ``timeout`` (a database that vanished must not keep the
        process alive), then the loop."""
        try:
            self.loop.run_until_complete(asyncio.wait_for(self.pool.close(), timeout))
        except Exception:
            self.pool.terminate()
        finally:
            self.loop.close()


_runtime: Runtime | None = None
_pool_size = 1


def set_pool_size(processes: int) -> None:
    global _pool_size
    _pool_size = max(1, processes)


def torch_threads(cpus: int | None, processes: int) -> int:
    """Intra-op threads per worker process: the cores shared out among the pool's processes.
    Every process defaulting to all cores oversubscribes the machine: with MiniLM, end-to-end
    ingestion went from 0.65x to 0.71x the raw encode speed once sized (bench/RESULTS.md)."""
    return max(1, (cpus or 1) // max(1, processes))


def get_runtime() -> Runtime:
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        _runtime = _create(get_settings())
    return _runtime


def _create(settings: Settings) -> Runtime:
    import torch

    torch.set_num_threads(torch_threads(len(os.sched_getaffinity(0)), _pool_size))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # A worker process handles one task at a time: a small pool is enough.
    pool = loop.run_until_complete(create_pool(settings, min_size=1, role="worker"))
    get_tokenizer()
    embedder = load_embedder(settings)
    table = loop.run_until_complete(register_embedder(pool, embedder))
    log.info(
        "worker runtime ready: pid=%s model=%s dim=%s device=%s table=%s",
        os.getpid(),
        embedder.name,
        embedder.dimension,
        embedder.device,
        table.table,
    )
    return Runtime(settings, loop, pool, embedder, table, os.getpid())


def close_runtime() -> None:
    global _runtime
    if _runtime is not None and _runtime.pid == os.getpid():
        _runtime.close()
    _runtime = None
