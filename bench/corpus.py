"""Deterministic Japanese benchmark documents, recombined from the project's own texts.

Sentences from the sample corpus and the evaluation passages are shuffled into documents of
varied length, so a benchmark of any size runs on realistic Japanese without any download.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "data/sample/corpus.jsonl", ROOT / "bench/data/ja_eval/corpus.jsonl"]
_SENTENCE = re.compile(r"[^。！？\n]+[。！？]?")


def sentences() -> list[str]:
    out: list[str] = []
    for path in SOURCES:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                text = json.loads(line)["text"]
                out.extend(s.strip() for s in _SENTENCE.findall(text) if len(s.strip()) > 8)
    if not out:
        raise RuntimeError("no sentences found in the sample corpus")
    return out


def generate_documents(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    pool = sentences()
    docs = []
    for i in range(n):
        # Mostly a few hundred characters, some long: roughly the shape of real uploads.
        k = rng.choice([3, 4, 5, 6, 8, 10, 14, 20, 40])
        text = "".join(rng.choice(pool) for _ in range(k))
        docs.append(
            {
                "id": f"bench-{i:07d}",
                "title": pool[i % len(pool)][:20],
                "text": text,
                "metadata": {"group": i % 10},
            }
        )
    return docs
