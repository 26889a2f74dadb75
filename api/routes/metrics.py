"""GET /metrics in the Prometheus text format (the worker's too in multiprocess mode)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from api.deps import State
from shared.metrics import collect_gauges, render_latest

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(st: State) -> Response:
    await collect_gauges(st.pool, st.celery)
    body, content_type = render_latest()
    return Response(body, media_type=content_type)
