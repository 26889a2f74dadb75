"""normalize(): one function for documents and queries, so its equivalences are search behavior."""

from __future__ import annotations

import random
import time

import pytest

from shared.text.normalize import normalize


@pytest.mark.parametrize(
    ("full", "half"),
    [
        ("ＡＢＣ１２３", "ABC123"),
        ("ｶﾀｶﾅ", "カタカナ"),
        ("ﾊﾟﾋﾟﾌﾟﾍﾟﾎﾟ ｶﾞｷﾞｸﾞ", "パピプペポガギグ"),
        ("Ｐｙｔｈｏｎ３で書く", "Python3で書く"),
        ("ｉＰｈｏｎｅ　１５", "iPhone 15"),
        ("（株）ＫＥＮＳＡＫＵ！", "(株)KENSAKU!"),
        ("｢検索｣､ﾃｽﾄ｡", "「検索」、テスト。"),
    ],
)
def test_full_and_half_width_forms_normalize_to_the_same_text(full: str, half: str) -> None:
    assert normalize(full) == normalize(half) == half


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ラーーーメン", "ラーメン"),
        ("ラ－メン", "ラーメン"),  # full-width hyphen-minus between katakana is a long vowel
        ("ラｰメン", "ラーメン"),
        ("ラ―メン", "ラーメン"),
        ("ラ─メン", "ラーメン"),
        ("すごーーーい", "すごーい"),
        ("コンピューター", "コンピューター"),
    ],
)
def test_long_vowel_variants(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_hyphen_variants_become_ascii_hyphen() -> None:
    assert normalize("東京‐大阪") == normalize("東京−大阪") == "東京-大阪"


def test_tildes_are_kept_as_one_form_not_deleted() -> None:
    # neologdn's default deletes tildes, which would turn a range 1〜10 into 110.
    assert normalize("1〜10") == normalize("1～10") == normalize("1~10") == "1~10"


def test_control_characters_become_spaces_and_line_breaks_survive() -> None:
    assert normalize("abc\x00def") == "abc def"
    assert normalize("abc\x1b[0mdef\x7f\x85x") == "abc [0mdef x"
    assert normalize("一行目\r\n二行目\r三行目") == "一行目\n二行目\n三行目"
    assert normalize("段落1\u2029段落2") == "段落1\n段落2"


def test_whitespace_is_collapsed_and_lines_trimmed() -> None:
    assert normalize("  前後の空白  ") == "前後の空白"
    assert normalize("Hello   \t  World") == "Hello World"
    assert normalize("検索\u3000エンジン") == "検索エンジン"  # no space between Japanese words
    assert normalize("検索\tエンジン") == "検索エンジン"
    assert normalize("東京\u00a0タワー") == "東京タワー"
    assert normalize("  一行目  \n\n\n\n  二行目 ") == "一行目\n\n二行目"
    assert normalize("\u200b見え\ufeffない\u00ad文字") == "見えない文字"


def test_compatibility_characters() -> None:
    assert normalize("①②③") == "123"
    assert normalize("㈱カブシキ") == "(株)カブシキ"
    assert normalize("㍻元年") == "平成元年"
    assert normalize("第Ⅲ章") == "第III章"
    assert normalize("5㌔") == "5キロ"
    assert normalize("か゛") == "が"  # a spacing voiced mark joins its kana


def test_yen_sign_keeps_its_meaning() -> None:
    # neologdn alone rewrites ¥ to a backslash.
    assert normalize("￥１，０００") == normalize("¥1,000") == "¥1,000"


def test_case_is_preserved() -> None:
    # Case folding happens in the lexemes, not in the text users see.
    assert normalize("ＮＡＳＡとnasa") == "NASAとnasa"


def test_empty_and_blank() -> None:
    assert normalize("") == ""
    assert normalize(" \t\u3000\n\r\n ") == ""


_ALPHABET = list(
    "あいうかがきーｰ－—―─━〜～~∼ｶﾞﾊﾟｷｬ゛゜ﾞﾟ東京大学漢字 \u3000\t\n\r\x00\x1f\x7f\x85\xa0"
    "\u2028\u200b\ufeff①㈱㍻Ⅲ™…（）「」『』【】！？!?。、，．,.ＡＢＣａｂｃ１２３abcXYZ019-‐−"
    "＿_＝=＜＞<>¥￥\\＂\"＇'`“”‘’¨¯´\u00ad㌔㍉㌍ﬁ²½·・･｡､｢｣ガ\u0301\u3099"
)


def test_idempotent_on_random_strings() -> None:
    rng = random.Random(20240601)
    for _ in range(20_000):
        s = "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 16)))
        once = normalize(s)
        assert normalize(once) == once, repr(s)


def test_idempotent_on_real_text() -> None:
    text = "東京スカイツリー（ＴＯＫＹＯ　ＳＫＹＴＲＥＥ）は、高さ６３４ｍの電波塔。"
    text += "\r\n開業は２０１２年〜。"
    once = normalize(text)
    assert once == "東京スカイツリー(TOKYO SKYTREE)は、高さ634mの電波塔。\n開業は2012年~。"
    assert normalize(once) == once


def test_fast_enough_for_every_upload() -> None:
    text = (
        "東京大学附属病院は、１９６４年に設立された。ｶﾀｶﾅとＡＢＣ　全角。\n" * 5000
    )  # ~190k chars
    normalize(text)
    started = time.perf_counter()
    normalize(text)
    elapsed = time.perf_counter() - started
    # Measured ~2.4M characters/s on one core; fail only far below that.
    assert len(text) / elapsed > 300_000
