"""``kensaku bench embed``: embedding throughput per backend and text pipeline speed.

On the same Japanese texts in one run:

- the text pipeline alone: normalize, tokenize (lexemes), chunk, and the whole
  ``prepare_document``, in characters per second;
- the configured model on every backend (torch, and for a transformer the exported ones whose
  extras are installed): batch texts/s and model tokens/s on every core, one-query latency on
  one thread (the API's query path), cold start (a new process to its first query vector, the
  export already cached), the mean cosine of each backend's vectors to torch's, and with
  ``--corpus``/``--queries`` the MRR@10 of exact cosine ranking on a sample of that set; and
  on an embedded stack, a worker's start to its first document indexed, per backend
  (``--no-workers`` skips it).

Texts: the ja_eval passages and the sample corpus (title + text), else a built-in sample.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import Settings, get_settings
from shared.embed.embedder import Embedder, load_embedder
from shared.embed.export import EXPORTED_BACKENDS
from shared.embed.idle_cores import IdleCores
from shared.errors import ConfigError
from shared.evaluate import Query, load_queries, metrics_for, percentile, read_corpus
from shared.text.chunk import chunk_text
from shared.text.normalize import normalize
from shared.text.pipeline import embedding_input, prepare_document
from shared.text.tokenize import get_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "bench/data/ja_eval/corpus.jsonl", ROOT / "data/sample/corpus.jsonl"]
_FALLBACK = [
    "東京スカイツリーは東京都墨田区にある電波塔で、高さは634メートル。2012年に開業した。",
    "発酵食品は微生物の働きで食材の成分が変化したもので、味噌や醤油、納豆などがある。",
    "量子コンピュータは量子力学の重ね合わせを利用して計算を行う。",
    "富士山は静岡県と山梨県にまたがる活火山で、標高3776メートルの日本最高峰である。",
]


def default_texts() -> list[str]:
    texts: list[str] = []
    for path in SOURCES:
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    doc = json.loads(line)
                    texts.append(f"{doc.get('title', '')}\n{doc['text']}".strip())
    return texts or list(_FALLBACK)


def _rate(fn: Any, amount: float, repeat: int = 3) -> float:
    """Best-of-``repeat`` rate of ``fn()`` in ``amount`` per second."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return amount / best if best > 0 else float("inf")


def pipeline_speed(texts: list[str], embedder: Embedder, settings: Settings) -> dict[str, float]:
    tok = get_tokenizer()
    joined = "\n".join(texts)
    normalized = [normalize(t) for t in texts]
    chars = float(sum(len(t) for t in texts))
    return {
        "normalize_chars_per_s": _rate(lambda: [normalize(t) for t in texts], chars),
        "tokenize_chars_per_s": _rate(lambda: [tok.lexemes(t) for t in normalized], chars),
        "chunk_chars_per_s": _rate(
            lambda: [
                chunk_text(t, embedder.count_tokens, settings.chunk_tokens) for t in normalized
            ],
            chars,
        ),
        "prepare_chars_per_s": _rate(
            lambda: [
                prepare_document(
                    "",
                    t,
                    count_tokens=embedder.count_tokens,
                    max_tokens=embedder.chunk_tokens(settings.chunk_tokens),
                    overlap_tokens=settings.chunk_overlap_tokens,
                )
                for t in texts
            ],
            chars,
        ),
        "chars": chars,
        "one_text_chars": float(len(joined)),
    }


def backends_for(embedder: Embedder) -> list[str]:
    if embedder.name == "kensaku/chive-sudachi-300":
        return ["torch"]  # a lookup table: nothing to export
    return ["torch", *EXPORTED_BACKENDS]


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Torch's thread count is process-wide: set it for a block, then put it back."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cold_start(settings: Settings, backend: str) -> float:
    """Seconds from starting a Python process to its first query vector (the model already
    exported and cached), as the API's start pays it for the model."""
    code = (
        "from shared.config import get_settings\n"
        "from shared.embed.embedder import load_embedder\n"
        "e = load_embedder(get_settings(), threads=1)\n"
        "e.encode_query('東京の天気は')\n"
    )
    env = {**os.environ, "KENSAKU_BACKEND": backend, "KENSAKU_MODEL": settings.model}
    env["KENSAKU_MODELS_DIR"] = str(settings.models_dir)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def worker_start(settings: Settings, backends: list[str]) -> dict[str, float]:
    """Seconds from spawning a Celery worker on each backend to its first document indexed and
    the job done: the message waits in the broker, so this is the worker's start, its first
    prep and embed tasks (the model loaded by the first task that needs it, the export cached)
    and the finalize, as a freshly started or scaled-out worker pays them. One embedded stack;
    the API stays on torch."""
    import httpx

    from shared.stack.stack import Stack, settings_env

    doc = {"id": "w", "title": "東京", "text": _FALLBACK[0]}
    seconds: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="kensaku-bench-") as tmp,
        Stack(
            Path(tmp), flower=False, worker_concurrency=1, extra_env=settings_env(settings)
        ) as stack,
        httpx.Client(base_url=stack.api_url, timeout=60) as api,
    ):
        stack.procs.pop("worker").stop()
        for backend in backends:
            resp = api.post("/v1/documents", json={"collection": backend, "documents": [doc]})
            resp.raise_for_status()
            job = resp.json()["job_id"]
            stack.extra_env["KENSAKU_BACKEND"] = backend
            started = time.perf_counter()
            worker = stack.start_worker()
            try:
                while api.get(f"/v1/jobs/{job}").json()["status"] not in ("done", "failed"):
                    if not worker.alive():
                        raise RuntimeError(f"the {backend} worker exited:\n{worker.tail()}")
                    time.sleep(0.05)
                seconds[backend] = time.perf_counter() - started
            finally:
                stack.procs.pop("worker").stop()
    return seconds


