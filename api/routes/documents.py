"""Upload, read and delete documents."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from api.accept import accepted, store_and_enqueue
from api.bodies import DocumentFilter, Spool, read_json, read_ndjson
from api.deps import State
from api.schemas import Deleted, Document, UploadAccepted, errors
from shared.db.documents import delete_document, get_document
from shared.errors import RejectError
from shared.ingest.validate import DocumentRejected, check_collection

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["documents"], responses=errors(401, 404, 422, 503))

_NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")

# The JSON body as the schema can say it. Validation goes further (normalized text not empty,
# no NUL, metadata depth, sizes) and refuses a document on its own, with its reason.
UPLOAD_SCHEMA = {
    "type": "object",
    "required": ["documents"],
    "additionalProperties": False,
    "properties": {
        "collection": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
        "documents": {
            "type": "array",
            "minItems": 1,
            "maxItems": 10_000,
            "items": {
                "type": "object",
                "required": ["id", "text"],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "string", "minLength": 1, "maxLength": 512},
                    "title": {"type": "string", "maxLength": 2000},
                    "text": {"type": "string", "minLength": 1},
                    "metadata": {"type": "object"},
                },
            },
        },
    },
}


@router.post(
    "/documents",
    status_code=202,
    response_model=UploadAccepted,
    responses=errors(400, 408, 413, 415),
    summary="Upload documents (JSON object or NDJSON stream)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": UPLOAD_SCHEMA,
                    "example": {
                        "collection": "default",
                        "documents": [{"id": "doc-1", "title": "検索", "text": "全文検索の話。"}],
                    },
                },
                "application/x-ndjson": {
                    "schema": {
                        "type": "string",
                        "description": "One document object per line, as in 'documents'",
                    }
                },
            },
        }
    },
)
async def upload_documents(
    request: Request,
    st: State,
    collection: str | None = Query(None, description="Collection for NDJSON uploads"),
) -> JSONResponse:
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
        if spool.count == 0:
            if not filt.rejected:
                raise RejectError("the upload contains no documents")
            raise RejectError(
                f"none of the {len(filt.rejected)} documents was accepted",
                detail={"rejected": filt.rejected},
            )
        stored = await store_and_enqueue(st, name, spool, len(filt.rejected))
    finally:
        spool.close()
    return accepted(UploadAccepted, stored, filt.rejected)


# {doc_id:path}: an id may hold '/' (it is any string without control characters).
@router.get("/documents/{collection}/{doc_id:path}", summary="Read one document and its status")
async def read_document(st: State, collection: str, doc_id: str) -> Document:
    return Document.model_validate(await get_document(st.pool, collection, doc_id))


@router.delete(
    "/documents/{collection}/{doc_id:path}",
    summary="Delete a document, its chunks and embeddings",
)
async def remove_document(st: State, collection: str, doc_id: str) -> Deleted:
    await delete_document(st.pool, collection, doc_id)
    return Deleted(collection=collection, id=doc_id, deleted=True)
