"""Bad input gets a clear 4xx naming the item and the reason; good documents in the same request
are still stored, and nothing accepted before is touched.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.helpers import wait_job

pytestmark = pytest.mark.integration

GOOD = {"id": "good", "title": "良い文書", "text": "これは正しい文書です。"}


def post_json(api: httpx.Client, payload: Any) -> httpx.Response:
    return api.post("/v1/documents", json=payload)


def post_raw(api: httpx.Client, body: bytes, ctype: str = "application/json") -> httpx.Response:
    return api.post("/v1/documents", content=body, headers={"Content-Type": ctype})


def test_malformed_json(api: httpx.Client) -> None:
    resp = post_raw(api, b'{"collection": "x", "documents": [')
    assert resp.status_code == 400
    assert "malformed JSON" in resp.json()["detail"]


def test_invalid_utf8_body(api: httpx.Client) -> None:
    resp = post_raw(api, b'{"collection": "x", "documents": [{"id": "a", "text": "\xff\xfe"}]}')
    assert resp.status_code == 400
    assert "UTF-8" in resp.json()["detail"]


def test_body_not_an_object(api: httpx.Client) -> None:
    resp = post_json(api, [GOOD])
    assert resp.status_code == 422 and "JSON object" in resp.json()["detail"]


def test_unsupported_content_type(api: httpx.Client) -> None:
    resp = post_raw(api, b"hello", "text/plain")
    assert resp.status_code == 415


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"id": "a", "text": ""}, "empty"),
        ({"id": "a", "text": "   \n\t　"}, "empty"),
        ({"id": "a", "text": 42}, "text must be a string"),
        ({"id": "a"}, "text is required"),
        ({"text": "本文"}, "id is required"),
        ({"id": ["x"], "text": "本文"}, "id must be a string"),
        ({"id": "a", "text": "ヌル\x00文字"}, "NUL"),
        ({"id": "a", "text": "孤立\ud800サロゲート"}, "surrogate"),
        ({"id": "a", "text": "本文", "metadata": [1]}, "metadata must be a JSON object"),
        ({"id": "a", "text": "本文", "txt": "typo"}, "unknown field"),
        ({"id": "a", "text": "本文", "title": 5}, "title must be a string"),
        ("just a string", "must be a JSON object"),
    ],
)
def test_bad_document_is_named_and_good_one_kept(
    api: httpx.Client, collection: str, doc: Any, reason: str
) -> None:
    # json.dumps keeps lone surrogates as \ud800 escapes, as a client would send them.
    body = json.dumps({"collection": collection, "documents": [GOOD, doc]}).encode()
    resp = post_raw(api, body)
    assert resp.status_code == 202, resp.text
    out = resp.json()
    assert out["accepted"] == 1
    assert len(out["rejected"]) == 1
    rej = out["rejected"][0]
    assert rej["index"] == 1
    assert reason in rej["error"], rej
    if isinstance(doc, dict) and isinstance(doc.get("id"), str):
        assert rej["id"] == doc["id"]
    assert wait_job(api, out["job_id"])["status"] == "done"
    assert api.get(f"/v1/documents/{collection}/good").json()["status"] == "indexed"


def test_all_bad_is_422_with_items(api: httpx.Client, collection: str) -> None:
    resp = post_json(
        api, {"collection": collection, "documents": [{"id": "a", "text": " "}, {"id": "b"}]}
    )
    assert resp.status_code == 422
    out = resp.json()
    assert [r["id"] for r in out["rejected"]] == ["a", "b"]
    # Nothing was stored, not even the collection.
    assert api.get(f"/v1/documents/{collection}/a").status_code == 404


def test_duplicate_ids_in_one_request(api: httpx.Client, collection: str) -> None:
    docs = [GOOD, {"id": "good", "text": "二つ目の同じID。"}]
    out = post_json(api, {"collection": collection, "documents": docs}).json()
    assert out["accepted"] == 1
    assert out["rejected"] == [
        {"index": 1, "id": "good", "error": "duplicate id in this request (first at index 0)"}
    ]
    wait_job(api, out["job_id"])
    assert api.get(f"/v1/documents/{collection}/good").json()["text"] == GOOD["text"]


def test_huge_document_accepted_and_over_limit_rejected(api: httpx.Client, collection: str) -> None:
    big = "大きな文書の一文です。" * 40_000  # 1.3 MB, far over Sudachi's 49,149-byte limit
    assert len(big.encode()) > 1_000_000
    out = post_json(
        api, {"collection": collection, "documents": [{"id": "big", "text": big}]}
    ).json()
    assert out["accepted"] == 1
    assert wait_job(api, out["job_id"], timeout=300)["status"] == "done"
    over = "あ" * (2 * 1024 * 1024)  # 6 MB, over max_document_bytes (4 MiB)
    docs = [GOOD, {"id": "x", "text": over}]
    resp = post_json(api, {"collection": collection, "documents": docs})
    assert resp.status_code == 202
    assert "max_document_bytes" in resp.json()["rejected"][0]["error"]


def test_too_many_documents(api: httpx.Client, collection: str) -> None:
    docs = [{"id": str(i), "text": "短い。"} for i in range(10_001)]
    resp = post_json(api, {"collection": collection, "documents": docs})
    assert resp.status_code == 413
    assert "max_documents_per_request" in resp.json()["detail"]


def test_bad_collection_name(api: httpx.Client) -> None:
    resp = post_json(api, {"collection": "../etc", "documents": [GOOD]})
    assert resp.status_code == 422 and "collection" in resp.json()["detail"]


def test_unknown_collection_and_job(api: httpx.Client) -> None:
    assert api.get("/v1/documents/no-such-collection/x").status_code == 404
    resp = api.post("/v1/search", json={"query": "東京", "collection": "no-such-collection"})
    assert resp.status_code == 404 and "no-such-collection" in resp.json()["detail"]
    assert api.get("/v1/jobs/not-a-uuid").status_code == 404
    assert api.get("/v1/jobs/00000000-0000-0000-0000-000000000000").status_code == 404


def test_ndjson_invalid_utf8_line(api: httpx.Client, collection: str) -> None:
    body = (
        json.dumps(GOOD, ensure_ascii=False).encode()
        + b"\n"
        + b'{"id": "bad", "text": "\xc3\x28"}\n'
    )
    resp = api.post(
        "/v1/documents",
        params={"collection": collection},
        content=body,
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert resp.status_code == 202
    out = resp.json()
    assert out["accepted"] == 1
    assert out["rejected"][0]["index"] == 1 and "UTF-8" in out["rejected"][0]["error"]


# --- input that used to reach a 500 -------------------------------------------------------------


@pytest.mark.parametrize(
    ("literal", "reason"),
    [("NaN", "NaN"), ("Infinity", "Infinity"), ("-Infinity", "-Infinity"), ("1e999", "range")],
)
def test_non_finite_numbers_reject_their_document_only(
    api: httpx.Client, collection: str, literal: str, reason: str
) -> None:
    # Python's json reads these; PostgreSQL's jsonb does not.
    bad = '{"id": "n", "text": "本文", "metadata": {"x": ' + literal + "}}"
    good = json.dumps(GOOD, ensure_ascii=False)
    body = f'{{"collection": "{collection}", "documents": [{good}, {bad}]}}'
    resp = post_raw(api, body.encode())
    assert resp.status_code == 202, resp.text
    out = resp.json()
    assert out["accepted"] == 1
    assert out["rejected"][0]["id"] == "n" and reason in out["rejected"][0]["error"]
    assert wait_job(api, out["job_id"])["status"] == "done"


def test_deep_metadata_is_rejected_per_document(api: httpx.Client, collection: str) -> None:
    deep: Any = "leaf"
    for _ in range(40):
        deep = {"k": deep}
    docs = [GOOD, {"id": "deep", "text": "本文", "metadata": deep}]
    out = post_json(api, {"collection": collection, "documents": docs}).json()
    assert out["accepted"] == 1 and "nested deeper than 32" in out["rejected"][0]["error"]


def test_nesting_past_the_parser_is_a_400_or_a_rejected_line(
    api: httpx.Client, collection: str
) -> None:
    deep = "[" * 5000 + "]" * 5000
    doc = '{"id": "d", "text": "本文", "metadata": ' + deep + "}"
    resp = post_raw(api, f'{{"collection": "{collection}", "documents": [{doc}]}}'.encode())
    assert resp.status_code == 400 and "nested too deeply" in resp.json()["detail"]
    # In NDJSON only that line goes.
    lines = json.dumps(GOOD, ensure_ascii=False) + '\n{"id": "d", "metadata": ' + deep + "}\n"
    resp = api.post(
        "/v1/documents",
        params={"collection": collection},
        content=lines.encode(),
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert resp.status_code == 202, resp.text
    out = resp.json()
    assert out["accepted"] == 1 and out["rejected"][0]["index"] == 1
    assert "nested too deeply" in out["rejected"][0]["error"]


@pytest.mark.parametrize(
    "doc_id", ["a/b", "https://example.com/ページ?q=1#x", "...", "日本語/ファイル.txt", "%2F"]
)
def test_any_id_can_be_read_and_deleted(api: httpx.Client, collection: str, doc_id: str) -> None:
    out = post_json(
        api, {"collection": collection, "documents": [{"id": doc_id, "text": "本文です。"}]}
    ).json()
    assert out["accepted"] == 1
    wait_job(api, out["job_id"])
    path = f"/v1/documents/{collection}/{quote(doc_id, safe='')}"
    got = api.get(path)
    assert got.status_code == 200 and got.json()["id"] == doc_id
    assert api.delete(path).status_code == 200
    assert api.get(path).status_code == 404


@pytest.mark.parametrize(
    ("doc_id", "reason"),
    [("a\tb", "control"), (" a", "whitespace"), ("..", "segment"), ("a/./b", "segment")],
)
def test_odd_ids_are_refused_with_the_reason(
    api: httpx.Client, collection: str, doc_id: str, reason: str
) -> None:
    out = post_json(
        api, {"collection": collection, "documents": [GOOD, {"id": doc_id, "text": "本文"}]}
    ).json()
    assert out["accepted"] == 1 and reason in out["rejected"][0]["error"]


def test_an_upload_that_goes_quiet_gets_408_and_stores_nothing(
    api: httpx.Client, collection: str
) -> None:
    def slow() -> Iterator[bytes]:
        yield (json.dumps(GOOD, ensure_ascii=False) + "\n").encode()
        time.sleep(4)  # the test stack's idle timeout is 2 s
        yield '{"id": "late", "text": "遅い。"}\n'.encode()

    resp = api.post(
        "/v1/documents",
        params={"collection": collection},
        content=slow(),
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert resp.status_code == 408, resp.text
    assert api.get(f"/v1/documents/{collection}/good").status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": "東京", "filter": {"x": float("nan")}}, "finite"),
        ({"query": "東京", "filter": {f"k{i}": 1 for i in range(17)}}, "at most 16"),
        ({"query": "東京", "filter": {"k": list(range(65))}}, "at most 64"),
        ({"query": "東京", "top_k": 0}, "top_k"),
        ({"query": "東京", "mode": "fuzzy"}, "mode"),
    ],
)
def test_bad_search_requests_are_422(api: httpx.Client, body: dict[str, Any], field: str) -> None:
    raw = json.dumps({"collection": "default", **body}).encode()  # NaN as Python writes it
    resp = api.post("/v1/search", content=raw, headers={"Content-Type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert field in resp.text


@pytest.mark.parametrize(
    ("body", "statuses"),
    [
        ({"query": "東\x00京"}, {200}),
        ({"query": "東京", "filter": {"k\x00": "v"}}, {200}),
        ({"query": "東京", "filter": {"k": ["\x00", "v"]}}, {200}),
        # A lone surrogate is not Unicode: refused while parsing, or replaced and not found.
        ({"query": "東\ud800京"}, {200, 422}),
        ({"query": "東京", "filter": {"k": "\ud800"}}, {200, 422}),
    ],
)
def test_odd_characters_in_a_search_are_answered(
    api: httpx.Client, collection: str, body: dict[str, Any], statuses: set[int]
) -> None:
    # A filter no stored document can pass finds nothing; a query is normalized like text.
    out = post_json(api, {"collection": collection, "documents": [GOOD]}).json()
    wait_job(api, out["job_id"])
    raw = json.dumps({"collection": collection, **body}).encode()
    resp = api.post("/v1/search", content=raw, headers={"Content-Type": "application/json"})
    assert resp.status_code in statuses, resp.text
    if resp.status_code == 200 and "filter" in body:
        assert resp.json()["hits"] == []


def test_oversized_search_body_is_refused_before_parsing(api: httpx.Client) -> None:
    raw = json.dumps({"query": "東京", "collection": "x" * (2 * 1024 * 1024)}).encode()
    resp = api.post("/v1/search", content=raw, headers={"Content-Type": "application/json"})
    assert resp.status_code == 413
