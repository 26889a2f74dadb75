"""A sentence-transformers input module: Sudachi lexemes → weighted static word vectors → sum.

The default Japanese model (``kensaku/chive-sudachi-300``) is
``SentenceTransformer(modules=[SudachiStaticEmbedding, Normalize])``. Its "tokenizer" is the
project's own text pipeline: :func:`shared.text.normalize.normalize` and
:meth:`shared.text.tokenize.Tokenizer.lexemes`, the lowercased normalized forms of content words.
Each lexeme is looked up in a word → (row, weight) table (chiVe vocabulary, 480k words sharing
20k vectors) and the weighted rows are summed; the ``Normalize`` module after it makes the
result unit length.

The weights and the table are what `kensaku model build` makes of chiVe (SIF, Arora et al. 2017):
each word weighs ``a / (a + p(w))`` with ``p`` its frequency in a reference corpus, so frequent
words count for little, and the table's first principal components (the direction every text
shares) are projected out of every row. See ``build_default.py`` for the measured choices.

Lexemes without a vector are skipped. A text with no known lexeme at all (empty, only symbols,
only unknown words) gets the last row of the table, a fixed "unknown" vector, so that no text
embeds to the zero vector (a zero vector has no cosine distance in pgvector).

Saved as ``model.safetensors`` (``embedding.weight``), ``vocab.txt`` (``word<TAB>row<TAB>weight``
lines, sorted) and ``sudachi_static_config.json``; loaded by ``SentenceTransformer(path,
trust_remote_code=True)`` (sentence-transformers 6 requires the flag for any module class outside
its own package, local directories included).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file as load_safetensors_file
from safetensors.torch import save_file as save_safetensors_file
from sentence_transformers.base.modules.input_module import InputModule
from torch import nn

from shared.embed.build_default import VOCAB_FILE, WEIGHTS_FILE
from shared.text.normalize import normalize
from shared.text.tokenize import SPLIT_MODE, get_tokenizer

__all__ = ["SudachiStaticEmbedding"]


class SudachiStaticEmbedding(InputModule):
    """Weighted sum of static word vectors over the Sudachi lexemes of each text."""

    config_file_name = "sudachi_static_config.json"
    config_keys = ["embedding_dim", "split_mode", "unk_row"]  # noqa: RUF012 (base declares it)
    save_in_root = True

    def __init__(
        self,
        vocab: dict[str, int],
        embedding_weights: np.ndarray | torch.Tensor,
        split_mode: str = SPLIT_MODE,
        unk_row: int | None = None,
        word_weights: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if isinstance(embedding_weights, np.ndarray):
            embedding_weights = torch.from_numpy(np.ascontiguousarray(embedding_weights))
        weights = embedding_weights.to(torch.float32)
        if split_mode != SPLIT_MODE:
            raise ValueError(
                f"this model was built for Sudachi split mode {split_mode}, the text pipeline "
                f"uses mode {SPLIT_MODE}; rebuild the model (kensaku model build)"
            )
        self.embedding = nn.EmbeddingBag.from_pretrained(weights, freeze=True, mode="sum")
        self.embedding_dim = int(weights.shape[1])
        self.num_embeddings = int(weights.shape[0])
        self.unk_row = self.num_embeddings - 1 if unk_row is None else int(unk_row)
        if not 0 <= self.unk_row < self.num_embeddings:
            raise ValueError(f"unk_row {self.unk_row} outside the table of {self.num_embeddings}")
        self.split_mode = split_mode
        self.vocab = vocab
        # Words without a weight (a model built without a frequency table) weigh 1: a mean.
        self.word_weights = word_weights or {}

    # --- text → rows --------------------------------------------------------------------------
    def lexemes(self, text: str) -> list[str]:
        """The lexemes this model embeds for ``text`` (the lexical index's lexemes)."""
        return get_tokenizer().lexemes(normalize(text))

    def features_from_lexemes(self, docs: Sequence[Sequence[str]]) -> dict[str, torch.Tensor]:
        """Model input from lexemes computed earlier (prep has them for each vector unit): the
        same features ``preprocess`` makes from text, without running Sudachi again."""
        vocab, weights = self.vocab, self.word_weights
        ids: list[int] = []
        per_sample: list[float] = []
        offsets: list[int] = []
        for lexemes in docs:
            offsets.append(len(ids))
            start = len(ids)
            for lex in lexemes:
                row = vocab.get(lex)
                if row is not None:
                    ids.append(row)
                    per_sample.append(weights.get(lex, 1.0))
            if len(ids) == start:
                ids.append(self.unk_row)
                per_sample.append(1.0)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "offsets": torch.tensor(offsets, dtype=torch.long),
            "per_sample_weights": torch.tensor(per_sample, dtype=torch.float32),
        }

    def embed_one(self, lexemes: Sequence[str]) -> np.ndarray:
        """The module's output for one text's lexemes with numpy alone (what ``forward`` computes
        for a batch of one): the query path, where torch's per-call machinery cost ten times the
        arithmetic."""
        table = self._table_view()
        vocab, weights = self.vocab, self.word_weights
        rows, scale = [], []
        for lex in lexemes:
            row = vocab.get(lex)
            if row is not None:
                rows.append(row)
                scale.append(weights.get(lex, 1.0))
        if not rows:
            return np.array(table[self.unk_row], dtype=np.float32)
        return np.asarray(np.asarray(scale, dtype=np.float32) @ table[rows], dtype=np.float32)

    def _table_view(self) -> np.ndarray:
        view = getattr(self, "_numpy_table", None)
        if view is None:
            # Shares memory with the (frozen, CPU) embedding weights.
            view = self._numpy_table = self.embedding.weight.detach().cpu().numpy()
        return view

    def count_tokens(self, text: str) -> int:
        """Tokens as this model sees them: the lexemes (content words) of ``text``."""
        return len(self.lexemes(text))

    def preprocess(
        self, inputs: Sequence[Any], prompt: str | None = None, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        texts = [str(t) for t in inputs]
        if prompt:
            texts = self._prepend_prompt(texts, prompt)
        return self.features_from_lexemes([self.lexemes(t) for t in texts])

    def forward(self, features: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        features["sentence_embedding"] = self.embedding(
            features["input_ids"],
            features["offsets"],
            per_sample_weights=features["per_sample_weights"],
        )
        return features

    @property
    def max_seq_length(self) -> float:
        # No position limit: a bag of words of any length.
        return float("inf")

    def get_embedding_dimension(self) -> int:
        return self.embedding_dim

    # --- persistence ---------------------------------------------------------------------------
    def save(
        self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any
    ) -> None:
        out = Path(output_path)
        weight = self.embedding.weight.detach().to("cpu").contiguous()
        save_safetensors_file({"embedding.weight": weight}, str(out / WEIGHTS_FILE))
        self.save_config(output_path)
        with open(out / VOCAB_FILE, "w", encoding="utf-8", newline="\n") as f:
            for word in sorted(self.vocab):
                f.write(f"{word}\t{self.vocab[word]}\t{self.word_weights.get(word, 1.0):.6g}\n")

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        init_defaults: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> SudachiStaticEmbedding:
        hub: dict[str, Any] = {
            "subfolder": subfolder,
            "token": token,
            "cache_folder": cache_folder,
            "revision": revision,
            "local_files_only": local_files_only,
        }
        config = cls.load_config(model_name_or_path, **hub)
        weights_path = cls.load_file_path(model_name_or_path, filename=WEIGHTS_FILE, **hub)
        vocab_path = cls.load_file_path(model_name_or_path, filename=VOCAB_FILE, **hub)
        if weights_path is None or vocab_path is None:
            raise FileNotFoundError(
                f"{model_name_or_path}: {WEIGHTS_FILE} or {VOCAB_FILE} missing; rebuild the model"
            )
        weights = load_safetensors_file(weights_path)["embedding.weight"]
        vocab, word_weights = read_vocab(vocab_path)
        return cls(
            vocab,
            weights,
            split_mode=config.get("split_mode", SPLIT_MODE),
            unk_row=config.get("unk_row"),
            word_weights=word_weights,
        )


def read_vocab(path: str | os.PathLike[str]) -> tuple[dict[str, int], dict[str, float]]:
    """(word → row, word → weight) from ``word<TAB>row[<TAB>weight]`` lines (words never hold
    whitespace: the build drops such keys)."""
    vocab: dict[str, int] = {}
    weights: dict[str, float] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            word, row, *weight = line.rstrip("\n").split("\t")
            vocab[word] = int(row)
            if weight:
                weights[word] = float(weight[0])
    return vocab, weights
