"""shared.logging: JSON and key=value output carrying the bound request/job ids."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from shared.logging import (
    CeleryTaskFilter,
    bind,
    configure_logging,
    job_id_var,
    request_id_var,
    setup_celery_logging,
)


@dataclass
class _Settings:
    log_json: bool = True
    log_level: str = "INFO"


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def _configure(json_out: bool = True, level: str = "INFO") -> io.StringIO:
    stream = io.StringIO()
    configure_logging(_Settings(log_json=json_out, log_level=level), stream=stream)
    return stream


def _json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_line_carries_bound_ids_and_extra_fields() -> None:
    stream = _configure()
    log = logging.getLogger("kensaku.test")
    with bind(request_id="req-1", job_id="job-7"):
        log.info("受け付けました %d 件", 3, extra={"documents": 3})
    (entry,) = _json_lines(stream)
    assert entry["msg"] == "受け付けました 3 件"
    assert entry["level"] == "INFO"
    assert entry["logger"] == "kensaku.test"
    assert entry["request_id"] == "req-1"
    assert entry["job_id"] == "job-7"
    assert entry["documents"] == 3
    assert str(entry["ts"]).endswith("Z")
    # ensure_ascii=False: Japanese stays readable in the raw log.
    assert "受け付けました" in stream.getvalue()


def test_ids_are_absent_outside_bind_and_restored_after_nesting() -> None:
    stream = _configure()
    log = logging.getLogger("kensaku.test")
    log.info("before")
    with bind(request_id="outer"):
        with bind(job_id="j1"):
            log.info("inner")
        log.info("after-inner")
    log.info("after")
    before, inner, after_inner, after = _json_lines(stream)
    assert "request_id" not in before and "job_id" not in before
    assert inner["request_id"] == "outer" and inner["job_id"] == "j1"
    assert after_inner["request_id"] == "outer" and "job_id" not in after_inner
    assert "request_id" not in after
    assert request_id_var.get() is None and job_id_var.get() is None


def test_bind_is_reset_on_exception() -> None:
    with pytest.raises(RuntimeError), bind(request_id="r", job_id="j"):
        raise RuntimeError("boom")
    assert request_id_var.get() is None and job_id_var.get() is None


def test_concurrent_requests_do_not_mix_ids() -> None:
    stream = _configure()
    log = logging.getLogger("kensaku.test")

    async def handle(rid: str) -> None:
        with bind(request_id=rid):
            await asyncio.sleep(0)  # let the other request run in between
            log.info("handled")

    async def main() -> None:
        await asyncio.gather(*(handle(f"r{i}") for i in range(5)))

    asyncio.run(main())
    assert sorted(e["request_id"] for e in _json_lines(stream)) == [f"r{i}" for i in range(5)]


def test_exception_is_in_the_json_entry() -> None:
    stream = _configure()
    try:
        raise ValueError("bad document")
    except ValueError:
        logging.getLogger("kensaku.test").exception("prep failed")
    (entry,) = _json_lines(stream)
    assert "ValueError: bad document" in str(entry["exc"])


def test_key_value_format_is_one_readable_line() -> None:
    stream = _configure(json_out=False)
    with bind(request_id="req 9", job_id="42"):
        logging.getLogger("kensaku.test").warning("slow batch", extra={"seconds": 1.5})
    line = stream.getvalue().strip()
    assert "\n" not in line
    assert "WARNING" in line and "kensaku.test: slow batch" in line
    assert 'request_id="req 9"' in line  # values with spaces are quoted
    assert "job_id=42" in line and "seconds=1.5" in line


def test_level_filters_and_reconfigure_does_not_duplicate() -> None:
    _configure(level="WARNING")
    stream = _configure(level="WARNING")
    log = logging.getLogger("kensaku.test")
    log.info("hidden")
    log.warning("shown")
    assert [e["msg"] for e in _json_lines(stream)] == ["shown"]
    marked = [h for h in logging.getLogger().handlers if getattr(h, "_kensaku_handler", False)]
    assert len(marked) == 1


def test_uvicorn_lines_go_through_the_same_handler() -> None:
    stream = _configure()
    uv = logging.getLogger("uvicorn.error")
    uv.addHandler(logging.StreamHandler(io.StringIO()))  # what uvicorn's dictConfig leaves behind
    configure_logging(_Settings(), stream=stream)
    uv.info("Started server process")
    assert [e["logger"] for e in _json_lines(stream)] == ["uvicorn.error"]


def test_celery_task_filter_adds_task_id() -> None:
    celery = pytest.importorskip("celery")
    app = celery.Celery("t", set_as_current=False)
    stream = io.StringIO()
    configure_logging(_Settings(), stream=stream, extra_filters=(CeleryTaskFilter(),))

    @app.task(name="kensaku.test_task", bind=True)
    def task(self: object) -> None:
        logging.getLogger("kensaku.test").info("in task")

    # Task.apply runs the task in this process with a real request context (no broker needed).
    task.apply(task_id="tid-1")
    logging.getLogger("kensaku.test").info("outside")
    inside, outside = [e for e in _json_lines(stream) if e["logger"] == "kensaku.test"]
    assert inside["task_id"] == "tid-1" and inside["task_name"] == "kensaku.test_task"
    assert "task_id" not in outside


def test_setup_celery_logging_is_a_signal_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KENSAKU_LOG_JSON", "true")
    from shared.config import get_settings

    get_settings.cache_clear()
    try:
        # Celery calls receivers with keyword arguments (loglevel, logfile, format, colorize).
        setup_celery_logging(loglevel="INFO", logfile=None, format="", colorize=False)
        handlers = [h for h in logging.getLogger().handlers if getattr(h, "_kensaku_handler", 0)]
        assert len(handlers) == 1
        assert any(isinstance(f, CeleryTaskFilter) for f in handlers[0].filters)
    finally:
        get_settings.cache_clear()
