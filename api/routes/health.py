"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.deps import state_of
from shared.db.queries import Q

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Database, broker and model are ready")
async def readyz(request: Request) -> JSONResponse:
    st = state_of(request)
    checks: dict[str, Any] = {}
    try:
        await st.pool.fetchval(Q.ping)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}: {exc}"
    try:
        await st.redis.ping()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {type(exc).__name__}: {exc}"
    checks["model"] = st.embedder.name
    ready = checks["database"] == "ok" and checks["broker"] == "ok"
    return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)
