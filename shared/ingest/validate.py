"""Validation of uploaded documents, one at a time, with a message that says what is wrong.

A bad document is rejected on its own (its index and id are reported); the others in the same
request are still accepted.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.config import Settings
from shared.text.normalize import normalize
from shared.text.pipeline import normalized_content_hash

if TYPE_CHECKING:
    from shared.ingest.store import Record

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ALLOWED_FIELDS = frozenset({"id", "title", "text", "metadata"})
_MAX_TITLE_CHARS = 2_000
_MAX_METADATA_BYTES = 64 * 1024
# Deeper metadata is refused: nothing needs it, and every walk over it recurses.
MAX_METADATA_DEPTH = 32
# C0 controls other than tab, line feed and carriage return have no place in an id.
_ID_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class DocumentRejected(ValueError):
    """One document is invalid; the message is shown to the client as is."""


class NonFinite:
    """What ``parse_json`` makes of NaN, Infinity and -Infinity: Python's json accepts them,
    PostgreSQL's jsonb does not, so the document that holds one is rejected by name instead of
    failing the whole upload in the database."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def parse_json(text: str) -> Any:
    """``json.loads`` with NaN/Infinity kept apart (see NonFinite). RecursionError propagates
    for input nested deeper than the parser can go."""
    return json.loads(text, parse_constant=NonFinite)


_JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    type(None): "null",
    int: "number",
    float: "number",
}


def _type_name(value: Any) -> str:
    if isinstance(value, NonFinite):
        return value.name
    return _JSON_TYPES.get(type(value), type(value).__name__)


@dataclass(frozen=True, slots=True)
class ValidDocument:
    external_id: str
    title: str
    body: str
    metadata_json: str
    content_hash: bytes

    def record(self) -> Record:
        return (
            self.external_id,
            self.title,
            self.body,
            self.metadata_json,
            self.content_hash,
            None,
            None,
            None,
            None,
        )


def check_collection(name: Any) -> str:
    if not isinstance(name, str) or not COLLECTION_NAME.match(name):
        raise DocumentRejected(
            "collection must be 1-64 characters of letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def _check_text(value: str, field: str) -> None:
    nul = value.find("\x00")
    if nul >= 0:
        raise DocumentRejected(f"{field} contains a NUL character at position {nul}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DocumentRejected(
            f"{field} contains an unpaired surrogate at position {exc.start} (not valid Unicode)"
        ) from None


def _check_json_value(value: Any, where: str, depth: int = 0) -> None:
    """What jsonb refuses, named: \\u0000 and lone surrogates anywhere (keys included), NaN and
    infinities (numbers like 1e999 parse to infinity); and nesting past MAX_METADATA_DEPTH."""
    if depth > MAX_METADATA_DEPTH:
        raise DocumentRejected(f"{where} is nested deeper than {MAX_METADATA_DEPTH} levels")
    if isinstance(value, str):
        _check_text(value, where)
    elif isinstance(value, NonFinite):
        raise DocumentRejected(f"{where} is {value.name}; JSON numbers must be finite")
    elif isinstance(value, float) and not math.isfinite(value):
        raise DocumentRejected(f"{where} is out of range for a JSON number")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(k, f"{where} key")
            _check_json_value(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_json_value(v, f"{where}[{i}]", depth + 1)


def document_id(obj: Any) -> str | None:
    """The id to report for a document, even an invalid one (None when there is none)."""
    if isinstance(obj, dict):
        v = obj.get("id")
        if isinstance(v, str | int) and not isinstance(v, bool):
            return str(v)
    return None


def check_id(raw_id: Any, settings: Settings) -> str:
    """A document id as the API stores it (an integer id becomes its decimal string)."""
    if raw_id is None:
        raise DocumentRejected("id is required")
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        raise DocumentRejected(f"id must be a string, got {_type_name(raw_id)}")
    external_id = str(raw_id)
    if not external_id.strip():
        raise DocumentRejected("id is empty")
    if len(external_id) > settings.max_id_chars:
        raise DocumentRejected(f"id is longer than {settings.max_id_chars} characters")
    if _ID_CONTROL.search(external_id):
        raise DocumentRejected("id contains control characters")
    if external_id != external_id.strip():
        raise DocumentRejected("id starts or ends with whitespace")
    if any(part in (".", "..") for part in external_id.split("/")):
        # /v1/documents/{collection}/{id} must reach it; clients drop dot segments from URLs.
        raise DocumentRejected(
            "id has a '.' or '..' segment between slashes, which URLs cannot carry"
        )
    _check_text(external_id, "id")
    return external_id


def check_metadata(metadata: Any) -> str:
    """Metadata as the JSON text jsonb will take."""
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise DocumentRejected(f"metadata must be a JSON object, got {_type_name(metadata)}")
    _check_json_value(metadata, "metadata")
    metadata_json = json.dumps(metadata, ensure_ascii=False, separators=(",", ":"))
    if len(metadata_json.encode("utf-8")) > _MAX_METADATA_BYTES:
        raise DocumentRejected(f"metadata is larger than {_MAX_METADATA_BYTES} bytes")
    return metadata_json


def validate_document(obj: Any, settings: Settings) -> ValidDocument:
    if not isinstance(obj, dict):
        raise DocumentRejected(f"a document must be a JSON object, got {_type_name(obj)}")
    unknown = sorted(set(obj) - _ALLOWED_FIELDS)
    if unknown:
        raise DocumentRejected(
            f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: id, title, text, metadata"
        )

    external_id = check_id(obj.get("id"), settings)

    text = obj.get("text")
    if text is None:
        raise DocumentRejected("text is required")
    if not isinstance(text, str):
        raise DocumentRejected(f"text must be a string, got {_type_name(text)}")
    _check_text(text, "text")
    size = len(text.encode("utf-8"))
    if size > settings.max_document_bytes:
        raise DocumentRejected(
            f"text is {size} bytes, over the limit of {settings.max_document_bytes} bytes "
            "(max_document_bytes)"
        )
    normalized = normalize(text)
    if not normalized.strip():
        raise DocumentRejected("text is empty or only whitespace/control characters")

    title = obj.get("title", "")
    if title is None:
        title = ""
    if not isinstance(title, str):
        raise DocumentRejected(f"title must be a string, got {_type_name(title)}")
    _check_text(title, "title")
    if len(title) > _MAX_TITLE_CHARS:
        raise DocumentRejected(f"title is longer than {_MAX_TITLE_CHARS} characters")

    metadata_json = check_metadata(obj.get("metadata", {}))

    # Hashing the normalized text makes width- or spacing-only edits a no-op re-upload.
    digest = normalized_content_hash(normalize(title), normalized)
    return ValidDocument(external_id, title, text, metadata_json, digest)
