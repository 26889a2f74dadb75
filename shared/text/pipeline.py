"""The document and query paths of the text pipeline, built from the same functions.

Indexing: ``prepare_document`` = normalize → chunk (model tokens) → the chunk's lexical terms
(words and bigrams) and, for a model that embeds the pipeline's lexemes, its vector units.
Querying: ``query_terms`` = normalize → the same words and bigrams. The embedder sees
``embedding_input(title, chunk)`` for documents and the normalized query for queries.

Titles: a chunk's lexical input is ``title + "\n" + chunk`` when the title is not empty, so
that a question naming the article's subject finds every chunk of the article, and every vector
unit starts with the title's lexemes. The body is chunked with the title's tokens taken off the
budget, so the embedding input still fits ``max_tokens``.

Vector units: a bag-of-words model (the default) embeds each *sentence* of a chunk, with the
title, and a chunk's vector score is its best sentence's: on ja_dev vector MRR@10 went from
0.458 (one vector per paragraph) to 0.651 (bench/RESULTS.md). A question asks about one
sentence, and a mean over a whole paragraph blurs it. Transformer models embed the chunk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from shared.text.chunk import Chunk, chunk_text, split_sentences
from shared.text.normalize import normalize
from shared.text.terms import bigrams
from shared.text.tokenize import Analysis, Tokenizer, get_tokenizer

__all__ = [
    "PreparedChunk",
    "QueryTerms",
    "content_hash",
    "embedding_input",
    "prepare_document",
    "prepare_pages",
    "query_terms",
    "unit_texts",
]

# A body chunk keeps at least this share of the budget however long the title is.
_MIN_BODY_SHARE = 0.5


@dataclass(frozen=True)
class PreparedChunk(Chunk):
    """A chunk of the normalized body with the terms of its lexical input (title + chunk) and,
    where the model embeds lexemes, the lexemes of each vector unit (title + one sentence)."""

    words: list[str]
    grams: list[str]
    units: list[list[str]]
    page: int | None = None  # 1-based, for a paged file (PDF); offsets then point into the page


def embedding_input(title: str, chunk_text: str) -> str:
    """What the embedder sees for one chunk. ``chunk_text`` is a chunk of the normalized body;
    the title is normalized here (idempotent), so a raw title from the database works too."""
    title = normalize(title)
    if title and chunk_text:
        return f"{title}\n{chunk_text}"
    return title or chunk_text


def unit_texts(chunk_text: str) -> list[str]:
    """The sentences of a chunk, the vector units of a bag-of-words model."""
    return [chunk_text[a:b] for a, b in split_sentences(chunk_text)] or [chunk_text]


def prepare_document(
    title: str,
    body: str,
    *,
    count_tokens: Callable[[str], int],
    max_tokens: int,
    overlap_tokens: int = 0,
    tokenizer: Tokenizer | None = None,
    tokens_are_lexemes: bool = False,
    vector_unit: str = "sentence",
) -> list[PreparedChunk]:
    """Normalize, chunk and tokenize one document. A document with an empty body but a title
    becomes one chunk holding the title, so it stays findable.

    ``tokens_are_lexemes`` says the model counts exactly the lexemes and embeds them (the
    default static model): then each sentence goes through Sudachi once, for its count, its
    terms and its vector unit together (Sudachi is most of prep's time), and ``units`` is filled,
    per sentence or per chunk as ``vector_unit`` says.
    """
    tok = tokenizer or get_tokenizer()
    title = normalize(title)
    body = normalize(body)
    if tokens_are_lexemes:
        return _prepare_by_sentence(title, body, tok, max_tokens, overlap_tokens, vector_unit)
    if not body:
        if not title:
            return []
        # The title alone; spans are empty because there is no body text to point into.
        words = tok.analyze(title).words
        return [PreparedChunk(0, "", 0, 0, count_tokens(title), words, bigrams(title), [])]
    budget = max_tokens
    if title:
        title_tokens = count_tokens(title + "\n")
        budget = max(int(max_tokens * _MIN_BODY_SHARE), max_tokens - title_tokens, 1)
    overlap = min(overlap_tokens, budget - 1)
    out: list[PreparedChunk] = []
    for c in chunk_text(body, count_tokens, budget, overlap):
        lexical = embedding_input(title, c.text)
        words = tok.analyze(lexical).words
        out.append(
            PreparedChunk(
                c.ordinal,
                c.text,
                c.char_start,
                c.char_end,
                c.token_count,
                words,
                bigrams(lexical),
                [],
            )
        )
    return out


def prepare_pages(
    title: str,
    pages: list[str],
    **options: Any,
) -> list[PreparedChunk]:
    """``prepare_document`` page by page: no chunk spans two pages, each knows its page, and
    ordinals run on through the document. Options are ``prepare_document``'s."""
    out: list[PreparedChunk] = []
    for number, page in enumerate(pages, start=1):
        if not normalize(page):
            continue  # a blank page adds no chunk (not even the title-only one)
        for c in prepare_document(title, page, **options):
            out.append(replace(c, ordinal=len(out), page=number))
    return out


def _prepare_by_sentence(
    title: str, body: str, tok: Tokenizer, max_tokens: int, overlap_tokens: int, vector_unit: str
) -> list[PreparedChunk]:
    memo: dict[str, Analysis] = {}

    def analysis(piece: str) -> Analysis:
        found = memo.get(piece)
        if found is None:
            found = memo[piece] = tok.analyze(piece)
        return found

    head = tok.analyze(title) if title else Analysis([], [])
    if not body:
        if not title:
            return []
        return [
            PreparedChunk(
                0, "", 0, 0, len(head.lexemes), head.words, bigrams(title), [head.lexemes]
            )
        ]
    budget = max_tokens
    if title:
        budget = max(int(max_tokens * _MIN_BODY_SHARE), max_tokens - len(head.lexemes), 1)
    out: list[PreparedChunk] = []
    count = lambda piece: len(analysis(piece).lexemes)  # noqa: E731
    for c in chunk_text(body, count, budget, min(overlap_tokens, budget - 1)):
        # The chunk's sentences were counted (and so tokenized) while chunking; a piece cut out
        # of an over-long sentence may not match one and is tokenized here.
        words = list(head.words)
        units: list[list[str]] = []
        for sentence in unit_texts(c.text):
            a = analysis(sentence)
            words.extend(a.words)
            if a.lexemes:
                units.append(head.lexemes + a.lexemes)
        if vector_unit == "chunk":
            units = [head.lexemes + [lex for u in units for lex in u[len(head.lexemes) :]]]
        out.append(
            PreparedChunk(
                c.ordinal,
                c.text,
                c.char_start,
                c.char_end,
                c.token_count,
                words,
                bigrams(embedding_input(title, c.text)),
                units or [head.lexemes],
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class QueryTerms:
    words: list[str]
    grams: list[str]
    lexemes: list[str]  # what a model that embeds lexemes embeds for the query


def query_terms(query: str, tokenizer: Tokenizer | None = None) -> QueryTerms:
    """Terms of a search query: the same normalization and analysis as a chunk's."""
    text = normalize(query)
    a = (tokenizer or get_tokenizer()).analyze(text)
    return QueryTerms(a.words, bigrams(text), a.lexemes)


def content_hash(title: str, body: str) -> bytes:
    """SHA-256 of the normalized title and body (``\\x1f`` between them; normalization turns
    control characters into spaces, so the separator cannot occur inside either)."""
    return normalized_content_hash(normalize(title), normalize(body))


def normalized_content_hash(title: str, body: str) -> bytes:
    """``content_hash`` for a title and body that are normalized already."""
    return hashlib.sha256(f"{title}\x1f{body}".encode()).digest()
