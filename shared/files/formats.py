"""Which kind of file an upload is: by its name, then its declared type, then its first bytes.

The extension is the most reliable signal clients send (browsers and curl derive the part's
``Content-Type`` from it, or send ``application/octet-stream``); the declared type covers a file
without an extension; the magic bytes a PDF or a ZIP container sent under a wrong name.
"""

from __future__ import annotations

import io
import zipfile
from enum import StrEnum
from pathlib import PurePosixPath

__all__ = ["BadFile", "Format", "UnsupportedFile", "detect_format", "supported_suffixes"]


class Format(StrEnum):
    PDF = "pdf"
    DOCX = "docx"
    HTML = "html"
    MARKDOWN = "markdown"
    TEXT = "text"
    ZIP = "zip"

    @property
    def content_type(self) -> str:
        return _CONTENT_TYPES[self]


_CONTENT_TYPES = {
    Format.PDF: "application/pdf",
    Format.DOCX: "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    Format.HTML: "text/html",
    Format.MARKDOWN: "text/markdown",
    Format.TEXT: "text/plain",
    Format.ZIP: "application/zip",
}
_EXTENSIONS = {
    ".pdf": Format.PDF,
    ".docx": Format.DOCX,
    ".html": Format.HTML,
    ".htm": Format.HTML,
    ".xhtml": Format.HTML,
    ".md": Format.MARKDOWN,
    ".markdown": Format.MARKDOWN,
    ".txt": Format.TEXT,
    ".text": Format.TEXT,
    ".csv": Format.TEXT,
    ".tsv": Format.TEXT,
    ".log": Format.TEXT,
    ".zip": Format.ZIP,
}
_TYPES = {
    "application/pdf": Format.PDF,
    _CONTENT_TYPES[Format.DOCX]: Format.DOCX,
    "text/html": Format.HTML,
    "application/xhtml+xml": Format.HTML,
    "text/markdown": Format.MARKDOWN,
    "text/x-markdown": Format.MARKDOWN,
    "text/plain": Format.TEXT,
    "text/csv": Format.TEXT,
    "application/zip": Format.ZIP,
    "application/x-zip-compressed": Format.ZIP,
}
# Named so that a refusal can say what the file is and that kensaku does not read it.
_KNOWN_UNSUPPORTED = {
    ".doc": "legacy Word (.doc); save it as .docx",
    ".xls": "Excel",
    ".xlsx": "Excel",
    ".ppt": "PowerPoint",
    ".pptx": "PowerPoint",
    ".rtf": "RTF",
    ".odt": "OpenDocument",
    ".png": "an image (OCR is not supported)",
    ".jpg": "an image (OCR is not supported)",
    ".jpeg": "an image (OCR is not supported)",
    ".gif": "an image (OCR is not supported)",
    ".tif": "an image (OCR is not supported)",
    ".tiff": "an image (OCR is not supported)",
}


class UnsupportedFile(ValueError):
    """A kind of file kensaku does not read (the API answers 415 for that file)."""


class BadFile(ValueError):
    """A file that is not what it says it is, or is broken (422 for that file)."""


def supported_suffixes() -> frozenset[str]:
    """The file name extensions kensaku reads (``.pdf``, ...)."""
    return frozenset(_EXTENSIONS)


def _is_docx(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return "word/document.xml" in z.namelist()
    except zipfile.BadZipFile:
        return False


def detect_format(filename: str, content_type: str | None, data: bytes) -> Format:
    suffix = PurePosixPath(filename).suffix.lower()
    declared = (content_type or "").split(";")[0].strip().lower()
    head = data[:1024]
    if head.lstrip().startswith(b"%PDF-"):
        return Format.PDF
    if head.startswith(b"PK\x03\x04"):
        if suffix == ".docx" or declared == _CONTENT_TYPES[Format.DOCX]:
            return Format.DOCX
        if suffix == ".zip" or declared in ("application/zip", "application/x-zip-compressed"):
            return Format.ZIP
        if _is_docx(data):
            return Format.DOCX
    found = _EXTENSIONS.get(suffix) or _TYPES.get(declared)
    if found is None and declared.startswith("text/"):
        found = Format.TEXT
    if found is None and not suffix and declared in ("", "application/octet-stream"):
        found = Format.TEXT  # no name and no type: read as text; decoding says if it is not
    if found is None:
        what = _KNOWN_UNSUPPORTED.get(suffix) or f"type {declared or suffix or 'unknown'}"
        raise UnsupportedFile(
            f"unsupported file: {what}; kensaku reads PDF, DOCX, HTML, Markdown, plain text "
            "and ZIP archives of those"
        )
    if found is Format.PDF:
        raise BadFile("not a PDF: the file does not start with %PDF-")
    if found in (Format.DOCX, Format.ZIP):
        raise BadFile(f"not a {found.value.upper()} file: it is not a ZIP container")
    if b"\x00" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
        # Text in UTF-16 carries a BOM in practice; NULs otherwise mean a binary file.
        raise UnsupportedFile("unsupported file: binary content (NUL bytes) under a text type")
    return found
