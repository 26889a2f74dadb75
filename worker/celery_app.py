"""The Celery application of the workers: `celery -A worker.celery_app worker -Q prep,embed`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celery.signals import (
    setup_logging,
    task_received,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from shared.broker import make_celery_app
from shared.config import get_settings
from shared.logging import setup_celery_logging

if TYPE_CHECKING:
    from worker.watchdog import Watchdog

log = logging.getLogger(__name__)
_watchdog: Watchdog | None = None
app = make_celery_app(get_settings())
# The worker imports the task module when it starts (Celery's usual way; the tasks import `app`
# from here, so importing them here too would be a cycle).
app.conf.include = ["worker.tasks"]
# The API gives up publishing within seconds (the sweeper re-enqueues later); a worker must not
# give up at all: after three failed reconnects (12 s) Celery's consumer stops the worker for
# good, so a Redis that takes longer to come back (a restart loading its append-only file)
# would leave no worker. None: keep reconnecting, with Celery's growing backoff.
app.conf.broker_connection_max_retries = None
# kensaku's structured logging instead of Celery's own set-up (task id and name on every line).
setup_logging.connect(setup_celery_logging)


@worker_init.connect
def _preload(sender: object = None, **_: object) -> None:
    # Import the heavy libraries once in the parent, before the pool forks: children then start
    # in about a second instead of each importing torch and transformers on two cores at once.
    # Importing does not initialize CUDA, so forking afterwards stays safe. An exported backend
    # needs only its runtime: torch would cost ~9 s of start and its memory for nothing.
    import importlib
    import importlib.util

    from shared.config import DEFAULT_MODEL
    from shared.embed.export import RUNTIME_MODULES
    from worker.runtime import Runtime

    settings = get_settings()
    backend = RUNTIME_MODULES.get(settings.backend)
    # The children load the registry's active model, which a switch may have made another than
    # KENSAKU_MODEL, and the fill tasks of a switch in progress load the model being built
    # (worker/runtime.py): the runtimes of both.
    for model in _serving_models(settings.database_url) or [settings.model]:
        runtime = backend
        if model == DEFAULT_MODEL or not runtime or not importlib.util.find_spec(runtime):
            runtime = "sentence_transformers"  # torch (a missing extra is reported on first use)
        importlib.import_module(runtime)

    # Children inherit this: each sizes torch's threads to its share of the cores.
    Runtime.pool_processes = int(getattr(sender, "concurrency", 1) or 1)

    port = get_settings().metrics_port
    if port:
        from shared.metrics import start_worker_metrics_server

        start_worker_metrics_server(port)


def _serving_models(database_url: str) -> list[str]:
    """The registry's active model and the one being built, if any; none when the database is
    fresh or cannot be read within 5 s (only the preload's guess depends on it)."""
    import asyncio

    import asyncpg

    from shared.db.registry import serving

    async def read() -> list[str]:
        conn = await asyncpg.connect(database_url, timeout=5)
        try:
            now = await serving(conn)
            return [m for m in (now.active, now.building) if m]
        finally:
            conn.terminate()  # no goodbye: a server that stalls must not hold the start up

    try:
        return asyncio.run(asyncio.wait_for(read(), 5))
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.info("preload: registry not read (%s)", exc)
        return []


@worker_ready.connect
def _watch(sender: Any = None, **_: object) -> None:
    # The main process (sender: its consumer), once it consumes: worker/watchdog.py says why.
    global _watchdog
    settings = get_settings()
    if settings.worker_stall_seconds <= 0 or _watchdog is not None:  # one per process
        return
    from worker.watchdog import Watchdog

    # A copy: a consumer cancelled by remote control leaves the set, yet its queue still counts.
    queues = list(sender.app.amqp.queues.consume_from)
    _watchdog = Watchdog(
        sender.app, queues, settings.worker_stall_seconds, settings.shutdown_timeout_seconds + 20
    )
    _watchdog.start()


@task_received.connect
def _received(**_: object) -> None:
    if _watchdog is not None:
        _watchdog.received()


@worker_process_init.connect
def _open(**_: object) -> None:
    # The pool before the first task; the model when a task first needs it (worker/runtime.py
    # says why not here).
    from worker.runtime import Runtime

    Runtime.for_process()


@worker_process_shutdown.connect
@worker_shutdown.connect  # a solo pool (the GPU worker) runs tasks in the main process
def _close(**_: object) -> None:
    from worker.runtime import Runtime

    Runtime.close_current()
