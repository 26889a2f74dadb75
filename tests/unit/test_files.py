"""Reading files: Japanese encodings, kinds of file, text extraction, ZIP archives."""

from __future__ import annotations

import codecs
from typing import Any

import pytest

from shared.files.archive import ArchiveRejected, Member, expand_zip, unsafe_path
from shared.files.decode import decode_text
from shared.files.extract import ExtractionError, extract
from shared.files.formats import BadFile, Format, UnsupportedFile, detect_format
from tests import filemakers as fm

SAMPLE = "株式会社①㈱の売上は増えた。ひらがなとカタカナ、漢字の文です。"


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (SAMPLE.encode("cp932"), "cp932"),
        ("東京都の人口は増えている。ひらがなとカタカナ。".encode("euc_jp"), "euc_jp"),
        ("東京都の人口は増えている。".encode("iso2022_jp"), "iso2022_jp"),
        (SAMPLE.encode("utf-8"), "utf-8"),
        (codecs.BOM_UTF8 + SAMPLE.encode("utf-8"), "utf-8-sig"),
        (SAMPLE.encode("utf-16"), "utf-16"),  # with its BOM
        ("東京の①番地".encode("euc_jis_2004"), "euc_jis_2004"),  # NEC row 13 in EUC
    ],
)
def test_japanese_encodings_are_detected(data: bytes, encoding: str) -> None:
    text, used = decode_text(data)
    assert used == encoding
    assert text == data.decode(encoding).lstrip("\ufeff")


def test_cp932_extensions_and_line_ends_survive() -> None:
    text, used = decode_text("①番\r\n㈱テスト\r最後".encode("cp932"))
    assert used == "cp932"
    assert text == "①番\n㈱テスト\n最後"


def test_a_declared_charset_is_used_when_it_decodes() -> None:
    data = "カナ".encode("cp932")
    assert decode_text(data, "Shift_JIS") == ("カナ", "cp932")
    # A wrong declaration that does not decode strictly is ignored, not trusted.
    assert decode_text(SAMPLE.encode("cp932"), "utf-8")[1] == "cp932"


def test_html_meta_charset_is_respected() -> None:
    out = extract(fm.html_page(), Format.HTML)
    assert out.encoding == "cp932"
    assert fm.PHRASES["html"][0] in out.text


def test_html_main_content_only() -> None:
    out = extract(fm.html_page(), Format.HTML)
    assert out.title == "小豆島の案内"
    for hidden in fm.HTML_HIDDEN:
        assert hidden not in out.text
    page = b"<html><body><nav>menu</nav><p>one</p><p>two</p><footer>f</footer></body></html>"
    body = extract(page, Format.HTML).text
    assert body == "one\ntwo"  # blocks end lines; navigation and footer dropped


def test_markdown_title_is_its_first_heading() -> None:
    out = extract(fm.markdown_note(), Format.MARKDOWN)
    assert out.title == "奈良の旅"
    assert fm.PHRASES["markdown"][0] in out.text
    assert "#" not in out.text


def test_docx_paragraphs_tables_and_title() -> None:
    out = extract(fm.docx_file(), Format.DOCX)
    assert out.title == "交通会議の議事録"
    assert fm.PHRASES["docx"][0] in out.text
    assert "敦賀から新大阪" in out.text  # a table cell


def test_pdf_text_per_page_and_title() -> None:
    out = extract(fm.pdf_file(), Format.PDF)
    assert out.paged
    assert out.title == "日本の山と島"
    assert out.pages == [fm.PHRASES["pdf1"][0], fm.PHRASES["pdf2"][0]]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (fm.corrupt_pdf, "corrupt PDF"),
        (fm.encrypted_pdf, "encrypted PDF"),
        (fm.image_only_pdf, "no text layer"),
    ],
)
def test_unreadable_pdfs_say_why(make: object, reason: str) -> None:
    with pytest.raises(ExtractionError, match=reason):
        extract(make(), Format.PDF)  # type: ignore[operator]


def test_empty_extraction_is_an_error() -> None:
    with pytest.raises(ExtractionError, match="no text"):
        extract(b"<html><body><script>x()</script></body></html>", Format.HTML)


