"""Search on the real stack: each mode, filters, deletion, bad requests, width variants."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.helpers import wait_job

pytestmark = pytest.mark.integration

DOCS = [
    {
        "id": "castle",
        "title": "姫路城",
        "text": "姫路城は兵庫県姫路市にある城で、白い漆喰の外壁から白鷺城とも呼ばれる。"
        "一九九三年に世界文化遺産に登録された。",
        "metadata": {"category": "history", "pref": "兵庫"},
    },
    {
        "id": "ramen",
        "title": "ラーメンの歴史",
        "text": "ラーメンは中国の麺料理をもとに日本で独自に発展した料理である。"
        "醤油、味噌、塩、豚骨など地域ごとに多様なスープがある。",
        "metadata": {"category": "food", "pref": "東京"},
    },
    {
        "id": "shinkansen",
        "title": "新幹線",
        "text": "新幹線は日本の高速鉄道で、一九六四年に東海道新幹線が開業した。"
        "最高速度は時速三百キロメートルを超える路線もある。",
        "metadata": {"category": "transport", "pref": "東京"},
    },
    {
        "id": "tea",
        "title": "茶道",
        "text": "茶道は湯を沸かし茶を点て、客をもてなす日本の伝統的な作法である。"
        "千利休がわび茶を大成したとされる。",
        "metadata": {"category": "culture", "pref": "京都"},
    },
    {
        "id": "pc",
        "title": "パソコンの普及",
        "text": "ＰＣ（パーソナルコンピュータ）は一九八〇年代に家庭へ広まり、"
        "ｲﾝﾀｰﾈｯﾄの普及とともに生活に欠かせない道具となった。",
        "metadata": {"category": "technology", "pref": "東京", "year": 1985},
    },
]


@pytest.fixture(scope="module")
def search_collection(api: httpx.Client) -> str:
    name = "search-tests"
    resp = api.post("/v1/documents", json={"collection": name, "documents": DOCS})
    assert resp.status_code == 202, resp.text
    assert wait_job(api, resp.json()["job_id"])["status"] == "done"
    return name


def search(api: httpx.Client, collection: str, **body: Any) -> dict[str, Any]:
    resp = api.post("/v1/search", json={"collection": collection, **body})
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


def ids(result: dict[str, Any]) -> list[str]:
    return [h["id"] for h in result["hits"]]


@pytest.mark.parametrize(
    ("mode", "query", "expected"),
    [
        ("lexical", "白鷺城", "castle"),
        ("lexical", "東海道新幹線の開業", "shinkansen"),
        ("vector", "スープの種類が豊富な麺料理", "ramen"),
        ("vector", "お客様に抹茶をふるまう伝統", "tea"),
        ("hybrid", "世界遺産の白い城", "castle"),
        ("hybrid", "高速で走る列車", "shinkansen"),
    ],
)
def test_each_mode_finds_its_document(
    api: httpx.Client, search_collection: str, mode: str, query: str, expected: str
) -> None:
    out = search(api, search_collection, query=query, mode=mode, top_k=3)
    assert out["mode"] == mode
    assert ids(out)[0] == expected, out
    hit = out["hits"][0]
    assert set(hit) == {"id", "title", "text", "chunk", "page", "score", "metadata"}
    assert hit["chunk"] == 0 and hit["text"] and hit["score"] > 0
    assert hit["page"] is None  # a JSON document has no pages
    scores = [h["score"] for h in out["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert out["took_ms"] >= 0


def test_readyz_reports_the_vector_index(api: httpx.Client) -> None:
    from shared.config import Settings

    embedding = api.get("/readyz").json()["embedding"]
    # The stack runs with the defaults: what a deployment sets is what it reports.
    assert embedding["index"] == Settings.model_fields["vector_index"].default == "hnsw_halfvec"
    assert embedding["dimensions_stored"] == embedding["dimension"] == 300
    assert embedding["projection"] is None  # all dimensions: nothing projected
    assert embedding["query_threads"] == [1]  # the default model's query is a numpy sum


def test_default_mode_is_hybrid(api: httpx.Client, search_collection: str) -> None:
    assert search(api, search_collection, query="茶道")["mode"] == "hybrid"


@pytest.mark.parametrize("mode", ["vector", "lexical", "hybrid"])
def test_filters_restrict_results(api: httpx.Client, search_collection: str, mode: str) -> None:
    q = "日本の歴史と文化"
    only_tokyo = search(api, search_collection, query=q, mode=mode, filter={"pref": "東京"})
    assert only_tokyo["hits"]
    assert {h["metadata"]["pref"] for h in only_tokyo["hits"]} == {"東京"}
    either = search(
        api, search_collection, query=q, mode=mode, filter={"pref": ["京都", "兵庫"]}, top_k=10
    )
    assert set(ids(either)) <= {"tea", "castle"}
    both = search(
        api,
        search_collection,
        query="パソコン",
        mode=mode,
        filter={"pref": "東京", "year": 1985},
    )
    assert ids(both) == ["pc"]
    none = search(api, search_collection, query=q, mode=mode, filter={"pref": "北海道"})
    assert none["hits"] == []


def test_vector_filter_still_fills_top_k(api: httpx.Client, search_collection: str) -> None:
    # Three documents are in 東京; an HNSW scan that stopped early would return fewer.
    out = search(
        api, search_collection, query="料理", mode="vector", filter={"pref": "東京"}, top_k=3
    )
    assert sorted(ids(out)) == ["pc", "ramen", "shinkansen"]


def test_width_variants_find_the_same(api: httpx.Client, search_collection: str) -> None:
    for mode in ("lexical", "hybrid", "vector"):
        full = search(api, search_collection, query="ＰＣとインターネット", mode=mode)
        half = search(api, search_collection, query="PCとｲﾝﾀｰﾈｯﾄ", mode=mode)
        assert ids(full) == ids(half)
        assert ids(full)[0] == "pc"


def test_deleted_document_never_appears(api: httpx.Client, collection: str) -> None:
    docs = [dict(d) for d in DOCS[:3]]
    resp = api.post("/v1/documents", json={"collection": collection, "documents": docs})
    wait_job(api, resp.json()["job_id"])
    assert "castle" in ids(search(api, collection, query="姫路城", mode="lexical"))
    assert api.delete(f"/v1/documents/{collection}/castle").status_code == 200
    for mode in ("vector", "lexical", "hybrid"):
        out = search(api, collection, query="姫路城 白鷺城", mode=mode, top_k=10)
        assert "castle" not in ids(out)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"query": ""}, "query"),
        ({"query": "   　"}, "empty"),
        ({"query": "東京", "mode": "semantic"}, "mode"),
        ({"query": "東京", "top_k": 0}, "top_k"),
        ({"query": "東京", "top_k": 101}, "top_k"),
        ({"query": "東京", "filter": {"pref": {"nested": 1}}}, "filter"),
        ({"query": "東京", "filter": {"pref": []}}, "empty list"),
        ({"query": "東京", "filter": ["pref"]}, "filter"),
        ({"query": 5}, "query"),
        ({"query": "東京", "unknown": 1}, "unknown"),
    ],
)
def test_bad_search_requests(
    api: httpx.Client, search_collection: str, body: dict[str, Any], fragment: str
) -> None:
    resp = api.post("/v1/search", json={"collection": search_collection, **body})
    assert resp.status_code == 422, resp.text
    assert fragment in resp.json()["detail"]


def test_query_of_only_particles(api: httpx.Client, search_collection: str) -> None:
    out = search(api, search_collection, query="の は が", mode="lexical")
    assert out["hits"] == []
    assert search(api, search_collection, query="の は が", mode="hybrid")["mode"] == "hybrid"
