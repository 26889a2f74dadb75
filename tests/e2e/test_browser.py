"""The embedded stack end to end, looked at the way an operator does: in a browser.

Starts `kensaku up` on free loopback ports, uploads Japanese documents through the API, waits for
the job to finish, then drives a headless Chromium (Debian's `chromium`, through its own
`--dump-dom` / `--screenshot` switches: no browser-automation package) against Flower and the
API docs, saves screenshots to docs/screenshots/, and finally stops the stack with SIGTERM and
checks that nothing it started is left running.

Skipped, with the reason, where no Chromium is installed; CI installs Debian's package.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"
API_KEY = "e2e-" + secrets.token_hex(8)
FLOWER_USER = "kensaku"


def find_chromium() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


CHROMIUM = find_chromium()

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.browser,
    # The first run may build the default model before the stack comes up.
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium at /usr/bin/chromium or on PATH (Debian: apt-get install chromium)",
    ),
]

# Headless, and nothing the browser would do on its own (updates, sync, first-run pages):
# the only network traffic is the page under test. --no-sandbox because CI runs as root.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--window-size=1280,900",
)

DOCUMENTS = [
    {
        "id": "e2e-1",
        "title": "東京タワー",
        "text": "東京タワーは東京都港区芝公園にある総合電波塔で、1958年に完成した。",
    },
    {
        "id": "e2e-2",
        "title": "富士山",
        "text": "富士山は静岡県と山梨県にまたがる活火山で、標高3776メートルの日本最高峰である。",
    },
    {
        "id": "e2e-3",
        "title": "寿司",
        "text": "寿司は酢飯と魚介類などを組み合わせた日本料理で、江戸時代に握り寿司が広まった。",
    },
    {
        "id": "e2e-4",
        "title": "新幹線",
        "text": "新幹線は日本の高速鉄道で、1964年に東海道新幹線が東京と新大阪の間で開業した。",
    },
    {
        "id": "e2e-5",
        "title": "京都",
        "text": "京都市は平安京以来の古都で、清水寺や金閣寺など多くの寺社が世界遺産である。",
    },
]


# --- processes ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of a live process, from /proc; None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces; fields follow the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0], int(fields[19])


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _descendants(root: int) -> set[tuple[int, int]]:
    """(pid, start time) of every process below root; start time guards against pid reuse."""
    children: dict[int, list[tuple[int, int]]] = {}
    for pid in _all_pids():
        st = _proc_stat(pid)
        if st is not None:
            children.setdefault(st[0], []).append((pid, st[2]))
    found: set[tuple[int, int]] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child[0])
    return found


def _alive(ident: tuple[int, int]) -> bool:
    st = _proc_stat(ident[0])
    return st is not None and st[2] == ident[1] and st[1] != "Z"


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (daemons that left our process tree)."""
    out = []
    for pid in _all_pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        st = _proc_stat(pid)
        if text in cmdline and st is not None and st[1] != "Z" and pid != os.getpid():
            out.append(pid)
    return out


