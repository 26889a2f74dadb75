"""Task adapters with stable names. They take document ids, call the plain functions in
shared.ingest, and decide about retries; the work itself lives in shared/.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import Task

from shared.ingest.embed import embed_documents, fail_documents
from shared.ingest.finalize import finalize_job, jobs_to_finalize
from shared.ingest.prep import InlineEmbedding, LexicalParams, prep_documents
from shared.logging import bind
from shared.queues import EMBED_TASK, FINALIZE_TASK, PREP_TASK
from shared.taskqueue import enqueue_embed, enqueue_finalize
from worker.celery_app import app
from worker.runtime import Runtime, get_runtime

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


def _finalize_finished(rt: Runtime, jobs: set[uuid.UUID]) -> None:
    """Jobs this batch finished get their finalize task (the sweeper catches any missed)."""
    done = rt.run(jobs_to_finalize(rt.pool, jobs))
    if done:
        enqueue_finalize(app, done)


@app.task(name=PREP_TASK, bind=True, max_retries=None)
def prep(self: Task, doc_ids: list[int], job_id: str | None = None) -> dict[str, int]:
    with bind(job_id=job_id):
        return _prep(self, doc_ids, job_id)


def _prep(task: Task, doc_ids: list[int], job_id: str | None) -> dict[str, int]:
    rt = get_runtime()
    # A model that embeds the pipeline's lexemes is run inside prep (shared/ingest/prep.py).
    inline = InlineEmbedding(rt.embedder, rt.table) if rt.embedder.takes_lexemes else None
    try:
        result = rt.run(
            prep_documents(
                rt.pool,
                doc_ids,
                count_tokens=rt.embedder.count_tokens,
                max_tokens=rt.embedder.chunk_tokens(rt.settings.chunk_tokens),
                overlap_tokens=rt.settings.chunk_overlap_tokens,
                lexical=LexicalParams.from_settings(rt.settings),
                inline=inline,
            )
        )
    except Exception as exc:
        return _retry_or_fail(task, doc_ids, "prep", exc)  # type: ignore[no-any-return]
    if result.prepped:
        enqueue_embed(app, result.prepped, rt.settings.prep_batch_size, job_id)
    _finalize_finished(rt, result.jobs)
    return {
        "prepped": len(result.prepped),
        "indexed": len(result.indexed),
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
        _finalize_finished(rt, result.jobs)
    return {"indexed": len(result.indexed), "skipped": result.skipped, "chunks": result.chunks}


@app.task(name=FINALIZE_TASK, bind=True, max_retries=5)
def finalize(self: Task, job_id: str) -> bool:
    rt = get_runtime()
    with bind(job_id=job_id):
        try:
            return rt.run(finalize_job(rt.pool, rt.table, rt.settings, uuid.UUID(job_id)))
        except Exception as exc:
            # The sweeper enqueues unfinished jobs again, so giving up here loses nothing.
            raise self.retry(exc=exc, countdown=min(60, 2 ** (self.request.retries + 1))) from exc
