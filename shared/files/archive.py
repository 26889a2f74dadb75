"""ZIP archives expanded in the API: each member becomes a file of the upload.

A ZIP is refused whole when it is a bomb: more members than ``max_members``, more declared
uncompressed bytes than ``max_total_bytes``, a large member compressed more than ``max_ratio``
times (text compresses 3-10×, a bomb 1000×), or a member that inflates past the size its
header declares. Members are refused one by one for unsafe paths (``..`` segments, absolute
paths, drive letters), encryption, or size; the rest are kept.

Member names: a ZIP written without the UTF-8 flag (Windows Explorer, older tools) carries its
names in the writer's code page, which Python reads as CP437; for Japanese names that is CP932,
so such names are re-read as UTF-8 if they decode, else as CP932.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

__all__ = ["ArchiveRejected", "Member", "expand_zip", "unsafe_path"]

# Members below this size are exempt from the ratio rule: a few KB of repetitive text can
# compress 100× and is harmless.
_RATIO_EXEMPT_BYTES = 1 << 20
_READ_CHUNK = 1 << 20
_JUNK_PREFIXES = ("__MACOSX/",)
_JUNK_NAMES = (".DS_Store", "Thumbs.db", "desktop.ini")


_UNREADABLE = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError)


class ArchiveRejected(ValueError):
    """The whole archive is refused: 413 for a bomb, 422 for a broken archive."""

    def __init__(self, message: str, status: int = 413) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Member:
    name: str
    data: bytes | None  # None when refused
    error: str | None = None
    status: int = 422  # of the refusal, when data is None


def unsafe_path(name: str) -> str | None:
    """Why a file name cannot be a document id taken from a path, or None when it can."""
    if name.startswith("/") or name.startswith("\\"):
        return "absolute path"
    if len(name) > 1 and name[1] == ":":
        return "absolute path (drive letter)"
    if "\\" in name:
        return "backslash in the path"
    if any(part in ("..", ".") for part in name.split("/")):
        return "'.' or '..' segment in the path"
    return None


def _member_name(info: zipfile.ZipInfo) -> str:
    if info.flag_bits & 0x800:
        return info.filename
    raw = info.filename.encode("cp437", errors="replace")
    for encoding in ("utf-8", "cp932"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return info.filename


def _read(z: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    out = bytearray()
    with z.open(info) as f:
        while chunk := f.read(_READ_CHUNK):
            out += chunk
            if len(out) > limit:
                raise ArchiveRejected(
                    f"member {info.filename!r} inflates past the size its header declares "
                    "(a ZIP bomb?)"
                )
    return bytes(out)


def expand_zip(
    data: bytes,
    *,
    max_members: int,
    max_total_bytes: int,
    max_ratio: float,
    max_file_bytes: int,
) -> Iterator[Member]:
    """The archive's files in archive order (directories and OS junk files skipped), read one
    at a time so that only one member's bytes are held. The whole-archive checks run before
    the first member is yielded."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as exc:
        raise ArchiveRejected(f"not a valid ZIP archive: {exc}", 422) from None
    with z:
        infos = [i for i in z.infolist() if not i.is_dir()]
        if len(infos) > max_members:
            raise ArchiveRejected(
                f"the archive has {len(infos)} members, over the limit of {max_members} "
                "(max_zip_members)"
            )
        total = sum(i.file_size for i in infos)
        if total > max_total_bytes:
            raise ArchiveRejected(
                f"the archive inflates to {total} bytes, over the limit of {max_total_bytes} "
                "(max_zip_uncompressed_bytes)"
            )
        for i in infos:
            ratio = i.file_size / max(i.compress_size, 1)
            if i.file_size >= _RATIO_EXEMPT_BYTES and ratio > max_ratio:
                raise ArchiveRejected(
                    f"member {i.filename!r} is compressed {ratio:.0f}× (over max_zip_ratio "
                    f"{max_ratio:g}): refused as a ZIP bomb"
                )
        for info in infos:
            name = _member_name(info)
            base = PurePosixPath(name).name
            if name.startswith(_JUNK_PREFIXES) or base in _JUNK_NAMES:
                continue
            why = unsafe_path(name)
            if why is not None:
                yield Member(name, None, f"unsafe member path: {why}")
            elif info.flag_bits & 0x1:
                yield Member(name, None, "encrypted member: cannot be read")
            elif info.file_size > max_file_bytes:
                yield Member(
                    name,
                    None,
                    f"member is {info.file_size} bytes, over the limit of {max_file_bytes} "
                    "(max_file_bytes)",
                    413,
                )
            else:
                try:
                    data = _read(z, info, info.file_size)
                except _UNREADABLE as e:
                    yield Member(name, None, f"member cannot be read: {e}")
                else:
                    yield Member(name, data)
