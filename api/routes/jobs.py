"""Job progress."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import State
from api.schemas import Job, errors
from shared.db.documents import job_status

router = APIRouter(prefix="/v1", tags=["jobs"], responses=errors(401, 404, 503))


@router.get("/jobs/{job_id}", summary="Progress of an upload job")
async def get_job(st: State, job_id: str) -> Job:
    return Job.model_validate(await job_status(st.pool, job_id))
