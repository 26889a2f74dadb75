"""Parsing upload bodies: a JSON object, or NDJSON streamed line by line (so uploads of any size
never sit in memory at once). Each document is validated on its own; bad ones are reported with
their index, id and reason, and the good ones in the same request are still stored.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, TypedDict

from fastapi import Request

from shared.config import Settings
from shared.errors import RejectError
from shared.ingest.validate import (
    DocumentRejected,
    ValidDocument,
    check_collection,
    document_id,
    validate_document,
)


class Rejection(TypedDict):
    index: int
    id: str | None
    error: str


class DocumentFilter:
    """Validates documents in order, remembering rejections and ids already seen."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rejected: list[Rejection] = []
        self._seen: dict[str, int] = {}

    def reject(self, index: int, obj: Any, error: str) -> None:
        self.rejected.append({"index": index, "id": document_id(obj), "error": error})

    def check(self, index: int, obj: Any) -> ValidDocument | None:
        try:
            doc = validate_document(obj, self.settings)
        except DocumentRejected as exc:
            self.reject(index, obj, str(exc))
            return None
        first = self._seen.setdefault(doc.external_id, index)
        if first != index:
            self.reject(index, obj, f"duplicate id in this request (first at index {first})")
            return None
        return doc


def _decode_error(exc: UnicodeDecodeError) -> str:
    return f"not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RejectError(
            f"request body is {declared} bytes, over the limit of {limit} (max_request_bytes)",
            status=413,
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RejectError(
                f"request body is over the limit of {limit} bytes (max_request_bytes)",
                status=413,
            )
    return bytes(body)


def parse_json_body(raw: bytes, settings: Settings) -> tuple[str, list[Any]]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RejectError(f"request body is {_decode_error(exc)}", status=400) from None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RejectError(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", status=400
        ) from None
    if not isinstance(payload, dict):
        raise RejectError("the body must be a JSON object with 'collection' and 'documents'")
    unknown = sorted(set(payload) - {"collection", "documents"})
    if unknown:
        raise RejectError(f"unknown field(s) {', '.join(map(repr, unknown))} in the body")
    try:
        collection = check_collection(payload.get("collection", "default"))
    except DocumentRejected as exc:
        raise RejectError(str(exc)) from None
    documents = payload.get("documents")
    if not isinstance(documents, list):
        raise RejectError("'documents' must be a list of document objects")
    if not documents:
        raise RejectError("'documents' is empty")
    if len(documents) > settings.max_documents_per_request:
        raise RejectError(
            f"{len(documents)} documents in one request, over the limit of "
            f"{settings.max_documents_per_request} (max_documents_per_request); "
            "split the upload or use NDJSON",
            status=413,
        )
    return collection, documents


async def iter_json_documents(
    documents: list[Any], filt: DocumentFilter
) -> AsyncIterator[ValidDocument]:
    for index, obj in enumerate(documents):
        doc = filt.check(index, obj)
        if doc is not None:
            yield doc


async def iter_ndjson_documents(
    request: Request, filt: DocumentFilter
) -> AsyncIterator[ValidDocument]:
    """Documents from an NDJSON body; ``index`` is the 0-based line number."""
    settings = filt.settings
    buffer = b""
    index = 0
    documents = 0

    def handle(line: bytes, index: int, limit: int) -> ValidDocument | None:
        nonlocal documents
        if not line.strip():
            return None
        documents += 1
        if documents > settings.max_documents_per_ndjson:
            raise RejectError(
                f"more than {settings.max_documents_per_ndjson} documents in one NDJSON upload "
                "(max_documents_per_ndjson); nothing from this request was stored",
                status=413,
            )
        if len(line) > limit:
            filt.reject(index, None, f"line is {len(line)} bytes, over the limit of {limit}")
            return None
        try:
            obj = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            filt.reject(index, None, f"line is {_decode_error(exc)}")
            return None
        except json.JSONDecodeError as exc:
            filt.reject(index, None, f"malformed JSON: {exc.msg} at column {exc.colno}")
            return None
        return filt.check(index, obj)

    limit = settings.max_document_bytes + 64 * 1024  # the text plus room for id and metadata
    oversized = False  # inside a line already known to be too long: drop it as it streams
    async for chunk in request.stream():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if oversized:
                filt.reject(index, None, f"line is over the limit of {limit} bytes")
                oversized = False
                doc = None
            else:
                doc = handle(line, index, limit)
            index += 1
            if doc is not None:
                yield doc
        if len(buffer) > limit:
            oversized, buffer = True, b""
    if oversized:
        filt.reject(index, None, f"line is over the limit of {limit} bytes")
    else:
        doc = handle(buffer, index, limit)
        if doc is not None:
            yield doc
