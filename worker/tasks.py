"""Task adapters with stable names. They take document ids, call the plain functions in
shared.ingest, and decide about retries; the work itself lives in shared/.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task

from shared.ingest.embed import embed_documents, fail_documents
from shared.ingest.prep import prep_documents
from shared.logging import bind
from shared.queues import EMBED_TASK, PREP_TASK
from shared.taskqueue import enqueue_embed
from worker.celery_app import app
from worker.runtime import get_runtime

log = logging.getLogger(__name__)


def _retry_or_fail(task: Task, doc_ids: list[int], stage: str, exc: BaseException) -> Any:
    # Per-document errors are handled inside the stage; what reaches here failed the whole
    # batch (database or broker briefly gone, model out of memory): retry with backoff, and
    # after the last attempt record the documents as failed so the job finishes.
    retries = task.request.retries
    if retries + 1 < get_runtime().settings.max_attempts:
        # Exponential backoff with a cap: 2, 4, 8, ... 60 s.
        raise task.retry(exc=exc, countdown=min(60, 2 ** (retries + 1)))
    log.error(
        "%s gave up on %d documents after %d attempts: %s", stage, len(doc_ids), retries + 1, exc
    )
    rt = get_runtime()
    rt.run(fail_documents(rt.pool, doc_ids, stage, f"{type(exc).__name__}: {exc}"))
    return None


@app.task(name=PREP_TASK, bind=True, max_retries=None)
def prep(self: Task, doc_ids: list[int], job_id: str | None = None) -> dict[str, int]:
    with bind(job_id=job_id):
        return _prep(self, doc_ids, job_id)


def _prep(task: Task, doc_ids: list[int], job_id: str | None) -> dict[str, int]:
    rt = get_runtime()
    try:
        result = rt.run(
            prep_documents(
                rt.pool,
                doc_ids,
                count_tokens=rt.embedder.count_tokens,
                max_tokens=rt.embedder.chunk_tokens(rt.settings.chunk_tokens),
                overlap_tokens=rt.settings.chunk_overlap_tokens,
                tokens_are_lexemes=rt.embedder.takes_lexemes,
                bm25_k1=rt.settings.bm25_k1,
                bm25_b=rt.settings.bm25_b,
            )
        )
    except Exception as exc:
        return _retry_or_fail(task, doc_ids, "prep", exc)  # type: ignore[no-any-return]
    if result.prepped:
        enqueue_embed(app, result.prepped, rt.settings.prep_batch_size, job_id)
    return {
        "prepped": len(result.prepped),
        "failed": len(result.failed),
        "skipped": result.skipped,
        "chunks": result.chunks,
    }


@app.task(name=EMBED_TASK, bind=True, max_retries=None)
def embed(self: Task, doc_ids: list[int], job_id: str | None = None) -> dict[str, int]:
    rt = get_runtime()
    with bind(job_id=job_id):
        try:
            result = rt.run(embed_documents(rt.pool, rt.embedder, rt.table, doc_ids))
        except Exception as exc:
            return _retry_or_fail(self, doc_ids, "embed", exc)  # type: ignore[no-any-return]
    return {"indexed": len(result.indexed), "skipped": result.skipped, "chunks": result.chunks}
