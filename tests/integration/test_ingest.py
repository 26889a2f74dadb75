"""Upload → workers → Postgres on the real stack: counts, idempotency, re-indexing, deletion."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest

from tests.helpers import active_table, db_fetch, wait_job

pytestmark = pytest.mark.integration

LONG_PARAGRAPH = (
    "東京は日本の首都であり、政治と経済の中心地として多くの人々が暮らしている。"
    "江戸時代には徳川幕府が置かれ、明治維新の後に東京と改められた。"
)


def make_docs(n: int, prefix: str = "d") -> list[dict[str, Any]]:
    topics = ["寿司の歴史", "富士山の登山", "新幹線の技術", "茶道の作法", "桜の開花"]
    return [
        {
            "id": f"{prefix}{i}",
            "title": topics[i % len(topics)],
            "text": f"{topics[i % len(topics)]}について説明する文書{i}番。"
            + LONG_PARAGRAPH * (1 + i % 3),
            "metadata": {"n": i, "topic": topics[i % len(topics)]},
        }
        for i in range(n)
    ]


def counts(stack: Any, collection: str) -> dict[str, int]:
    table = active_table(stack)
    row = db_fetch(
        stack,
        f"""
        SELECT (SELECT count(*) FROM documents d JOIN collections c ON c.id = d.collection_id
                WHERE c.name = $1) AS documents,
               (SELECT count(*) FROM documents d JOIN collections c ON c.id = d.collection_id
                WHERE c.name = $1 AND d.status = 'indexed') AS indexed,
               (SELECT count(*) FROM chunks k JOIN collections c ON c.id = k.collection_id
                WHERE c.name = $1) AS chunks,
               (SELECT count(DISTINCT e.chunk_id) FROM {table} e JOIN chunks k ON k.id = e.chunk_id
                JOIN collections c ON c.id = k.collection_id WHERE c.name = $1) AS embeddings,
               (SELECT count(*) FROM {table} e JOIN chunks k ON k.id = e.chunk_id
                JOIN collections c ON c.id = k.collection_id WHERE c.name = $1) AS vectors,
               (SELECT count(*) FROM postings p JOIN chunks k ON k.id = p.chunk_id
                JOIN collections c ON c.id = k.collection_id WHERE c.name = $1) AS postings
        """,
        collection,
    )[0]
    return dict(row)


def upload(api: httpx.Client, collection: str, docs: list[dict[str, Any]]) -> dict[str, Any]:
    resp = api.post("/v1/documents", json={"collection": collection, "documents": docs})
    assert resp.status_code == 202, resp.text
    body: dict[str, Any] = resp.json()
    return body


def test_upload_reaches_every_table(stack: Any, api: httpx.Client, collection: str) -> None:
    docs = make_docs(12)
    # ~360 KB: far over Sudachi's 49,149-byte input limit.
    docs.append({"id": "big", "text": "長い文書の段落です。" * 12_000})
    body = upload(api, collection, docs)
    assert body["accepted"] == 13 and body["unchanged"] == 0 and body["rejected"] == []
    status = wait_job(api, body["job_id"])
    assert status["status"] == "done", status
    assert status["total"] == status["indexed"] == status["prepped"] == 13
    assert status["finished_at"] is not None

    c = counts(stack, collection)
    assert c["documents"] == c["indexed"] == 13
    assert c["chunks"] >= 13 + 10  # the big document alone needs many chunks
    assert c["embeddings"] == c["chunks"]
    # Every chunk is a real slice of its document's normalized text, in order, nothing lost.
    rows = db_fetch(
        stack,
        """SELECT k.ordinal, k.char_start, k.char_end FROM chunks k
           JOIN documents d ON d.id = k.document_id JOIN collections c ON c.id = d.collection_id
           WHERE c.name = $1 AND d.external_id = 'big' ORDER BY k.ordinal""",
        collection,
    )
    assert [r["ordinal"] for r in rows] == list(range(len(rows)))
    assert all(a["char_end"] <= b["char_start"] + 1 for a, b in itertools.pairwise(rows))

    doc = api.get(f"/v1/documents/{collection}/d3").json()
    assert doc["status"] == "indexed" and doc["metadata"] == {"n": 3, "topic": "茶道の作法"}
    assert doc["chunks"] >= 1


def test_reupload_is_idempotent_and_changes_reindex(
    stack: Any, api: httpx.Client, collection: str
) -> None:
    docs = make_docs(6)
    wait_job(api, upload(api, collection, docs)["job_id"])
    before = counts(stack, collection)
    chunk_ids = db_fetch(stack, "SELECT array_agg(id ORDER BY id) AS ids FROM chunks")[0]["ids"]

    again = upload(api, collection, docs)
    assert again["accepted"] == 0 and again["unchanged"] == 6
    assert wait_job(api, again["job_id"])["status"] == "done"
    assert counts(stack, collection) == before
    # Nothing was rewritten: the very same chunk rows exist.
    assert db_fetch(stack, "SELECT array_agg(id ORDER BY id) AS ids FROM chunks")[0]["ids"] == (
        chunk_ids
    )

    changed = [dict(docs[0], text="内容を書き換えた。味噌汁の作り方を説明する。")]
    body = upload(api, collection, changed)
    assert body["accepted"] == 1 and body["unchanged"] == 0
    assert wait_job(api, body["job_id"])["status"] == "done"
    after = counts(stack, collection)
    assert after["documents"] == after["indexed"] == 6
    assert after["embeddings"] == after["chunks"]
    text = db_fetch(
        stack,
        """SELECT string_agg(k.text, '' ORDER BY k.ordinal) AS t FROM chunks k
           JOIN documents d ON d.id = k.document_id JOIN collections c ON c.id = d.collection_id
           WHERE c.name = $1 AND d.external_id = 'd0'""",
        collection,
    )[0]["t"]
    assert "味噌汁" in text and "寿司" not in text


def test_retried_task_changes_nothing(stack: Any, api: httpx.Client, collection: str) -> None:
    """Run both stages again on the same documents, directly, as a redelivered task would."""
    import asyncio

    from shared.config import Settings
    from shared.db.embeddings import register_embedder
    from shared.db.pool import create_pool
    from shared.embed.embedder import load_embedder
    from shared.ingest.embed import embed_documents
    from shared.ingest.prep import InlineEmbedding, LexicalParams, prep_documents

    wait_job(api, upload(api, collection, make_docs(5))["job_id"])
    before = counts(stack, collection)
    settings = Settings(database_url=stack.database_url, redis_url=stack.redis_url)
    embedder = load_embedder(settings)

    async def rerun() -> tuple[int, int, int]:
        pool = await create_pool(settings)
        try:
            table = await register_embedder(pool, embedder)
            ids = [
                r["id"]
                for r in await pool.fetch(
                    "SELECT d.id FROM documents d JOIN collections c ON c.id = d.collection_id "
                    "WHERE c.name = $1",
                    collection,
                )
            ]

            async def stages(inline: bool) -> int:
                p = await prep_documents(
                    pool,
                    ids,
                    count_tokens=embedder.count_tokens,
                    max_tokens=embedder.chunk_tokens(settings.chunk_tokens),
                    overlap_tokens=0,
                    lexical=LexicalParams.from_settings(settings),
                    inline=InlineEmbedding(embedder, table) if inline else None,
                )
                e = await embed_documents(pool, embedder, table, ids)
                return len(p.prepped) + len(p.indexed) + len(e.indexed)

            async def requeue() -> None:
                # As after a crash that left them queued. updated_at too: a document queued just
                # now is not the sweeper's to re-enqueue.
                await pool.execute(
                    "UPDATE documents SET status = 'queued', updated_at = now() WHERE id = ANY($1)",
                    ids,
                )

            # Redelivered after success: the documents are indexed, nothing is redone.
            done_again = await stages(inline=True)
            # Redelivered after a crash: redone, replacing, not adding. The default model is
            # embedded inside prep; any other model goes through both stages.
            await requeue()
            redone_inline = await stages(inline=True)
            await requeue()
            redone = await stages(inline=False)
            assert redone_inline == len(ids)
            return done_again, redone, len(ids)
        finally:
            await pool.close()

    done_again, redone, n = asyncio.run(rerun())
    assert done_again == 0
    assert redone == 2 * n
    assert counts(stack, collection) == before
    stats = db_fetch(
        stack,
        """SELECT cs.chunk_count, (SELECT count(*) FROM chunks k WHERE k.collection_id = c.id) AS n
           FROM collection_stats cs JOIN collections c ON c.id = cs.collection_id
           WHERE c.name = $1""",
        collection,
    )[0]
    assert stats["chunk_count"] == stats["n"]


def test_delete_removes_chunks_and_embeddings(
    stack: Any, api: httpx.Client, collection: str
) -> None:
    wait_job(api, upload(api, collection, make_docs(3))["job_id"])
    before = counts(stack, collection)
    resp = api.delete(f"/v1/documents/{collection}/d1")
    assert resp.status_code == 200 and resp.json()["deleted"] is True
    after = counts(stack, collection)
    assert after["documents"] == 2
    assert after["chunks"] < before["chunks"] and after["embeddings"] == after["chunks"]
    assert api.get(f"/v1/documents/{collection}/d1").status_code == 404
    assert api.delete(f"/v1/documents/{collection}/d1").status_code == 404
    # BM25 statistics follow the chunks.
    stats = db_fetch(
        stack,
        """SELECT cs.chunk_count FROM collection_stats cs JOIN collections c
           ON c.id = cs.collection_id WHERE c.name = $1""",
        collection,
    )[0]
    assert stats["chunk_count"] == after["chunks"]


def test_ndjson_upload(stack: Any, api: httpx.Client, collection: str) -> None:
    import json

    lines = [json.dumps(d, ensure_ascii=False) for d in make_docs(4)]
    lines.insert(2, "{not json")
    lines.insert(3, "")  # blank lines are skipped
    body = "\n".join(lines).encode("utf-8")
    resp = api.post(
        "/v1/documents",
        params={"collection": collection},
        content=body,
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert resp.status_code == 202, resp.text
    out = resp.json()
    assert out["accepted"] == 4
    assert [r["index"] for r in out["rejected"]] == [2]
    assert "malformed JSON" in out["rejected"][0]["error"]
    assert wait_job(api, out["job_id"])["status"] == "done"
    assert counts(stack, collection)["indexed"] == 4


def test_reembed_refills_from_existing_chunks(
    stack: Any, api: httpx.Client, collection: str
) -> None:
    import os
    import subprocess
    import sys

    wait_job(api, upload(api, collection, make_docs(4))["job_id"])
    before = counts(stack, collection)
    chunk_ids = db_fetch(
        stack,
        "SELECT array_agg(k.id ORDER BY k.id) AS ids FROM chunks k JOIN collections c "
        "ON c.id = k.collection_id WHERE c.name = $1",
        collection,
    )[0]["ids"]
    env = stack.env() | {"PATH": os.environ["PATH"]}
    out = subprocess.run(
        [sys.executable, "-m", "shared.cli", "reembed", "--collection", collection],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "re-embedding 4 documents" in out.stdout
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and counts(stack, collection)["indexed"] < 4:
        time.sleep(0.2)
    assert counts(stack, collection) == before
    # Prep did not run again: the very same chunk rows were embedded.
    assert (
        db_fetch(
            stack,
            "SELECT array_agg(k.id ORDER BY k.id) AS ids FROM chunks k JOIN collections c "
            "ON c.id = k.collection_id WHERE c.name = $1",
            collection,
        )[0]["ids"]
        == chunk_ids
    )


def _chunks_and_chunkers(stack: Any, collection: str) -> dict[str, tuple[list[int], str | None]]:
    rows = db_fetch(
        stack,
        "SELECT d.external_id, d.chunker, array_agg(k.id ORDER BY k.id) AS ids FROM documents d "
        "JOIN collections c ON c.id = d.collection_id JOIN chunks k ON k.document_id = d.id "
        "WHERE c.name = $1 GROUP BY d.external_id, d.chunker",
        collection,
    )
    return {r["external_id"]: (list(r["ids"]), r["chunker"]) for r in rows}


def test_chunks_cut_for_another_chunker_are_cut_again(
    stack: Any, api: httpx.Client, collection: str
) -> None:
    """reembed refills from the chunks cut by the model's own chunker and re-preps the others;
    an embed task that meets foreign chunks sends them back to prep instead of embedding them."""
    import subprocess
    import sys
    import time

    from shared.broker import enqueue_embed, make_celery_app
    from shared.config import Settings

    wait_job(api, upload(api, collection, make_docs(4))["job_id"])
    before = _chunks_and_chunkers(stack, collection)
    ours = {c for _, c in before.values()}
    assert len(ours) == 1 and next(iter(ours)).startswith("lexemes/")  # the default model's
    chunker = next(iter(ours))
    db_fetch(
        stack,
        "UPDATE documents SET chunker = 'tokenizer-0123456789abcdef/510/0' "
        "WHERE external_id = ANY($1::text[]) AND collection_id = "
        "(SELECT id FROM collections WHERE name = $2)",
        ["d0", "d1"],
        collection,
    )
    out = subprocess.run(
        [sys.executable, "-m", "shared.cli", "reembed", "--collection", collection],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "4 documents" in out.stdout and "2 from their chunks, 2 cut again" in out.stdout

    def settled() -> dict[str, tuple[list[int], str | None]]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = _chunks_and_chunkers(stack, collection)
            if counts(stack, collection)["indexed"] == 4 and {c for _, c in now.values()} == {
                chunker
            }:
                return now
            time.sleep(0.2)
        raise AssertionError(f"not settled: {counts(stack, collection)}")

    after = settled()
    for doc in ("d0", "d1"):  # prepped again: new chunk rows
        assert set(after[doc][0]).isdisjoint(before[doc][0])
    for doc in ("d2", "d3"):  # embedded from the chunks they had
        assert after[doc][0] == before[doc][0]

    # A stale embed task: the document is prepped, but for another chunker.
    db_fetch(
        stack,
        "UPDATE documents SET status = 'prepped', chunker = 'lexemes/17/0' "
        "WHERE external_id = 'd2' AND collection_id = (SELECT id FROM collections WHERE name = $1)",
        collection,
    )
    doc_id = db_fetch(
        stack,
        "SELECT d.id FROM documents d JOIN collections c ON c.id = d.collection_id "
        "WHERE c.name = $1 AND d.external_id = 'd2'",
        collection,
    )[0]["id"]
    celery = make_celery_app(Settings(redis_url=stack.redis_url))
    enqueue_embed(celery, [doc_id], 8)
    again = settled()
    assert set(again["d2"][0]).isdisjoint(after["d2"][0])
    assert again["d3"][0] == after["d3"][0]

    # Sent back once already (prep and embed disagree): embedded as it is, no second round.
    d3 = db_fetch(
        stack,
        "UPDATE documents SET status = 'prepped', chunker = 'lexemes/17/0', chunker_bounces = 1 "
        "WHERE external_id = 'd3' AND collection_id = (SELECT id FROM collections WHERE name = $1) "
        "RETURNING id",
        collection,
    )[0]["id"]
    enqueue_embed(celery, [d3], 8)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and counts(stack, collection)["indexed"] < 4:
        time.sleep(0.2)
    final = _chunks_and_chunkers(stack, collection)
    assert final["d3"] == (again["d3"][0], "lexemes/17/0")
    bounces = db_fetch(stack, "SELECT chunker_bounces FROM documents WHERE id = $1", d3)
    assert bounces[0]["chunker_bounces"] == 0  # reset once indexed
