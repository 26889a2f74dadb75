"""A whole stack on an exported backend: MiniLM with KENSAKU_BACKEND=onnx-int8 in the API and
the worker, upload to search."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared.embed.idle_cores import IdleCores
from shared.stack.stack import Stack
from tests.helpers import data_dir, wait_job

pytestmark = pytest.mark.integration

DOCS = [
    ("富士山", "富士山は静岡県と山梨県にまたがる活火山で、標高3776メートルの日本最高峰である。"),
    ("味噌", "味噌は大豆を麹と塩で発酵させた調味料で、味噌汁の材料になる。"),
    ("新幹線", "東海道新幹線は1964年に開業した、東京と新大阪を結ぶ高速鉄道である。"),
    ("将棋", "将棋は二人で駒を動かして相手の玉将を詰ませる盤上遊戯である。"),
]


@pytest.fixture(scope="module")
def onnx_stack() -> Iterator[Stack]:
    env = {
        "KENSAKU_MODEL": "minilm",
        "KENSAKU_BACKEND": "onnx-int8",
        "KENSAKU_MODELS_DIR": os.environ["KENSAKU_MODELS_DIR"],  # the export is cached there
    }
    with (
        data_dir("kensaku-onnx-") as data,
        Stack(data, flower=False, extra_env=env, worker_concurrency=1) as s,
    ):
        yield s


def test_upload_and_search_on_onnx_int8(onnx_stack: Any) -> None:
    with httpx.Client(base_url=onnx_stack.api_url, timeout=60) as api:
        ready = api.get("/readyz").json()
        assert ready["embedding"]["backend"] == "onnx-int8", ready
        assert ready["embedding"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
        assert ready["embedding"]["dimension"] == 384
        # KENSAKU_QUERY_THREADS unset: a session on one thread, and wider ones for idle cores.
        limit = IdleCores().limit  # as the API reads the cores, quota included
        assert ready["embedding"]["query_threads"] == sorted({1, min(2, limit), limit}), ready
        body = {
            "collection": "onnx",
            "documents": [{"id": f"d{i}", "title": t, "text": x} for i, (t, x) in enumerate(DOCS)],
        }
        resp = api.post("/v1/documents", json=body)
        assert resp.status_code == 202, resp.text
        assert wait_job(api, resp.json()["job_id"])["status"] == "done"
        for i, (_title, text) in enumerate(DOCS):
            hits = api.post(
                "/v1/search", json={"collection": "onnx", "query": text, "mode": "vector"}
            ).json()["hits"]
            assert hits and hits[0]["id"] == f"d{i}", hits
    # The worker embedded with the exported model, not torch.
    assert "'backend': 'onnx-int8'" in onnx_stack.procs["worker"].tail(400)
