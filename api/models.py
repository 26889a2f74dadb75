"""The query models of the API process, following the registry (shared/db/registry.py).

Search ranks with the registry's active model, not KENSAKU_MODEL: after `kensaku reembed --model M`
the API follows without a restart, and a restart never switches back. The model being built is
loaded ahead, while the active one serves, so that the flip finds it ready; the API moves to it
at its next look at the registry (every KENSAKU_MODEL_POLL_SECONDS). Until then it serves the
previous model, whose table holds every document indexed up to the flip.

A request takes ``current`` once: its query vector and the table it ranks are one model's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import asyncpg

from shared.config import Settings
from shared.db import registry
from shared.db.embeddings import ModelTable, register_embedder
from shared.embed.embedder import Embedder, load_embedder, model_name
from shared.embed.idle_cores import IdleCores

log = logging.getLogger(__name__)

# A model that failed to load is tried again after this long, not at every look.
_RETRY_LOAD_SECONDS = 30.0
# Serving another model than the registry's for longer than this makes the API not ready: its
# answers would miss every document indexed since the switch.
BEHIND_GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class Served:
    embedder: Embedder
    table: ModelTable


class ServedModels:
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings
        self._loaded: dict[str, Served] = {}
        self._failed: dict[str, float] = {}
        self.current: Served | None = None
        # The registry's active model at the last look, and since when the API serves another.
        self.registry_active: str | None = None
        self._behind_since: float | None = None
        # Unset KENSAKU_QUERY_THREADS: every loaded model's queries share one view of the cores.
        self._idle = IdleCores() if settings.query_threads is None else None

    async def start(self) -> Served:
        """Load the active model (on a fresh database, KENSAKU_MODEL's, which becomes active)."""
        now = await registry.serving(self.pool)
        name = now.active or self.settings.model
        served = await self._load(name)
        if now.active is None:
            now = await registry.serving(self.pool)
            if now.active != served.table.model:  # another process registered first
                served = await self._load(now.active or served.table.model)
        configured = self._configured_name()
        if configured and configured != served.table.model:
            log.warning(
                "KENSAKU_MODEL is %s but the registry's active model is %s: serving %s "
                "(switch with `kensaku reembed --model`)",
                configured,
                served.table.model,
                served.table.model,
            )
        self.current = served
        self.registry_active = served.table.model
        return served

    def behind_too_long(self) -> bool:
        """Whether the API has served another model than the registry's for too long (it could
        not load the new one: its log says why)."""
        since = self._behind_since
        return since is not None and time.monotonic() - since > BEHIND_GRACE_SECONDS

    def _configured_name(self) -> str | None:
        try:
            return model_name(self.settings)
        except Exception:  # a model this host cannot resolve: only the warning is lost
            return None

    async def _load(self, name: str) -> Served:
        served = self._loaded.get(name)
        if served is None:
            settings = self.settings.model_copy(update={"model": name})
            # The query model is loaded here, never on a request.
            with registry.loading_from_registry(name):
                embedder = await asyncio.to_thread(self._load_embedder, settings)
            table = await register_embedder(
                self.pool,
                embedder,
                settings.vector_index,
                settings.vector_dimensions,
                settings.vector_projection,
            )
            served = Served(embedder, table)
            self._loaded[name] = self._loaded[table.model] = served
        return served

    def _load_embedder(self, settings: Settings) -> Embedder:
        embedder = load_embedder(settings, threads=settings.query_threads or 1)
        if self._idle is not None:
            embedder.follow_idle_cores(self._idle)  # opens sessions on an exported backend
        return embedder

    async def refresh(self) -> None:
        """Load what the registry serves or builds; move to the active model once loaded; let
        go of the rest."""
        if self._idle is not None:
            self._idle.free()  # a look each second: a query's view of the cores is never stale
        now = await registry.serving(self.pool)
        for name in sorted(now.names - self._loaded.keys()):
            failed = self._failed.get(name)
            if failed is not None and time.monotonic() - failed < _RETRY_LOAD_SECONDS:
                continue
            try:
                await self._load(name)
                log.info("api loaded %s (%s)", name, "active" if name == now.active else "building")
            except Exception:
                self._failed[name] = time.monotonic()
                log.exception("api could not load %s; serving %s meanwhile", name, self._name())
        active = self._loaded.get(now.active or "")
        if active is not None and active is not self.current:
            log.info("api now serves %s (was %s)", active.table.model, self._name())
            self.current = active
        self.registry_active = now.active
        if now.active is None or now.active == self._name():
            self._behind_since = None
        elif self._behind_since is None:
            self._behind_since = time.monotonic()
        keep = now.names | {self._name()}
        for name in [n for n, s in self._loaded.items() if s.table.model not in keep]:
            del self._loaded[name]

    def _name(self) -> str:
        return self.current.table.model if self.current else ""

    async def follow(self) -> None:
        """Look at the registry every KENSAKU_MODEL_POLL_SECONDS, for the process's lifetime."""
        while True:
            await asyncio.sleep(self.settings.model_poll_seconds)
            try:
                await self.refresh()
            except Exception as exc:  # the database away for a moment: look again later
                log.warning(
                    "api could not read the model registry: %s: %s", type(exc).__name__, exc
                )
