"""The HTTP API: `uvicorn --factory api.main:create_app` (or `kensaku serve`). Thin: request
parsing, validation, auth, error mapping; the work is in shared/ and the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable

import asyncpg
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from api.auth import require_api_key
from api.middleware import RequestIdMiddleware
from api.models import ServedModels
from api.routes import documents, files, health, jobs, search
from api.routes import metrics as metrics_route
from api.state import AppState
from shared.broker import make_celery_app
from shared.config import Settings, get_settings
from shared.db.pool import create_pool
from shared.errors import ConfigError, NotFoundError, RejectError, RetryableError
from shared.ingest.sweep import sweep_forever
from shared.logging import configure_logging
from shared.metrics import PrometheusMiddleware
from shared.text.tokenize import get_tokenizer

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings)
    # KENSAKU_HOST says where this API is exposed; an open API stays on loopback.
    settings.check_bind_allowed()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(settings)
        # Bounded waits on the broker: a Redis that stops answering fails a call, not the loop.
        redis = aioredis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30
        )
        st: AppState | None = None
        try:
            get_tokenizer()
            # The registry's active model, loaded here; search never loads one per request.
            models = ServedModels(pool, settings)
            served = await models.start()
            st = AppState(settings, pool, redis, make_celery_app(settings), models)
            st.background.append(asyncio.create_task(sweep_forever(pool, st.celery, settings)))
            st.background.append(asyncio.create_task(models.follow()))
            app.state.kensaku = st
            log.info("api ready: model=%s table=%s", served.embedder.name, served.table.table)
            yield
        finally:
            await _shut_down(st, pool, redis, settings.shutdown_timeout_seconds)

    # fastapi-offline serves Swagger UI and ReDoc from files in its wheel: the default pages
    # load them from a CDN, which a machine without internet access (or a strict CSP) cannot.
    app = FastAPIOffline(
        title="kensaku",
        version="0.1.0",
        summary="Ingestion and search for Japanese text on PostgreSQL + pgvector",
        lifespan=lifespan,
    )
    app.add_middleware(PrometheusMiddleware)
    app.add_middleware(RequestIdMiddleware)
    secured = [Depends(require_api_key)]
    small = settings.max_query_request_bytes  # uploads bound their bodies themselves
    app.include_router(health.router, max_body_size=small)
    # Metrics count documents for anyone who asks: behind the keys too (Prometheus sends them
    # with `authorization: {credentials: ...}` in its scrape config, docs/deploy.md).
    app.include_router(metrics_route.router, dependencies=secured, max_body_size=small)
    app.include_router(documents.router, dependencies=secured)
    app.include_router(files.router, dependencies=secured)
    app.include_router(jobs.router, dependencies=secured, max_body_size=small)
    app.include_router(search.router, dependencies=secured, max_body_size=small)

    @app.exception_handler(RejectError)
    async def _reject(_: Request, exc: RejectError) -> JSONResponse:
        body = {"detail": exc.message}
        if isinstance(exc.detail, dict):
            body.update(exc.detail)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(RetryableError)
    async def _unavailable(_: Request, exc: RetryableError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(ConfigError)
    async def _config(_: Request, exc: ConfigError) -> JSONResponse:
        log.error("configuration error: %s", exc)
        return JSONResponse({"detail": "server misconfigured; see its log"}, status_code=500)

    @app.exception_handler(asyncpg.PostgresConnectionError)
    @app.exception_handler(asyncpg.InterfaceError)
    @app.exception_handler(asyncpg.CannotConnectNowError)
    @app.exception_handler(ConnectionError)
    async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
        # The database restarting or unreachable: the client may retry; nothing is lost.
        log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
        return JSONResponse(
            {"detail": "the database is unavailable; retry shortly"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(asyncpg.QueryCanceledError)
    @app.exception_handler(TimeoutError)
    async def _too_slow(_: Request, exc: Exception) -> JSONResponse:
        log.warning("request timed out in the database: %s", exc)
        return JSONResponse(
            {"detail": "the request took too long in the database; retry shortly"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged with its traceback; the client gets no internals, only the request id to quote.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "error": e["msg"]}
            for e in exc.errors()
        ]
        message = "; ".join(f"{e['field']}: {e['error']}" for e in errors)
        return JSONResponse({"detail": message, "errors": errors}, status_code=422)

    return app


async def _shut_down(
    st: AppState | None, pool: asyncpg.Pool, redis: aioredis.Redis, grace: float
) -> None:
    """Every step bounded: a peer that vanished must not keep the process alive. A watchdog
    ends the process if anything still hangs (a thread blocked in a library call keeps the
    interpreter from exiting)."""
    watchdog = threading.Timer(2 * grace, os._exit, args=(70,))
    watchdog.daemon = True
    watchdog.start()
    if st is not None:
        for task in st.background:
            task.cancel()
        if st.background:
            await asyncio.wait(st.background, timeout=grace)

    async def bounded(step: Awaitable[object], what: str) -> None:
        try:
            await asyncio.wait_for(step, grace)
        except Exception as exc:  # shutting down: report and go on
            log.warning("shutdown: %s did not finish cleanly: %s", what, exc)

    await bounded(redis.aclose(), "closing Redis")
    try:
        await asyncio.wait_for(pool.close(), grace)
    except Exception:
        pool.terminate()
