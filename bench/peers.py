"""The Python BM25 libraries a user would pick instead of kensaku, on the same corpus and queries,
in-process (no database, no HTTP): what `kensaku-bench search` compares the lexical channel with.

- rank_bm25 (BM25Okapi, its defaults) over Sudachi tokens: mode C, normalized forms of content
  words, i.e. the lexemes of :meth:`shared.text.tokenize.Tokenizer.lexemes`;
- bm25s (its defaults) over the same tokens;
- bm25s over character bigrams of the normalized text, whitespace removed.

Each document is its title, a line break and its text, as kensaku indexes it.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.evaluate import Query, metrics_for
from shared.text.normalize import normalize
from shared.text.tokenize import get_tokenizer


@dataclass
class Corpus:
    ids: list[str]
    texts: list[str]  # normalized title + "\n" + text


def char_bigrams(text: str) -> list[str]:
    chars = [c for c in text.lower() if not c.isspace()]
    return [a + b for a, b in itertools.pairwise(chars)] or chars


def sudachi_tokens(text: str) -> list[str]:
    return get_tokenizer().lexemes(text)


def _evaluate(
    corpus: Corpus, queries: list[Query], rank: Callable[[str], list[int]]
) -> dict[str, float]:
    rankings, latencies = [], []
    for q in queries:
        started = time.perf_counter()
        top = rank(normalize(q.text))
        latencies.append((time.perf_counter() - started) * 1000)
        rankings.append([corpus.ids[i] for i in top])
    out = metrics_for(rankings, queries)
    out["p50_ms"] = statistics.median(latencies)
    return out


def rank_bm25_peer(corpus: Corpus, queries: list[Query]) -> dict[str, float]:
    from rank_bm25 import BM25Okapi

    index = BM25Okapi([sudachi_tokens(t) for t in corpus.texts])

    def rank(q: str) -> list[int]:
        scores = index.get_scores(sudachi_tokens(q))
        return [int(i) for i in np.argsort(-scores, kind="stable")[:10] if scores[i] > 0]

    return _evaluate(corpus, queries, rank)


def bm25s_peer(
    corpus: Corpus, queries: list[Query], tokenize: Callable[[str], list[str]]
) -> dict[str, float]:
    import bm25s

    docs = [tokenize(t) for t in corpus.texts]
    vocab: dict[str, int] = {}
    for d in docs:
        for tok in d:
            vocab.setdefault(tok, len(vocab))
    index = bm25s.BM25()
    ids = [[vocab[t] for t in d] for d in docs]
    index.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocab), show_progress=False)

    def rank(q: str) -> list[int]:
        ids = [vocab[t] for t in tokenize(q) if t in vocab]
        if not ids:
            return []
        scores: Any = index.get_scores(ids)
        return [int(i) for i in np.argsort(-scores, kind="stable")[:10] if scores[i] > 0]

    return _evaluate(corpus, queries, rank)


def run_peers(corpus: Corpus, queries: list[Query]) -> dict[str, dict[str, float]]:
    return {
        "rank_bm25 (Sudachi C)": rank_bm25_peer(corpus, queries),
        "bm25s (Sudachi C)": bm25s_peer(corpus, queries, sudachi_tokens),
        "bm25s (char bigrams)": bm25s_peer(corpus, queries, char_bigrams),
    }
