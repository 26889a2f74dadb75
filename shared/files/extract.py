"""Text out of a stored file, in the prep worker (the API only stores the bytes).

Libraries, and why these:

- PDF: pypdf. Pure Python (no system libraries to install), reads the predefined CJK CMaps
  (reportlab's HeiseiMin-W3 text comes back exactly, ① and ㈱ included), gives text per page,
  and handles encrypted files opened with an empty password. pdfminer.six reads layout more
  finely but is several times slower, and per-page text is all kensaku needs.
- DOCX: python-docx, the reference reader: paragraphs and tables in document order, and the
  core properties' title.
- HTML and Markdown: selectolax (the Lexbor HTML5 parser) with a main-content rule: the
  ``<main>``/``<article>`` element when there is one, else the body without navigation, headers
  and footers; scripts, styles, forms and embedded objects dropped everywhere. Markdown is
  rendered by markdown-it-py (CommonMark) and read the same way. trafilatura scores
  boilerplate better on news pages but drops short pages and notes entirely and pulls in a
  dozen dependencies; kensaku's HTML is mostly saved documents, where the structural rule keeps
  everything that is content.
- Plain text: shared.files.decode (the Japanese encodings).
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass

from shared.files.decode import DecodeError, decode_text, html_declared_charset
from shared.files.formats import Format

__all__ = ["Extracted", "ExtractionError", "extract"]

log = logging.getLogger(__name__)

_MAX_TITLE_CHARS = 2_000
# Block-level elements end a line, so sentences and paragraphs stay apart in the text.
_BLOCKS = (
    "p,div,br,hr,li,dt,dd,tr,h1,h2,h3,h4,h5,h6,blockquote,pre,section,article,table,"
    "ul,ol,dl,figcaption,caption,address,main,header,footer,td,th"
)
_NEVER_CONTENT = "script,style,noscript,template,iframe,object,embed,svg,canvas,form,button,select"
_BOILERPLATE = "nav,aside,header,footer,[role=navigation],[role=banner],[role=contentinfo]"
_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.DOTALL)
_SPACES = re.compile(r"[ \t\u3000]+")
_BLANK_LINES = re.compile(r"\n{3,}")


class ExtractionError(ValueError):
    """The file cannot be read (corrupt, encrypted, no text): the document fails with this."""


@dataclass(frozen=True)
class Extracted:
    title: str | None
    pages: list[str]  # a PDF's pages (1-based in hits); one element for every other format
    paged: bool
    encoding: str | None = None

    @property
    def text(self) -> str:
        return "\n\n".join(self.pages)


def _clean_title(title: object) -> str | None:
    if not isinstance(title, str):
        return None
    title = " ".join(title.split())[:_MAX_TITLE_CHARS]
    return title or None


def _tidy(text: str) -> str:
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _pdf(data: bytes) -> Extracted:
    import pypdf
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")
            except (DependencyError, NotImplementedError) as exc:
                raise ExtractionError(f"encrypted PDF that cannot be opened: {exc}") from None
            if not opened:
                raise ExtractionError("encrypted PDF: it needs a password to be read")
        pages = []
        for number, page in enumerate(reader.pages, start=1):
            try:
                pages.append(_tidy(page.extract_text() or ""))
            except Exception as exc:  # one broken page must not lose the others
                log.warning("PDF page %d unreadable: %s", number, exc)
                pages.append("")
        title = _clean_title(reader.metadata.title if reader.metadata else None)
    except ExtractionError:
        raise
    except FileNotDecryptedError:
        raise ExtractionError("encrypted PDF: it needs a password to be read") from None
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise ExtractionError(f"corrupt PDF: {type(exc).__name__}: {exc}") from None
    if not any(pages):
        raise ExtractionError(
            f"the PDF's {len(pages)} page(s) have no text layer (scanned or images only?); "
            "OCR is not supported"
        )
    return Extracted(title, pages, paged=True)


def _docx(data: bytes) -> Extracted:
    import docx
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
        lines: list[str] = []
        for block in document.iter_inner_content():
            if isinstance(block, Table):
                for row in block.rows:
                    cells: list[str] = []
                    for cell in row.cells:
                        text = cell.text.strip()
                        if text and (not cells or cells[-1] != text):  # merged cells repeat
                            cells.append(text)
                    if cells:
                        lines.append("\t".join(cells))
                lines.append("")
            else:
                lines.append(block.text)
        title = _clean_title(document.core_properties.title)
    except Exception as exc:  # python-docx raises whatever zipfile/lxml raise underneath
        raise ExtractionError(f"not a readable DOCX file: {type(exc).__name__}: {exc}") from None
    return Extracted(title, [_tidy("\n".join(lines))], paged=False)


def _html_text(html: str) -> tuple[str | None, str]:
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(html)
    title_node = tree.css_first("title")
    title = _clean_title(title_node.text()) if title_node else None
    for node in tree.css(_NEVER_CONTENT):
        node.decompose()
    root = tree.css_first("main") or tree.css_first("[role=main]") or tree.css_first("article")
    if root is None:
        root = tree.body or tree.root
        if root is None:
            return title, ""
        for node in root.css(_BOILERPLATE):
            node.decompose()
    for node in root.css(_BLOCKS):
        node.insert_after("\n")
    return title, _tidy(root.text(separator=""))


def _html(data: bytes, charset: str | None) -> Extracted:
    text, encoding = decode_text(data, charset or html_declared_charset(data))
    title, body = _html_text(text)
    return Extracted(title, [body], paged=False, encoding=encoding)


def _markdown(data: bytes, charset: str | None) -> Extracted:
    from markdown_it import MarkdownIt

    text, encoding = decode_text(data, charset)
    text = _FRONT_MATTER.sub("", text)
    md = MarkdownIt("commonmark").enable("table")
    tokens = md.parse(text)
    title = None
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and i + 1 < len(tokens):
            title = _clean_title(tokens[i + 1].content)
            break
    _, body = _html_text(md.renderer.render(tokens, md.options, {}))
    return Extracted(title, [body], paged=False, encoding=encoding)


def _text(data: bytes, charset: str | None) -> Extracted:
    text, encoding = decode_text(data, charset)
    return Extracted(None, [text.strip()], paged=False, encoding=encoding)


def extract(data: bytes, fmt: Format, charset: str | None = None) -> Extracted:
    """The text of a file. ``charset`` is what the upload declared, if anything. Raises
    ExtractionError with a reason a user can act on."""
    try:
        if fmt is Format.PDF:
            out = _pdf(data)
        elif fmt is Format.DOCX:
            out = _docx(data)
        elif fmt is Format.HTML:
            out = _html(data, charset)
        elif fmt is Format.MARKDOWN:
            out = _markdown(data, charset)
        elif fmt is Format.TEXT:
            out = _text(data, charset)
        else:
            raise ExtractionError(f"{fmt.value} files are not extracted")
    except DecodeError as exc:
        raise ExtractionError(str(exc)) from None
    # PostgreSQL text holds neither NUL nor lone surrogates (a broken PDF font map yields them).
    pages = [p.replace("\x00", "").encode("utf-8", "replace").decode("utf-8") for p in out.pages]
    if not any(page.strip() for page in pages):
        raise ExtractionError("no text could be extracted from the file")
    return Extracted(out.title, pages, out.paged, out.encoding)
