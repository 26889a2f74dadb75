"""Files the file tests make for themselves (no binary fixtures): each good one holds a phrase
that only it contains, so a search can tell that its text was read."""

from __future__ import annotations

import io
import zipfile

# What each good file says that no other does (and the word a search for it uses).
PHRASES = {
    "cp932": ("㈱架空商事の①番目の議題は来期の予算である。", "架空商事"),
    "euc": ("北海道の釧路湿原では丹頂鶴が越冬する。", "丹頂鶴"),
    "html": ("瀬戸内海の小豆島はオリーブの産地として知られる。", "小豆島"),
    "markdown": ("奈良の東大寺には大仏殿がある。", "大仏殿"),
    "docx": ("会議では新幹線の延伸計画が議論された。", "延伸計画"),
    "pdf1": ("第一章では富士山の登山道を紹介する。", "登山道"),
    "pdf2": ("第二章では屋久島の縄文杉を取り上げる。", "縄文杉"),
    "zip_a": ("金沢の兼六園は日本三名園の一つである。", "兼六園"),
    "zip_b": ("沖縄の首里城は琉球王国の王城であった。", "首里城"),
}
# Text that must not be indexed: it sits in a script, a style or the navigation of the HTML.
HTML_HIDDEN = ("隠し変数", "装飾規則", "会員登録")


def cp932_text() -> bytes:
    return ("議事録\r\n" + PHRASES["cp932"][0] + "\r\n以上。\r\n").encode("cp932")


def euc_text() -> bytes:
    return ("自然の記録。\n" + PHRASES["euc"][0] + "\n").encode("euc_jp")


def html_page() -> bytes:
    script, style, nav = HTML_HIDDEN
    return (
        "<!DOCTYPE html><html><head><meta charset='shift_jis'>"
        "<title>小豆島の案内</title>"
        f"<style>/* {style} */ p {{ color: red }}</style>"
        f"<script>var {script} = '{script}';</script></head><body>"
        f"<nav><a href='/'>{nav}</a></nav>"
        f"<main><h1>島の話</h1><p>{PHRASES['html'][0]}</p></main>"
        "</body></html>"
    ).encode("cp932")


def markdown_note() -> bytes:
    return f"# 奈良の旅\n\n{PHRASES['markdown'][0]}\n\n- 鹿\n- 寺\n".encode()


def docx_file() -> bytes:
    import docx

    d = docx.Document()
    d.core_properties.title = "交通会議の議事録"
    d.add_heading("議題", level=1)
    d.add_paragraph(PHRASES["docx"][0])
    table = d.add_table(rows=2, cols=2)
    table.cell(0, 0).text = "区間"
    table.cell(0, 1).text = "距離"
    table.cell(1, 0).text = "敦賀から新大阪"
    table.cell(1, 1).text = "百四十キロ"
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


def pdf_file(pages: list[str] | None = None, title: str = "日本の山と島") -> bytes:
    """A Japanese PDF, one page per string, in reportlab's built-in CID font."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen import canvas

    pdfmetrics.registerFont(UnicodeCIDFont("HeiseiMin-W3"))
    buf = io.BytesIO()
    c = canvas.Canvas(buf)
    c.setTitle(title)
    for text in pages if pages is not None else [PHRASES["pdf1"][0], PHRASES["pdf2"][0]]:
        c.setFont("HeiseiMin-W3", 12)
        c.drawString(72, 750, text)
        c.showPage()
    c.save()
    return buf.getvalue()


def image_only_pdf() -> bytes:
    """A PDF whose page has only a drawing: no text layer, as a scan has none."""
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf)
    c.rect(72, 600, 300, 100, fill=1)
    c.showPage()
    c.save()
    return buf.getvalue()


def encrypted_pdf() -> bytes:
    import pypdf

    writer = pypdf.PdfWriter(clone_from=io.BytesIO(pdf_file(["暗号化された文書。"])))
    writer.encrypt("secret", algorithm="RC4-128")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def corrupt_pdf() -> bytes:
    return pdf_file()[:400]  # the header and a truncated first object


def zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def good_zip() -> bytes:
    return zip_of(
        {
            "旅行/金沢.txt": PHRASES["zip_a"][0].encode("utf-8"),
            "旅行/沖縄.md": f"# 沖縄\n\n{PHRASES['zip_b'][0]}\n".encode(),
        }
    )


def zip_bomb(inflated: int = 64 * 1024 * 1024) -> bytes:
    """One member of zeros that deflates about 1000×."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        with z.open("zeros.txt", "w") as f:
            block = b"\0" * (1 << 20)
            for _ in range(inflated >> 20):
                f.write(block)
    return buf.getvalue()


def traversal_zip() -> bytes:
    return zip_of({"../../etc/evil.txt": b"evil", "ok.txt": "安全な文書。".encode()})


def cp932_named_zip() -> bytes:
    """A ZIP as Windows Explorer writes it: a CP932 member name, no UTF-8 flag."""
    name = "報告.txt".encode("cp932")
    placeholder = b"X" * (len(name) - 4) + b".txt"
    data = zip_of({placeholder.decode(): "報告書の本文。".encode()})
    # Names are outside the CRC: patch them in the local header and the central directory.
    assert data.count(placeholder) == 2
    return data.replace(placeholder, name)
