"""Liveness and readiness."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import State
from api.schemas import Health, Readiness
from shared.db.queries import Q

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Database, broker and model are ready",
    response_model=Readiness,
    responses={
        503: {
            "model": Readiness,
            "description": "The database or the broker is down, or the API serves another "
            "model than the registry's active one",
        }
    },
)
async def readyz(st: State) -> JSONResponse:
    checks: dict[str, Any] = {}
    # What failed is logged; the answer says only that it did (no internals to clients).
    try:
        await st.pool.fetchval(Q.ping, timeout=5)
        checks["database"] = "ok"
    except Exception as exc:
        log.warning("readyz: database: %s: %s", type(exc).__name__, exc)
        checks["database"] = "unavailable"
    try:
        await st.redis.ping()
        checks["broker"] = "ok"
    except Exception as exc:
        log.warning("readyz: broker: %s: %s", type(exc).__name__, exc)
        checks["broker"] = "unavailable"
    served = st.served
    checks["model"] = served.embedder.name
    checks["embedding"] = {
        "model": served.embedder.name,
        "backend": served.embedder.backend,
        "device": served.embedder.device,
        "dimension": served.embedder.dimension,
        "vector_unit": served.table.vector_unit,
        "index": served.table.index_kind,
        "dimensions_stored": served.table.dimensions_stored,
        "projection": served.table.projection if served.table.reduced else None,
        "query_threads": served.embedder.query_threads(),
    }
    checks["registry_model"] = st.models.registry_active
    behind = st.models.behind_too_long()
    if behind:
        log.warning(
            "readyz: serving %s, but the registry's active model is %s",
            served.table.model,
            st.models.registry_active,
        )
    ready = checks["database"] == "ok" and checks["broker"] == "ok" and not behind
    body = Readiness.model_validate({"ready": ready, **checks}).model_dump()
    return JSONResponse(body, status_code=200 if ready else 503)
