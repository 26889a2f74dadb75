"""Queue names, task names and routing: the one place both the API and the workers read."""

from __future__ import annotations

PREP_QUEUE = "prep"
EMBED_QUEUE = "embed"
# Short database work at the end of a job (VACUUM, an index build): not behind a prep backlog.
MAINTAIN_QUEUE = "maintain"
ALL_QUEUES = (PREP_QUEUE, EMBED_QUEUE, MAINTAIN_QUEUE)

PREP_TASK = "kensaku.prep"
EMBED_TASK = "kensaku.embed"
FINALIZE_TASK = "kensaku.finalize"

# CPU preprocessing and (GPU) embedding scale separately, each on its own queue.
TASK_ROUTES: dict[str, dict[str, str]] = {
    PREP_TASK: {"queue": PREP_QUEUE},
    EMBED_TASK: {"queue": EMBED_QUEUE},
    FINALIZE_TASK: {"queue": MAINTAIN_QUEUE},
}
