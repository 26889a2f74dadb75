"""Per-process resources of a worker: event loop, asyncpg pool, and, when a task first needs
them, the model and its table.

One ``Runtime`` per process, made after the fork (prefork children each get their own; CUDA is
never touched in the parent). ``worker_process_init`` opens the loop and the pool only: a child
must report to Celery's main process within ``worker_proc_alive_timeout`` (4 s), and loading a
large model inside that window gets the child killed and restarted forever. The model is loaded
by the first task that uses it (a finalize task needs only its tokenizer), and it is the
registry's active model, not necessarily KENSAKU_MODEL: after a switch the workers follow without
a restart (shared/db/registry.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Coroutine
from functools import cached_property
from typing import Any, ClassVar, TypeVar

import asyncpg

from shared.config import Settings, get_settings
from shared.db import registry
from shared.db.embeddings import ModelTable, register_embedder
from shared.db.pool import create_pool
from shared.db.registry import loading_from_registry
from shared.embed.embedder import Embedder, load_embedder, load_token_counter

log = logging.getLogger(__name__)
T = TypeVar("T")


def torch_threads(cpus: int | None, processes: int) -> int:
    """Intra-op threads per worker process: the cores shared out among the pool's processes.
    Every process defaulting to all cores oversubscribes the machine: with MiniLM, end-to-end
    ingestion went from 0.65x to 0.71x the raw encode speed once sized (bench/RESULTS.md)."""
    return max(1, (cpus or 1) // max(1, processes))


class Runtime:
    """What one worker process holds for its lifetime."""

    # Set in the parent before the fork (worker_init): how many processes share the cores.
    pool_processes: ClassVar[int] = 1
    _current: ClassVar[Runtime | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        # A worker process handles one task at a time: a small pool is enough.
        self.pool: asyncpg.Pool = self.run(create_pool(settings, min_size=1, role="worker"))
        # Loaded on first use, by the registry's name (or KENSAKU_MODEL's on a fresh database).
        self._models: dict[str, ModelSlot] = {}

    @classmethod
    def for_process(cls) -> Runtime:
        """This process's runtime, made on first use (again after a fork)."""
        with cls._lock:
            current = cls._current
            if current is None or current.pid != os.getpid():
                current = cls._current = cls(get_settings())
            return current

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def active(self) -> ModelSlot:
        """The registry's active model, which this task works for (a switch changes it between
        tasks; shared/db/registry.py). Models neither active nor being built are let go."""
        now = self.run(registry.serving(self.pool))
        if now.active is None:
            # A fresh database: the configured model registers, and is active if still none is.
            first = self.model(self.settings.model)
            self._models[first.table.model] = first  # its registry name may differ ("minilm")
            now = self.run(registry.serving(self.pool))
        if now.active is None:
            raise RuntimeError("no embedding model is active after registering one")
        for name in set(self._models) - now.names:
            log.info("worker %s lets go of %s (no longer served)", self.pid, name)
            del self._models[name]
        return self.model(now.active)

    def model(self, name: str) -> ModelSlot:
        slot = self._models.get(name)
        if slot is None:
            slot = self._models[name] = ModelSlot(self, name)
        return slot

    def serving(self) -> registry.Serving:
        return self.run(registry.serving(self.pool))

    def close(self, timeout: float = 10.0) -> None:
        """Close the pool within ``timeout`` (a database that vanished must not keep the
        process alive), then the loop."""
        try:
            self.run(asyncio.wait_for(self.pool.close(), timeout))
        except Exception:
            self.pool.terminate()
        finally:
            self.loop.close()

    @classmethod
    def close_current(cls) -> None:
        with cls._lock:
            current, cls._current = cls._current, None
        if current is not None and current.pid == os.getpid():
            current.close()


class ModelSlot:
    """One model in a worker process: its encoder, its token counter for prep, its table; each
    loaded when a task first needs it."""

    def __init__(self, rt: Runtime, name: str) -> None:
        self.rt = rt
        self.settings = rt.settings.model_copy(update={"model": name})

    @cached_property
    def embedder(self) -> Embedder:
        threads = torch_threads(len(os.sched_getaffinity(0)), Runtime.pool_processes)
        with loading_from_registry(self.settings.model):
            embedder = load_embedder(self.settings, threads=threads)
        log.info("worker %s loaded %s on %s", self.rt.pid, embedder.name, embedder.device)
        return embedder

    @cached_property
    def counter(self) -> Embedder:
        """Token counting for prep: the tokenizer alone for a transformer, so a process that only
        preps never loads the model; the embedder itself for the static default model."""
        if "embedder" in self.__dict__:
            return self.embedder
        with loading_from_registry(self.settings.model):
            counter = load_token_counter(self.settings)
        return counter or self.embedder

    @cached_property
    def table(self) -> ModelTable:
        table = self.rt.run(
            register_embedder(
                self.rt.pool,
                self.counter,
                self.settings.vector_index,
                self.settings.vector_dimensions,
                self.settings.vector_projection,
            )
        )
        log.info("worker %s writes vectors of %s to %s", self.rt.pid, table.model, table.table)
        return table

    def chunker(self) -> str:
        return self.counter.chunker(self.settings.chunk_tokens, self.settings.chunk_overlap_tokens)
