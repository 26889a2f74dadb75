"""A Celery worker for the poison-document fault test: preparing a document whose text holds
MARKER kills the process at once, as the kernel's OOM killer would kill a worker that a document
drives out of memory. Test code only.

    python -m tests.poison_worker -A worker.celery_app worker ...
"""

from __future__ import annotations

import os
import sys
from typing import Any

MARKER = "この文書を処理すると毎回ワーカーが落ちる"


def _poison_prep() -> None:
    import shared.ingest.prep as prep

    prepare = prep.prepare_document

    def poisoned(title: str, body: str, **kwargs: Any) -> Any:
        if MARKER in body:
            os._exit(137)
        return prepare(title, body, **kwargs)

    prep.prepare_document = poisoned  # type: ignore[assignment]


if __name__ == "__main__":
    from celery.__main__ import main

    # Patched in the parent, before the pool forks: every child inherits it.
    _poison_prep()
    sys.argv[0] = "celery"
    main()
