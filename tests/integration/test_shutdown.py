"""Bounded shutdown: `kensaku serve` exits soon after SIGTERM even with a request in flight, and
`kensaku up` stops cleanly on Ctrl-C while it is still starting, leaving no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.stack.services import free_port
from tests.helpers import data_dir, wait_ready

pytestmark = pytest.mark.integration


def test_serve_exits_within_its_timeout_with_an_upload_in_flight(stack: Any) -> None:
    port = free_port()
    env = stack.env() | {"KENSAKU_PORT": str(port), "KENSAKU_SHUTDOWN_TIMEOUT_SECONDS": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        streaming = threading.Event()

        def endless() -> Iterator[bytes]:
            for i in range(10_000):  # a line every 0.3 s: never idle, never done
                yield (json.dumps({"id": f"s{i}", "text": "流れ続ける。"}) + "\n").encode()
                streaming.set()
                time.sleep(0.3)

        def upload() -> None:
            try:
                httpx.post(
                    f"{url}/v1/documents",
                    params={"collection": "shutdown"},
                    content=endless(),
                    headers={"Content-Type": "application/x-ndjson"},
                    timeout=120,
                )
            except httpx.HTTPError:
                pass

        client = threading.Thread(target=upload, daemon=True)
        client.start()
        assert streaming.wait(30)
        time.sleep(1)
        started = time.monotonic()
        proc.terminate()
        code = proc.wait(30)
        took = time.monotonic() - started
        # 3 s of grace for the request, then shutdown steps bounded by the same again.
        assert took < 15, took
        assert code is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _processes_using(path: Path) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(path) in line and "ps -eo" not in line]


def test_up_stops_cleanly_on_ctrl_c_while_starting() -> None:
    with data_dir("kensaku-up-") as data:
        _interrupt_up_while_starting(data)


def _interrupt_up_while_starting(data: Path) -> None:
    env = dict(os.environ) | {"PYTHONUNBUFFERED": "1"}
    for key in ("KENSAKU_DATABASE_URL", "KENSAKU_REDIS_URL"):
        env.pop(key, None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "up",
            "--data-dir",
            str(data),
            "--port",
            str(free_port()),
            "--flower-port",
            str(free_port()),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # interrupt once it is starting the services
            if line.startswith("starting"):
                break
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
        assert "stopped" in out, out[-2000:]
        time.sleep(1)
        assert _processes_using(data) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
