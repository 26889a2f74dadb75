"""Text normalization shared by documents and queries.

One function, :func:`normalize`, runs on every document (to hash it and to build its chunks) and on
every query, so a full-width query (``ＡＢＣ１２３``, ``ｶﾀｶﾅ``) and its half-width form end up as
the same string and therefore as the same lexemes and the same embedding input.

Order of operations, and why:

1. One ``str.translate`` pass for what neologdn does not handle or would handle in a way that a
   second pass changes again (``normalize`` is idempotent; a randomized test checks it):
   ``\\r\\n``/``\\r``/U+2028/U+2029 → ``\\n``; C0/C1 controls (except ``\\n``) and tabs → space;
   every Unicode space separator (NBSP, U+3000, ...) → space; zero-width space, word joiner,
   BOM, soft hyphen and noncharacters removed; compatibility characters decomposed the NFKC way
   (``①`` → ``1``, ``㈱`` → ``(株)``, ``㍻`` → ``平成``, ``㌔`` → ``キロ``), so that neologdn
   sees the characters NFKC would produce (``? ㌔`` must lose its space like ``? キロ``); lone
   spacing diacritics (``¨ ´ ¯``) dropped; ``゛``/``゜``/``ﾞ``/``ﾟ`` turned into the
   combining marks, which compose with the kana before them (``か゛`` → ``が``); the yen signs
   parked (neologdn rewrites ``¥`` to a backslash, a Shift_JIS legacy) and restored afterwards.
2. neologdn, before NFKC: it decides from context what NFKC cannot, e.g. ``ラ－メン`` →
   ``ラーメン`` (NFKC first gives ``ラ-メン``), ``ｰ``/``—``/``―``/``─`` as long-vowel marks, runs
   of ``ー`` collapsed, full-width ASCII to half-width, half-width katakana to full-width, spaces
   between Japanese characters removed. Tildes are *normalized* to ``~`` instead of neologdn's
   default of deleting them: deleting turns ``1〜10`` into ``110``.
3. NFKC for what is left (canonical composition, the ``ｶﾞ``-style sequences).
4. Whitespace: space runs become one space, lines are stripped, three or more line breaks
   become two (a paragraph break). Line breaks are kept: the chunker splits on them.

Speed: about 2.4 million characters/s on one core for typical Japanese text (the pre-pass table
is built once at import).

Latin letters are *not* lowercased here: chunk text is shown to users and cased models see it.
Case folding happens where matching needs it, in :meth:`shared.text.tokenize.Tokenizer.lexemes`
(the lexical index and the default static embedding are therefore case-insensitive).
"""

from __future__ import annotations

import re
import unicodedata

import neologdn

__all__ = ["normalize"]


_YEN_PARK = "\ufdd0"


def _build_pre_table() -> dict[int, str | None]:
    table: dict[int, str | None] = {}
    for cp in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]:
        table[cp] = " "
    table[ord("\n")] = "\n"
    # Tabs become spaces *before* neologdn so that it drops them between Japanese characters as it
    # does spaces (a tab left for later would survive one pass and vanish on the next).
    table[ord("\t")] = " "
    table[ord("\r")] = "\n"  # lone CR (old Mac line ends); CRLF is folded before the table runs
    table[0x2028] = "\n"  # LINE SEPARATOR
    table[0x2029] = "\n"  # PARAGRAPH SEPARATOR
    # Space separators (Zs): NBSP, en/em spaces, thin space, ideographic space, ...
    for cp in range(0x00A0, 0x3001):
        if unicodedata.category(chr(cp)) == "Zs":
            table[cp] = " "
    # Invisible characters that only split words apart: ZWSP, word joiner, BOM, soft hyphen.
    # ZWJ/ZWNJ stay: they are part of emoji and of some scripts.
    for cp in (0x200B, 0x2060, 0xFEFF, 0x00AD):
        table[cp] = None
    # Compatibility characters (①, ㈱, ㌔, ¨, ...) are decomposed *before* neologdn, so that it
    # sees what NFKC makes of them: ``? ㌔`` must lose its space like ``? キロ`` does, and ``´``
    # (space + combining mark under NFKC) must not leave a space that only a second pass removes.
    # Left to neologdn: the characters whose meaning it decides from context (full-width ASCII,
    # notably ``－``, and half-width katakana with ``ｰ``).
    for cp in range(0x00A0, 0x10000):
        if 0xD800 <= cp <= 0xDFFF or cp in table or 0xFF01 <= cp <= 0xFF9D or cp == 0xFE63:
            continue
        nfkc = unicodedata.normalize("NFKC", chr(cp))
        if nfkc.startswith(" ") and not nfkc.strip():
            table[cp] = None  # a lone spacing diacritic (¨ ´ ¯ ...): nothing to search for
        elif nfkc != chr(cp):
            table[cp] = nfkc
    # Stand-alone (spacing) voiced sound marks: rather than a space plus a combining mark, use the
    # combining forms, which compose with the kana before them under NFKC (か + ゛ → が), which is
    # what the writer meant.
    table[0x309B] = table[0xFF9E] = "\u3099"
    table[0x309C] = table[0xFF9F] = "\u309a"
    # neologdn rewrites the yen sign to a backslash (a Shift_JIS legacy) and NFKC turns the
    # full-width yen into the yen sign after neologdn ran. Keep the meaning: park both on a
    # Unicode noncharacter and put a yen sign back after neologdn.
    table[0x00A5] = _YEN_PARK
    table[0xFFE5] = _YEN_PARK
    for cp in range(0xFDD0, 0xFDF0):  # noncharacters never occur in real text; drop them
        table[cp] = None
    return table


_PRE_TABLE = _build_pre_table()
# Fast check for the common case of text that needs no pre-pass at all.
_NEEDS_PRE = re.compile(
    "[" + "".join(re.escape(chr(cp)) for cp in sorted(_PRE_TABLE) if cp != 0x0A) + "]"
)
_SPACES = re.compile(r"[ \t]+")
_EDGE_SPACES = re.compile(r" *\n *")
_MANY_BREAKS = re.compile(r"\n{3,}")
# A space before a combining mark: neologdn keeps or drops it depending on the mark that follows,
# and NFKC reorders stacked marks, so it is removed and the mark joins the character before.
_SPACE_BEFORE_MARK = re.compile(
    " +(?=[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\u3099\u309a\ufe20-\ufe2f])"
)
# NFKC can create runs of long-vowel marks (㌍ー → カロリーー); neologdn would collapse them on
# a second pass.
_LONG_VOWELS = re.compile("ー{2,}")


def normalize(text: str) -> str:
    """Normalize Japanese (and mixed) text for indexing and querying. Idempotent."""
    if not text:
        return ""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if _NEEDS_PRE.search(text) is not None:
        text = text.translate(_PRE_TABLE)
    text = neologdn.normalize(text, tilde="normalize")
    if _YEN_PARK in text:
        text = text.replace(_YEN_PARK, "¥")
    if not text.isascii():
        text = _SPACE_BEFORE_MARK.sub("", text)
        text = unicodedata.normalize("NFKC", text)
        if "ーー" in text:
            text = _LONG_VOWELS.sub("ー", text)
    text = _SPACES.sub(" ", text)
    if "\n" in text:
        text = _EDGE_SPACES.sub("\n", text)
        text = _MANY_BREAKS.sub("\n\n", text)
    return text.strip()