@dataclass
class Stack:
    api: str
    flower: str
    password: str
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes]
    seen: set[tuple[int, int]] = field(default_factory=set)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def remember_children(self) -> None:
        if self.proc.poll() is None:
            self.seen |= _descendants(self.proc.pid)

    def stop(self, timeout: float = 90.0) -> int | None:
        """SIGTERM, as Ctrl-C or `docker stop` would send; the exit code, or None if it hung."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.remember_children()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def leftovers(self) -> list[int]:
        mine = {ident[0] for ident in self.seen if _alive(ident)}
        return sorted(mine | set(_processes_mentioning(str(self.data_dir))))


def _wait_ready(stack: Stack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.proc.poll() is not None:
            pytest.fail(f"kensaku up exited ({stack.proc.returncode}):\n{stack.output()[-4000:]}")
        # `kensaku up` prints its "ready" line after it has printed every URL.
        if "ready; Ctrl-C stops everything" in stack.output():
            try:
                if httpx.get(f"{stack.api}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(1)
    pytest.fail(f"not ready after {timeout:.0f}s:\n{stack.output()[-4000:]}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("e2e")
    api_port, flower_port = _free_port(), _free_port()
    password = secrets.token_urlsafe(18)
    # The embedded stack, not whatever services the caller's environment points at.
    drop = {
        "KENSAKU_DATABASE_URL",
        "KENSAKU_REDIS_URL",
        "KENSAKU_HOST",
        "KENSAKU_PORT",
        "KENSAKU_API_KEYS",
        "KENSAKU_FLOWER_USER",
        "KENSAKU_FLOWER_PASSWORD",
        "KENSAKU_FLOWER_PORT",
        "PROMETHEUS_MULTIPROC_DIR",
    }
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        KENSAKU_API_KEYS=API_KEY,
        KENSAKU_FLOWER_USER=FLOWER_USER,
        KENSAKU_FLOWER_PASSWORD=password,
        # The model `make` built in the checkout; an absolute path, whatever the cwd.
        KENSAKU_MODELS_DIR=os.environ.get("KENSAKU_MODELS_DIR", str(ROOT / ".models")),
    )
    log = tmp / "kensaku-up.log"
    data_dir = tmp / "data"
    # `python -m shared.cli` is the `kensaku` console script without depending on it being on
    # PATH; start_new_session keeps a Ctrl-C in the terminal from reaching the stack directly.
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shared.cli",
                "up",
                "--data-dir",
                str(data_dir),
                "--port",
                str(api_port),
                "--flower-port",
                str(flower_port),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    st = Stack(
        api=f"http://127.0.0.1:{api_port}",
        flower=f"http://127.0.0.1:{flower_port}",
        password=password,
        data_dir=data_dir,
        log=log,
        proc=proc,
    )
    try:
        _wait_ready(st, timeout=600)
        st.remember_children()
        yield st
    finally:
        if st.stop() is None or st.leftovers():
            for pid in st.leftovers():  # only processes this fixture started
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


# --- browser --------------------------------------------------------------------------------------
def chromium(url: str, *, screenshot: Path | None = None, budget_ms: int = 10_000) -> str:
    """Load `url` headless; return the DOM after scripts ran (or save a PNG screenshot).

    --virtual-time-budget lets the page's scripts and XHRs (Flower's task table) run to
    completion before the DOM is dumped or the screenshot taken, without sleeping.
    """
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="kensaku-chromium-") as profile:
        args = [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
        ]
        args.append(f"--screenshot={screenshot}" if screenshot else "--dump-dom")
        args.append(url)
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "HOME": profile},
            start_new_session=True,  # its zygote and renderers go with it on a timeout
        )
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"chromium timed out on {url}")
    if proc.returncode != 0:
        pytest.fail(f"chromium failed ({proc.returncode}) on {url}:\n{err.decode()[-2000:]}")
    return out.decode(errors="replace")


def with_credentials(url: str, user: str, password: str) -> str:
    # Chromium still honours user:password@ in a top-level URL and reuses the credentials for
    # the page's own same-origin requests, which is all Flower's pages make.
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest}"


def _poll(fn: Any, what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}; last: {last!r}")


# --- tests ----------------------------------------------------------------------------------------
def test_up_prints_the_urls_and_flower_credentials(stack: Stack) -> None:
    out = stack.output()
    assert re.search(rf"api:\s+{re.escape(stack.api)}\b", out), out
    assert re.search(rf"flower:\s+{re.escape(stack.flower)}\b", out), out
    # Flower listens on loopback and the password we set is the one in use.
    assert stack.flower.startswith("http://127.0.0.1:")
    assert stack.password in out


def test_ingest_through_the_api(stack: Stack) -> None:
    resp = httpx.post(
        f"{stack.api}/v1/documents",
        json={"collection": "default", "documents": DOCUMENTS},
        headers=stack.headers,
        timeout=60,
    )
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]

    def done() -> dict[str, Any] | None:
        r = httpx.get(f"{stack.api}/v1/jobs/{job_id}", headers=stack.headers, timeout=10)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        assert body["status"] not in ("failed", "partial"), body
        return body if body["status"] == "done" else None

    _poll(done, f"job {job_id} to be done", timeout=300)
    stack.remember_children()


def test_flower_requires_credentials(stack: Stack) -> None:
    assert httpx.get(f"{stack.flower}/", timeout=10).status_code == 401
    assert httpx.get(f"{stack.flower}/api/workers", timeout=10).status_code == 401
    wrong = httpx.get(f"{stack.flower}/", auth=(FLOWER_USER, "not-the-password"), timeout=10)
    assert wrong.status_code == 401
    assert httpx.get(f"{stack.flower}/", auth=(FLOWER_USER, stack.password), timeout=10).is_success
    # And in the browser: without credentials the workers page shows no workers.
    assert "Online" not in chromium(f"{stack.flower}/workers")


def test_flower_shows_the_worker_online(stack: Stack) -> None:
    auth = (FLOWER_USER, stack.password)

    def workers() -> dict[str, Any]:
        r = httpx.get(f"{stack.flower}/api/workers", params={"refresh": 1}, auth=auth, timeout=30)
        return dict(r.json()) if r.is_success else {}

    names = sorted(_poll(workers, "a worker in Flower"))
    url = with_credentials(f"{stack.flower}/workers", FLOWER_USER, stack.password)

    def page() -> str | None:
        dom = chromium(url)
        return dom if any(n in dom for n in names) and "Online" in dom else None

    dom = _poll(page, "the workers page to list an online worker", timeout=60)
    assert "Online" in dom
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    chromium(url, screenshot=SCREENSHOTS / "flower-workers.png")
    assert (SCREENSHOTS / "flower-workers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flower_lists_the_ingest_tasks(stack: Stack) -> None:
    auth = (FLOWER_USER, stack.password)

    def task_names() -> set[str] | None:
        r = httpx.get(f"{stack.flower}/api/tasks", auth=auth, timeout=30)
        names = {t.get("name") for t in r.json().values()} if r.is_success else set()
        # The default model is embedded inside prep; every job ends with its finalize task.
        return names if {"kensaku.prep", "kensaku.finalize"} <= names else None

    _poll(task_names, "kensaku.prep and kensaku.finalize in Flower's task list", timeout=120)
    url = with_credentials(f"{stack.flower}/tasks", FLOWER_USER, stack.password)
    dom = chromium(url)
    assert "kensaku.prep" in dom and "kensaku.finalize" in dom
    chromium(url, screenshot=SCREENSHOTS / "flower-tasks.png")
    assert (SCREENSHOTS / "flower-tasks.png").stat().st_size > 1000


def test_api_docs_page(stack: Stack) -> None:
    spec = httpx.get(f"{stack.api}/openapi.json", timeout=10).json()
    for path in ("/v1/documents", "/v1/jobs/{job_id}", "/v1/search", "/readyz"):
        assert path in spec["paths"], path
    dom = chromium(f"{stack.api}/docs")
    assert 'id="swagger-ui"' in dom
    # Rendered operations, not just the empty shell: FastAPI's default /docs loads Swagger UI
    # from a CDN, which leaves a blank page on machines without internet access. The API has
    # to serve the Swagger UI assets itself for this to pass everywhere.
    assert 'data-path="/v1/documents"' in dom, "Swagger UI did not render (assets unreachable?)"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    chromium(f"{stack.api}/docs", screenshot=SCREENSHOTS / "api-docs.png")
    assert (SCREENSHOTS / "api-docs.png").stat().st_size > 1000


def test_api_metrics_include_the_workers(stack: Stack) -> None:
    """In the embedded stack the API and the worker share PROMETHEUS_MULTIPROC_DIR, so the API's
    /metrics carries the worker's prep/embed histograms next to the scrape-time gauges."""
    from prometheus_client.parser import text_string_to_metric_families

    resp = httpx.get(f"{stack.api}/metrics", headers=stack.headers, timeout=30)
    assert resp.status_code == 200, resp.text[:500]
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }

    def total(name: str) -> float:
        return sum(v for (n, _), v in samples.items() if n == name)

    assert total("kensaku_prep_batch_seconds_count") >= 1
    assert total("kensaku_embed_batch_seconds_count") >= 1
    assert total("kensaku_http_request_seconds_count") >= 1
    assert samples.get(("kensaku_documents", (("status", "indexed"),)), 0) >= len(DOCUMENTS)
    assert ("kensaku_queue_depth", (("queue", "prep"),)) in samples


def test_sigterm_stops_everything(stack: Stack) -> None:
    """Runs last (file order): stopping the shared stack is the final check."""
    stack.remember_children()
    assert stack.seen, "the stack started no child processes?"
    code = stack.stop()
    assert code == 0, f"exit code {code} after SIGTERM:\n{stack.output()[-3000:]}"
    deadline = time.monotonic() + 10  # reparented children may need a moment to exit
    while stack.leftovers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stack.leftovers() == [], "processes left running after the stack stopped"
