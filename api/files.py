"""Reading a file upload (``multipart/form-data``): each ``files`` part, or each member of a ZIP
part, becomes one document whose id is its file name; an optional ``metadata`` part (a JSON
object) is applied to every file.

The API only checks and stores: the name, the size, the kind of file (415 for one kensaku does
not read), ZIP archives expanded within their caps. The text is extracted by the prep worker
(shared/files/extract.py), so a slow PDF never holds up a request. A bad file is rejected on its
own with its index, name and reason; the others are stored.

Bounded like JSON uploads: the body past ``max_files_request_bytes`` is refused (413) as it
streams, a client silent for ``upload_idle_timeout_seconds`` gets 408, files past
``max_files_per_request`` are refused, and the parts are spooled to temporary files while the
client sends them (Starlette's parser); checking and hashing run in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import PurePosixPath
from typing import Any, NotRequired, TypedDict

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from api.bodies import Spool, stream_with_idle_timeout
from shared.config import Settings
from shared.errors import RejectError
from shared.files.archive import ArchiveRejected, Member, expand_zip, unsafe_path
from shared.files.formats import BadFile, Format, UnsupportedFile, detect_format
from shared.ingest.validate import (
    DocumentRejected,
    check_id,
    check_metadata,
    parse_json,
)

# The metadata part is the only non-file part; it is small.
_MAX_FIELD_BYTES = 64 * 1024


class _Parser(MultiPartParser):
    # Each file part is spooled in memory up to this, then on disk: with max_files_per_request
    # parts in flight, Starlette's 1 MiB would allow a GiB of memory per request.
    spool_max_size = 128 * 1024


class FileRejection(TypedDict):
    index: int
    filename: str | None
    error: str
    status: int
    archive: NotRequired[str]


@dataclass
class FilesRead:
    rejected: list[FileRejection] = field(default_factory=list)
    files: int = 0  # files seen, ZIP members counted one by one


def _charset(content_type: str | None) -> str | None:
    if not content_type:
        return None
    msg = Message()
    msg["content-type"] = content_type
    value = msg.get_param("charset")
    return value if isinstance(value, str) and value else None


def content_hash(fmt: Format, charset: str | None, data: bytes) -> bytes:
    """A re-upload of the same bytes, read the same way, does no work."""
    h = hashlib.sha256(f"file\0{fmt.value}\0{charset or ''}\0".encode())
    h.update(data)
    return h.digest()


class _FileChecker:
    """Upload parts → spooled records and rejections (runs in a thread)."""

    def __init__(self, settings: Settings, metadata: dict[str, Any], spool: Spool) -> None:
        self.settings = settings
        self.metadata = metadata
        self.spool = spool
        self.out = FilesRead()
        self._seen: dict[str, int] = {}

    def reject(
        self,
        index: int,
        filename: str | None,
        error: str,
        status: int = 422,
        archive: str | None = None,
    ) -> None:
        r: FileRejection = {"index": index, "filename": filename, "error": error, "status": status}
        if archive is not None:
            r["archive"] = archive
        self.out.rejected.append(r)

    def part(self, index: int, upload: UploadFile) -> None:
        name = upload.filename or ""
        self.out.files += 1
        if not name:
            self.reject(index, None, "a 'files' part without a file name")
            return
        limit = self.settings.max_file_bytes
        data = upload.file.read(limit + 1)
        if len(data) > limit:
            self.reject(
                index, name, f"file is over the limit of {limit} bytes (max_file_bytes)", 413
            )
            return
        charset = _charset(upload.content_type)
        try:
            fmt = detect_format(name, upload.content_type, data)
        except UnsupportedFile as exc:
            self.reject(index, name, str(exc), 415)
            return
        except BadFile as exc:
            self.reject(index, name, str(exc))
            return
        if fmt is Format.ZIP:
            self._archive(index, name, data)
        else:
            self._document(index, name, fmt, charset, data, None)

    def _archive(self, index: int, name: str, data: bytes) -> None:
        s = self.settings
        members = expand_zip(
            data,
            max_members=s.max_zip_members,
            max_total_bytes=s.max_zip_uncompressed_bytes,
            max_ratio=s.max_zip_ratio,
            max_file_bytes=s.max_file_bytes,
        )
        seen = 0
        try:
            for m in members:
                seen += 1
                self.out.files += 1
                self._member(index, name, m)
        except ArchiveRejected as exc:
            kept = f" ({seen} member(s) before it were read)" if seen else ""
            self.reject(index, name, f"{exc}{kept}", exc.status)
            return
        if not seen:
            self.reject(index, name, "the archive holds no files")

    def _member(self, index: int, archive: str, m: Member) -> None:
        if m.data is None:
            self.reject(index, m.name, m.error or "refused", m.status, archive=archive)
            return
        try:
            fmt = detect_format(m.name, None, m.data)
        except UnsupportedFile as exc:
            self.reject(index, m.name, str(exc), 415, archive=archive)
            return
        except BadFile as exc:
            self.reject(index, m.name, str(exc), archive=archive)
            return
        if fmt is Format.ZIP:
            self.reject(index, m.name, "a ZIP inside a ZIP is not expanded", 415, archive)
            return
        self._document(index, m.name, fmt, None, m.data, archive)

    def _document(
        self,
        index: int,
        name: str,
        fmt: Format,
        charset: str | None,
        data: bytes,
        archive: str | None,
    ) -> None:
        if not data:
            self.reject(index, name, "file is empty", archive=archive)
            return
        why = unsafe_path(name)
        if why is not None:
            self.reject(index, name, f"file name cannot be a document id: {why}", archive=archive)
            return
        try:
            external_id = check_id(name, self.settings)
        except DocumentRejected as exc:
            self.reject(index, name, f"file name cannot be a document id: {exc}", archive=archive)
            return
        if external_id in self._seen:
            first = self._seen[external_id]
            self.reject(
                index,
                name,
                f"duplicate file name in this request (first in part {first})",
                archive=archive,
            )
            return
        self._seen[external_id] = index
        meta: dict[str, Any] = {
            **self.metadata,
            "filename": name,
            "content_type": fmt.content_type,
            "bytes": len(data),
        }
        if archive is not None:
            meta["archive"] = archive
        try:
            metadata_json = check_metadata(meta)
        except DocumentRejected as exc:
            self.reject(index, name, str(exc), archive=archive)
            return
        title = PurePosixPath(name).name  # until prep reads the file's own title
        self.spool.add_record(
            (
                external_id,
                title,
                "",
                metadata_json,
                content_hash(fmt, charset, data),
                name,
                fmt.value,
                charset,
                data,
            )
        )

    def run(self, parts: list[tuple[int, UploadFile]]) -> FilesRead:
        for index, upload in parts:
            self.part(index, upload)
        return self.out


async def _capped(chunks: AsyncIterator[bytes], limit: int) -> AsyncGenerator[bytes, None]:
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise RejectError(
                f"request body is over the limit of {limit} bytes (max_files_request_bytes); "
                "nothing from this request was stored",
                status=413,
            )
        yield chunk


def _metadata(value: str) -> dict[str, Any]:
    try:
        metadata = parse_json(value)
    except json.JSONDecodeError as exc:
        raise RejectError(f"the 'metadata' part is not valid JSON: {exc.msg}", status=400) from None
    except RecursionError:
        raise RejectError("the 'metadata' part is nested too deeply", status=400) from None
    if not isinstance(metadata, dict):
        raise RejectError("the 'metadata' part must be a JSON object")
    try:
        check_metadata(metadata)
    except DocumentRejected as exc:
        raise RejectError(f"the 'metadata' part: {exc}") from None
    return metadata


async def read_files(request: Request, settings: Settings, spool: Spool) -> FilesRead:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        raise RejectError(
            f"unsupported content type {content_type.split(';')[0]!r}: send the files as "
            "multipart/form-data, one part named 'files' per file",
            status=415,
        )
    stream = _capped(
        stream_with_idle_timeout(request, settings.upload_idle_timeout_seconds),
        settings.max_files_request_bytes,
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > settings.max_files_request_bytes:
        raise RejectError(
            f"request body is {declared} bytes, over the limit of "
            f"{settings.max_files_request_bytes} (max_files_request_bytes)",
            status=413,
        )
    parser = _Parser(
        request.headers,
        stream,
        max_files=settings.max_files_per_request,
        max_fields=8,
        max_part_size=_MAX_FIELD_BYTES,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        message = str(exc)
        status = 413 if message.startswith(("Too many", "Part exceeded", "Field exceeded")) else 400
        if message.startswith("Too many files"):
            message += " (max_files_per_request)"
        raise RejectError(f"multipart body refused: {message}", status=status) from None
    try:
        parts: list[tuple[int, UploadFile]] = []
        metadata: dict[str, Any] = {}
        metadata_seen = False
        for key, value in form.multi_items():
            if key == "files":
                if not isinstance(value, UploadFile):
                    raise RejectError(
                        "a 'files' part must be a file with a file name "
                        "(curl: -F files=@report.pdf)",
                        status=400,
                    )
                parts.append((len(parts), value))
            elif key == "metadata":
                if metadata_seen or not isinstance(value, str):
                    raise RejectError("'metadata' must be one text part holding a JSON object")
                metadata_seen = True
                metadata = _metadata(value)
            else:
                raise RejectError(
                    f"unknown part {key!r}: the parts are 'files' (one or more) and 'metadata'",
                    status=400,
                )
        if not parts:
            raise RejectError("no 'files' part in the upload", status=400)
        checker = _FileChecker(settings, metadata, spool)
        return await asyncio.to_thread(checker.run, parts)
    finally:
        await form.close()
