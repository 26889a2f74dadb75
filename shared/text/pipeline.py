"""The document and query paths of the text pipeline, built from the same functions.

Indexing: ``prepare_document`` = normalize → chunk (model tokens) → lexemes per chunk.
Querying: ``query_lexemes`` = normalize → lexemes. The embedder sees ``embedding_input(title,
chunk)`` for documents and the normalized query for queries.

Titles: the embedding input of a chunk is ``title + "\\n" + chunk`` when the title is not empty,
and the chunk's lexemes are taken from that same input, so that a question naming the article's
subject finds every chunk of the article, lexically and by vector (measured, see
docs/text-pipeline.md). The body is chunked with the title's tokens taken off the budget, so the
embedding input still fits ``max_tokens``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from shared.text.chunk import Chunk, chunk_text, split_sentences
from shared.text.normalize import normalize
from shared.text.tokenize import Tokenizer, get_tokenizer

__all__ = [
    "PreparedChunk",
    "content_hash",
    "embedding_input",
    "prepare_document",
    "query_lexemes",
    "tsvector_literal",
]

# PostgreSQL tsvector limits (src/include/tsearch/ts_type.h): MAXSTRLEN, MAXSTRPOS, MAXNUMPOS,
# and the 1 MiB total size of a tsvector value.
TS_MAX_LEXEME_BYTES = 2047
TS_MAX_POSITION = 16383
TS_MAX_POSITIONS_PER_LEXEME = 256
TS_MAX_BYTES = (1 << 20) - 1
# A body chunk keeps at least this share of the budget however long the title is.
_MIN_BODY_SHARE = 0.5


@dataclass(frozen=True)
class PreparedChunk(Chunk):
    """A chunk of the normalized body plus the lexemes of its embedding input."""

    lexemes: list[str]


def embedding_input(title: str, chunk_text: str) -> str:
    """What the embedder sees for one chunk. ``chunk_text`` is a chunk of the normalized body;
    the title is normalized here (idempotent), so a raw title from the database works too."""
    title = normalize(title)
    if title and chunk_text:
        return f"{title}\n{chunk_text}"
    return title or chunk_text


def prepare_document(
    title: str,
    body: str,
    *,
    count_tokens: Callable[[str], int],
    max_tokens: int,
    overlap_tokens: int = 0,
    tokenizer: Tokenizer | None = None,
    tokens_are_lexemes: bool = False,
) -> list[PreparedChunk]:
    """Normalize, chunk and tokenize one document. A document with an empty body but a title
    becomes one chunk holding the title, so it stays findable.

    ``tokens_are_lexemes`` says the model counts exactly the lexemes (the default static model):
    then each sentence goes through Sudachi once, for its count and its lexemes together, instead
    of once to count and again per chunk (Sudachi is most of prep's time).
    """
    tok = tokenizer or get_tokenizer()
    title = normalize(title)
    body = normalize(body)
    if tokens_are_lexemes and body:
        return _prepare_by_sentence(title, body, tok, max_tokens, overlap_tokens)
    if not body:
        if not title:
            return []
        # The title alone; spans are empty because there is no body text to point into.
        return [PreparedChunk(0, "", 0, 0, count_tokens(title), tok.lexemes(title))]
    budget = max_tokens
    if title:
        title_tokens = count_tokens(title + "\n")
        budget = max(int(max_tokens * _MIN_BODY_SHARE), max_tokens - title_tokens, 1)
    overlap = min(overlap_tokens, budget - 1)
    out: list[PreparedChunk] = []
    for c in chunk_text(body, count_tokens, budget, overlap):
        lexemes = tok.lexemes(embedding_input(title, c.text))
        out.append(
            PreparedChunk(c.ordinal, c.text, c.char_start, c.char_end, c.token_count, lexemes)
        )
    return out


def _prepare_by_sentence(
    title: str, body: str, tok: Tokenizer, max_tokens: int, overlap_tokens: int
) -> list[PreparedChunk]:
    memo: dict[str, list[str]] = {}

    def lexemes_of(piece: str) -> list[str]:
        found = memo.get(piece)
        if found is None:
            found = memo[piece] = tok.lexemes(piece)
        return found

    title_lexemes = tok.lexemes(title) if title else []
    budget = max_tokens
    if title:
        budget = max(int(max_tokens * _MIN_BODY_SHARE), max_tokens - len(title_lexemes), 1)
    out: list[PreparedChunk] = []
    count = lambda piece: len(lexemes_of(piece))  # noqa: E731
    for c in chunk_text(body, count, budget, min(overlap_tokens, budget - 1)):
        # The chunk's sentences were counted (and so tokenized) while chunking; a piece cut out
        # of an over-long sentence may not match one and is tokenized here.
        lexemes = list(title_lexemes)
        for start, end in split_sentences(c.text):
            lexemes.extend(lexemes_of(c.text[start:end]))
        out.append(
            PreparedChunk(c.ordinal, c.text, c.char_start, c.char_end, c.token_count, lexemes)
        )
    return out


def query_lexemes(query: str, tokenizer: Tokenizer | None = None) -> list[str]:
    """Lexemes of a search query: the same normalization and tokenization as documents."""
    return (tokenizer or get_tokenizer()).lexemes(normalize(query))


def tsvector_literal(lexemes: list[str]) -> str:
    """A PostgreSQL ``tsvector`` literal with positions, e.g. ``'語':1,4 'b':2``.

    Positions are 1-based indexes into ``lexemes``, capped at 16383 (later ones all land on
    16383); at most 256 positions are kept per lexeme; lexemes over 2047 UTF-8 bytes are dropped,
    as are empty ones. Lexemes stop being added before the value would pass the 1 MiB limit.
    Cast with ``::tsvector`` (not ``to_tsvector``): the lexemes are final.
    """
    positions: dict[str, list[int]] = {}
    for i, lex in enumerate(lexemes, start=1):
        if "\x00" in lex:
            lex = lex.replace("\x00", "")  # Postgres text cannot hold NUL
        if not lex or len(lex.encode("utf-8")) > TS_MAX_LEXEME_BYTES:
            continue
        pos = min(i, TS_MAX_POSITION)
        plist = positions.setdefault(lex, [])
        if len(plist) < TS_MAX_POSITIONS_PER_LEXEME and (not plist or plist[-1] != pos):
            plist.append(pos)
    parts: list[str] = []
    # Rough size of the stored value: lexeme bytes plus 2 bytes per position plus 8 per entry.
    size = 0
    for lex, plist in positions.items():
        size += len(lex.encode("utf-8")) + 2 * len(plist) + 8
        if size > TS_MAX_BYTES:
            break
        quoted = lex.replace("\\", "\\\\").replace("'", "''")
        parts.append(f"'{quoted}':{','.join(map(str, plist))}")
    return " ".join(parts)


def term_frequencies(lexemes: list[str]) -> str:
    """The lexemes' counts as a JSON object, for BM25's term frequencies; the same lexemes that
    ``tsvector_literal`` keeps (over-long ones dropped), so the two cannot disagree."""
    counts = Counter(
        lex for lex in lexemes if lex and len(lex.encode("utf-8")) <= TS_MAX_LEXEME_BYTES
    )
    return json.dumps(counts, ensure_ascii=False, separators=(",", ":"))


def content_hash(title: str, body: str) -> bytes:
    """SHA-256 of the normalized title and body (``\\x1f`` between them; normalization turns
    control characters into spaces, so the separator cannot occur inside either)."""
    return normalized_content_hash(normalize(title), normalize(body))


def normalized_content_hash(title: str, body: str) -> bytes:
    """``content_hash`` for a title and body that are normalized already."""
    return hashlib.sha256(f"{title}\x1f{body}".encode()).digest()
