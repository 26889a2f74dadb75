"""Reading upload bodies: a JSON object, or NDJSON streamed line by line. Each document is
validated on its own; bad ones are reported with their index, id and reason, and the good ones in
the same request are still stored.

Bounded work per request:

- bytes: a JSON body is refused past ``max_request_bytes`` before it is parsed; an NDJSON stream
  past ``max_ndjson_bytes``, and a line past the per-document limit is rejected on its own;
- time: a client that sends nothing for ``upload_idle_timeout_seconds`` gets 408;
- the event loop: decoding, parsing, validation, normalization and hashing run in a worker
  thread, so one large upload does not stall the process's other requests;
- the database: validated documents are spooled to a temporary file while the client streams,
  and only then written, in one short transaction (no connection is held while a slow client
  uploads).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, TypedDict

import msgpack
from fastapi import Request

from shared.config import Settings
from shared.errors import RejectError
from shared.ingest.store import Record
from shared.ingest.validate import (
    DocumentRejected,
    ValidDocument,
    check_collection,
    document_id,
    parse_json,
    validate_document,
)

# NDJSON lines are validated in batches of about this many bytes: one thread hop per batch.
_BATCH_BYTES = 1 << 20
# The largest spooled record msgpack will read back: a file at the settings' ceiling.
_MAX_RECORD_BYTES = 2**31 - 1


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


@dataclass
class Spool:
    """Validated documents on disk until the upload is complete."""

    file: IO[bytes] = field(default_factory=lambda: tempfile.TemporaryFile(prefix="kensaku-"))
    count: int = 0

    has_files: bool = False

    def add(self, doc: ValidDocument) -> None:
        self.add_record(doc.record())

    def add_record(self, record: Record) -> None:
        self.file.write(msgpack.packb(record, use_bin_type=True))
        self.count += 1
        self.has_files = self.has_files or record[-1] is not None

    def records(self) -> Iterator[Record]:
        self.file.seek(0)
        # A file's bytes may be as large as max_file_bytes.
        unpacker = msgpack.Unpacker(
            self.file, raw=False, use_list=False, max_buffer_size=_MAX_RECORD_BYTES
        )
        yield from unpacker

    def close(self) -> None:
        self.file.close()


def _decode_error(exc: UnicodeDecodeError) -> str:
    return f"not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"


async def stream_with_idle_timeout(request: Request, idle_timeout: float) -> AsyncIterator[bytes]:
    """The request body, failing with 408 when the client goes quiet for ``idle_timeout``."""
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), idle_timeout)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise RejectError(
                f"no data from the client for {idle_timeout:g} s "
                "(upload_idle_timeout_seconds); nothing from this request was stored",
                status=408,
            ) from None
        yield chunk


async def read_limited(request: Request, settings: Settings) -> bytes:
    limit = settings.max_request_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RejectError(
            f"request body is {declared} bytes, over the limit of {limit} (max_request_bytes)",
            status=413,
        )
    body = bytearray()
    async for chunk in stream_with_idle_timeout(request, settings.upload_idle_timeout_seconds):
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
        payload = parse_json(text)
    except json.JSONDecodeError as exc:
        raise RejectError(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", status=400
        ) from None
    except RecursionError:
        raise RejectError("JSON nested too deeply to parse", status=400) from None
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


def _check_json(raw: bytes, settings: Settings, filt: DocumentFilter, spool: Spool) -> str:
    """The collection of a JSON body; its valid documents go to ``spool`` (runs in a thread)."""
    name, documents = parse_json_body(raw, settings)
    for index, obj in enumerate(documents):
        doc = filt.check(index, obj)
        if doc is not None:
            spool.add(doc)
    return name


async def read_json(
    request: Request, settings: Settings, filt: DocumentFilter, spool: Spool
) -> str:
    raw = await read_limited(request, settings)
    return await asyncio.to_thread(_check_json, raw, settings, filt, spool)


class _Lines:
    """Numbered NDJSON lines → validated documents into the spool (runs in a thread)."""

    def __init__(self, settings: Settings, filt: DocumentFilter, spool: Spool) -> None:
        self.settings = settings
        self.filt = filt
        self.spool = spool
        self.documents = 0
        self.limit = settings.max_document_bytes + 64 * 1024  # the text plus id and metadata

    def handle(self, batch: list[tuple[int, bytes | None]]) -> None:
        for index, line in batch:
            if line is None:
                self.filt.reject(index, None, f"line is over the limit of {self.limit} bytes")
                continue
            if not line.strip():
                continue
            self.documents += 1
            if self.documents > self.settings.max_documents_per_ndjson:
                raise RejectError(
                    f"more than {self.settings.max_documents_per_ndjson} documents in one "
                    "NDJSON upload (max_documents_per_ndjson); nothing from this request was "
                    "stored",
                    status=413,
                )
            if len(line) > self.limit:
                self.filt.reject(
                    index, None, f"line is {len(line)} bytes, over the limit of {self.limit}"
                )
                continue
            try:
                obj = parse_json(line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                self.filt.reject(index, None, f"line is {_decode_error(exc)}")
                continue
            except json.JSONDecodeError as exc:
                self.filt.reject(index, None, f"malformed JSON: {exc.msg} at column {exc.colno}")
                continue
            except RecursionError:
                self.filt.reject(index, None, "JSON nested too deeply to parse")
                continue
            doc = self.filt.check(index, obj)
            if doc is not None:
                self.spool.add(doc)


async def read_ndjson(
    request: Request, settings: Settings, filt: DocumentFilter, spool: Spool
) -> None:
    """Every line of an NDJSON body (``index`` is the 0-based line number) into the spool."""
    lines = _Lines(settings, filt, spool)
    cap = settings.max_ndjson_bytes
    total = 0
    buffer = b""
    index = 0
    oversized = False  # inside a line already known to be too long: drop it as it streams
    batch: list[tuple[int, bytes | None]] = []
    batch_bytes = 0
    async for chunk in stream_with_idle_timeout(request, settings.upload_idle_timeout_seconds):
        total += len(chunk)
        if total > cap:
            raise RejectError(
                f"NDJSON body is over the limit of {cap} bytes (max_ndjson_bytes); nothing "
                "from this request was stored",
                status=413,
            )
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            batch.append((index, None if oversized else line))
            batch_bytes += len(line)
            oversized = False
            index += 1
        if len(buffer) > lines.limit:
            oversized, buffer = True, b""
        if batch_bytes >= _BATCH_BYTES:
            await asyncio.to_thread(lines.handle, batch)
            batch, batch_bytes = [], 0
    batch.append((index, None if oversized else buffer))
    await asyncio.to_thread(lines.handle, batch)
