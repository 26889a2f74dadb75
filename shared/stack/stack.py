"""The whole stack on one machine: PostgreSQL + pgvector, Redis, migrations, the API, a worker on
both queues and Flower, each a child process in its own process group so that stopping the stack
leaves no orphans. Used by `kensaku up`, the integration tests and the benchmarks.

KENSAKU_DATABASE_URL / KENSAKU_REDIS_URL in the environment point it at external services instead
of starting local ones.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared.broker import ALL_QUEUES
from shared.config import Settings
from shared.db.migrate import migrate
from shared.errors import ConfigError
from shared.metrics import reset_multiproc_dir
from shared.stack.services import (
    EMBEDDED_POSTGRES_SETTINGS,
    LocalPostgres,
    LocalRedis,
    free_port,
    start_postgres,
    start_redis,
)

RESTART_LIMIT = 5
RESTART_WINDOW_S = 300.0


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    stopped: bool = False  # on purpose, by stop(): not one to start again

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 20.0) -> None:
        self.stopped = True
        if not self.alive():
            self.signal_group(signal.SIGKILL)  # children of a dead leader
            return
        self.signal_group(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.popen.wait()
        # Anything left in the group (a prefork child mid-task) goes too.
        self.signal_group(signal.SIGKILL)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Stack:
    data_dir: Path
    api_port: int = 0
    flower_port: int = 0
    worker_concurrency: int = 2
    flower: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    persist_redis: bool = True

    database_url: str = ""
    redis_url: str = ""
    flower_user: str = "kensaku"
    flower_password: str = ""
    postgres: LocalPostgres | None = None
    redis: LocalRedis | None = None
    procs: dict[str, Proc] = field(default_factory=dict)
    # When each process was last started again by restart_exited, newest last.
    restarts: dict[str, deque[float]] = field(default_factory=dict)

    # --- lifecycle ----------------------------------------------------------------------
    def start_services(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        self.database_url = os.environ.get("KENSAKU_DATABASE_URL", "")
        if not self.database_url:
            self.postgres = start_postgres(
                self.data_dir / "postgres", settings=EMBEDDED_POSTGRES_SETTINGS
            )
            self.database_url = self.postgres.url
        self.redis_url = os.environ.get("KENSAKU_REDIS_URL", "")
        if not self.redis_url:
            self.redis = start_redis(self.data_dir / "redis", persist=self.persist_redis)
            self.redis_url = self.redis.url
        asyncio.run(migrate(self.database_url))
        # Files of a previous run's processes would be added into this run's values.
        reset_multiproc_dir(self.data_dir / "metrics")

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            KENSAKU_DATABASE_URL=self.database_url,
            KENSAKU_REDIS_URL=self.redis_url,
            KENSAKU_HOST="127.0.0.1",
            KENSAKU_PORT=str(self.api_port),
            PYTHONUNBUFFERED="1",
        )
        # API and worker share one directory, so the API's /metrics shows the worker's too.
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.data_dir / "metrics")
        env.update(self.extra_env)
        return env

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        log_path = self.data_dir / "logs" / f"{name}.log"
        log = open(log_path, "ab")  # the child writes to it; our handle closes after the spawn
        popen = subprocess.Popen(
            args,
            env=self.env() | (env or {}),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: stop() reaches its children too
        )
        log.close()
        proc = Proc(name, popen, log_path, args, env or {})
        self.procs[name] = proc
        return proc

    def restart_exited(self) -> list[str]:
        """Start again, as before, each process that exited without being stopped; return
        their names. What compose's `restart: unless-stopped` does for the deployed stack: a
        Celery worker ends itself on errors it calls unrecoverable (one is a race in kombu's
        closing of a lost Redis connection), and the queue needs a worker again once Redis is
        back. A process that keeps exiting is not started a sixth time within five minutes."""
        started = []
        for name, proc in list(self.procs.items()):
            if proc.alive() or proc.stopped:
                continue
            proc.signal_group(signal.SIGKILL)  # prefork children of a dead leader
            times = self.restarts.setdefault(name, deque(maxlen=RESTART_LIMIT))
            if len(times) == RESTART_LIMIT and time.monotonic() - times[0] < RESTART_WINDOW_S:
                raise ConfigError(
                    f"{name} exited {RESTART_LIMIT + 1} times within "
                    f"{RESTART_WINDOW_S:.0f} s; last lines of its log:\n{proc.tail()}"
                )
            times.append(time.monotonic())
            self._spawn(name, proc.args, proc.extra_env)
            started.append(name)
        return started

    def start_api(self) -> Proc:
        self.api_port = self.api_port or free_port()
        return self._spawn(
            "api",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "api.main:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.api_port),
                "--no-access-log",
                "--timeout-graceful-shutdown",
                str(self._shutdown_seconds()),
            ],
        )

    def _shutdown_seconds(self) -> int:
        default = Settings.model_fields["shutdown_timeout_seconds"].default
        return max(1, int(float(self.env().get("KENSAKU_SHUTDOWN_TIMEOUT_SECONDS", default))))

    def start_worker(self, name: str = "worker") -> Proc:
        return self._spawn(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker.celery_app",
                "worker",
                "-Q",
                ",".join(ALL_QUEUES),
                "-P",
                "prefork",
                "-c",
                str(self.worker_concurrency),
                "-n",
                f"{name}-{secrets.token_hex(3)}@%h",
                "--loglevel",
                "INFO",
                "--without-mingle",
                "--without-gossip",
            ],
        )

    def start_flower(self) -> Proc:
        # The password goes in the environment (FLOWER_BASIC_AUTH), not on the command line,
        # where `ps` would show it.
        settings = Settings()
        self.flower_port = self.flower_port or free_port()
        self.flower_password = (
            self.flower_password
            or settings.flower_password.get_secret_value()
            or secrets.token_urlsafe(12)
        )
        self.flower_user = settings.flower_user
        return self._spawn(
            "flower",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker.celery_app",
                "flower",
                "--address=127.0.0.1",
                f"--port={self.flower_port}",
                "--persistent=True",
                f"--db={self.data_dir / 'flower.db'}",
                "--purge_offline_workers=60",
            ],
            env={"FLOWER_BASIC_AUTH": f"{self.flower_user}:{self.flower_password}"},
        )

    def start(self, timeout: float = 180.0) -> None:
        self.start_services()
        self.start_api()
        self.start_worker()
        if self.flower:
            self.start_flower()
        self.wait_ready(timeout)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def flower_url(self) -> str:
        return f"http://127.0.0.1:{self.flower_port}"

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs.values():
                if not proc.alive():
                    raise ConfigError(f"{proc.name} exited during start-up:\n{proc.tail()}")
            try:
                if httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise ConfigError(
            f"the API was not ready within {timeout:.0f} s:\n{self.procs['api'].tail()}"
        )

    def stop(self) -> None:
        # Flower and the API first, then the worker (it finishes or returns its task), then data.
        for name in [n for n in ("flower", "api") if n in self.procs] + [
            n for n in self.procs if n not in ("flower", "api")
        ]:
            self.procs[name].stop()
        self.procs.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None

    def __enter__(self) -> Stack:
        # A plain SIGTERM would end this process without running __exit__, leaving the stack's
        # processes behind; turn it into a normal exit when nothing else handles it.
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        ):
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def settings_env(settings: Settings) -> dict[str, str]:
    """Settings that a child process must see the same way (models dir, model)."""
    return {
        "KENSAKU_MODEL": settings.model,
        "KENSAKU_MODELS_DIR": str(Path(settings.models_dir).resolve()),
    }