@pytest.mark.parametrize(
    ("name", "content_type", "data", "expected"),
    [
        ("a.pdf", None, fm.pdf_file(["本文"]), Format.PDF),
        ("no-extension", "application/pdf", b"%PDF-1.7\n", Format.PDF),
        ("report.bin", "application/octet-stream", b"%PDF-1.7\n", Format.PDF),  # magic bytes
        ("a.docx", None, fm.docx_file(), Format.DOCX),
        ("misnamed.zip", None, fm.docx_file(), Format.ZIP),
        ("page.HTM", None, b"<p>x</p>", Format.HTML),
        ("note.md", None, b"# x", Format.MARKDOWN),
        ("memo", "text/plain; charset=shift_jis", b"abc", Format.TEXT),
        ("data.csv", None, b"a,b", Format.TEXT),
        ("bundle.zip", None, fm.good_zip(), Format.ZIP),
    ],
)
def test_formats(name: str, content_type: str | None, data: bytes, expected: Format) -> None:
    assert detect_format(name, content_type, data) is expected


@pytest.mark.parametrize(
    ("name", "content_type", "data", "error", "match"),
    [
        ("photo.png", "image/png", b"\x89PNG\r\n", UnsupportedFile, "OCR is not supported"),
        ("sheet.xlsx", None, fm.zip_of({"xl/workbook.xml": b"<x/>"}), UnsupportedFile, "Excel"),
        ("old.doc", None, b"\xd0\xcf\x11\xe0", UnsupportedFile, "legacy Word"),
        ("fake.pdf", None, b"hello", BadFile, "not a PDF"),
        ("fake.docx", None, b"hello", BadFile, "not a DOCX"),
        ("blob.txt", None, b"ab\x00\x01\x02", UnsupportedFile, "binary"),
    ],
)
def test_refused_formats(
    name: str, content_type: str | None, data: bytes, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        detect_format(name, content_type, data)


LIMITS: dict[str, Any] = {
    "max_members": 10,
    "max_total_bytes": 512 * 1024 * 1024,
    "max_ratio": 100.0,
    "max_file_bytes": 1024 * 1024,
}


def expand(data: bytes, **limits: Any) -> list[Member]:
    return list(expand_zip(data, **{**LIMITS, **limits}))


def test_zip_members_in_order() -> None:
    members = expand(fm.good_zip())
    assert [m.name for m in members] == ["旅行/金沢.txt", "旅行/沖縄.md"]
    assert members[0].data == fm.PHRASES["zip_a"][0].encode()


def test_zip_bomb_is_refused_whole() -> None:
    with pytest.raises(ArchiveRejected, match="ZIP bomb") as info:
        expand(fm.zip_bomb(), max_file_bytes=1 << 30)
    assert info.value.status == 413
    with pytest.raises(ArchiveRejected, match="max_zip_uncompressed_bytes"):
        expand(fm.zip_bomb(), max_total_bytes=1 << 20)
    many = fm.zip_of({f"{i}.txt": b"x" for i in range(11)})
    with pytest.raises(ArchiveRejected, match="max_zip_members"):
        expand(many)
    with pytest.raises(ArchiveRejected, match="not a valid ZIP") as info:
        expand(b"PK\x03\x04broken")
    assert info.value.status == 422


def test_zip_members_with_unsafe_paths_are_refused_alone() -> None:
    members = expand(fm.traversal_zip())
    bad, ok = members
    assert bad.data is None and "'..'" in (bad.error or "")
    assert ok.name == "ok.txt" and ok.data


def test_zip_member_names_in_cp932_are_read() -> None:
    (member,) = expand(fm.cp932_named_zip())
    assert member.name == "報告.txt"


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a/b.txt", True),
        ("報告書.pdf", True),
        ("/etc/passwd", False),
        ("C:/x.txt", False),
        ("a\\b.txt", False),
        ("a/../b.txt", False),
        ("./a.txt", False),
    ],
)
def test_unsafe_paths(name: str, ok: bool) -> None:
    assert (unsafe_path(name) is None) is ok
