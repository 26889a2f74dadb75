"""`kensaku-bench tune`: the ranking's parameters, fitted in-process on a BEIR-style set.

Runs the product's own text pipeline (``prepare_document``, ``query_terms``) and model over a
corpus, then scores every query against every chunk with the same formulas the SQL uses
(:class:`shared.text.terms.FieldParams`, the reference bigram idf, BM25 idf from the corpus,
best sentence per chunk for vectors, best chunk per document), and prints MRR@10 for a grid of
parameters: BM25 k1/b per field, the bigram field's weight, and the hybrid fusion. Fusions are
also compared on random subsets of the corpus's articles (documents sharing a title), where each
subset is its own collection (its own idf): small collections and few questions are where a
fusion turns out worse than its lexical channel. This is where the defaults in
``shared/config.py`` come from:

    kensaku-bench tune --corpus ../shared/data/ja_dev/corpus.jsonl \\
        --queries ../shared/data/ja_dev/queries.jsonl

Candidate generation (truncated postings, the vector index) is left out here: `kensaku-bench
search` measures the real thing through the API; this finds where the exact scores peak.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from shared.config import Settings
from shared.embed.embedder import Embedder, load_embedder
from shared.evaluate import load_queries
from shared.text.pipeline import prepare_document, query_terms
from shared.text.terms import FieldParams, bigram_idf

Fusion = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Prepared:
    ids: list[str]
    titles: list[str]
    doc_of_chunk: np.ndarray  # chunk → document index
    chunk_words: list[list[str]]
    chunk_grams: list[list[str]]
    unit_chunk: np.ndarray  # vector unit → chunk index
    unit_vectors: np.ndarray


def prepare(corpus: Path, settings: Settings) -> tuple[Prepared, Embedder]:
    embedder = load_embedder(settings)
    ids, titles, doc_of_chunk, words, grams, unit_chunk, units = [], [], [], [], [], [], []
    budget = embedder.chunk_tokens(settings.chunk_tokens)
    for line in corpus.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        d = json.loads(line)
        ids.append(str(d["id"]))
        titles.append(d.get("title") or "")
        for c in prepare_document(
            titles[-1],
            d["text"],
            count_tokens=embedder.count_tokens,
            max_tokens=budget,
            tokens_are_lexemes=embedder.takes_lexemes,
            vector_unit=embedder.vector_unit,
        ):
            doc_of_chunk.append(len(ids) - 1)
            words.append(c.words)
            grams.append(c.grams)
            unit_chunk.extend([len(words) - 1] * len(c.units))
            units.extend(c.units)
    vectors = embedder.encode_lexemes(units)
    prepared = Prepared(
        ids, titles, np.array(doc_of_chunk), words, grams, np.array(unit_chunk), vectors
    )
    return prepared, embedder


def tf_matrix(rows: list[list[str]], vocab: dict[str, int], grow: bool) -> sp.csr_matrix:
    r, c, v = [], [], []
    for i, terms in enumerate(rows):
        for t, n in Counter(terms).items():
            j = vocab.get(t)
            if j is None:
                if not grow:
                    continue
                j = vocab[t] = len(vocab)
            r.append(i)
            c.append(j)
            v.append(n)
    return sp.csr_matrix((np.array(v, np.float64), (r, c)), shape=(len(rows), len(vocab)))


def saturate(tf: sp.csr_matrix, p: FieldParams) -> sp.csr_matrix:
    out = tf.copy()
    dl = np.asarray(tf.sum(axis=1)).ravel()
    norm = np.repeat(p.k1 * (1 - p.b + p.b * dl / p.avgdl), np.diff(tf.indptr))
    out.data = tf.data * (p.k1 + 1) / (tf.data + norm)
    return out


def bm25_idf(tf: sp.csr_matrix) -> np.ndarray:
    n = tf.shape[0]
    df = np.bincount(tf.indices, minlength=tf.shape[1])
    return np.asarray(np.log(1 + (n - df + 0.5) / (df + 0.5)) * (df > 0))


def best_per_group(scores: np.ndarray, group: np.ndarray, groups: int) -> np.ndarray:
    """Max over columns sharing a group (columns are sorted by group)."""
    starts = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
    out = np.full((scores.shape[0], groups), -np.inf)
    out[:, group[starts]] = np.maximum.reduceat(scores, starts, axis=1)
    return out


def mrr_at_10(doc_scores: np.ndarray, relevant: list[set[int]]) -> float:
    top = np.argsort(-doc_scores, axis=1, kind="stable")[:, :10]
    total = 0.0
    for q, rel in enumerate(relevant):
        for rank, d in enumerate(top[q], 1):
            if d in rel and doc_scores[q, d] > 0:
                total += 1 / rank
                break
    return total / max(len(relevant), 1)


def max_normalized(weight: float) -> Fusion:
    """What search_hybrid computes: lexical / the best lexical candidate's + weight × cosine."""

    def fuse(lexical: np.ndarray, cosine: np.ndarray) -> np.ndarray:
        top = np.maximum(lexical.max(axis=1, keepdims=True), 1e-12)
        return np.asarray(lexical / top + weight * cosine)

    return fuse


