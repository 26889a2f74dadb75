"""Task adapters with stable names. They take document ids, call the plain functions in
shared.ingest and hand retries to Celery; the work itself lives in shared/.

Retries: any exception that reaches a task (the database or broker briefly gone, the model out
of memory, the soft time limit) is retried by Celery with jittered exponential backoff, up to
``max_attempts``; after the last one the documents are recorded as failed so their job finishes.
A worker process that dies mid-task is covered by the attempts counted in Postgres, and a task
delivered twice by the claims made there (shared/ingest/attempts.py).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import asyncpg
from celery import Task

from shared.broker import (
    EMBED_TASK,
    FILL_TASK,
    FINALIZE_TASK,
    PREP_TASK,
    embed_batches,
    enqueue_embed,
    enqueue_embed_batches,
    enqueue_finalize,
    enqueue_prep,
)
from shared.config import get_settings
from shared.db.registry import ModelSwitched
from shared.ingest.attempts import Claim, claim_attempt, give_up, release_held
from shared.ingest.embed import embed_documents
from shared.ingest.finalize import finalize_job, jobs_to_finalize
from shared.ingest.prep import InlineEmbedding, LexicalParams, PrepResult, prep_documents
from shared.logging import bind
from worker.celery_app import app
from worker.runtime import ModelSlot, Runtime

log = logging.getLogger(__name__)
T = TypeVar("T")
_MAX_ATTEMPTS = get_settings().max_attempts


class StageTask(Task):  # type: ignore[misc]
    """A prep or embed task: retried on any error, its documents failed after the last try."""

    autoretry_for = (Exception,)
    retry_backoff = 2
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = _MAX_ATTEMPTS - 1
    stage = ""
    status = ""  # of the documents the stage takes

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        doc_ids = list(args[0]) if args else []
        log.error("%s gave up on %d documents: %s", self.stage, len(doc_ids), exc)
        message = f"{type(exc).__name__}: {exc}"
        try:
            rt = Runtime.for_process()
            jobs = rt.run(give_up(rt.pool, doc_ids, self.status, self.stage, message))
            _finalize_finished(rt, jobs)  # else the sweeper finds them, later
        except Exception:
            # Not even that worked: the documents stay pending, the sweeper tries them again
            # later and their attempts run out there.
            log.exception("could not record the failure of %d documents", len(doc_ids))


def _finalize_finished(rt: Runtime, jobs: set[uuid.UUID]) -> None:
    """Jobs this batch finished get their finalize task (the sweeper catches any missed)."""
    done = rt.run(jobs_to_finalize(rt.pool, jobs))
    if done:
        enqueue_finalize(app, done)


@contextlib.contextmanager
def _held_connection(rt: Runtime) -> Iterator[asyncpg.Connection]:
    """The connection a task's claims live on, held until the task ends (attempts.py)."""
    conn = rt.run(rt.pool.acquire())
    try:
        yield conn
    finally:
        try:
            rt.run(release_held(rt.pool, conn))
        except Exception:  # must not hide the task's own error
            log.exception("could not release a task's claims; closing its connection")
            conn.terminate()


def _for_active_model(rt: Runtime, work: Callable[[ModelSlot], T]) -> T:
    """``work`` for the registry's active model; once more, at once, if a switch made another
    model active meanwhile (its write refused, nothing stored): a switch is not a failure, and
    a retry through Celery would cost the documents an attempt and split their batch."""
    try:
        return work(rt.active())
    except ModelSwitched as exc:
        log.info("%s: running again for the new active model", exc)
        return work(rt.active())


def _claim(
    rt: Runtime, conn: asyncpg.Connection, doc_ids: list[int], status: str, stage: str
) -> Claim:
    claim = rt.run(claim_attempt(rt.pool, conn, doc_ids, status, stage, rt.settings.max_attempts))
    if claim.failed:
        log.warning("%s: %d documents out of attempts, failed", stage, len(claim.failed))
    if claim.held:
        log.info("%s: %d documents in another live task's hands, left to it", stage, claim.held)
    return claim


