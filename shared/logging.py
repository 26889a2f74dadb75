"""Structured logging for the API, the workers and the CLI.

One call, ``configure_logging(settings)``, sets up the root logger for the whole process: one JSON
object per line when ``settings.log_json`` (for log shippers), otherwise a readable
``time level logger: message key=value ...`` line. The ids of the HTTP request and of the ingest
job a log line concerns live in context variables, so they follow the work across ``await``
points and thread-pool hops without being passed around by hand::

    with bind(request_id=rid, job_id=str(job.id)):
        log.info("documents accepted", extra={"documents": n})

Celery configures logging itself unless a receiver is connected to its ``setup_logging`` signal;
``setup_celery_logging`` is that receiver (connected in ``worker.celery_app``), so worker logs use
the same format and additionally carry the Celery task id and name.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, Protocol

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kensaku_request_id", default=None
)
job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kensaku_job_id", default=None
)

# Fields every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
# Context fields, in the order they are printed.
_CONTEXT_FIELDS = ("request_id", "job_id", "task_id", "task_name")
# Marks the handler this module installed, so a second configure_logging call replaces it.
_HANDLER_MARK = "_kensaku_handler"


class LoggingSettings(Protocol):
    """The part of `shared.config.Settings` logging needs (a Protocol keeps tests light)."""

    log_json: bool
    log_level: str


@contextmanager
def bind(*, request_id: str | None = None, job_id: str | None = None) -> Iterator[None]:
    """Attach ids to every log line emitted inside the block (this task/thread only).

    Only the ids given are set; the others keep their outer value, so a job can be bound inside
    a request. The previous values come back on exit, also on exceptions.
    """
    tokens: list[tuple[contextvars.ContextVar[str | None], contextvars.Token[str | None]]] = []
    if request_id is not None:
        tokens.append((request_id_var, request_id_var.set(str(request_id))))
    if job_id is not None:
        tokens.append((job_id_var, job_id_var.set(str(job_id))))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound request/job ids onto each record (None when unbound)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Do not overwrite a value passed explicitly through `extra=`.
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        if getattr(record, "job_id", None) is None:
            record.job_id = job_id_var.get()
        return True


class CeleryTaskFilter(logging.Filter):
    """Adds the id and name of the Celery task being executed, if any (worker processes only)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from celery._state import get_current_task  # imported lazily: only workers install this

        task = get_current_task()
        if task is not None and task.request is not None:
            if getattr(record, "task_id", None) is None:
                record.task_id = task.request.id
            if getattr(record, "task_name", None) is None:
                record.task_name = task.name
        return True


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in _CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            fields[name] = value
    for name, value in record.__dict__.items():
        if name not in _RECORD_ATTRS and name not in fields and name not in _CONTEXT_FIELDS:
            if not name.startswith("_"):
                fields[name] = value
    return fields


def _timestamp(record: logging.LogRecord) -> str:
    return (
        dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the bound ids, `extra=` fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_extra_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a stray UUID, Path or datetime in `extra=` must not kill the log line.
        return json.dumps(entry, ensure_ascii=False, default=str)


def _kv_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


class KeyValueFormatter(logging.Formatter):
    """Readable single line for terminals: `ts LEVEL logger: message key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        fields = _extra_fields(record)
        if fields:
            line += " " + " ".join(f"{k}={_kv_value(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def configure_logging(
    settings: LoggingSettings,
    *,
    stream: IO[str] | None = None,
    extra_filters: tuple[logging.Filter, ...] = (),
) -> logging.Handler:
    """Install the kensaku handler on the root logger; safe to call more than once.

    Returns the handler (tests read from its stream). Uvicorn's and Celery's own loggers are made
    to propagate to the root so their lines get the same format instead of a second one.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_json else KeyValueFormatter())
    # Filters on the handler (not on loggers) run for records from every logger, including
    # records that propagate up from library loggers.
    handler.addFilter(ContextFilter())
    for f in extra_filters:
        handler.addFilter(f)
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in list(root.handlers):
        # Replace our previous handler and any plain stderr/stdout handler someone installed
        # before us (logging.basicConfig, uvicorn's defaults) so no line is printed twice.
        if getattr(old, _HANDLER_MARK, False) or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())

    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task"):
        lib_logger = logging.getLogger(name)
        lib_logger.handlers.clear()
        lib_logger.propagate = True
    logging.captureWarnings(True)
    return handler


def setup_celery_logging(**_: Any) -> None:
    """Receiver for `celery.signals.setup_logging`: connecting it stops Celery's own setup.

    Connect it in the Celery app module: ``setup_logging.connect(setup_celery_logging)``.
    """
    from shared.config import get_settings

    configure_logging(get_settings(), extra_filters=(CeleryTaskFilter(),))
