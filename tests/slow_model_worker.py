"""A Celery worker whose model takes SECONDS to load, longer than the 4 s within which a prefork
child must report to Celery's main process (``worker_proc_alive_timeout``), as a large hub model
or a cold disk would. Test code only.

    python -m tests.slow_model_worker -A worker.celery_app worker ...
"""

from __future__ import annotations

import sys
import time
from typing import Any

SECONDS = 8.0


def _slow_model() -> None:
    import worker.runtime as runtime

    load = runtime.load_embedder

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(SECONDS)
        return load(*args, **kwargs)

    runtime.load_embedder = slow  # type: ignore[assignment]


if __name__ == "__main__":
    from celery.__main__ import main

    # Patched in the parent, before the pool forks: every child inherits it.
    _slow_model()
    sys.argv[0] = "celery"
    main()
