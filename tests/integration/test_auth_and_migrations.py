"""API keys on a second real API process, the loopback rule, and the migration runner."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from shared.db.migrate import migrate
from shared.errors import ConfigError
from shared.stack.services import free_port
from tests.helpers import wait_ready

pytestmark = pytest.mark.integration

KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="module")
def keyed_api(stack: Any) -> Iterator[str]:
    port = free_port()
    env = stack.env() | {"KENSAKU_API_KEYS": f"other-key,{KEY}", "KENSAKU_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        yield url
    finally:
        # SIGTERM must end it within its shutdown timeout (10 s); kill only to clean up after
        # a failure, which the assertion then reports.
        proc.terminate()
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise AssertionError("kensaku serve ignored SIGTERM for 30 s") from None
        assert code is not None


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": f"Basic {KEY}"}, 401),
        ({"Authorization": f"Bearer {KEY}"}, 404),  # authorized: the collection is unknown
        ({"Authorization": "Bearer other-key"}, 404),
    ],
)
def test_api_keys(keyed_api: str, headers: dict[str, str], status: int) -> None:
    resp = httpx.post(
        f"{keyed_api}/v1/search", json={"query": "東京", "collection": "nope"}, headers=headers
    )
    assert resp.status_code == status, resp.text
    if status == 401:
        assert "API key" in resp.json()["detail"]
    # Health probes stay open for the orchestrator.
    assert httpx.get(f"{keyed_api}/healthz").status_code == 200


def test_open_api_refuses_public_bind(stack: Any) -> None:
    env = stack.env() | {"KENSAKU_HOST": "0.0.0.0", "KENSAKU_API_KEYS": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "shared.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "refusing to bind" in proc.stderr + proc.stdout


def _database_url(base: str, name: str) -> str:
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"/{name}"))


def test_migration_runner_refuses_changed_file(stack: Any, tmp_path: Path) -> None:
    name = f"mig_{uuid.uuid4().hex[:8]}"

    async def run() -> None:
        admin = await asyncpg.connect(stack.database_url)
        await admin.execute(f"CREATE DATABASE {name}")
        await admin.close()
        url = _database_url(stack.database_url, name)
        (tmp_path / "0001_first.sql").write_text("CREATE TABLE t1 (id int);")
        assert await migrate(url, tmp_path) == ["0001_first.sql"]
        (tmp_path / "0002_second.sql").write_text("CREATE TABLE t2 (id int);")
        assert await migrate(url, tmp_path) == ["0002_second.sql"]
        assert await migrate(url, tmp_path) == []
        (tmp_path / "0001_first.sql").write_text("CREATE TABLE t1 (id bigint);")
        with pytest.raises(ConfigError, match=r"0001_first\.sql was changed"):
            await migrate(url, tmp_path)
        # A failing migration applies nothing of itself.
        (tmp_path / "0001_first.sql").write_text("CREATE TABLE t1 (id int);")
        (tmp_path / "0003_bad.sql").write_text("CREATE TABLE t3 (id int); SELECT nope;")
        with pytest.raises(asyncpg.UndefinedColumnError):
            await migrate(url, tmp_path)
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT to_regclass('t3')") is None
            names = [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")]
            assert sorted(names) == ["0001_first.sql", "0002_second.sql"]
        finally:
            await conn.close()

    asyncio.run(run())
