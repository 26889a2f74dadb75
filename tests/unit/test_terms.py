"""The lexical index's terms (shared.text.terms) and the tokenizer's two views of a text."""

from __future__ import annotations

import subprocess
import sys

from shared.text.pipeline import query_terms
from shared.text.terms import (
    BIGRAM,
    MAX_TERM_BYTES,
    MAX_TERMS_PER_CHUNK,
    TERM_SPACE,
    WORD,
    FieldParams,
    bigram_idf,
    bigrams,
    chunk_key,
    chunk_terms,
    term_dimension,
)
from shared.text.tokenize import Tokenizer

WORDS = FieldParams(0.5, 0.65, 150.0)
GRAMS = FieldParams(0.4, 0.75, 150.0)


def test_compounds_become_their_mode_a_units(tokenizer: Tokenizer) -> None:
    a = tokenizer.analyze("東京都庁の人工知能研究所に行きました")
    # The default model keeps Sudachi's longest units; the lexical index gets their parts.
    assert a.lexemes == ["東京都庁", "人工知能", "研究所", "行く"]
    assert a.words == ["東京", "都庁", "人工", "知能", "研究", "所", "行く"]
    # So a question naming a part shares a term with the compound, and vice versa.
    assert set(query_terms("都庁はどこ？").words) & set(a.words) == {"都庁"}


def test_bigrams_stay_inside_runs_of_kanji_katakana_and_alphanumerics() -> None:
    assert bigrams("ポケットモンスターのゲーム") == [
        "ポケ",
        "ケッ",
        "ット",
        "トモ",
        "モン",
        "ンス",
        "スタ",
        "ター",
        "ゲー",
        "ーム",
    ]
    assert bigrams("iPhone・東京") == ["ip", "ph", "ho", "on", "ne", "東京"]
    assert bigrams("あいうえお。、") == []  # hiragana and punctuation are grammar, not topic


def test_bigrams_match_what_word_segmentation_misses() -> None:
    doc, query = query_terms("ポケットモンスターのゲーム"), query_terms("ポケモン")
    assert not set(doc.words) & set(query.words)
    assert set(doc.grams) & set(query.grams) == {"ポケ", "モン"}


def test_bm25_weights_saturate_and_normalize_length() -> None:
    assert WORDS.weight(2, 150) > WORDS.weight(1, 150)
    assert WORDS.weight(2, 150) - WORDS.weight(1, 150) < WORDS.weight(1, 150)  # saturation
    assert WORDS.weight(1, 30) > WORDS.weight(1, 150) > WORDS.weight(1, 600)  # shorter wins
    assert abs(WORDS.weight(1, 150) - 1.0) < 1e-12  # tf 1 at the average length weighs 1


def test_chunk_terms_hold_both_fields() -> None:
    t = chunk_terms(["東京", "都庁", "東京"], ["東京", "京都", "都庁"], WORDS, GRAMS)
    assert set(t.words) == {"東京", "都庁"} and t.words["東京"] > t.words["都庁"]
    assert t.word_count == 3
    dims = {term_dimension(WORD, w) for w in t.words}
    dims |= {term_dimension(BIGRAM, g) for g in ("東京", "京都", "都庁")}
    assert set(t.dimensions) == dims
    # A word and the bigram of the same two characters are different terms.
    assert term_dimension(WORD, "東京") != term_dimension(BIGRAM, "東京")
    assert all(0 <= d < TERM_SPACE for d in t.dimensions)


def test_chunk_terms_drop_unusable_terms_and_cap_their_number() -> None:
    # Limits are in UTF-8 bytes: 86 kanji are 258 bytes, 85 are 255; 65 four-byte characters
    # are 260, 64 are 256.
    long_kanji, fits = "漢" * (MAX_TERM_BYTES // 3 + 1), "漢" * (MAX_TERM_BYTES // 3)
    long_rare, fits_rare = "𠀋" * (MAX_TERM_BYTES // 4 + 1), "𠀋" * (MAX_TERM_BYTES // 4)
    words = ["", "a\x00b", "x" * (MAX_TERM_BYTES + 1), long_kanji, long_rare, "ok", fits, fits_rare]
    t = chunk_terms([*words, "ok"], [], WORDS, GRAMS)
    assert list(t.words) == ["ok", fits, fits_rare]
    assert t.word_count == 4
    many = [f"w{i}" for i in range(MAX_TERMS_PER_CHUNK + 100)]
    capped = chunk_terms(many, [], WORDS, GRAMS)
    assert len(capped.dimensions) <= MAX_TERMS_PER_CHUNK
    assert len(capped.words) <= MAX_TERMS_PER_CHUNK


def test_dimensions_and_keys_are_the_same_in_every_process() -> None:
    code = (
        "from shared.text.terms import term_dimension, chunk_key;"
        "print(term_dimension('w', '東京'), chunk_key('doc-1', 3))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(term_dimension("w", "東京")), str(chunk_key("doc-1", 3))]
    assert chunk_key("doc-1", 3) != chunk_key("doc-1", 4) != chunk_key("doc-2", 3)
    assert -(2**63) <= chunk_key("doc-1", 3) < 2**63


def test_reference_bigram_idf_ranks_rare_above_common() -> None:
    assert bigram_idf("日本") < bigram_idf("東京") < bigram_idf("姫路")
    # Unseen, or seen in one reference paragraph only (left out of the table): the rarest.
    assert bigram_idf("𠮷𠮷") == bigram_idf("鷺城") > bigram_idf("姫路")
