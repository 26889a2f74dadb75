"""POST /v1/files end to end on the real stack: every kind of file found by a phrase only it
holds, every bad one refused with its reason, and nothing else in the request lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.text.normalize import normalize
from tests import filemakers as fm
from tests.helpers import db_fetch, wait_job

pytestmark = pytest.mark.integration

Part = tuple[str, tuple[str, bytes, str]]


def part(name: str, data: bytes, content_type: str = "application/octet-stream") -> Part:
    return ("files", (name, data, content_type))


def upload(
    api: httpx.Client, collection: str, parts: list[Part], metadata: Any = None
) -> httpx.Response:
    data = {"metadata": json.dumps(metadata, ensure_ascii=False)} if metadata is not None else None
    return api.post("/v1/files", params={"collection": collection}, files=parts, data=data)


def top_hit(api: httpx.Client, collection: str, query: str) -> dict[str, Any] | None:
    resp = api.post(
        "/v1/search",
        json={"collection": collection, "query": query, "mode": "lexical", "top_k": 3},
    )
    assert resp.status_code == 200, resp.text
    hits: list[dict[str, Any]] = resp.json()["hits"]
    return hits[0] if hits else None


def document(api: httpx.Client, collection: str, doc_id: str) -> dict[str, Any]:
    resp = api.get(f"/v1/documents/{collection}/{doc_id}")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


GOOD = {
    "議事録.txt": (fm.cp932_text, "text/plain", "cp932"),
    "自然.txt": (fm.euc_text, "text/plain", "euc"),
    "島.html": (fm.html_page, "text/html", "html"),
    "奈良.md": (fm.markdown_note, "text/markdown", "markdown"),
    "会議.docx": (fm.docx_file, "application/octet-stream", "docx"),
    "山と島.pdf": (fm.pdf_file, "application/pdf", "pdf2"),
}


@pytest.fixture(scope="module")
def mixed(api: httpx.Client) -> dict[str, Any]:
    """One upload of every good kind of file and every bad one."""
    collection = "files-mixed"
    parts = [part(name, make(), ctype) for name, (make, ctype, _) in GOOD.items()]
    parts += [
        part("旅行.zip", fm.good_zip(), "application/zip"),
        part("壊れた.pdf", fm.corrupt_pdf(), "application/pdf"),
        part("暗号.pdf", fm.encrypted_pdf(), "application/pdf"),
        part("スキャン.pdf", fm.image_only_pdf(), "application/pdf"),
        part("bomb.zip", fm.zip_bomb(), "application/zip"),
        part("写真.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image/png"),
        part("escape.zip", fm.traversal_zip(), "application/zip"),
        part("空.txt", b"", "text/plain"),
    ]
    resp = upload(api, collection, parts, metadata={"source": "テスト", "year": 2026})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    job = wait_job(api, body["job_id"], timeout=300)
    return {"collection": collection, "upload": body, "job": job}


def test_each_good_file_is_found_by_its_own_phrase(api: httpx.Client, mixed: Any) -> None:
    collection = mixed["collection"]
    expected = {name: key for name, (_, _, key) in GOOD.items()}
    expected.update({"旅行/金沢.txt": "zip_a", "旅行/沖縄.md": "zip_b", "山と島.pdf": "pdf2"})
    for doc_id, key in expected.items():
        hit = top_hit(api, collection, fm.PHRASES[key][1])
        assert hit is not None and hit["id"] == doc_id, (key, hit)
        assert normalize(fm.PHRASES[key][0]) in hit["text"].replace("\n", ""), hit
    # A PDF's chunks know their page; other files have none.
    first = top_hit(api, collection, fm.PHRASES["pdf1"][1])
    second = top_hit(api, collection, fm.PHRASES["pdf2"][1])
    assert first and second and (first["page"], second["page"]) == (1, 2)
    assert (top_hit(api, collection, "大仏殿") or {}).get("page") is None


def test_script_style_and_navigation_are_not_indexed(api: httpx.Client, mixed: Any) -> None:
    for hidden in fm.HTML_HIDDEN:
        hit = top_hit(api, mixed["collection"], hidden)
        assert hit is None or hit["id"] != "島.html", (hidden, hit)


def test_titles_metadata_and_decoded_text(api: httpx.Client, mixed: Any) -> None:
    collection = mixed["collection"]
    titles = {
        "山と島.pdf": "日本の山と島",
        "会議.docx": "交通会議の議事録",
        "島.html": "小豆島の案内",
        "奈良.md": "奈良の旅",
        "議事録.txt": "議事録.txt",  # plain text has no title of its own: the file name
        "旅行/金沢.txt": "金沢.txt",
    }
    for doc_id, title in titles.items():
        assert document(api, collection, doc_id)["title"] == title, doc_id
    cp932 = document(api, collection, "議事録.txt")
    assert fm.PHRASES["cp932"][0] in cp932["text"]  # ① and ㈱ decoded as themselves
    assert "\r" not in cp932["text"]
    assert cp932["metadata"] == {
        "source": "テスト",
        "year": 2026,
        "filename": "議事録.txt",
        "content_type": "text/plain",
        "bytes": len(fm.cp932_text()),
    }
    member = document(api, collection, "旅行/沖縄.md")["metadata"]
    assert member["archive"] == "旅行.zip" and member["content_type"] == "text/markdown"


def test_bad_files_are_refused_with_their_reason(mixed: Any) -> None:
    upload_body, job = mixed["upload"], mixed["job"]
    # 6 good files, 2 zip members, ok.txt of escape.zip, and 3 PDFs the worker will fail.
    assert upload_body["accepted"] == 12, upload_body
    refused = {r["filename"]: r for r in upload_body["rejected"]}
    assert set(refused) == {"bomb.zip", "写真.png", "../../etc/evil.txt", "空.txt"}, refused
    assert refused["bomb.zip"]["status"] == 413 and "ZIP bomb" in refused["bomb.zip"]["error"]
    assert refused["写真.png"]["status"] == 415
    assert refused["../../etc/evil.txt"]["archive"] == "escape.zip"
    assert "empty" in refused["空.txt"]["error"]
    # Unreadable files are accepted (the worker reads them) and end failed, saying why.
    assert job["status"] == "partial" and job["failed"] == 3 and job["indexed"] == 9, job
    errors = {e["id"]: e["error"] for e in job["errors"]}
    assert "corrupt PDF" in errors["壊れた.pdf"]
    assert "encrypted PDF" in errors["暗号.pdf"]
    assert "no text layer" in errors["スキャン.pdf"] and "OCR" in errors["スキャン.pdf"]


def test_identical_reupload_does_no_work_and_a_change_reindexes(
    api: httpx.Client, stack: Any, collection: str
) -> None:
    parts = [part("memo.txt", "初版の本文には白鳥が出てくる。".encode("cp932"))]
    first = upload(api, collection, parts)
    assert first.status_code == 202 and first.json()["accepted"] == 1
    wait_job(api, first.json()["job_id"])
    again = upload(api, collection, parts).json()
    assert (again["accepted"], again["unchanged"]) == (0, 1)
    changed = upload(api, collection, [part("memo.txt", "改訂版では孔雀に変わった。".encode())])
    assert changed.json()["accepted"] == 1
    assert wait_job(api, changed.json()["job_id"])["status"] == "done"
    assert (top_hit(api, collection, "孔雀") or {}).get("id") == "memo.txt"
    assert top_hit(api, collection, "白鳥") is None
    rows = db_fetch(
        stack,
        "SELECT count(*) AS n FROM document_files f JOIN documents d ON d.id = f.document_id "
        "JOIN collections c ON c.id = d.collection_id WHERE c.name = $1",
        collection,
    )
    assert rows[0]["n"] == 1  # the old file was replaced, not kept beside the new one


@pytest.mark.parametrize(
    ("kwargs", "status", "says"),
    [
        (
            {"content": b'{"x": 1}', "headers": {"content-type": "application/json"}},
            415,
            "multipart",
        ),
        ({"files": [("other", ("a.txt", b"x"))]}, 400, "unknown part"),
        ({"files": {"files": (None, "text, not a file")}}, 400, "must be a file"),
        (
            {"files": [part("a.txt", b"x")], "data": {"metadata": "[1]"}},
            422,
            "JSON object",
        ),
        ({"files": [part("a.txt", b"x")], "data": {"metadata": "{bad"}}, 400, "not valid JSON"),
        ({"files": [part("a.png", b"\x89PNG....")]}, 415, "none of the 1 files"),
    ],
)
def test_request_level_errors(
    api: httpx.Client, collection: str, kwargs: dict[str, Any], status: int, says: str
) -> None:
    resp = api.post("/v1/files", params={"collection": collection}, **kwargs)
    assert resp.status_code == status, resp.text
    assert says in resp.json()["detail"]


def test_invalid_collection_name(api: httpx.Client) -> None:
    resp = api.post("/v1/files", params={"collection": "../x"}, files=[part("a.txt", b"x")])
    assert resp.status_code == 422 and "collection" in resp.json()["detail"]


def test_cli_ingests_a_folder_in_batches_and_waits(
    api: httpx.Client, collection: str, tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_bytes(fm.markdown_note())
    (docs / "sub" / "b.txt").write_bytes(fm.euc_text())
    (docs / "sub" / "c.pdf").write_bytes(fm.pdf_file())
    (docs / "skip.png").write_bytes(b"\x89PNG")  # not a kind kensaku reads: not sent
    (docs / ".hidden.txt").write_text("隠しファイル")

    def ingest(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = ["ingest", str(docs), "--api", str(api.base_url), "--collection", collection]
        return subprocess.run(
            [sys.executable, "-m", "shared.cli", *cmd, *args],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(Path.cwd())},
        )

    run = ingest("--wait", "--batch-files", "2")
    assert run.returncode == 0, run.stderr
    assert "3 file(s) in 2 job(s): accepted 3" in run.stdout, run.stdout
    # Names are paths below the folder given; the page of a PDF chunk is kept.
    assert (top_hit(api, collection, "丹頂鶴") or {}).get("id") == "sub/b.txt"
    assert (top_hit(api, collection, "縄文杉") or {}).get("page") == 2
    assert top_hit(api, collection, "隠しファイル") is None
    only_pdf = ingest("--glob", "**/*.pdf")
    assert only_pdf.returncode == 0, only_pdf.stderr
    assert "1 file(s) in 1 job(s): accepted 0, unchanged 1" in only_pdf.stdout


def test_too_many_files_is_413_and_a_quiet_client_408(api: httpx.Client, collection: str) -> None:
    many = [part(f"{i}.txt", "小さな文書。".encode()) for i in range(1001)]
    resp = upload(api, collection, many)
    assert resp.status_code == 413 and "max_files_per_request" in resp.json()["detail"]

    boundary = "kensaku-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
        'filename="slow.txt"\r\nContent-Type: text/plain\r\n\r\n'
    ).encode()

    def slow() -> Iterator[bytes]:
        yield head + "遅い文書の".encode()
        time.sleep(4)  # the test stack's idle timeout is 2 s
        yield f"本文。\r\n--{boundary}--\r\n".encode()

    resp = api.post(
        "/v1/files",
        params={"collection": collection},
        content=slow(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert resp.status_code == 408, resp.text
    assert api.get(f"/v1/documents/{collection}/slow.txt").status_code == 404
