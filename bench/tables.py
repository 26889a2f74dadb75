"""`kensaku-bench tables`: rebuild the two reference tables shipped with kensaku from a corpus.

- ``shared/text/data/bigram_df.tsv.gz``: document frequency of each lexical bigram
  (:func:`shared.text.terms.bigrams` of title + text), the bigram field's idf.
- ``shared/embed/data/word_freq.tsv.gz``: occurrences of each lexeme (the default model's
  vocabulary), the default model's SIF word weights and its common-component removal.

Both are built with the product's own normalization and tokenization, sorted, and gzipped with
a zero timestamp, so the same corpus always gives the same bytes. The shipped tables come from
``../shared/data/ja_dev/corpus.jsonl`` (JaQuAD, CC BY-SA 3.0; see the READMEs next to them):

    kensaku-bench tables --corpus ../shared/data/ja_dev/corpus.jsonl
"""

from __future__ import annotations

import gzip
import io
import json
from collections import Counter
from pathlib import Path

from shared.text.normalize import normalize
from shared.text.pipeline import embedding_input
from shared.text.terms import bigrams
from shared.text.tokenize import get_tokenizer

ROOT = Path(__file__).resolve().parents[1]
BIGRAM_TABLE = ROOT / "shared/text/data/bigram_df.tsv.gz"
WORD_TABLE = ROOT / "shared/embed/data/word_freq.tsv.gz"
# Rows seen fewer times than this are left out: a bigram seen once gets the same idf as an
# unseen one, and a word seen a few times has a SIF weight within 0.3 % of an unseen word's.
MIN_BIGRAM_DF = 2
MIN_WORD_COUNT = 5


def read_corpus(path: Path) -> list[tuple[str, str]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            out.append((str(d.get("title") or ""), str(d["text"])))
    return out


def _write_table(path: Path, header: tuple[str, int], rows: dict[str, int], minimum: int) -> int:
    buf = io.StringIO()
    buf.write(f"{header[0]}\t{header[1]}\n")
    kept = 0
    for key in sorted(rows):
        if rows[key] >= minimum and "\t" not in key and "\n" not in key:
            buf.write(f"{key}\t{rows[key]}\n")
            kept += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
        f.write(buf.getvalue().encode("utf-8"))
    return kept


def build_tables(corpus: Path) -> dict[str, int]:
    tok = get_tokenizer()
    docs = read_corpus(corpus)
    df: Counter[str] = Counter()
    words: Counter[str] = Counter()
    for title, text in docs:
        lexical = embedding_input(title, normalize(text))
        df.update(set(bigrams(lexical)))
        words.update(tok.lexemes(lexical))
    return {
        "documents": len(docs),
        "bigrams": _write_table(BIGRAM_TABLE, ("#documents", len(docs)), df, MIN_BIGRAM_DF),
        "words": _write_table(
            WORD_TABLE, ("#occurrences", sum(words.values())), words, MIN_WORD_COUNT
        ),
    }


def main(corpus: Path) -> int:
    counts = build_tables(corpus)
    print(
        f"{counts['documents']} documents: {counts['bigrams']} bigrams in {BIGRAM_TABLE}, "
        f"{counts['words']} words in {WORD_TABLE}"
    )
    return 0