_BACKGROUND = """
import sys
from shared.config import get_settings
from shared.embed.embedder import load_embedder
from bench.embed import default_texts
e = load_embedder(get_settings(), threads={threads})
texts = default_texts()
print("ready", flush=True)
while True:
    e.encode_documents(texts[:16])
"""


@contextlib.contextmanager
def embedding_load(settings: Settings, backend: str, threads: int) -> Iterator[None]:
    """Another process encoding batches on ``threads`` threads for the block, as an embed worker
    sharing the machine with the API does."""
    env = {**os.environ, "KENSAKU_BACKEND": backend, "KENSAKU_MODEL": settings.model}
    env["KENSAKU_MODELS_DIR"] = str(settings.models_dir)
    proc = subprocess.Popen(
        [sys.executable, "-c", _BACKGROUND.format(threads=threads)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the background encoder on {backend} did not start")
        yield
    finally:
        proc.kill()
        proc.wait()


def query_threads(
    settings: Settings, backend: str, queries: list[str], cores: int
) -> dict[str, float]:
    """Query p50 on 1 thread, on every core and on the cores others leave idle (as the API does
    with KENSAKU_QUERY_THREADS unset), on idle cores and while another process encodes
    batches: what the API's query threads are chosen by."""
    out: dict[str, float] = {}
    update = {"backend": backend}
    fixed = {
        n: load_embedder(settings.model_copy(update=update), threads=n) for n in sorted({1, cores})
    }
    follow = load_embedder(settings.model_copy(update=update), threads=1)
    follow.follow_idle_cores(IdleCores())

    def measure(phase: str) -> None:
        for n, one in fixed.items():
            with _torch_threads(n if one.backend == "torch" else None):
                one.encode_query(queries[0])  # warm
                out[f"{phase}_p50_ms_{n}"] = query_latency(one, queries)["query_p50_ms"]
        # Put back what the followed encodes set (torch's count is process-wide).
        with _torch_threads(1 if backend == "torch" else None):
            follow.encode_query(queries[0])
            out[f"{phase}_p50_ms_free"] = query_latency(follow, queries)["query_p50_ms"]

    measure("idle")
    with embedding_load(settings, backend, cores):
        measure("loaded")
    return out


def query_latency(embedder: Embedder, queries: list[str]) -> dict[str, float]:
    """One short query at a time, as the API encodes them (its encoder has one thread)."""
    times = []
    for q in queries:
        started = time.perf_counter()
        embedder.encode_query(q)
        times.append((time.perf_counter() - started) * 1000)
    return {"query_p50_ms": percentile(times, 50), "query_p95_ms": percentile(times, 95)}


def retrieval(embedder: Embedder, docs: list[dict[str, str]], queries: list[Query]) -> float:
    """MRR@10 of exact cosine ranking, one vector per document (title + text)."""
    vectors = embedder.encode_documents(
        [embedding_input(d.get("title", ""), normalize(d["text"])) for d in docs]
    )
    ids = [d["id"] for d in docs]
    rankings = []
    for q in queries:
        scores = vectors @ embedder.encode_query(q.text)
        rankings.append([ids[i] for i in np.argsort(-scores)[:10]])
    return metrics_for(rankings, queries)["mrr@10"]


def quality_sample(
    corpus: Path, queries_path: Path, docs_n: int, queries_n: int
) -> tuple[list[dict[str, str]], list[Query]]:
    """The first ``queries_n`` questions and a corpus of ``docs_n`` paragraphs that holds their
    answers (the rest drawn in file order)."""
    docs = read_corpus(corpus)
    queries = load_queries(queries_path)[:queries_n]
    wanted = set().union(*(q.relevant for q in queries))
    chosen = [d for d in docs if d["id"] in wanted]
    chosen += [d for d in docs if d["id"] not in wanted][: max(0, docs_n - len(chosen))]
    return chosen, queries


def encode_speed(embedder: Embedder, texts: list[str]) -> tuple[dict[str, float], np.ndarray]:
    tokens = sum(embedder.count_tokens(t) for t in texts)
    embedder.encode_documents(texts[: min(32, len(texts))])  # warm-up
    started = time.perf_counter()
    vectors = embedder.encode_documents(texts)
    seconds = time.perf_counter() - started
    return {
        "texts": float(len(texts)),
        "seconds": seconds,
        "texts_per_s": len(texts) / seconds,
        "tokens_per_s": tokens / seconds,
        "chars_per_s": sum(len(t) for t in texts) / seconds,
    }, vectors


def run(
    settings: Settings | None = None,
    texts: list[str] | None = None,
    quality: tuple[list[dict[str, str]], list[Query]] | None = None,
    workers: bool = True,
    threads: bool = True,
    only: list[str] | None = None,
) -> dict[str, Any]:
    settings = settings or get_settings()
    texts = [normalize(t) for t in (texts or default_texts())]
    cores = len(os.sched_getaffinity(0))
    base = load_embedder(settings.model_copy(update={"backend": "torch"}), threads=cores)
    result: dict[str, Any] = {
        "model": base.name,
        "device": base.device,
        "texts": len(texts),
        "cores": cores,
        "pipeline": pipeline_speed(texts, base, settings),
        "backends": {},
    }
    short = [normalize(t)[:40] for t in texts]
    reference: np.ndarray | None = None
    for backend in [b for b in backends_for(base) if not only or b in only]:
        update = {"backend": backend}
        try:
            # Batches get every core; the query path gets one thread, as in the API.
            emb = (
                base
                if backend == "torch"
                else load_embedder(settings.model_copy(update=update), threads=cores)
            )
            one = (
                base
                if backend == "torch"
                else load_embedder(settings.model_copy(update=update), threads=1)
            )
        except ConfigError as exc:
            result["backends"][backend] = {"error": str(exc)}
            continue
        stats, vectors = encode_speed(emb, texts)
        if quality is not None:
            stats["mrr@10"] = retrieval(emb, *quality)
        with _torch_threads(1 if backend == "torch" else None):
            stats.update(query_latency(one, short))
        stats["cold_start_s"] = cold_start(settings, backend)
        if threads:
            stats.update(query_threads(settings, backend, short, cores))
        if reference is None:
            reference = vectors
        else:
            stats["cosine_to_torch"] = float(np.mean(np.sum(vectors * reference, axis=1)))
        result["backends"][backend] = stats
    if workers:
        ok = [b for b, st in result["backends"].items() if "error" not in st]
        for backend, secs in worker_start(settings, ok).items():
            result["backends"][backend]["worker_start_s"] = secs
    return result


def print_report(result: dict[str, Any]) -> None:
    p = result["pipeline"]
    print(f"model {result['model']} on {result['device']}, {result['texts']} Japanese texts")
    print("text pipeline (characters/s, one core):")
    for key in ("normalize", "tokenize", "chunk", "prepare"):
        print(f"  {key:<10} {p[key + '_chars_per_s']:>12,.0f}")
    print(f"embedding (batches on {result['cores']} threads; queries one at a time, 1 thread):")
    print(
        f"  {'backend':<14} {'texts/s':>8} {'tokens/s':>9} {'query p50':>10} {'p95 ms':>7} "
        f"{'cold s':>7} {'worker s':>9} {'cos':>6} {'MRR@10':>7}"
    )
    for backend, s in result["backends"].items():
        if "error" in s:
            print(f"  {backend:<14} unavailable: {s['error']}")
            continue
        cos = f"{s['cosine_to_torch']:.4f}" if "cosine_to_torch" in s else "-"
        mrr = f"{s['mrr@10']:.4f}" if "mrr@10" in s else "-"
        worker = f"{s['worker_start_s']:.2f}" if "worker_start_s" in s else "-"
        print(
            f"  {backend:<14} {s['texts_per_s']:>8,.1f} {s['tokens_per_s']:>9,.0f} "
            f"{s['query_p50_ms']:>10.2f} {s['query_p95_ms']:>7.2f} {s['cold_start_s']:>7.2f} "
            f"{worker:>9} {cos:>6} {mrr:>7}"
        )
    print(
        "  cold s: a new process to its first query vector; worker s: a worker spawned to its "
        "first document indexed (job done)"
    )
    measured = {b: s for b, s in result["backends"].items() if "loaded_p50_ms_1" in s}
    if measured:
        cores = result["cores"]
        print(
            f"query p50 ms on idle cores | while another process encodes batches on {cores} "
            f"threads; free: the cores others left idle (KENSAKU_QUERY_THREADS unset)"
        )
        print(
            f"  {'backend':<14} {'1':>7} {cores:>7} {'free':>7} | {'1':>7} {cores:>7} {'free':>7}"
        )
        for backend, s in measured.items():
            row = [
                s.get(f"{phase}_p50_ms_{n}", float("nan"))
                for phase in ("idle", "loaded")
                for n in (1, cores, "free")
            ]
            print(
                f"  {backend:<14} {row[0]:>7.2f} {row[1]:>7.2f} {row[2]:>7.2f} | "
                f"{row[3]:>7.2f} {row[4]:>7.2f} {row[5]:>7.2f}"
            )


def main(
    corpus: Path | None = None,
    queries: Path | None = None,
    docs: int = 2000,
    n: int = 400,
    workers: bool = True,
    only: list[str] | None = None,
) -> int:
    sample = quality_sample(corpus, queries, docs, n) if corpus and queries else None
    result = run(quality=sample, workers=workers, only=only)
    print_report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