def raw_sum(weight: float) -> Fusion:
    def fuse(lexical: np.ndarray, cosine: np.ndarray) -> np.ndarray:
        return np.asarray(lexical + weight * cosine)

    return fuse


def rrf(k: int) -> Fusion:
    def fuse(lexical: np.ndarray, cosine: np.ndarray) -> np.ndarray:
        rank_l = np.argsort(np.argsort(-lexical, axis=1), axis=1) + 1
        rank_v = np.argsort(np.argsort(-cosine, axis=1), axis=1) + 1
        return np.asarray(1 / (k + rank_l) + 1 / (k + rank_v))

    return fuse


class Scorer:
    """Exact chunk scores of every query for a subset of the documents (one collection)."""

    def __init__(self, prep: Prepared, embedder: Embedder, queries_path: Path, s: Settings):
        self.prep = prep
        index = {d: i for i, d in enumerate(prep.ids)}
        queries = load_queries(queries_path)
        self.relevant = [{index[r] for r in q.relevant if r in index} for q in queries]
        terms = [query_terms(q.text) for q in queries]
        vocab: dict[str, int] = {}
        self.words_tf = tf_matrix(prep.chunk_words, vocab, grow=True)
        self.q_words = tf_matrix([t.words for t in terms], vocab, grow=False)
        self.q_words.data[:] = 1.0
        gvocab: dict[str, int] = {}
        self.grams_tf = tf_matrix(prep.chunk_grams, gvocab, grow=True)
        self.q_grams = tf_matrix([t.grams for t in terms], gvocab, grow=False)
        self.q_grams.data[:] = 1.0
        order = sorted(gvocab, key=gvocab.__getitem__)
        self.gram_idf = np.array([bigram_idf(g) for g in order])
        qvec = np.stack([embedder.encode_query_lexemes(t.lexemes) for t in terms])
        self.cosine = best_per_group(
            qvec @ prep.unit_vectors.T, prep.unit_chunk, len(prep.chunk_words)
        )
        self.settings = s

    def words(self, p: FieldParams, chunks: np.ndarray, queries: list[int]) -> np.ndarray:
        tf = self.words_tf[chunks]
        weights = saturate(tf, p) @ sp.diags(bm25_idf(tf))
        return np.asarray((self.q_words[queries] @ weights.T).toarray())

    def grams(self, p: FieldParams, chunks: np.ndarray, queries: list[int]) -> np.ndarray:
        weights = saturate(self.grams_tf[chunks], p) @ sp.diags(self.gram_idf)
        return np.asarray((self.q_grams[queries] @ weights.T).toarray())

    def word_params(self) -> FieldParams:
        s = self.settings
        return FieldParams(s.bm25_word_k1, s.bm25_word_b, s.bm25_word_avgdl)

    def gram_params(self) -> FieldParams:
        s = self.settings
        return FieldParams(s.bm25_bigram_k1, s.bm25_bigram_b, s.bm25_bigram_avgdl)

    def collection(self, docs: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """The chunks of ``docs`` and the queries answered inside them."""
        chunks = np.flatnonzero(np.isin(self.prep.doc_of_chunk, docs))
        inside = set(docs.tolist())
        queries = [q for q, rel in enumerate(self.relevant) if rel and rel <= inside]
        return chunks, queries

    def mrr(self, chunk_scores: np.ndarray, chunks: np.ndarray, queries: list[int]) -> float:
        docs = self.prep.doc_of_chunk[chunks]
        per_doc = best_per_group(chunk_scores, docs, len(self.prep.ids))
        return mrr_at_10(per_doc, [self.relevant[q] for q in queries])

    def lexical(self, chunks: np.ndarray, queries: list[int]) -> np.ndarray:
        w = self.words(self.word_params(), chunks, queries)
        return w + self.settings.bigram_weight * self.grams(self.gram_params(), chunks, queries)


def main(corpus: Path, queries_path: Path) -> int:
    settings = Settings()
    started = time.perf_counter()
    prep, embedder = prepare(corpus, settings)
    sc = Scorer(prep, embedder, queries_path, settings)
    everything = np.arange(len(prep.ids))
    chunks, queries = sc.collection(everything)
    print(
        f"{len(prep.ids)} documents, {len(prep.chunk_words)} chunks, "
        f"{len(prep.unit_vectors)} vector units, {len(queries)} queries "
        f"({time.perf_counter() - started:.0f} s to prepare)"
    )
    print("\nwords field (BM25 over Sudachi words), MRR@10:")
    for k1, b in itertools.product([0.3, 0.5, 0.7, 0.9, 1.2], [0.5, 0.65, 0.8]):
        p = FieldParams(k1, b, settings.bm25_word_avgdl)
        print(f"  k1 {k1:<4} b {b:<5} {sc.mrr(sc.words(p, chunks, queries), chunks, queries):.4f}")
    words = sc.words(sc.word_params(), chunks, queries)
    print("\nbigram field added to the words at the configured word parameters, MRR@10:")
    for k1, b, w in itertools.product([0.4, 0.6, 0.9], [0.75, 0.9], [0.3, 0.5, 0.7]):
        grams = sc.grams(FieldParams(k1, b, settings.bm25_bigram_avgdl), chunks, queries)
        print(
            f"  k1 {k1:<4} b {b:<5} weight {w:<4} {sc.mrr(words + w * grams, chunks, queries):.4f}"
        )
    lexical = sc.lexical(chunks, queries)
    cosine = sc.cosine[queries][:, chunks]
    print("\nchannels at the configured parameters, MRR@10:")
    print(f"  words only {sc.mrr(words, chunks, queries):.4f}")
    print(f"  lexical    {sc.mrr(lexical, chunks, queries):.4f}")
    print(f"  vector     {sc.mrr(cosine, chunks, queries):.4f}")
    fusions: dict[str, Fusion] = {
        **{f"lexical/max + {w} cos": max_normalized(w) for w in (0.05, 0.1, 0.15, 0.2, 0.3)},
        **{f"lexical + {w} cos (raw)": raw_sum(w) for w in (3, 6)},
        "RRF k=60": rrf(60),
    }
    print("\nhybrid fusions, MRR@10 on the whole set:")
    for name, fuse in fusions.items():
        print(f"  {name:<26} {sc.mrr(fuse(lexical, cosine), chunks, queries):.4f}")
    by_article: dict[str, list[int]] = {}
    for i, title in enumerate(prep.titles):
        by_article.setdefault(title, []).append(i)
    articles = sorted(by_article)
    rng = random.Random(7)
    print(
        "\nhybrid fusions on random subsets of the articles (12 per size, seed 7; each its own "
        "collection): mean MRR@10 gain over lexical, worst gain, subsets where it lost"
    )
    for size in (40, 80, 200):
        results: dict[str, list[float]] = {name: [] for name in fusions}
        for _ in range(12):
            picked = rng.sample(articles, min(size, len(articles)))
            docs = np.array(sorted(i for a in picked for i in by_article[a]))
            sub_chunks, sub_queries = sc.collection(docs)
            if len(sub_queries) < 20:
                continue
            lex = sc.lexical(sub_chunks, sub_queries)
            cos = sc.cosine[sub_queries][:, sub_chunks]
            base = sc.mrr(lex, sub_chunks, sub_queries)
            for name, fuse in fusions.items():
                results[name].append(sc.mrr(fuse(lex, cos), sub_chunks, sub_queries) - base)
        print(f"  {size} articles:")
        for name, gains in results.items():
            lost = sum(g < -1e-9 for g in gains)
            print(
                f"    {name:<26} {np.mean(gains):+.4f} worst {min(gains):+.4f} "
                f"lost {lost}/{len(gains)}"
            )
    return 0
