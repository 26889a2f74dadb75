"""Japanese morphological analysis (SudachiPy, core dictionary) for the lexical index.

Split mode C, the longest units (東京大学, 国際連合, 人工知能). DESIGN §6 measured BM25 over
mode-C normalized forms at MRR@10 0.95 on the large held-out set. On bench/data/ja_eval (73
passages, 186 questions) the modes are within noise of each other: BM25 MRR@10 A 0.976, B 0.962,
C 0.965, C plus the A-units of each compound ("search mode") 0.976; mean-vector MRR@10 A 0.900,
B 0.905, C 0.900, C+A 0.908 (C+A − C for BM25: 95% bootstrap CI −0.004…+0.029). With no
measured winner, C: compounds match as units, it gives the fewest lexemes per text (smaller
tsvectors), and all the facts in DESIGN were measured with it. Speed is about the same in all
modes (mode C: ~480k characters/s for lexemes, ~700k for count_tokens, one core).

Lexemes are the *normalized forms* of content words, lowercased: 附属 → 付属, 為る for し/する/
して, 凄い for すごい, カタカナ → 片仮名, iPhone → iphone. Dropped: particles (助詞), auxiliary
verbs (助動詞), symbols (補助記号, 記号) and whitespace (空白): they carry no topic and are in
nearly every passage (keeping every morpheme costs the mean-vector channel 0.900 → 0.866 MRR@10
and BM25 0.965 → 0.956 on ja_eval). Kept: prefixes and suffixes (接頭辞/接尾辞: 第, 的, 性, 化,
市 ...), which in mode C are what is left of a compound the dictionary does not know, and numbers
(名詞-数詞: 1993, 二), because years and counts are what many questions ask about. Dropping either,
or pronouns, or the 非自立可能 verbs (為る, 有る, 成る) moved ja_eval MRR@10 by 0.005 or less.

SudachiPy refuses input over 49,149 bytes of UTF-8, so longer text is split before Sudachi sees
it: at the last sentence end or line break within the limit, else at the last comma or space,
else (a single huge run of characters) at a character boundary under the limit. No text is ever
dropped; only the last fallback can cut a word in two.

Two views of the same morphemes come out of one Sudachi pass (:meth:`Tokenizer.analyze`):
*lexemes* (mode C, above: the default model's vocabulary, chiVe being keyed by them) and *words*,
the lexical index's terms, where each compound is replaced by its mode-A units (東京都庁 → 東京,
都庁; 人工知能 → 人工, 知能), so a question that names a part finds the compound and vice versa.
On ../shared/data/ja_dev (9,713 Wikipedia paragraphs, 2,000 real questions) BM25 over the A
units scored MRR@10 0.901 against 0.898 for the C lexemes and 0.892 for C plus the A parts
(Elasticsearch's "search mode"), all at the same tuned k1 and b (bench/RESULTS.md).
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sudachipy import Dictionary, SplitMode

__all__ = [
    "SPLIT_MODE",
    "SUDACHI_MAX_BYTES",
    "Analysis",
    "Tokenizer",
    "get_tokenizer",
    "split_for_sudachi",
]

# SudachiPy's input limit in bytes of UTF-8 (it raises above it).
SUDACHI_MAX_BYTES = 49149
SPLIT_MODE = "C"

# First element of Sudachi's part of speech: what is *not* a content word.
_NON_CONTENT_POS = frozenset({"助詞", "助動詞", "補助記号", "記号", "空白"})

# Cut preferences inside an over-long text, strongest first.
_SENTENCE_END = re.compile(r"[。．！？!?\n]")
_WEAK_BREAK = re.compile(r"[、，,；;： \t]")


def split_for_sudachi(text: str, max_bytes: int = SUDACHI_MAX_BYTES) -> list[str]:
    """Split ``text`` into pieces of at most ``max_bytes`` UTF-8 bytes; ``"".join`` gives it back.

    Cuts at the last sentence end or line break of a window, else at the last comma or space,
    else at a character boundary.
    """
    if len(text) * 4 <= max_bytes or len(text.encode("utf-8")) <= max_bytes:
        return [text]
    pieces: list[str] = []
    start = 0
    n = len(text)
    while start < n:
        window = _fit_window(text, start, max_bytes)
        end = start + window
        if end < n:
            end = _best_cut(text, start, end)
        pieces.append(text[start:end])
        start = end
    return pieces


def _fit_window(text: str, start: int, max_bytes: int) -> int:
    """Largest character count from ``start`` whose UTF-8 encoding fits in ``max_bytes``."""
    # Start from the guaranteed-safe size and grow by the bytes still free; converges in a few
    # steps (each step at least a quarter of the remaining room).
    size = min(max_bytes // 4, len(text) - start)
    used = len(text[start : start + size].encode("utf-8"))
    while start + size < len(text):
        room = max_bytes - used
        step = room // 4
        if step == 0:
            # Fewer than 4 bytes free: try single characters.
            nxt = len(text[start + size].encode("utf-8"))
            if nxt > room:
                break
            size += 1
            used += nxt
            continue
        step = min(step, len(text) - start - size)
        used += len(text[start + size : start + size + step].encode("utf-8"))
        size += step
    return size


def _best_cut(text: str, start: int, end: int) -> int:
    # Only look at the second half of the window, so pieces stay large.
    lo = start + (end - start) // 2
    for pattern in (_SENTENCE_END, _WEAK_BREAK):
        cuts = [m.end() for m in pattern.finditer(text, lo, end)]
        if cuts:
            return cuts[-1]
    return end


@dataclass(frozen=True, slots=True)
class Analysis:
    """One text as the default model (``lexemes``) and the lexical index (``words``) see it."""

    lexemes: list[str]
    words: list[str]


class Tokenizer:
    """SudachiPy (core dictionary, split mode C) with the lexeme policy of the lexical index.

    One Sudachi dictionary per instance; one Sudachi tokenizer per thread, because a Sudachi
    tokenizer refuses concurrent use (the API may call in from a thread pool).
    """

    def __init__(self, mode: str = SPLIT_MODE) -> None:
        self.mode = mode
        self._split_mode = getattr(SplitMode, mode)
        self._dictionary = Dictionary(dict="core")
        self._is_content = self._dictionary.pos_matcher(lambda pos: pos[0] not in _NON_CONTENT_POS)
        self._local = threading.local()

    def _sudachi(self) -> Any:
        tok = getattr(self._local, "tokenizer", None)
        if tok is None:
            tok = self._dictionary.tokenizer(
                mode=self._split_mode, fields={"pos", "normalized_form", "split_a"}
            )
            self._local.tokenizer = tok
        return tok

    def _morphemes(self, text: str) -> Iterator[Any]:
        tok = self._sudachi()
        for piece in split_for_sudachi(text):
            yield from tok.tokenize(piece)

    def lexemes(self, text: str) -> list[str]:
        """Lowercased normalized forms of the content words of ``text``, in order."""
        is_content = self._is_content
        out: list[str] = []
        for m in self._morphemes(text):
            if is_content(m):
                lex = m.normalized_form().lower()
                if lex and not lex.isspace():
                    out.append(lex)
        return out

    def analyze(self, text: str) -> Analysis:
        """Lexemes and words of ``text`` (see the module docstring), in order."""
        is_content = self._is_content
        lexemes: list[str] = []
        words: list[str] = []
        for m in self._morphemes(text):
            if not is_content(m):
                continue
            lex = m.normalized_form().lower()
            if not lex or lex.isspace():
                continue
            lexemes.append(lex)
            parts = m.split(SplitMode.A)
            if len(parts) < 2:
                words.append(lex)
                continue
            for part in parts:
                if is_content(part):
                    word = part.normalized_form().lower()
                    if word and not word.isspace():
                        words.append(word)
        return Analysis(lexemes, words)

    def count_tokens(self, text: str) -> int:
        """Number of morphemes (all of them, particles and symbols included)."""
        tok = self._sudachi()
        return sum(len(tok.tokenize(piece)) for piece in split_for_sudachi(text))

    def surfaces(self, text: str) -> list[str]:
        """Surface forms of all morphemes (for debugging and tests)."""
        return [m.surface() for m in self._morphemes(text)]


@functools.lru_cache(maxsize=1)
def _tokenizer_of(pid: int) -> Tokenizer:
    return Tokenizer()


def get_tokenizer() -> Tokenizer:
    """The process's Tokenizer: created on first use, and again in a child after a fork (the
    cache is keyed by the process id)."""
    return _tokenizer_of(os.getpid())
