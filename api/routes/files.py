"""Upload files: PDF, DOCX, HTML, Markdown, plain text in any Japanese encoding, or a ZIP of
them. Each file becomes one document whose id is its file name."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from api.accept import accepted, store_and_enqueue
from api.bodies import Spool
from api.deps import State
from api.files import read_files
from api.schemas import FilesAccepted, errors
from shared.errors import RejectError
from shared.ingest.validate import DocumentRejected, check_collection

router = APIRouter(prefix="/v1", tags=["documents"], responses=errors(401, 422, 503))

_FORM_SCHEMA = {
    "type": "object",
    "required": ["files"],
    "properties": {
        "files": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "One part per file; a .zip part is expanded (each member a file)",
        },
        "metadata": {
            "type": "string",
            "description": "A JSON object added to every file's metadata",
        },
    },
}


@router.post(
    "/files",
    status_code=202,
    response_model=FilesAccepted,
    responses=errors(400, 408, 413, 415),
    summary="Upload files (multipart/form-data: 'files' parts, optional 'metadata')",
    description=(
        "Each file becomes one document: id = its file name (a ZIP member's path in the "
        "archive), title from the file (PDF/DOCX title, HTML <title>, first Markdown heading, "
        "else the file name), metadata {filename, content_type, bytes} plus the 'metadata' "
        "part. The text is extracted by the workers; a file that cannot be read (corrupt, "
        "encrypted, no text layer) ends as a failed document with the reason in the job."
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": _FORM_SCHEMA}},
        }
    },
)
async def upload_files(
    request: Request,
    st: State,
    collection: str = Query("default", description="Collection to add the files to"),
) -> JSONResponse:
    try:
        name = check_collection(collection)
    except DocumentRejected as exc:
        raise RejectError(str(exc)) from None
    spool = Spool()
    try:
        read = await read_files(request, st.settings, spool)
        if spool.count == 0:
            statuses = {r["status"] for r in read.rejected}
            raise RejectError(
                f"none of the {read.files} files was accepted",
                status=statuses.pop() if len(statuses) == 1 else 422,
                detail={"rejected": read.rejected},
            )
        stored = await store_and_enqueue(st, name, spool, len(read.rejected))
    finally:
        spool.close()
    return accepted(FilesAccepted, stored, read.rejected)
