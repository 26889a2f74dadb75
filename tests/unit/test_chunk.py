"""chunk_text(): sentence-aware packing under a token budget, exact spans, nothing lost; and the
document path built on it (shared.text.pipeline: prepare_document, query terms, hashes)."""

from __future__ import annotations

import itertools
import time

import pytest

from shared.text.chunk import Chunk, chunk_text, split_sentences
from shared.text.normalize import normalize
from shared.text.pipeline import (
    PreparedChunk,
    content_hash,
    embedding_input,
    prepare_document,
    query_terms,
)
from shared.text.tokenize import Tokenizer


def chars(text: str) -> int:
    """A stand-in token counter: one token per non-space character."""
    return sum(1 for c in text if not c.isspace())


def check_invariants(text: str, chunks: list[Chunk], count, max_tokens: int) -> None:  # type: ignore[no-untyped-def]
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert text[c.char_start : c.char_end] == c.text
        assert c.text == c.text.strip() and c.text
        assert c.token_count <= max_tokens
        assert count(c.text) <= max_tokens
    # Every non-space character is in some chunk, in order.
    covered = [False] * len(text)
    for c in chunks:
        for i in range(c.char_start, c.char_end):
            covered[i] = True
    assert all(covered[i] or text[i].isspace() for i in range(len(text)))
    starts = [c.char_start for c in chunks]
    assert starts == sorted(starts)


def test_empty_and_whitespace_give_no_chunks() -> None:
    assert chunk_text("", chars, 10) == []
    assert chunk_text(" \n\t\u3000\n", chars, 10) == []


def test_sentences_split_on_japanese_terminators_and_line_breaks() -> None:
    text = "今日は晴れ。明日は雨！本当？そうだ!?\n改行の後\n\n段落"
    spans = [text[a:b] for a, b in split_sentences(text)]
    assert spans == ["今日は晴れ。", "明日は雨！", "本当？", "そうだ!?", "改行の後", "段落"]


def test_no_split_inside_brackets() -> None:
    text = "彼は「今日は晴れだ。明日は雨だ！」と言った。『本の題。』を読む。（注。補足。）終わり。"
    spans = [text[a:b] for a, b in split_sentences(text)]
    assert spans == [
        "彼は「今日は晴れだ。明日は雨だ！」と言った。",
        "『本の題。』を読む。",
        "（注。補足。）終わり。",
    ]


def test_unbalanced_bracket_does_not_swallow_the_document() -> None:
    text = "「閉じない引用。まだ続く。\n次の行。その次。"
    spans = [text[a:b] for a, b in split_sentences(text)]
    assert spans == ["「閉じない引用。まだ続く。", "次の行。", "その次。"]


def test_period_after_japanese_ends_a_sentence_but_not_in_numbers() -> None:
    text = normalize("円周率は3.14である．次の文．Ver.2も出た。")
    spans = [text[a:b] for a, b in split_sentences(text)]
    assert spans == ["円周率は3.14である.", "次の文.", "Ver.2も出た。"]


def test_packing_respects_the_budget_and_keeps_spans_exact() -> None:
    text = "一二三四五。六七八九十。\n" * 20 + "終わりの文。"
    chunks = chunk_text(text, chars, 25)
    check_invariants(text, chunks, chars, 25)
    assert chunks[0].text == "一二三四五。六七八九十。\n一二三四五。六七八九十。"
    assert chunks[0].token_count == 24
    assert chunks[-1].text.endswith("終わりの文。")


def test_whole_sentences_fill_chunks() -> None:
    text = "これは文です。" * 10  # 7 tokens per sentence
    chunks = chunk_text(text, chars, 21)
    assert [c.token_count for c in chunks] == [21, 21, 21, 7]
    assert all(c.text.endswith("。") for c in chunks)


def test_long_sentence_is_split_not_truncated() -> None:
    text = "長い文、" * 30 + "終わり。"  # one 124-token sentence with commas
    chunks = chunk_text(text, chars, 20)
    check_invariants(text, chunks, chars, 20)
    assert "".join(c.text for c in chunks) == text
    assert all(c.text.endswith("、") for c in chunks[:-1])  # cut after commas


def test_long_bracketed_run_is_split_at_its_inner_sentence_ends() -> None:
    inner = "".join(f"{i}番目の文。" for i in range(10))  # 6 tokens each
    text = f"彼は「{inner}」と言った。"
    chunks = chunk_text(text, chars, 20)
    check_invariants(text, chunks, chars, 20)
    assert all(c.text.endswith(("。", "」と言った。")) for c in chunks)


def test_sentence_without_any_break_is_halved_until_it_fits() -> None:
    text = "あ" * 1000
    chunks = chunk_text(text, chars, 64)
    check_invariants(text, chunks, chars, 64)
    assert "".join(c.text for c in chunks) == text


def test_overlap_repeats_trailing_sentences() -> None:
    text = "".join(f"文{i % 10}です。" for i in range(20))  # 5 tokens each (文, i, で, す, 。)
    chunks = chunk_text(text, chars, 20, overlap_tokens=5)
    check_invariants(text, chunks, chars, 20)
    for prev, cur in itertools.pairwise(chunks):
        assert cur.char_start < prev.char_end  # overlapping spans
        assert cur.char_start > prev.char_start  # but always moving forward
        assert prev.text.endswith(text[cur.char_start : prev.char_end])


def test_overlap_never_exceeds_budget() -> None:
    text = "短い。" + "とても長い文になっている。" * 5
    chunks = chunk_text(text, chars, 14, overlap_tokens=10)
    check_invariants(text, chunks, chars, 14)


