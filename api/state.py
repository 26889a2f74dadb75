"""What the API process holds for its lifetime: pool, model, broker clients, sweeper."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncpg
import redis.asyncio as aioredis
from celery import Celery

from shared.config import Settings
from shared.db.embeddings import ModelTable
from shared.embed.embedder import Embedder
from shared.search import CollectionCache


@dataclass
class AppState:
    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    celery: Celery
    embedder: Embedder
    table: ModelTable
    collections: CollectionCache = field(default_factory=CollectionCache)
    background: list[asyncio.Task[None]] = field(default_factory=list)
