"""Response bodies of every route, so the OpenAPI schema documents what each one answers (and
property-based tests can hold the API to it)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class FieldError(BaseModel):
    field: str
    error: str


class Rejection(BaseModel):
    index: int = Field(description="0-based position in the request (NDJSON: the line)")
    id: str | None
    error: str


class Error(BaseModel):
    """Every error: what is wrong, in a sentence."""

    detail: str
    rejected: list[Rejection] | list[FileRejection] | None = Field(
        None, description="When an upload stores nothing: every document and why it was refused"
    )
    errors: list[FieldError] | None = Field(None, description="With 422: each invalid field")


class UploadAccepted(BaseModel):
    job_id: str
    accepted: int
    unchanged: int
    rejected: list[Rejection]


class FileRejection(BaseModel):
    index: int = Field(description="0-based position of the 'files' part (a ZIP's for members)")
    filename: str | None = Field(description="The file's name; a member's path in its archive")
    error: str
    status: int = Field(description="The status this file alone would get: 413, 415 or 422")
    archive: str | None = Field(None, description="For a ZIP member: the archive's name")


class FilesAccepted(BaseModel):
    job_id: str
    accepted: int
    unchanged: int
    rejected: list[FileRejection]


class Document(BaseModel):
    id: str
    collection: str
    title: str
    text: str
    metadata: dict[str, Any]
    status: Literal["queued", "prepped", "indexed", "failed"]
    chunks: int
    attempts: int
    last_error: str | None
    job_id: str | None
    created_at: str
    updated_at: str


class Deleted(BaseModel):
    collection: str
    id: str
    deleted: bool


class JobError(BaseModel):
    id: str | None
    stage: str
    error: str
    at: str


class Job(BaseModel):
    job_id: str
    collection: str
    status: Literal["queued", "running", "done", "partial", "failed"]
    total: int
    queued: int
    prepped: int = Field(description="Documents past prep (indexed included)")
    indexed: int
    failed: int
    superseded: int = Field(description="Re-uploaded under a later job, or deleted, meanwhile")
    unchanged: int
    rejected: int
    errors: list[JobError]
    created_at: str
    finished_at: str | None


class Health(BaseModel):
    status: str


class Embedding(BaseModel):
    model: str
    backend: str
    device: str
    dimension: int
    vector_unit: str
    index: str
    dimensions_stored: int
    # How a reduced index's dimensions are made (KENSAKU_VECTOR_PROJECTION); null: all of them.
    projection: Literal["pca", "prefix"] | None
    # Intra-op thread counts a query encode may run on; the cores other processes leave idle
    # choose among them (KENSAKU_QUERY_THREADS unset). Empty: the runtime's own default.
    query_threads: list[int]


class Readiness(BaseModel):
    ready: bool
    database: Literal["ok", "unavailable"]
    broker: Literal["ok", "unavailable"]
    model: str
    # The registry's active model as the API last saw it; not ready when the API has served
    # another one for over a minute (it could not load the new one).
    registry_model: str | None = None
    embedding: Embedding


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: these status codes answer with an Error body."""
    described = {
        400: "Malformed request body",
        401: "Missing or wrong API key",
        404: "Unknown collection, document or job",
        408: "The client sent nothing for too long",
        413: "Too large: body, documents or lines over a limit",
        415: "Unsupported content type (files: every file of a type kensaku does not read)",
        422: "Invalid request: the fields, or every document of an upload",
        503: "The database is unavailable or too slow; retry",
    }
    return {code: {"model": Error, "description": described[code]} for code in codes}
