"""The shortcuts for a model whose tokens are the pipeline's lexemes (the default): prep
tokenizes each sentence once, and embed reads the stored lexemes instead of the text. Both must
give what the slow path gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.embed.embedder import Embedder
from shared.text.normalize import normalize
from shared.text.pipeline import embedding_input, prepare_document
from shared.text.tokenize import Tokenizer

ROOT = Path(__file__).resolve().parents[2]


def sample_documents() -> list[dict[str, str]]:
    lines = (ROOT / "data/sample/corpus.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_encode_lexemes_equals_encode_documents(
    default_embedder: Embedder, tokenizer: Tokenizer
) -> None:
    docs = sample_documents()
    inputs = [embedding_input(d["title"], normalize(d["text"][:600])) for d in docs]
    inputs += ["", "の", "ＡＢＣ"]  # nothing known: the model's unknown-word row
    from_text = default_embedder.encode_documents(inputs)
    from_lexemes = default_embedder.encode_lexemes([tokenizer.lexemes(t) for t in inputs])
    assert default_embedder.takes_lexemes
    np.testing.assert_allclose(from_lexemes, from_text, atol=1e-5)
    # Order and multiplicity matter to the mean: a shuffled bag is the same, a set is not.
    lex = tokenizer.lexemes("猫と猫と犬が庭で遊ぶ。")
    a, b, c = default_embedder.encode_lexemes([lex, lex[::-1], sorted(set(lex))])
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(a, c, atol=1e-4)


@pytest.mark.parametrize("max_tokens", [16, 64, 256])
def test_sentence_tokenizing_prep_gives_the_same_chunks(
    default_embedder: Embedder, max_tokens: int
) -> None:
    agree = total = 0
    docs = [*sample_documents(), {"title": "長文", "text": "とても長い文、" * 2000}]
    for d in docs:
        kwargs = {"count_tokens": default_embedder.count_tokens, "max_tokens": max_tokens}
        slow = prepare_document(d["title"], d["text"], **kwargs)  # type: ignore[arg-type]
        fast = prepare_document(d["title"], d["text"], tokens_are_lexemes=True, **kwargs)  # type: ignore[arg-type]
        strip = [(c.text, c.char_start, c.char_end, c.token_count) for c in slow]
        assert [(c.text, c.char_start, c.char_end, c.token_count) for c in fast] == strip
        for s, f in zip(slow, fast, strict=True):
            total += 1
            agree += s.words == f.words
    # Sudachi may segment a compound differently with or without the neighbouring sentence
    # (綿織物 vs 綿 + 織物); that must stay rare.
    assert agree / total >= 0.95, (agree, total)
