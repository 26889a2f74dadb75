"""Attempts are counted for real tries only (shared/ingest/attempts.py), on the real database:
a task delivered twice while the first copy is still working leaves the documents to it
without counting, a split counts nothing, a new version has its own claim, and a document
prepared starts its embed stage at zero attempts; giving up fails only what no other live task
holds. The worker is stopped meanwhile, so the claims
here are the only ones."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import httpx
import pytest

from shared.config import Settings
from shared.db.pool import create_pool
from shared.embed.embedder import load_embedder
from shared.ingest.attempts import Claim, claim_attempt, give_up, release_held
from shared.ingest.prep import LexicalParams, prep_documents
from tests.helpers import wait_job
from tests.integration.test_ingest import make_docs, upload

pytestmark = pytest.mark.integration


def test_claims_count_real_tries_only(stack: Any, api: httpx.Client, collection: str) -> None:
    stack.procs["worker"].stop()
    try:
        upload(api, collection, make_docs(2, prefix="a"))
        asyncio.run(_claims(stack, collection))
        job = upload(api, collection, [{"id": "a1", "text": "最後の版。"}])["job_id"]
    finally:
        stack.start_worker()
    # a1's new version through the worker; a0, left prepared above with no task, through the
    # sweeper: the claims made here let go of both.
    assert wait_job(api, job, timeout=120)["status"] == "done"
    deadline = time.monotonic() + 120
    while api.get(f"/v1/documents/{collection}/a0").json()["status"] != "indexed":
        assert time.monotonic() < deadline, "a0 was never embedded"
        time.sleep(0.2)


async def _claims(stack: Any, collection: str) -> None:
    settings = Settings(database_url=stack.database_url, redis_url=stack.redis_url)
    pool = await create_pool(settings, role="worker")
    try:
        ids = [
            r["id"]
            for r in await pool.fetch(
                "SELECT d.id FROM documents d JOIN collections c ON c.id = d.collection_id "
                "WHERE c.name = $1 ORDER BY d.external_id",
                collection,
            )
        ]

        async def attempts() -> list[int]:
            rows = await pool.fetch(
                "SELECT attempts FROM documents WHERE id = ANY($1) ORDER BY external_id", ids
            )
            return [r["attempts"] for r in rows]

        async def claim(conn: asyncpg.Connection, status: str = "queued") -> Claim:
            return await claim_attempt(pool, conn, ids, status, "prep", max_attempts=5)

        first = await pool.acquire()
        c = await claim(first)
        assert (sorted(c.run), c.held) == (sorted(ids), 0)
        assert await attempts() == [1, 1]

        # A second copy while the first is working: left to it, nothing counted.
        second = await pool.acquire()
        c = await claim(second)
        assert (c.run, c.split, c.held) == ([], [], 2)
        assert await attempts() == [1, 1]

        # The first ended without finishing (as if its process died): the batch is split into
        # one task each, which is no try and counts nothing, and lets go of the documents.
        await release_held(pool, first)
        c = await claim(second)
        assert (c.run, sorted(c.split)) == ([], sorted(ids))
        assert await attempts() == [1, 1]
        third = await pool.acquire()
        c = await claim_attempt(pool, third, ids[:1], "queued", "prep", max_attempts=5)
        assert c.run == ids[:1]
        assert await attempts() == [2, 1]

        # A new version of a0 while its old one is held: its own claim, from zero.
        await pool.execute(
            "UPDATE documents SET version = version + 1, attempts = 0 WHERE id = $1", ids[0]
        )
        fourth = await pool.acquire()
        c = await claim_attempt(pool, fourth, ids[:1], "queued", "prep", max_attempts=5)
        assert c.run == ids[:1]
        assert await attempts() == [1, 1]

        # Prepared, the documents start embedding at zero: an embed batch runs whole.
        embedder = load_embedder(settings)
        result = await prep_documents(
            pool,
            ids,
            count_tokens=embedder.count_tokens,
            max_tokens=embedder.chunk_tokens(settings.chunk_tokens),
            overlap_tokens=0,
            lexical=LexicalParams.from_settings(settings),
        )
        assert sorted(result.prepped) == sorted(ids)
        assert await attempts() == [0, 0]
        for conn in (second, third, fourth):
            await release_held(pool, conn)
        embedding = await pool.acquire()
        c = await claim(embedding, "prepped")
        assert (sorted(c.run), c.split) == (sorted(ids), [])
        await release_held(pool, embedding)

        # After a task's last retry, only what no other live task holds is failed.
        holder = await pool.acquire()
        await claim_attempt(pool, holder, ids[:1], "prepped", "embed", max_attempts=5)
        jobs = await give_up(pool, ids, "prepped", "embed", "RuntimeError: gave up")
        rows = await pool.fetch(
            "SELECT status::text AS s FROM documents WHERE id = ANY($1) ORDER BY external_id", ids
        )
        assert [r["s"] for r in rows] == ["prepped", "failed"]
        assert len(jobs) == 1
        await release_held(pool, holder)
        # No lock outlives its task's connection.
        locks = await pool.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        assert locks == 0
    finally:
        await pool.close()