@app.task(name=PREP_TASK, bind=True, base=StageTask, stage="prep", status="queued")
def prep(self: Task, doc_ids: list[int], job_id: str | None = None) -> dict[str, int]:
    with bind(job_id=job_id):
        rt = Runtime.for_process()
        with _held_connection(rt) as conn:
            claim = _claim(rt, conn, doc_ids, "queued", "prep")
            if claim.split:
                # Redelivered with documents tried before: one task each isolates a poison one.
                enqueue_prep(app, claim.split, 1, job_id)
                return {"split": len(claim.split), "failed": len(claim.failed)}

            def run_prep(model: ModelSlot) -> PrepResult:
                # A model that embeds the pipeline's lexemes runs inside prep (prep.py).
                inline = (
                    InlineEmbedding(model.embedder, model.table)
                    if model.counter.takes_lexemes
                    else None
                )
                return rt.run(
                    prep_documents(
                        rt.pool,
                        claim.run,
                        count_tokens=model.counter.count_tokens,
                        max_tokens=model.counter.chunk_tokens(rt.settings.chunk_tokens),
                        overlap_tokens=rt.settings.chunk_overlap_tokens,
                        lexical=LexicalParams.from_settings(rt.settings),
                        inline=inline,
                        max_text_bytes=rt.settings.max_document_bytes,
                        chunker=model.chunker(),
                    )
                )

            result = _for_active_model(rt, run_prep)
        if result.prepped:
            batches = embed_batches(result.chunk_counts, rt.settings.embed_batch_size)
            enqueue_embed_batches(app, batches, job_id)
        _finalize_finished(rt, result.jobs | claim.jobs)
        return {
            "prepped": len(result.prepped),
            "indexed": len(result.indexed),
            "failed": len(result.failed) + len(claim.failed),
            "skipped": result.skipped + claim.held,
            "chunks": result.chunks,
        }


@app.task(name=EMBED_TASK, bind=True, base=StageTask, stage="embed", status="prepped")
def embed(self: Task, doc_ids: list[int], job_id: str | None = None) -> dict[str, int]:
    with bind(job_id=job_id):
        rt = Runtime.for_process()
        with _held_connection(rt) as conn:
            claim = _claim(rt, conn, doc_ids, "prepped", "embed")
            if claim.split:
                enqueue_embed(app, claim.split, 1, job_id)
                return {"split": len(claim.split), "failed": len(claim.failed)}
            result = _for_active_model(
                rt,
                lambda model: rt.run(
                    embed_documents(
                        rt.pool, model.embedder, model.table, claim.run, model.chunker()
                    )
                ),
            )
        if result.reprep:
            enqueue_prep(app, result.reprep, rt.settings.prep_batch_size, job_id)
        _finalize_finished(rt, result.jobs | claim.jobs)
        return {
            "indexed": len(result.indexed),
            "failed": len(claim.failed),
            "skipped": result.skipped + claim.held,
            "chunks": result.chunks,
        }


# Tasks whose giving up loses nothing (the switch or the sweeper sends their work again).
_RETRIED = {
    "autoretry_for": (Exception,),
    "retry_backoff": 2,
    "retry_jitter": True,
    "max_retries": 5,
}


@app.task(name=FILL_TASK, bind=True, **_RETRIED)
def fill(self: Task, doc_ids: list[int], model: str) -> dict[str, int]:
    """Vectors of indexed documents for ``model``, the one being switched to. Idempotent and
    claim-free: what a lost or failed task leaves out, the switch finds and sends again."""
    rt = Runtime.for_process()
    if model not in rt.serving().names:
        log.info("fill for %s skipped: it is no longer being built", model)
        return {"indexed": 0, "skipped": len(doc_ids), "chunks": 0}
    slot = rt.model(model)
    result = rt.run(embed_documents(rt.pool, slot.embedder, slot.table, doc_ids, fill=True))
    return {"indexed": 0, "skipped": result.skipped, "chunks": result.chunks}


@app.task(
    name=FINALIZE_TASK,
    bind=True,
    **_RETRIED,
    # An index build over a large collection takes minutes, not seconds.
    soft_time_limit=None,
    time_limit=6 * 3600,
)
def finalize(self: Task, job_id: str) -> bool:
    # Giving up loses nothing: the sweeper sends unfinished jobs here again.
    with bind(job_id=job_id):
        rt = Runtime.for_process()
        return rt.run(finalize_job(rt.pool, rt.active().table, rt.settings, uuid.UUID(job_id)))
