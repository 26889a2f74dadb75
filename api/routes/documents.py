"""Upload, read and delete documents."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from api.bodies import DocumentFilter, Spool, read_json, read_ndjson
from api.deps import state_of
from shared import metrics
from shared.db.documents import delete_document, get_document
from shared.errors import RejectError
from shared.ingest.store import store_upload
from shared.ingest.validate import DocumentRejected, check_collection
from shared.taskqueue import enqueue_prep

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["documents"])

_NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")


@router.post(
    "/documents",
    status_code=202,
    summary="Upload documents (JSON object or NDJSON stream)",
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {
                    "example": {
                        "collection": "default",
                        "documents": [{"id": "doc-1", "title": "検索", "text": "全文検索の話。"}],
                    }
                },
                "application/x-ndjson": {"schema": {"type": "string"}},
            }
        }
    },
)
async def upload_documents(
    request: Request,
    collection: str | None = Query(None, description="Collection for NDJSON uploads"),
) -> JSONResponse:
    st = state_of(request)
    settings = st.settings
    filt = DocumentFilter(settings)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    spool = Spool()
    try:
        if content_type in _NDJSON_TYPES:
            try:
                name = check_collection(collection or "default")
            except DocumentRejected as exc:
                raise RejectError(str(exc)) from None
            await read_ndjson(request, settings, filt, spool)
        elif content_type in ("application/json", ""):
            name = await read_json(request, settings, filt, spool)
            if collection is not None and collection != name:
                raise RejectError(
                    "collection given in both the query and the body, and they differ"
                )
        else:
            raise RejectError(
                f"unsupported content type {content_type!r}: use application/json or "
                "application/x-ndjson",
                status=415,
            )
        stored = await store_upload(st.pool, name, spool.records, spool.count, len(filt.rejected))
    finally:
        spool.close()
    if stored is None:
        if not filt.rejected:
            raise RejectError("the upload contains no documents")
        raise RejectError(
            f"none of the {len(filt.rejected)} documents was accepted",
            detail={"rejected": filt.rejected},
        )
    metrics.DOCUMENTS_INGESTED.labels("api").inc(stored.accepted)
    if stored.document_ids:
        try:
            await asyncio.to_thread(
                enqueue_prep,
                st.celery,
                stored.document_ids,
                settings.prep_batch_size,
                str(stored.job_id),
            )
        except Exception:
            # Stored durably already: the sweeper enqueues them once the broker is back.
            log.exception("could not enqueue job %s; the sweeper will retry", stored.job_id)
    log.info(
        "upload job=%s collection=%s accepted=%d unchanged=%d rejected=%d",
        stored.job_id, name, stored.accepted, stored.unchanged, len(filt.rejected),
    )  # fmt: skip
    body: dict[str, Any] = {
        "job_id": str(stored.job_id),
        "accepted": stored.accepted,
        "unchanged": stored.unchanged,
        "rejected": filt.rejected,
    }
    return JSONResponse(body, status_code=202)


# {doc_id:path}: an id may hold '/' (it is any string without control characters).
@router.get("/documents/{collection}/{doc_id:path}", summary="Read one document and its status")
async def read_document(request: Request, collection: str, doc_id: str) -> dict[str, Any]:
    return await get_document(state_of(request).pool, collection, doc_id)


@router.delete(
    "/documents/{collection}/{doc_id:path}",
    summary="Delete a document, its chunks and embeddings",
)
async def remove_document(request: Request, collection: str, doc_id: str) -> dict[str, Any]:
    await delete_document(state_of(request).pool, collection, doc_id)
    return {"collection": collection, "id": doc_id, "deleted": True}
