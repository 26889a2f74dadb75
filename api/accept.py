"""The end of every upload, JSON or files: the spooled documents and the job row stored in one
transaction, then the work enqueued. If the broker is down the documents are safe in Postgres
and the sweeper enqueues them later, so the client still gets its 202 and job id."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.bodies import Spool
from api.state import AppState
from shared import metrics
from shared.broker import enqueue_prep
from shared.ingest.store import StoredUpload, store_upload

log = logging.getLogger(__name__)


async def store_and_enqueue(
    st: AppState, collection: str, spool: Spool, rejected: int
) -> StoredUpload:
    """Store what ``spool`` holds (at least one document)."""
    stored = await store_upload(
        st.pool, collection, spool.records, spool.count, rejected, has_files=spool.has_files
    )
    assert stored is not None, "store_and_enqueue needs at least one document"
    metrics.DOCUMENTS_INGESTED.labels("api").inc(stored.accepted)
    if stored.document_ids:
        try:
            await asyncio.to_thread(
                enqueue_prep,
                st.celery,
                stored.document_ids,
                st.settings.prep_batch_size,
                str(stored.job_id),
            )
        except Exception:
            log.exception("could not enqueue job %s; the sweeper will retry", stored.job_id)
    log.info(
        "upload job=%s collection=%s accepted=%d unchanged=%d rejected=%d",
        stored.job_id,
        collection,
        stored.accepted,
        stored.unchanged,
        rejected,
    )
    return stored


def accepted(model: type[BaseModel], stored: StoredUpload, rejected: Sequence[Any]) -> JSONResponse:
    """The 202 of an upload, checked against its response model."""
    body = model.model_validate(
        {
            "job_id": str(stored.job_id),
            "accepted": stored.accepted,
            "unchanged": stored.unchanged,
            "rejected": rejected,
        }
    )
    return JSONResponse(body.model_dump(), status_code=202)
