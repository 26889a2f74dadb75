"""The model registry on the shared stack: registering a model never makes it active, and a
vector write for a model that is no longer active fails (its task then runs again for the new
one) instead of marking documents indexed in a table search no longer reads."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from shared.config import Settings
from shared.db.embeddings import ModelTable, ensure_model_table
from shared.db.pool import create_pool
from shared.db.registry import ModelSwitched, serving
from shared.embed.embedder import load_embedder
from shared.ingest.embed import embed_documents
from shared.ingest.prep import InlineEmbedding, LexicalParams, prep_documents
from tests.helpers import db_fetch, wait_job
from tests.integration.test_ingest import make_docs, upload

pytestmark = pytest.mark.integration

# A document put back in a stage, its updated_at in the future so the sweeper leaves it alone.
HOLD = (
    "UPDATE documents SET status = $2::document_status, "
    "updated_at = now() + interval '1 hour' WHERE id = $1"
)


def _register_other(pool: Any, dimension: int) -> Any:
    return ensure_model_table(
        pool,
        model="kensaku-test/not-active",
        dimension=dimension,
        backend="torch",
        vector_unit="sentence",
        query_prompt=None,
        document_prompt=None,
    )


def _doc_ids(stack: Any, collection: str) -> list[int]:
    rows = db_fetch(
        stack,
        "SELECT d.id FROM documents d JOIN collections c ON c.id = d.collection_id "
        "WHERE c.name = $1 ORDER BY d.id",
        collection,
    )
    return [r["id"] for r in rows]


def _statuses(stack: Any, ids: list[int]) -> list[str]:
    rows = db_fetch(
        stack, "SELECT status::text AS s FROM documents WHERE id = ANY($1) ORDER BY id", ids
    )
    return [r["s"] for r in rows]


def test_writes_for_a_model_that_is_not_active_are_refused(
    stack: Any, api: httpx.Client, collection: str
) -> None:
    wait_job(api, upload(api, collection, make_docs(3))["job_id"])
    ids = _doc_ids(stack, collection)
    settings = Settings(database_url=stack.database_url, redis_url=stack.redis_url)
    embedder = load_embedder(settings)

    async def run() -> tuple[str | None, str | None, ModelTable]:
        pool = await create_pool(settings)
        try:
            before = (await serving(pool)).active
            other = await _register_other(pool, embedder.dimension)
            after = (await serving(pool)).active
            # prep with a model's inline embedding, for the model that is not active
            await pool.execute(HOLD, ids[0], "queued")
            with pytest.raises(ModelSwitched):
                await prep_documents(
                    pool,
                    [ids[0]],
                    count_tokens=embedder.count_tokens,
                    max_tokens=embedder.chunk_tokens(settings.chunk_tokens),
                    overlap_tokens=0,
                    lexical=LexicalParams.from_settings(settings),
                    inline=InlineEmbedding(embedder, other),
                    chunker=embedder.chunker(settings.chunk_tokens, 0),
                )
            # embed, for the model that is not active
            await pool.execute(HOLD, ids[1], "prepped")
            with pytest.raises(ModelSwitched):
                await embed_documents(pool, embedder, other, [ids[1]])
            return before, after, other
        finally:
            await pool.close()

    try:
        before, after, other = asyncio.run(run())
        assert before is not None and after == before  # registering did not activate it
        # Nothing was written or marked: the documents wait for their tasks' next try (the
        # sweeper kept away by their updated_at in the future).
        assert _statuses(stack, ids) == ["queued", "prepped", "indexed"]
        rows = db_fetch(stack, f"SELECT count(*) AS n FROM {other.table}")
        assert rows[0]["n"] == 0
    finally:
        db_fetch(
            stack,
            "UPDATE documents SET status = 'indexed', updated_at = now() WHERE id = ANY($1)",
            ids[:2],
        )


def test_the_worker_preloads_for_the_registry_s_serving_models(stack: Any) -> None:
    """The worker's parent picks the runtimes to import before forking from the registry's
    active model, which a switch may have made another than KENSAKU_MODEL, and the model being
    built, whose fill tasks the children run."""
    from worker.celery_app import _serving_models

    rows = db_fetch(
        stack,
        "SELECT name, building FROM embedding_models WHERE active OR building ORDER BY building",
    )
    assert rows and not rows[0]["building"]
    assert _serving_models(stack.database_url) == [r["name"] for r in rows]
    # No server there: the preload falls back to KENSAKU_MODEL instead of failing the worker.
    assert _serving_models("postgresql://kensaku@127.0.0.1:1/kensaku") == []