def test_invalid_budget() -> None:
    with pytest.raises(ValueError):
        chunk_text("文。", chars, 0)
    with pytest.raises(ValueError):
        chunk_text("文。", chars, 10, overlap_tokens=10)


def test_counts_each_sentence_once() -> None:
    calls: list[str] = []

    def counting(s: str) -> int:
        calls.append(s)
        return chars(s)

    text = "これは文です。" * 500
    chunk_text(text, counting, 100)
    assert len(calls) == 500
    assert sum(len(s) for s in calls) == len(text)


def test_real_tokenizer_on_a_200kb_document(tokenizer: Tokenizer) -> None:
    paragraph = (
        "東京大学附属病院は、1964年に設立された医療機関であり、多くの患者を受け入れている。"
        "「診察の予約は、電話でもインターネットでも受け付けています。」と担当者は話した。\n"
    )
    text = normalize(paragraph * (200 * 1024 // len(paragraph.encode("utf-8")) + 1))
    assert len(text.encode("utf-8")) > 200 * 1024
    started = time.perf_counter()
    chunks = chunk_text(text, tokenizer.count_tokens, 256, overlap_tokens=32)
    elapsed = time.perf_counter() - started
    check_invariants(text, chunks, tokenizer.count_tokens, 256)
    assert elapsed < 5.0  # measured ~0.2 s; quadratic re-counting would take minutes


# --- the document path built on the chunker (shared.text.pipeline) ------------------------------


def test_prepare_document_chunks_the_normalized_body_with_title_words(
    tokenizer: Tokenizer,
) -> None:
    body = "姫路城は兵庫県姫路市にある平山城である。白漆喰の外壁から白鷺城とも呼ばれる。\n" * 40
    chunks = prepare_document(
        "姫路城", body, count_tokens=tokenizer.count_tokens, max_tokens=64, tokenizer=tokenizer
    )
    normalized = normalize(body)
    assert len(chunks) > 3
    for c in chunks:
        assert isinstance(c, PreparedChunk)
        assert normalized[c.char_start : c.char_end] == c.text
        # The title's tokens come off the budget, so title + chunk still fits.
        assert tokenizer.count_tokens(embedding_input("姫路城", c.text)) <= 64
        assert c.words[:2] == ["姫路", "城"]  # the title is searchable in every chunk
        assert c.words == tokenizer.analyze(embedding_input("姫路城", c.text)).words
        assert c.grams[:2] == ["姫路", "路城"]
        assert c.units == []  # only a model that embeds lexemes gets units from prep


def test_prepare_document_normalizes_title_and_body(tokenizer: Tokenizer) -> None:
    [chunk] = prepare_document(
        "ＡＢＣ　ｶﾀｶﾅ",
        "ｉＰｈｏｎｅ１５の附属品。",
        count_tokens=tokenizer.count_tokens,
        max_tokens=64,
    )
    assert chunk.text == "iPhone15の附属品。"
    assert chunk.words == ["abc", "片仮名", "iphone", "15", "付属", "品"]


def test_prepare_by_sentence_gives_one_unit_per_sentence(tokenizer: Tokenizer) -> None:
    body = "姫路城は兵庫県にある。白鷺城とも呼ばれる。\n世界遺産に登録された。"
    count = lambda t: len(tokenizer.lexemes(t))  # noqa: E731
    [chunk] = prepare_document(
        "姫路城", body, count_tokens=count, max_tokens=256, tokens_are_lexemes=True
    )
    title = tokenizer.lexemes("姫路城")
    assert chunk.units == [
        title + tokenizer.lexemes(s)
        for s in ("姫路城は兵庫県にある。", "白鷺城とも呼ばれる。", "世界遺産に登録された。")
    ]
    [whole] = prepare_document(
        "姫路城",
        body,
        count_tokens=count,
        max_tokens=256,
        tokens_are_lexemes=True,
        vector_unit="chunk",
    )
    assert whole.units == [title + [lex for u in chunk.units for lex in u[len(title) :]]]
    assert whole.words == chunk.words


def test_prepare_document_edge_cases(tokenizer: Tokenizer) -> None:
    count = tokenizer.count_tokens
    assert prepare_document("", " \n ", count_tokens=count, max_tokens=64) == []
    [only_title] = prepare_document("題名だけ", "", count_tokens=count, max_tokens=64)
    assert only_title.text == "" and only_title.words == ["題名"]
    assert embedding_input("題名だけ", "") == "題名だけ"
    assert embedding_input("", "本文") == "本文"
    assert embedding_input("ＴＩＴＬＥ", "本文") == "TITLE\n本文"  # raw titles from the DB work


def test_query_terms_match_document_terms(tokenizer: Tokenizer) -> None:
    text = "iphone15の付属病院"
    terms = query_terms("ＩＰｈｏｎｅ１５の附属病院は？")
    assert terms.words == tokenizer.analyze(text).words
    assert terms.lexemes == tokenizer.lexemes(text)
    assert terms.grams == ["ip", "ph", "ho", "on", "ne", "e1", "15", "附属", "属病", "病院"]
    empty = query_terms("。、！？")
    assert empty.words == [] and empty.grams == []


def test_content_hash() -> None:
    assert content_hash("ＡＢＣ", "ｶﾀｶﾅ　本文") == content_hash("ABC", "カタカナ本文")
    assert content_hash("ab", "c") != content_hash("a", "bc")
    assert len(content_hash("", "")) == 32
