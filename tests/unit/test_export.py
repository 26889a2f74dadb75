"""The exported backends (onnx, onnx-int8, openvino, openvino-int8) on the packaged MiniLM:
exported once and cached, as close to torch as they claim, refused when they stray."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.config import Settings
from shared.embed import export
from shared.embed.embedder import Embedder, _minilm_path, load_embedder, load_token_counter
from shared.embed.export import EXPORTED_BACKENDS, MANIFEST, export_dir
from shared.embed.idle_cores import IdleCores
from shared.errors import ConfigError
from tests.unit.test_idle_cores import CPUS, LIMIT, Machine

TEXTS = [
    "東京スカイツリーは東京都墨田区にある電波塔である。",
    "味噌や醤油、納豆は微生物の働きによる発酵食品だ。",
    "The weather in Tokyo is sunny today.",
    "量子コンピュータは重ね合わせを利用して計算する。" * 40,  # past the 256-token limit
]
# Mean cosine to torch fp32 an export must keep on these texts.
FLOOR = {"onnx": 0.9999, "openvino": 0.9999, "openvino-int8": 0.99, "onnx-int8": 0.97}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def torch_minilm() -> Embedder:
    return load_embedder(Settings(model="minilm", device="cpu"), threads=1)


def settings(models_dir: Path, backend: str, **kw: object) -> Settings:
    return Settings(model="minilm", backend=backend, models_dir=models_dir, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", EXPORTED_BACKENDS)
def test_export_matches_torch(backend: str, models_dir: Path, torch_minilm: Embedder) -> None:
    emb = load_embedder(settings(models_dir, backend), threads=1)
    assert emb.backend == backend and emb.device == "cpu" and emb.dimension == 384
    assert emb.describe()["backend"] == backend
    ref = torch_minilm.encode_documents(TEXTS)
    got = emb.encode_documents(TEXTS)
    assert got.shape == ref.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(ref * got, axis=1)
    assert cosines.mean() >= FLOOR[backend], cosines
    query = emb.encode_query("東京の電波塔")
    assert float(query @ torch_minilm.encode_query("東京の電波塔")) >= FLOOR[backend] - 0.01
    # Token counts (chunk sizes) come from the same tokenizer whatever runs the model.
    assert [emb.count_tokens(t) for t in TEXTS] == [torch_minilm.count_tokens(t) for t in TEXTS]
    assert emb.chunk_tokens(512) == torch_minilm.chunk_tokens(512) == 254
    # Same tokenizer, same budget: a switch of backend does not re-prep anything.
    assert emb.chunker(256, 0) == torch_minilm.chunker(256, 0)
    manifest = json.loads((export_dir(models_dir, emb.name, backend) / MANIFEST).read_text())
    assert manifest["backend"] == backend
    assert manifest["quality"]["probe_texts"] == len(export.probe_texts()) > 30
    assert manifest["quality"]["mean_cosine"] >= FLOOR[backend]


@pytest.mark.skipif(LIMIT < 2, reason="needs two cores")
@pytest.mark.parametrize("backend", ["onnx-int8", "openvino"])
def test_queries_on_idle_cores_run_on_a_wider_session(
    backend: str, models_dir: Path, tmp_path: Path
) -> None:
    emb = load_embedder(settings(models_dir, backend), threads=1)
    reference = emb.encode_query("東京の電波塔")
    assert emb.query_threads() == [1]
    machine = Machine(tmp_path / "stat")
    emb.follow_idle_cores(machine.cores())
    assert emb.query_threads() == sorted({1, 2, LIMIT})
    model = emb.model
    used: list[int] = []  # the thread count of each session that ran, in order

    def counted(n: int, run: Any) -> Any:
        return lambda feed: (used.append(n), run(feed))[1]

    model._wider = {n: counted(n, run) for n, run in model._wider.items()}
    model._run = counted(1, model._run)
    machine.run(1.0, others=0.0)
    vector = emb.encode_query("東京の電波塔")
    assert used == [LIMIT]
    np.testing.assert_allclose(vector, reference, atol=1e-4)
    emb.encode_documents(TEXTS[:1])
    assert used == [LIMIT, 1]  # batches keep the first session
    machine.run(1.0, others=float(len(CPUS)))
    emb.encode_query("東京の電波塔")
    assert used == [LIMIT, 1, 1]  # the cores are busy: one thread
    # A quota of one core: no wider session is opened, and every query runs on one thread.
    single = load_embedder(settings(models_dir, backend), threads=1)
    machine.run(1.0, others=0.0)
    single.follow_idle_cores(
        IdleCores(machine.path, clock=lambda: machine.now, own_cpu=lambda: machine.own, quota=1)
    )
    assert single.query_threads() == [1]


@pytest.mark.skipif(LIMIT < 2, reason="needs two cores")
def test_a_wider_session_that_cannot_open_leaves_one_thread(
    models_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    emb = load_embedder(settings(models_dir, "onnx-int8"), threads=1)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError("no room for another copy of the weights")

    monkeypatch.setattr(emb.model, "_open", refuse)
    machine = Machine(tmp_path / "stat")
    emb.follow_idle_cores(machine.cores())
    machine.run(1.0, others=0.0)
    assert emb.query_threads() == [1]
    assert emb.encode_query("東京の電波塔").shape == (384,)  # the first session serves
    assert "no wider query session" in caplog.text


def test_an_export_is_reused_and_redone_when_the_model_changes(
    tmp_path: Path, torch_minilm: Embedder
) -> None:
    source = shutil.copytree(_minilm_path(), tmp_path / "minilm")
    cfg = Settings(model=str(source), backend="onnx", models_dir=tmp_path / "models")
    first = load_embedder(cfg, threads=1)
    target = export_dir(cfg.models_dir, first.name, "onnx")
    stamp = (target / MANIFEST).stat().st_mtime_ns
    load_embedder(cfg, threads=1)
    assert (target / MANIFEST).stat().st_mtime_ns == stamp  # cached: not exported again
    (source / "README.md").write_text("changed", "utf-8")
    load_embedder(cfg, threads=1)
    assert (target / MANIFEST).stat().st_mtime_ns != stamp
    assert not target.with_name("onnx.partial").exists()


def test_an_int8_export_that_loses_quality_is_refused(tmp_path: Path) -> None:
    cfg = settings(tmp_path, "onnx-int8", export_min_cosine=0.9999)
    with pytest.raises(ConfigError, match=r"strays from torch: mean cosine 0\.9"):
        load_embedder(cfg)
    target = export_dir(tmp_path, "sentence-transformers/all-MiniLM-L6-v2", "onnx-int8")
    assert not target.exists() and not target.with_name("onnx-int8.partial").exists()


def test_a_missing_extra_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "_missing", lambda module: module == "openvino")
    with pytest.raises(ConfigError, match=r"needs openvino: pip install 'kensaku\[openvino\]'"):
        load_embedder(settings(tmp_path, "openvino"))


def test_gpu_device_with_an_exported_backend_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="runs on the CPU"):
        load_embedder(settings(tmp_path, "onnx", device="cuda"))


def test_a_cached_export_loads_without_torch(models_dir: Path) -> None:
    load_embedder(settings(models_dir, "onnx-int8"))  # exported (or already) in this process
    code = (
        "import sys\n"
        "from shared.config import Settings\n"
        "from shared.embed.embedder import load_embedder\n"
        f"s = Settings(model='minilm', backend='onnx-int8', models_dir={str(models_dir)!r})\n"
        "e = load_embedder(s)\n"
        "e.encode_query('東京')\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stderr[-2000:]


def test_model_export_exports_the_model_it_is_given(models_dir: Path) -> None:
    """`kensaku model export --model M`: M ahead of a switch, whatever KENSAKU_MODEL says."""
    load_embedder(settings(models_dir, "onnx-int8"))  # exported (or already) in this process
    env = {
        **os.environ,
        "KENSAKU_MODELS_DIR": str(models_dir),
        "KENSAKU_MODEL": "kensaku/chive-sudachi-300",
    }
    args = ["model", "export", "--model", "minilm", "--backend", "onnx-int8"]
    code = f"from shared.cli import main; raise SystemExit(main({args!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    name = load_embedder(settings(models_dir, "onnx-int8")).name
    assert f"{name} on onnx-int8 at {export_dir(models_dir, name, 'onnx-int8')}" in out.stdout


def test_prompts_are_applied_as_torch_applies_them(tmp_path: Path) -> None:
    source = shutil.copytree(_minilm_path(), tmp_path / "prompted")
    config = {"prompts": {"query": "質問: ", "document": "文書: "}, "default_prompt_name": None}
    (source / "config_sentence_transformers.json").write_text(json.dumps(config), "utf-8")
    torch_emb = load_embedder(Settings(model=str(source), device="cpu"), threads=1)
    onnx_emb = load_embedder(
        Settings(model=str(source), backend="onnx", models_dir=tmp_path / "m"), threads=1
    )
    assert onnx_emb.query_prompt == "質問: " and onnx_emb.document_prompt == "文書: "
    text = "富士山の高さは何メートルか"
    q, d = onnx_emb.encode_query(text), onnx_emb.encode_documents([text])[0]
    assert float(q @ torch_emb.encode_query(text)) > 0.9999
    assert float(d @ torch_emb.encode_documents([text])[0]) > 0.9999
    assert float(q @ d) < 0.999  # the two prompts differ, so do the vectors


def test_a_cached_export_is_refused_once_the_floor_is_raised_past_it(models_dir: Path) -> None:
    load_embedder(settings(models_dir, "onnx-int8"))  # cached, measured at about 0.98
    with pytest.raises(ConfigError, match="strays from torch"):
        load_embedder(settings(models_dir, "onnx-int8", export_min_cosine=0.999))
    assert (
        export_dir(models_dir, "sentence-transformers/all-MiniLM-L6-v2", "onnx-int8") / MANIFEST
    ).is_file()


@pytest.mark.parametrize("backend", ["torch", "onnx-int8"])
def test_prep_counts_tokens_without_loading_the_model(
    backend: str, models_dir: Path, torch_minilm: Embedder
) -> None:
    counter = load_token_counter(settings(models_dir, backend))
    assert counter is not None and counter.backend == backend
    assert counter.chunker(256, 0) == torch_minilm.chunker(256, 0)
    assert [counter.count_tokens(t) for t in TEXTS] == [torch_minilm.count_tokens(t) for t in TEXTS]
    assert counter.dimension == 384 and not counter.takes_lexemes
    with pytest.raises(ConfigError, match="count tokens, not to encode"):
        counter.encode_documents(["東京"])
    code = (
        "import sys\n"
        "from shared.config import Settings\n"
        "from shared.embed.embedder import load_token_counter\n"
        f"s = Settings(model='minilm', backend={backend!r}, models_dir={str(models_dir)!r})\n"
        "print(load_token_counter(s).count_tokens('東京の天気'))\n"
        "print(sorted(m for m in ('torch', 'onnxruntime', 'openvino') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["5", "[]"], out.stderr[-2000:]


def test_the_static_default_model_counts_with_the_embedder() -> None:
    assert load_token_counter(Settings()) is None
