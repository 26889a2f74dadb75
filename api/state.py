"""What the API process holds for its lifetime: pool, models, broker clients, sweeper."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncpg
import redis.asyncio as aioredis
from celery import Celery

from api.models import Served, ServedModels
from shared.config import Settings
from shared.search import CollectionCache


@dataclass
class AppState:
    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    celery: Celery
    models: ServedModels
    collections: CollectionCache = field(default_factory=CollectionCache)
    background: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def served(self) -> Served:
        """The model a request uses, taken once per request (api/models.py)."""
        served = self.models.current
        if served is None:
            raise RuntimeError("the API serves no model yet")
        return served
