"""Tokenizer: lexemes of the lexical index (Sudachi normalized forms of content words)."""

from __future__ import annotations

import os
import threading

import pytest

from shared.text.normalize import normalize
from shared.text.tokenize import (
    SUDACHI_MAX_BYTES,
    Tokenizer,
    get_tokenizer,
    split_for_sudachi,
)


def test_lexemes_drop_particles_auxiliaries_and_symbols(tokenizer: Tokenizer) -> None:
    lexemes = tokenizer.lexemes("東京大学附属病院で、医者が患者を診察しました。")
    assert lexemes == ["東京大学", "付属", "病院", "医者", "患者", "診察", "為る"]
    for dropped in ("で", "が", "を", "まし", "ます", "た", "、", "。"):
        assert dropped not in lexemes


def test_lexemes_are_normalized_forms(tokenizer: Tokenizer) -> None:
    assert tokenizer.lexemes("附属") == tokenizer.lexemes("付属") == ["付属"]
    assert tokenizer.lexemes("すごい") == tokenizer.lexemes("凄い") == ["凄い"]
    assert tokenizer.lexemes("買った") == tokenizer.lexemes("買います") == ["買う"]
    assert tokenizer.lexemes("カタカナ") == ["片仮名"]


def test_lexemes_are_lowercase_and_width_insensitive(tokenizer: Tokenizer) -> None:
    assert tokenizer.lexemes(normalize("ＩＰｈｏｎｅ１５")) == tokenizer.lexemes("iphone15")
    assert "iphone" in tokenizer.lexemes("iPhoneを買った")
    assert tokenizer.lexemes(normalize("ﾗｰﾒﾝ")) == tokenizer.lexemes("ラーメン")


def test_numbers_prefixes_and_suffixes_are_kept(tokenizer: Tokenizer) -> None:
    lexemes = tokenizer.lexemes("1993年に第3回大会が開かれた")
    assert "1993" in lexemes and "年" in lexemes
    assert "第" in lexemes and "3" in lexemes


def test_count_tokens_counts_every_morpheme(tokenizer: Tokenizer) -> None:
    text = "東京大学附属病院で、医者が患者を診察しました。"
    assert tokenizer.count_tokens(text) == len(tokenizer.surfaces(text)) == 14
    assert tokenizer.count_tokens("") == 0


def test_split_for_sudachi_short_text_is_untouched() -> None:
    assert split_for_sudachi("短い文。") == ["短い文。"]


def test_split_for_sudachi_cuts_at_sentence_ends_under_the_limit() -> None:
    text = "これは日本語の文です。" * 3000  # 33,000 chars, 99,000 bytes
    pieces = split_for_sudachi(text)
    assert "".join(pieces) == text
    assert len(pieces) >= 3
    for piece in pieces:
        assert len(piece.encode("utf-8")) <= SUDACHI_MAX_BYTES
    for piece in pieces[:-1]:
        assert piece.endswith("。")


def test_split_for_sudachi_falls_back_to_characters() -> None:
    text = "漢" * 40_000 + "😀" * 5_000  # no break anywhere; 3- and 4-byte characters
    pieces = split_for_sudachi(text)
    assert "".join(pieces) == text
    assert all(len(p.encode("utf-8")) <= SUDACHI_MAX_BYTES for p in pieces)
    # Pieces are filled close to the limit, not cut at a quarter of it.
    assert len(pieces) <= 4


@pytest.mark.parametrize("kilobytes", [60, 200])
def test_long_documents_tokenize_without_losing_content(
    tokenizer: Tokenizer, kilobytes: int
) -> None:
    sentence = "東京大学附属病院は1964年に設立され、多くの患者を受け入れている。"
    text = (sentence * (kilobytes * 1024 // len(sentence.encode("utf-8")) + 1)).rstrip("。")
    assert len(text.encode("utf-8")) > kilobytes * 1024 > SUDACHI_MAX_BYTES
    surfaces = tokenizer.surfaces(text)
    assert "".join(surfaces) == text  # every character reached Sudachi, in order
    lexemes = tokenizer.lexemes(text)
    n = text.count("設立")
    assert lexemes.count("設立") == n and lexemes.count("付属") == n
    assert tokenizer.count_tokens(text) == len(surfaces)


def test_long_line_without_punctuation(tokenizer: Tokenizer) -> None:
    text = "あいうえおかきくけこ" * 8000  # 80,000 chars, 240,000 bytes, no break at all
    assert "".join(tokenizer.surfaces(text)) == text


def test_get_tokenizer_is_cached_per_process() -> None:
    assert get_tokenizer() is get_tokenizer()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # 3.12+: threads + fork
def test_get_tokenizer_is_recreated_after_fork() -> None:
    parent = get_tokenizer()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report whether it got a fresh instance that works
        try:
            child = get_tokenizer()
            ok = child is not parent and child.lexemes("附属") == ["付属"]
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    result = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    assert result == b"1"


def test_tokenizer_is_usable_from_several_threads(tokenizer: Tokenizer) -> None:
    errors: list[BaseException] = []
    expected = tokenizer.lexemes("東京大学附属病院で診察しました。" * 50)

    def work() -> None:
        try:
            for _ in range(20):
                assert tokenizer.lexemes("東京大学附属病院で診察しました。" * 50) == expected
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
