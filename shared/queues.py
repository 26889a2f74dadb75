"""Queue names, task names and routing: the one place both the API and the workers read."""

from __future__ import annotations

PREP_QUEUE = "prep"
EMBED_QUEUE = "embed"
ALL_QUEUES = (PREP_QUEUE, EMBED_QUEUE)

PREP_TASK = "kensaku.prep"
EMBED_TASK = "kensaku.embed"

# CPU preprocessing and (GPU) embedding scale separately, each on its own queue.
TASK_ROUTES: dict[str, dict[str, str]] = {
    PREP_TASK: {"queue": PREP_QUEUE},
    EMBED_TASK: {"queue": EMBED_QUEUE},
}
