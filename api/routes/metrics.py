"""GET /metrics in the Prometheus text format (the worker's too in multiprocess mode)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.deps import state_of
from shared.metrics import collect_gauges, render_latest

router = APIRouter(tags=["health"])


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    st = state_of(request)
    await collect_gauges(st.pool, st.celery)
    body, content_type = render_latest()
    return Response(body, media_type=content_type)
