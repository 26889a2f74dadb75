"""Bytes of a text file → str, for the encodings Japanese files come in.

Order, and why:

1. A byte-order mark decides (UTF-8, UTF-16 LE/BE, UTF-32).
2. A charset the file declares (the part's ``Content-Type``, an HTML ``<meta charset>``) is
   used when it decodes the bytes strictly; Shift_JIS names map to CP932, its Windows superset
   (① ㈱ and the NEC/IBM extensions are CP932-only), EUC-JP falls back to EUC-JIS-2004, which
   has the NEC row-13 characters that Python's plain ``euc_jp`` lacks.
3. ISO-2022-JP is 7-bit with escape sequences: recognized by them.
4. Strict UTF-8: valid UTF-8 is almost never anything else.
5. CP932 and EUC-JP are told apart by which decodes strictly: Shift_JIS kana lead bytes
   (0x81–0x9F) are invalid in EUC-JP, and EUC's 0xA1–0xFE pairs read as CP932 mostly fail or
   land on unassigned codes. Only when both decode (short or kana-less texts) does
   charset-normalizer's language model choose between them.
6. Anything else (UTF-16 without a BOM, Latin-1, ...): charset-normalizer's best guess.

Line ends are folded to ``\\n``.
"""

from __future__ import annotations

import codecs
import re

import charset_normalizer

__all__ = ["DecodeError", "decode_text", "html_declared_charset"]

_BOMS = [
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
]
_ALIASES = {
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "ms_kanji": "cp932",
    "windows-31j": "cp932",
    "csshiftjis": "cp932",
    "cp932": "cp932",
    "ms932": "cp932",
}
_EUC_JP = ("euc_jp", "euc_jis_2004")
_ISO2022_ESCAPES = (b"\x1b$B", b"\x1b$@", b"\x1b(J", b"\x1b(I", b"\x1b$(D")
_META_CHARSET = re.compile(
    rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE
)


class DecodeError(ValueError):
    """The bytes are not text in any encoding we could recognize."""


def _strict(data: bytes, encoding: str) -> str | None:
    try:
        return data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None


def _declared(data: bytes, charset: str) -> tuple[str, str] | None:
    name = charset.strip().lower()
    name = _ALIASES.get(name, name)
    try:
        canonical = codecs.lookup(name).name
    except LookupError:
        return None
    candidates = _EUC_JP if canonical in ("euc_jp", "euc_jis_2004", "euc_jisx0213") else (name,)
    for enc in candidates:
        text = _strict(data, enc)
        if text is not None:
            return text, enc
    return None


def _fold_lines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def detect(data: bytes, declared: str | None = None) -> tuple[str, str]:
    """(text, encoding used). Raises DecodeError."""
    for bom, enc in _BOMS:
        if data.startswith(bom):
            text = _strict(data, enc)
            if text is not None:
                return text.lstrip("\ufeff"), enc
    if declared:
        chosen = _declared(data, declared)
        if chosen is not None:
            return chosen
    if any(esc in data for esc in _ISO2022_ESCAPES) and max(data, default=0) < 0x80:
        for enc in ("iso2022_jp", "iso2022_jp_ext", "iso2022_jp_2004"):
            text = _strict(data, enc)
            if text is not None:
                return text, enc
    text = _strict(data, "utf-8")
    if text is not None:
        return text, "utf-8"
    found: dict[str, str] = {}
    sjis = _strict(data, "cp932")
    if sjis is not None:
        found["cp932"] = sjis
    for enc in _EUC_JP:
        euc = _strict(data, enc)
        if euc is not None:
            found[enc] = euc
            break
    if len(found) == 1:
        ((enc, text),) = found.items()
        return text, enc
    best = charset_normalizer.from_bytes(data, cp_isolation=list(found) or None).best()
    if best is None or best.encoding is None:
        raise DecodeError("not text in any encoding kensaku recognizes (UTF-8/16, CP932, EUC-JP)")
    enc = best.encoding
    if enc not in found:
        text = _strict(data, enc)
        if text is None:
            raise DecodeError(f"the text does not decode as {enc}")
        return text, enc
    return found[enc], enc


def decode_text(data: bytes, declared: str | None = None) -> tuple[str, str]:
    """The text of a file with line ends folded, and the encoding it was read in."""
    text, enc = detect(data, declared)
    return _fold_lines(text), enc


def html_declared_charset(data: bytes) -> str | None:
    """The charset an HTML file names in a ``<meta>`` near its start."""
    m = _META_CHARSET.search(data[:4096])
    return m.group(1).decode("ascii") if m else None
