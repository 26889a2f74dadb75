"""``kensaku bench embed``: embedding throughput per backend and text pipeline speed.

On the same Japanese texts in one run:

- the text pipeline alone: normalize, tokenize (lexemes), chunk, and the whole
  ``prepare_document``, in characters per second;
- the configured model on every backend available here (torch always; ONNX and OpenVINO when
  their optimum extras are installed and the model is a transformer), in texts/s and model
  tokens/s, with the mean cosine of each backend's vectors to torch's.

Texts: the ja_eval passages and the sample corpus (title + text), else a built-in sample.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import Settings, get_settings
from shared.embed.embedder import Embedder, load_embedder
from shared.errors import ConfigError
from shared.text.chunk import chunk_text
from shared.text.normalize import normalize
from shared.text.pipeline import prepare_document
from shared.text.tokenize import get_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "bench/data/ja_eval/corpus.jsonl", ROOT / "data/sample/corpus.jsonl"]
_FALLBACK = [
    "東京スカイツリーは東京都墨田区にある電波塔で、高さは634メートル。2012年に開業した。",
    "発酵食品は微生物の働きで食材の成分が変化したもので、味噌や醤油、納豆などがある。",
    "量子コンピュータは量子力学の重ね合わせを利用して計算を行う。",
    "富士山は静岡県と山梨県にまたがる活火山で、標高3776メートルの日本最高峰である。",
]
_BACKEND_MODULES = {"onnx": "optimum.onnxruntime", "openvino": "optimum.intel"}


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


def backends_for(settings: Settings, embedder: Embedder) -> list[str]:
    if embedder.name == "kensaku/chive-sudachi-300":
        return ["torch"]  # a lookup table: nothing to export
    out = ["torch"]
    for backend, module in _BACKEND_MODULES.items():
        try:
            if importlib.util.find_spec(module) is not None:
                out.append(backend)
        except ModuleNotFoundError:
            pass
    return out


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


def run(settings: Settings | None = None, texts: list[str] | None = None) -> dict[str, Any]:
    settings = settings or get_settings()
    texts = [normalize(t) for t in (texts or default_texts())]
    base = load_embedder(settings)
    result: dict[str, Any] = {
        "model": base.name,
        "device": base.device,
        "texts": len(texts),
        "pipeline": pipeline_speed(texts, base, settings),
        "backends": {},
    }
    reference: np.ndarray | None = None
    for backend in backends_for(settings, base):
        try:
            emb = (
                base
                if backend == base.backend
                else load_embedder(settings.model_copy(update={"backend": backend}))
            )
        except ConfigError as exc:
            result["backends"][backend] = {"error": str(exc)}
            continue
        stats, vectors = encode_speed(emb, texts)
        if reference is None:
            reference = vectors
        else:
            stats["cosine_to_first"] = float(np.mean(np.sum(vectors * reference, axis=1)))
        result["backends"][backend] = stats
    return result


def print_report(result: dict[str, Any]) -> None:
    p = result["pipeline"]
    print(f"model {result['model']} on {result['device']}, {result['texts']} Japanese texts")
    print("text pipeline (characters/s, one core):")
    for key in ("normalize", "tokenize", "chunk", "prepare"):
        print(f"  {key:<10} {p[key + '_chars_per_s']:>12,.0f}")
    print("embedding:")
    print(f"  {'backend':<10} {'texts/s':>10} {'tokens/s':>12} {'chars/s':>12} {'cos':>6}")
    for backend, s in result["backends"].items():
        if "error" in s:
            print(f"  {backend:<10} unavailable: {s['error']}")
            continue
        cos = f"{s['cosine_to_first']:.3f}" if "cosine_to_first" in s else "-"
        print(
            f"  {backend:<10} {s['texts_per_s']:>10,.1f} {s['tokens_per_s']:>12,.0f} "
            f"{s['chars_per_s']:>12,.0f} {cos:>6}"
        )


def main() -> int:
    result = run()
    print_report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
