"""The lexical index's terms and their BM25 weights, for chunks and for queries.

Two fields, both taken from a chunk's lexical input (its document's title, a line break, the
chunk):

- **words**: the Sudachi words of :meth:`shared.text.tokenize.Tokenizer.analyze` (content words,
  normalized, compounds as their mode-A units). Scored by Okapi BM25 with the collection's own
  document frequencies (``lexeme_stats``), read through impact-ordered postings.
- **bigrams**: character bigrams inside runs of kanji, katakana, Latin letters and digits
  (hiragana and punctuation break a run: they are mostly grammar). They match what word
  segmentation misses: the parts of an unknown compound, a name split differently in the question
  and the passage, a katakana word with another spelling of its tail. Their idf comes from a
  reference table (``data/bigram_df.tsv.gz``, see its README) rather than from per-collection
  counts, because keeping ~100 extra df counters per chunk current would cost ingest more than
  the whole word index does; on ja_dev the reference idf scored the same MRR@10 as the
  collection's own (0.9159 vs 0.9160, measured on articles the table was not built from).

A chunk's weights are BM25's saturated term frequencies, computed once at prep with a fixed
average length per field (``avgdl`` below) instead of the collection's current average: the
weights then depend only on the chunk, so the index is the same whatever order documents arrive
in, and a posting never needs rewriting when the collection grows. On ja_dev that scored
MRR@10 0.9160 against 0.9154 with the true average. A query multiplies them by each term's idf
(and the field's weight) at search time.

Each chunk also carries all its weights as one ``sparsevec`` (the forward index), one dimension
per term, the term hashed into ``TERM_SPACE`` dimensions: the exact score of a candidate is then
one inner product, whatever the postings lists looked like.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = [
    "BIGRAM",
    "TERM_SPACE",
    "WORD",
    "ChunkTerms",
    "FieldParams",
    "bigram_idf",
    "bigrams",
    "chunk_key",
    "chunk_terms",
    "term_dimension",
]

WORD = "w"
BIGRAM = "b"
# pgvector's sparsevec allows up to 10⁹ dimensions. With ~300 terms per chunk, the chance that a
# query term shares a dimension with another term of a given chunk is ~3·10⁻⁷.
TERM_SPACE = 1_000_000_000
# sparsevec stores at most 16,000 non-zero elements; a chunk keeps its heaviest terms.
MAX_TERMS_PER_CHUNK = 16_000
# Postgres btree entries must stay well under a third of a page; no real word is this long.
MAX_TERM_BYTES = 256

_RUN = re.compile(r"[0-9a-z\u30a1-\u30fa\u30fc\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff々〆ヶ]+")
_DATA = Path(__file__).with_name("data")


@dataclass(frozen=True, slots=True)
class FieldParams:
    """BM25 parameters of one field: saturation ``k1``, length normalization ``b``, and the fixed
    average length ``avgdl`` that stands for the collection's (see the module docstring)."""

    k1: float
    b: float
    avgdl: float

    def weight(self, tf: int, dl: int) -> float:
        norm = self.k1 * (1.0 - self.b + self.b * dl / self.avgdl)
        return tf * (self.k1 + 1.0) / (tf + norm)


def bigrams(text: str) -> list[str]:
    """Character bigrams inside runs of kanji, katakana, Latin letters and digits of ``text``
    (normalized text; lowercased here)."""
    out: list[str] = []
    for m in _RUN.finditer(text.lower()):
        run = m.group()
        out.extend(run[i : i + 2] for i in range(len(run) - 1))
    return out


def term_dimension(field: str, term: str) -> int:
    """The term's dimension in the forward index (0-based; sparsevec text is 1-based)."""
    return _term_dimension(field, term)


# Prep hashes every term of every chunk and the same words recur throughout a corpus: the cache
# took chunk_terms from 1.7 to 1.1 s over 3,000 ja_dev paragraphs (bench/RESULTS.md, ingest).
# Full, it holds about 25 MB per process.
@lru_cache(maxsize=1 << 17)
def _term_dimension(field: str, term: str) -> int:
    digest = hashlib.blake2b(f"{field}\x1f{term}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % TERM_SPACE


def chunk_key(external_id: str, ordinal: int) -> int:
    """A signed 64-bit key of a chunk from what the user gave it: ties in the index and in the
    ranking are broken by it, so results do not depend on the order documents were loaded in."""
    digest = hashlib.blake2b(f"{external_id}\x1f{ordinal}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _usable(term: str) -> bool:
    # A character is at most 4 UTF-8 bytes: a short term needs no encoding to be measured.
    short = len(term) <= MAX_TERM_BYTES // 4
    return bool(term) and "\x00" not in term and (short or len(term.encode()) <= MAX_TERM_BYTES)


def _usable_counts(terms: Iterable[str]) -> Counter[str]:
    """Occurrences of each usable term (checked once per distinct term)."""
    counts = Counter(terms)
    for unusable in [t for t in counts if not _usable(t)]:
        del counts[unusable]
    return counts


@dataclass(frozen=True, slots=True)
class ChunkTerms:
    """A chunk's weighted terms: ``words`` go to the postings, both fields to the forward index
    (``dimensions`` → weight)."""

    words: dict[str, float]
    word_count: int
    dimensions: dict[int, float]


def chunk_terms(
    words: Iterable[str], grams: Iterable[str], word: FieldParams, bigram: FieldParams
) -> ChunkTerms:
    word_tf = _usable_counts(words)
    gram_tf = _usable_counts(grams)
    wdl, gdl = sum(word_tf.values()), sum(gram_tf.values())
    word_weights = {t: word.weight(n, wdl) for t, n in word_tf.items()}
    dims: dict[int, float] = {}
    weighted = [(WORD, t, w) for t, w in word_weights.items()]
    weighted += [(BIGRAM, t, bigram.weight(n, gdl)) for t, n in gram_tf.items()]
    if len(weighted) > MAX_TERMS_PER_CHUNK:
        weighted = sorted(weighted, key=lambda x: (-x[2], x[0], x[1]))[:MAX_TERMS_PER_CHUNK]
        kept = {t for f, t, _ in weighted if f == WORD}
        word_weights = {t: w for t, w in word_weights.items() if t in kept}
    for field, term, weight in weighted:
        dim = term_dimension(field, term)
        dims[dim] = dims.get(dim, 0.0) + weight
    return ChunkTerms(word_weights, wdl, dims)


@lru_cache(maxsize=1)
def _reference_bigrams() -> tuple[dict[str, int], int]:
    """(bigram → document frequency, documents) of the reference table."""
    path = _DATA / "bigram_df.tsv.gz"
    table: dict[str, int] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header[0] != "#documents":
            raise ValueError(f"{path}: missing '#documents' header")
        documents = int(header[1])
        for line in f:
            gram, _, df = line.rstrip("\n").partition("\t")
            table[gram] = int(df)
    return table, documents


def bigram_idf(gram: str) -> float:
    """BM25 idf of a bigram from the reference table; one it never saw counts as seen once (the
    table leaves out bigrams seen in a single document)."""
    table, n = _reference_bigrams()
    df = table.get(gram, 1)
    return math.log(1.0 + (n - df + 0.5) / (df + 0.5))
