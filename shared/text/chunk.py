"""Split normalized text into chunks that fit the embedding model's token budget.

1. Sentences: a sentence ends after 。！？!? (and any run of them, and closing brackets right
   after them; also after "." right after kana or kanji, i.e. a normalized ．), but not inside
   「」『』（）()【】: a quoted sentence stays with the sentence that quotes it. A line break
   always ends a sentence and closes any bracket left open (an unbalanced 「 must not swallow
   the rest of the document).
2. Each sentence is counted once with the model's own ``count_tokens``; a chunk's token count is
   the sum of its sentences' counts (no re-counting of growing chunks: linear in the text).
3. Sentences are packed greedily into chunks of at most ``max_tokens``. A sentence over the
   budget (often a long bracketed run or a line without punctuation) is split at the sentence
   ends inside its brackets, else at commas and spaces, else halved at character boundaries until
   each piece fits; nothing is truncated.
4. With ``overlap_tokens``, a chunk starts with the trailing sentences of the previous chunk that
   fit in the overlap (and still leave room for new text).

Chunk spans are trimmed of surrounding whitespace, so ``text[c.char_start:c.char_end] == c.text``
holds exactly; whitespace between chunks belongs to no chunk.

The token count of a chunk is the sum of the counts of its pieces. For the tokenizers used here
that is exact or an upper bound (Sudachi and WordPiece both break at the punctuation where
sentences end); a SentencePiece model can merge across a boundary, which only makes the real
count smaller.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Chunk", "chunk_text", "split_sentences"]


@dataclass(frozen=True)
class Chunk:
    ordinal: int
    text: str
    char_start: int
    char_end: int
    token_count: int


_OPEN = "「『（(【"
_CLOSE = "」』）)】"
_TERMINATORS = "。！？!?"
# Everything the sentence scanner must look at; the rest of the text is skipped by the regex.
_INTERESTING = re.compile("[" + re.escape(_OPEN + _CLOSE + _TERMINATORS) + "\n.]")
# Academic and technical Japanese ends sentences with ．, which normalization makes ".": a period
# right after kana or kanji ends a sentence; one in "3.14", "Ver.2" or "e.g." does not.
_JA_CHAR = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff々〆ヵヶ」』）)]")
# Where an over-long sentence is cut, strongest first: sentence ends inside brackets, then
# commas, semicolons, colons and spaces.
_LONG_CUTS = (
    re.compile("[" + re.escape(_TERMINATORS) + "]+[" + re.escape(_CLOSE) + "]*"),
    re.compile(r"[、，,；;：:\s]+"),
)


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Sentence spans ``(start, end)`` over ``text``, trimmed, whitespace-only spans dropped."""
    spans: list[tuple[int, int]] = []
    depth = 0
    start = 0
    n = len(text)
    pos = 0
    while True:
        m = _INTERESTING.search(text, pos)
        if m is None:
            break
        i = m.start()
        ch = text[i]
        pos = i + 1
        if ch == "\n":
            _add_span(text, start, i, spans)
            start = i + 1
            depth = 0
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            if depth > 0:
                depth -= 1
        elif ch == "." and (i == 0 or _JA_CHAR.match(text, i - 1) is None):
            continue
        elif depth == 0:  # a terminator outside brackets
            end = i + 1
            # Keep runs like "?!" or "。」" (a closer left open by an unbalanced quote) together.
            while end < n and (text[end] in _TERMINATORS or text[end] in _CLOSE):
                end += 1
            _add_span(text, start, end, spans)
            start = end
            pos = end
    _add_span(text, start, n, spans)
    return spans


def _add_span(text: str, start: int, end: int, spans: list[tuple[int, int]]) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start < end:
        spans.append((start, end))


def _split_long(
    text: str,
    start: int,
    end: int,
    count: int,
    count_tokens: Callable[[str], int],
    max_tokens: int,
    out: list[tuple[int, int, int]],
) -> None:
    """Append pieces of ``text[start:end]`` (``count`` tokens) that each fit ``max_tokens``."""
    if count <= max_tokens or end - start <= 1:
        # A single character over budget cannot be split further; keep it rather than lose it.
        out.append((start, end, count))
        return
    # Pack the clauses between the strongest cuts found; each clause is counted once.
    for pattern in _LONG_CUTS:
        cuts = [m.end() for m in pattern.finditer(text, start, end) if m.end() < end]
        if cuts:
            clauses = [
                (a, b, count_tokens(text[a:b])) for a, b in itertools.pairwise([start, *cuts, end])
            ]
            _pack_pieces(text, clauses, count_tokens, max_tokens, out)
            return
    # No usable break: halve at a character boundary (depth log2(len), linear work per level).
    mid = (start + end) // 2
    for a, b in ((start, mid), (mid, end)):
        _split_long(text, a, b, count_tokens(text[a:b]), count_tokens, max_tokens, out)


def _pack_pieces(
    text: str,
    clauses: list[tuple[int, int, int]],
    count_tokens: Callable[[str], int],
    max_tokens: int,
    out: list[tuple[int, int, int]],
) -> None:
    """Merge adjacent clauses up to the budget; split clauses that alone exceed it."""
    cur_start = cur_end = -1
    cur_tokens = 0
    for a, b, c in clauses:
        if c > max_tokens:
            if cur_start >= 0:
                out.append((cur_start, cur_end, cur_tokens))
                cur_start = -1
            _split_long(text, a, b, c, count_tokens, max_tokens, out)
            continue
        if cur_start >= 0 and cur_tokens + c <= max_tokens:
            cur_end = b
            cur_tokens += c
        else:
            if cur_start >= 0:
                out.append((cur_start, cur_end, cur_tokens))
            cur_start, cur_end, cur_tokens = a, b, c
    if cur_start >= 0:
        out.append((cur_start, cur_end, cur_tokens))


def chunk_text(
    text: str,
    count_tokens: Callable[[str], int],
    max_tokens: int,
    overlap_tokens: int = 0,
) -> list[Chunk]:
    """Chunks of ``text`` of at most ``max_tokens`` tokens each (see the module docstring)."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    if overlap_tokens < 0 or overlap_tokens >= max_tokens:
        raise ValueError("overlap_tokens must be >= 0 and smaller than max_tokens")
    if not text or text.isspace():
        return []

    # 1-2: sentences (and pieces of over-long sentences), each counted once.
    pieces: list[tuple[int, int, int]] = []
    for start, end in split_sentences(text):
        count = count_tokens(text[start:end])
        if count <= max_tokens:
            pieces.append((start, end, count))
        else:
            _split_long(text, start, end, count, count_tokens, max_tokens, pieces)

    # 3-4: greedy packing with optional overlap.
    chunks: list[Chunk] = []
    i = 0
    n = len(pieces)
    prev_first = 0
    while i < n:
        first = i
        tokens = 0
        if chunks and overlap_tokens:
            # Walk back over the previous chunk's pieces while they fit in the overlap and
            # leave room for at least the next new piece.
            room = min(overlap_tokens, max_tokens - pieces[i][2])
            j = i
            while j > prev_first + 1 and tokens + pieces[j - 1][2] <= room:
                j -= 1
                tokens += pieces[j][2]
            first = j
        tokens += pieces[i][2]
        i += 1
        while i < n and tokens + pieces[i][2] <= max_tokens:
            tokens += pieces[i][2]
            i += 1
        prev_first = first
        cs, ce = _trim(text, pieces[first][0], pieces[i - 1][1])
        chunks.append(Chunk(len(chunks), text[cs:ce], cs, ce, tokens))
    return chunks


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end
