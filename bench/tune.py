"""`kensaku-bench tune`: the ranking's parameters, fitted in-process on a BEIR-style set.

Runs the product's own text pipeline (``prepare_document``, ``query_terms``) and model over a
corpus, then scores every query against every chunk with the same formulas the SQL uses
(:class:`shared.text.terms.FieldParams`, the reference bigram idf, BM25 idf from the corpus,
best sentence per chunk for vectors, best chunk per document), and prints MRR@10 for a grid of
parameters: BM25 k1/b per field, the bigram field's weight, and the hybrid's vector weight. This
is where the defaults in ``shared/config.py`` come from:

    kensaku-bench tune --corpus ../shared/data/ja_dev/corpus.jsonl \\
        --queries ../shared/data/ja_dev/queries.jsonl

Candidate generation (truncated postings) is left out here: `kensaku bench search` measures the
real thing through the API; this finds where the exact scores peak.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from shared.config import Settings
from shared.embed.embedder import load_embedder
from shared.evaluate import load_queries
from shared.text.pipeline import prepare_document, query_terms
from shared.text.terms import FieldParams, bigram_idf


@dataclass
class Prepared:
    doc_of_chunk: np.ndarray  # chunk → document index
    chunk_words: list[list[str]]
    chunk_grams: list[list[str]]
    unit_chunk: np.ndarray  # vector unit → chunk index
    unit_vectors: np.ndarray
    ids: list[str]


def prepare(corpus: Path, settings: Settings) -> tuple[Prepared, Any]:
    embedder = load_embedder(settings)
    ids, doc_of_chunk, words, grams, unit_chunk, units = [], [], [], [], [], []
    budget = embedder.chunk_tokens(settings.chunk_tokens)
    for line in corpus.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        d = json.loads(line)
        ids.append(str(d["id"]))
        for c in prepare_document(
            d.get("title", ""),
            d["text"],
            count_tokens=embedder.count_tokens,
            max_tokens=budget,
            tokens_are_lexemes=embedder.takes_lexemes,
        ):
            ci = len(words)
            doc_of_chunk.append(len(ids) - 1)
            words.append(c.words)
            grams.append(c.grams)
            for u in c.units:
                unit_chunk.append(ci)
                units.append(u)
    vectors = embedder.encode_lexemes(units)
    prepared = Prepared(np.array(doc_of_chunk), words, grams, np.array(unit_chunk), vectors, ids)
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


def main(corpus: Path, queries_path: Path) -> int:
    settings = Settings()
    started = time.perf_counter()
    prep, embedder = prepare(corpus, settings)
    index = {d: i for i, d in enumerate(prep.ids)}
    queries = load_queries(queries_path)
    relevant = [{index[r] for r in q.relevant if r in index} for q in queries]
    qterms = [query_terms(q.text) for q in queries]
    qvec = np.stack([embedder.encode_query(q.text) for q in queries])
    print(
        f"{len(prep.ids)} documents, {len(prep.chunk_words)} chunks, "
        f"{len(prep.unit_vectors)} vector units, {len(queries)} queries "
        f"({time.perf_counter() - started:.0f} s to prepare)"
    )
    ndocs = len(prep.ids)
    vocab: dict[str, int] = {}
    words_tf = tf_matrix(prep.chunk_words, vocab, grow=True)
    q_words = tf_matrix([q.words for q in qterms], vocab, grow=False)
    q_words.data[:] = 1.0
    df = np.bincount(words_tf.indices, minlength=words_tf.shape[1])
    n = words_tf.shape[0]
    word_idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
    gvocab: dict[str, int] = {}
    grams_tf = tf_matrix(prep.chunk_grams, gvocab, grow=True)
    q_grams = tf_matrix([q.grams for q in qterms], gvocab, grow=False)
    q_grams.data[:] = 1.0
    gram_idf = np.array([bigram_idf(g) for g in sorted(gvocab, key=gvocab.__getitem__)])

    def channel(tf: sp.csr_matrix, q: sp.csr_matrix, idf: np.ndarray, p: FieldParams) -> Any:
        weights = saturate(tf, p) @ sp.diags(idf)
        return (q @ weights.T).toarray()

    def per_doc(chunk_scores: np.ndarray) -> np.ndarray:
        return best_per_group(chunk_scores, prep.doc_of_chunk, ndocs)

    print("\nwords field (BM25 over Sudachi words), MRR@10:")
    word_grid: dict[tuple[float, float], float] = {}
    for k1, b in itertools.product([0.3, 0.5, 0.7, 0.9, 1.2], [0.5, 0.65, 0.8]):
        p = FieldParams(k1, b, settings.bm25_word_avgdl)
        word_grid[(k1, b)] = mrr_at_10(per_doc(channel(words_tf, q_words, word_idf, p)), relevant)
        print(f"  k1 {k1:<4} b {b:<5} {word_grid[(k1, b)]:.4f}")
    wp = FieldParams(settings.bm25_word_k1, settings.bm25_word_b, settings.bm25_word_avgdl)
    words_s = channel(words_tf, q_words, word_idf, wp)
    print("\nbigram field added to the words at the configured word parameters, MRR@10:")
    for k1, b, w in itertools.product([0.4, 0.6, 0.9], [0.75, 0.9], [0.3, 0.5, 0.7]):
        gp = FieldParams(k1, b, settings.bm25_bigram_avgdl)
        s = words_s + w * channel(grams_tf, q_grams, gram_idf, gp)
        print(f"  k1 {k1:<4} b {b:<5} weight {w:<4} {mrr_at_10(per_doc(s), relevant):.4f}")
    gp = FieldParams(settings.bm25_bigram_k1, settings.bm25_bigram_b, settings.bm25_bigram_avgdl)
    lexical = words_s + settings.bigram_weight * channel(grams_tf, q_grams, gram_idf, gp)
    unit_scores = qvec @ prep.unit_vectors.T
    vector = best_per_group(unit_scores, prep.unit_chunk, len(prep.chunk_words))
    lex_doc, vec_doc = per_doc(lexical), per_doc(vector)
    print("\nchannels at the configured parameters, MRR@10:")
    print(f"  words only {mrr_at_10(per_doc(words_s), relevant):.4f}")
    print(f"  lexical    {mrr_at_10(lex_doc, relevant):.4f}")
    print(f"  vector     {mrr_at_10(vec_doc, relevant):.4f}")
    print("\nhybrid = lexical + w * cosine, MRR@10:")
    for w in [0, 2, 4, 6, 8, 10, 14]:
        print(f"  w {w:<3} {mrr_at_10(per_doc(lexical + w * vector), relevant):.4f}")
    if math.isfinite(settings.hybrid_vector_weight):
        s = per_doc(lexical + settings.hybrid_vector_weight * vector)
        print(f"  configured ({settings.hybrid_vector_weight}) {mrr_at_10(s, relevant):.4f}")
    return 0
