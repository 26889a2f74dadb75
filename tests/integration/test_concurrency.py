"""8 uploaders over overlapping ids, deletes and searches at once, on the real stack: no 5xx, no
deadlock reaching a client, and in the end every id holds what its last write left."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.helpers import wait_job

pytestmark = pytest.mark.integration

IDS = [f"shared-{i}" for i in range(24)]
TOPICS = ["寿司", "富士山", "新幹線", "茶道", "桜", "将棋"]


def test_concurrent_uploads_deletes_and_searches(stack: Any, collection: str) -> None:
    # One lock per id: writes to the same id are ordered by the test, so "the last write" is
    # well defined; writes to different ids (and every search) run concurrently.
    locks = {i: threading.Lock() for i in IDS}
    last: dict[str, str | None] = {}  # id -> text of its last acknowledged write, None: deleted
    statuses: list[int] = []
    jobs: list[str] = []
    guard = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=stack.api_url, timeout=60) as client:
            for step in range(15):
                picked = sorted(rng.sample(IDS, 5))
                for i in picked:  # in one order for everyone: the test cannot deadlock itself
                    locks[i].acquire()
                try:
                    if rng.random() < 0.2:
                        victim = picked[0]
                        resp = client.delete(f"/v1/documents/{collection}/{quote(victim)}")
                        with guard:
                            statuses.append(resp.status_code)
                            if resp.status_code in (200, 404):
                                last[victim] = None
                        continue
                    docs = [
                        {
                            "id": i,
                            "title": rng.choice(TOPICS),
                            "text": f"{rng.choice(TOPICS)}の話、書き手{seed}の{step}回目。",
                        }
                        for i in picked
                    ]
                    resp = client.post(
                        "/v1/documents", json={"collection": collection, "documents": docs}
                    )
                    with guard:
                        statuses.append(resp.status_code)
                        if resp.status_code == 202:
                            jobs.append(resp.json()["job_id"])
                            for d in docs:
                                last[d["id"]] = d["text"]
                finally:
                    for i in picked:
                        locks[i].release()

    def searcher(stop: threading.Event) -> None:
        with httpx.Client(base_url=stack.api_url, timeout=60) as client:
            while not stop.is_set():
                resp = client.post(
                    "/v1/search", json={"collection": collection, "query": "富士山の話"}
                )
                with guard:
                    statuses.append(resp.status_code)

    # The collection exists before the searchers start (an unknown one is a 404 by design).
    with httpx.Client(base_url=stack.api_url, timeout=60) as client:
        first = client.post(
            "/v1/documents",
            json={"collection": collection, "documents": [{"id": IDS[0], "text": "最初。"}]},
        )
        assert first.status_code == 202
        last[IDS[0]] = "最初。"
        jobs.append(first.json()["job_id"])
    stop = threading.Event()
    searchers = [threading.Thread(target=searcher, args=(stop,)) for _ in range(2)]
    for t in searchers:
        t.start()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(8)))
    stop.set()
    for t in searchers:
        t.join()

    assert statuses and all(s < 500 for s in statuses), sorted(set(statuses))
    assert {s for s in statuses} <= {200, 202, 404}, sorted(set(statuses))
    with httpx.Client(base_url=stack.api_url, timeout=60) as client:
        for job in jobs:
            assert wait_job(client, job, timeout=240)["status"] in ("done", "partial")
        deadline = time.monotonic() + 60
        for doc_id, text in last.items():
            url = f"/v1/documents/{collection}/{quote(doc_id)}"
            while True:
                resp = client.get(url)
                if text is None:
                    assert resp.status_code == 404, (doc_id, resp.text)
                    break
                assert resp.status_code == 200, (doc_id, resp.text)
                body = resp.json()
                assert body["text"] == text, (doc_id, body["text"], text)
                if body["status"] == "indexed" or time.monotonic() > deadline:
                    assert body["status"] == "indexed", (
                        body["status"],
                        body["last_error"],
                        stack.procs["worker"].tail(60),
                    )
                    break
                time.sleep(0.2)
