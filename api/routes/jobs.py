"""Job progress."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from api.deps import state_of
from shared.db.documents import job_status

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.get("/jobs/{job_id}", summary="Progress of an upload job")
async def get_job(request: Request, job_id: str) -> dict[str, Any]:
    return await job_status(state_of(request).pool, job_id)
