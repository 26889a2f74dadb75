"""The client side of ingestion (`kensaku ingest`, `kensaku up --ingest`): JSONL files streamed
as NDJSON to /v1/documents, every other file to /v1/files in batches, and waiting on the jobs
with one progress bar.

Files found under a directory get the path relative to that directory as their name (so two
``README.md`` in different folders stay two documents); a file named on the command line gets its
own name. Batches hold up to ``batch_files`` files or ``batch_bytes`` bytes (a larger file goes
alone); each is one request and one job.
"""

from __future__ import annotations

import mimetypes
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shared.files.formats import supported_suffixes

__all__ = ["FileBatchResult", "collect_files", "upload_files", "upload_jsonl", "wait_jobs"]

JSONL_SUFFIXES = (".jsonl", ".ndjson")


class UploadFailed(Exception):
    """A request the API refused as a whole."""


def _ndjson_lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                yield line if line.endswith(b"\n") else line + b"\n"


def upload_jsonl(api: str, path: Path, collection: str, headers: dict[str, str]) -> dict[str, Any]:
    """One streamed NDJSON request: the file is never held in memory whole."""
    resp = httpx.post(
        f"{api}/v1/documents",
        params={"collection": collection},
        content=_ndjson_lines(path),
        headers={**headers, "Content-Type": "application/x-ndjson"},
        timeout=600,
    )
    if resp.status_code != 202:
        raise UploadFailed(f"upload of {path} failed ({resp.status_code}): {resp.text}")
    body: dict[str, Any] = resp.json()
    for r in body["rejected"][:20]:
        print(f"rejected line {r['index'] + 1} (id {r['id']}): {r['error']}", file=sys.stderr)
    return body


def collect_files(paths: list[Path], glob: str | None) -> list[tuple[str, Path]]:
    """(name to upload under, path) for every file: named ones as they are, directories walked
    recursively for ``glob`` (default: every file of a supported kind; hidden ones skipped)."""
    out: list[tuple[str, Path]] = []
    suffixes = supported_suffixes()
    for given in paths:
        if given.is_file():
            out.append((given.name, given))
            continue
        if not given.is_dir():
            raise UploadFailed(f"no such file or directory: {given}")
        for path in sorted(given.rglob(glob or "*")):
            rel = path.relative_to(given)
            if not path.is_file() or any(part.startswith(".") for part in rel.parts):
                continue
            if glob is None and path.suffix.lower() not in suffixes:
                continue
            out.append((rel.as_posix(), path))
    return out


def _batches(
    files: list[tuple[str, Path]], batch_files: int, batch_bytes: int
) -> Iterator[list[tuple[str, Path, int]]]:
    batch: list[tuple[str, Path, int]] = []
    size = 0
    for name, path in files:
        n = path.stat().st_size
        if batch and (len(batch) >= batch_files or size + n > batch_bytes):
            yield batch
            batch, size = [], 0
        batch.append((name, path, n))
        size += n
    if batch:
        yield batch


def _content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


@dataclass
class FileBatchResult:
    jobs: list[str] = field(default_factory=list)
    accepted: int = 0
    unchanged: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)


def upload_files(
    api: str,
    files: list[tuple[str, Path]],
    collection: str,
    headers: dict[str, str],
    *,
    batch_files: int = 50,
    batch_bytes: int = 32 * 1024 * 1024,
    progress: bool = True,
) -> FileBatchResult:
    from tqdm import tqdm

    result = FileBatchResult()
    total = sum(p.stat().st_size for _, p in files)
    with tqdm(
        total=total, unit="B", unit_scale=True, desc="uploading", disable=not progress
    ) as bar:
        for batch in _batches(files, batch_files, batch_bytes):
            parts = [
                (
                    "files",
                    (
                        name,
                        path.read_bytes(),
                        mimetypes.guess_type(name)[0] or "application/octet-stream",
                    ),
                )
                for name, path, _ in batch
            ]
            resp = httpx.post(
                f"{api}/v1/files",
                params={"collection": collection},
                files=parts,
                headers=headers,
                timeout=600,
            )
            body: dict[str, Any] = resp.json() if resp.content else {}
            if resp.status_code == 202:
                result.jobs.append(body["job_id"])
                result.accepted += body["accepted"]
                result.unchanged += body["unchanged"]
                result.rejected.extend(body["rejected"])
            elif "rejected" in body:  # nothing in this batch was accepted, each file says why
                result.rejected.extend(body["rejected"])
            else:
                raise UploadFailed(f"upload failed ({resp.status_code}): {resp.text}")
            bar.update(sum(n for _, _, n in batch))
    return result


def wait_jobs(
    api: str,
    job_ids: list[str],
    headers: dict[str, str],
    *,
    progress: bool,
    timeout: float = 86400,
    each_round: Callable[[], object] | None = None,
) -> list[dict[str, Any]]:
    """Poll the jobs until each has ended; one bar for all of them. ``each_round`` is called
    between two polls (`kensaku up` starts exited processes again there)."""
    from tqdm import tqdm

    deadline = time.monotonic() + timeout
    statuses: dict[str, dict[str, Any]] = {}
    bar = None
    # One client for every look: a new one costs a TLS context's worth of CPU each time.
    with httpx.Client(base_url=api, headers=headers, timeout=30) as client:
        while time.monotonic() < deadline:
            for job_id in job_ids:
                if statuses.get(job_id, {}).get("status") not in ("done", "partial", "failed"):
                    statuses[job_id] = client.get(f"/v1/jobs/{job_id}").json()
            if progress:
                if bar is None:
                    bar = tqdm(
                        total=sum(s["total"] for s in statuses.values()), unit="doc", desc="indexed"
                    )
                bar.n = sum(s["indexed"] + s["failed"] for s in statuses.values())
                bar.set_postfix(
                    prepped=sum(s["prepped"] for s in statuses.values()),
                    failed=sum(s["failed"] for s in statuses.values()),
                )
                bar.refresh()
            if all(s["status"] in ("done", "partial", "failed") for s in statuses.values()):
                break
            if each_round is not None:
                each_round()
            time.sleep(0.5)
    if bar is not None:
        bar.close()
    return [statuses[j] for j in job_ids]
