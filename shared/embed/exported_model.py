"""An exported model (``shared/embed/export.py``) run by ONNX Runtime or OpenVINO.

It offers the part of ``SentenceTransformer`` that ``Embedder`` uses (``encode_document``,
``encode_query``, ``prompts``, ``tokenizer``, ``max_seq_length``, the dimension), so one
``Embedder`` serves every backend. It imports neither torch nor transformers: a process on an
exported backend starts without loading either (that is most of torch's cold start).

Tokenization is the model's own fast tokenizer (``tokenizers``), truncated to the model's
sequence limit and padded to the longest text of a batch, as sentence-transformers does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from shared.embed.export import MANIFEST
from shared.errors import ConfigError

__all__ = ["ExportedModel"]

_Run = Callable[[dict[str, np.ndarray]], Any]


class ExportedModel:
    """``load_graph=False`` (or a ``tokens`` export, which has no graph): a token counter only,
    for prep, which needs the tokenizer and the sequence limit but never encodes."""

    def __init__(self, directory: Path, *, threads: int | None, load_graph: bool = True) -> None:
        from tokenizers import Tokenizer

        self.directory = Path(directory)
        manifest: dict[str, Any] = json.loads((self.directory / MANIFEST).read_text("utf-8"))
        self.manifest = manifest
        self.backend: str = manifest["backend"]
        self.prompts: dict[str, str] = dict(manifest.get("prompts") or {})
        self.max_seq_length: int | None = manifest.get("max_seq_length")
        self._dimension = int(manifest["dimension"])
        self._inputs: list[str] = list(manifest["inputs"])
        self.tokenizer = Tokenizer.from_file(str(self.directory / "tokenizer.json"))
        self._batch_tokenizer = Tokenizer.from_str(self.tokenizer.to_str())
        if self.max_seq_length:
            self._batch_tokenizer.enable_truncation(self.max_seq_length)
        self._batch_tokenizer.enable_padding(
            pad_id=int(manifest["pad_id"]), pad_token=str(manifest["pad_token"])
        )
        graph = manifest.get("graph")
        self._graph = self.directory / graph if graph and load_graph else None
        self._threads = threads
        self._run = self._open(self._graph, threads) if self._graph else None
        # Sessions on more threads, by thread count, for query encodes sized to the idle cores.
        self._wider: dict[int, _Run] = {}

    def open_wider(self, counts: Iterable[int]) -> None:
        """Open a session on each of ``counts`` intra-op threads next to the first one: a
        session's thread pool is fixed when it opens, so a query that finds idle cores needs one
        of that size at hand (Embedder.follow_idle_cores). Each holds its own copy of the
        weights (MiniLM: 36 MB on onnx-int8, 113 MB on onnx, 215 MB on openvino)."""
        if self._graph is None or not self._threads:
            return
        for n in counts:
            if n > self._threads and n not in self._wider:
                # A new dict, not an insert: an encode reading the old one meanwhile is safe.
                self._wider = {**self._wider, n: self._open(self._graph, n, spin=False)}

    def sessions(self) -> list[int]:
        """The intra-op threads of each open session, first one first (none when the first is on
        the runtime's default)."""
        return [self._threads, *sorted(self._wider)] if self._threads and self._run else []

    def session_threads(self, threads: int | None) -> int | None:
        """The intra-op threads of the session an encode offered ``threads`` runs on: the
        widest one that fits, else the first."""
        fits = [n for n in self._wider if threads is not None and n <= threads]
        return max(fits) if fits else self._threads

    def _session(self, threads: int | None) -> _Run:
        assert self._run is not None
        return self._wider.get(self.session_threads(threads) or 0, self._run)

    def _open(self, graph: Path, threads: int | None, *, spin: bool = True) -> _Run:
        """``spin``: ONNX Runtime's pool threads spin a while for the next run (OpenVINO's
        do not)."""
        if self.backend.startswith("onnx"):
            import onnxruntime as ort

            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            if not spin:
                # Idle pool threads sleep at once instead of spinning for the next run: a core
                # a query borrowed goes back to whoever needs it next.
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
            return lambda feed: session.run(None, feed)[0]
        import openvino as ov

        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = ov.Core().compile_model(str(graph), "CPU", config)
        # A compiled model runs one infer request at a time; the API encodes queries in a
        # thread pool. (ONNX Runtime sessions are safe to share between threads.)
        lock = threading.Lock()

        def run(feed: dict[str, np.ndarray]) -> Any:
            with lock:
                return compiled(feed)[0]

        return run

    # --- the SentenceTransformer surface Embedder uses ------------------------------------------
    def get_embedding_dimension(self) -> int:
        return self._dimension

    def __iter__(self) -> Iterator[ExportedModel]:
        return iter([self])

    def __getitem__(self, index: int) -> ExportedModel:
        if index != 0:
            raise IndexError(index)
        return self

    def encode_document(self, texts: list[str], **kwargs: Any) -> np.ndarray:
        prompt = next(
            (self.prompts[k] for k in ("document", "passage", "corpus") if k in self.prompts), ""
        )
        return self.encode(texts, prompt, kwargs.get("normalize_embeddings", True))

    def encode_query(self, texts: list[str], **kwargs: Any) -> np.ndarray:
        """``threads``: the intra-op threads the encode may use (``session_threads``)."""
        prompt = self.prompts.get("query", "")
        return self.encode(
            texts, prompt, kwargs.get("normalize_embeddings", True), kwargs.get("threads")
        )

    def encode(
        self, texts: list[str], prompt: str = "", normalize: bool = True, threads: int | None = None
    ) -> np.ndarray:
        """One batch, as given (``Embedder`` sorts and sizes the batches)."""
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        # As sentence-transformers 6 does: the prompt prefixed, nothing stripped; lowercasing
        # (do_lower_case) is in the exported tokenizer's normalizer.
        encodings = self._batch_tokenizer.encode_batch([prompt + t for t in texts])
        columns = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        feed = {k: np.asarray(columns[k], dtype=np.int64) for k in self._inputs}
        if self._run is None:
            raise ConfigError(f"{self.directory} was loaded to count tokens, not to encode")
        vectors = np.asarray(self._session(threads)(feed), dtype=np.float32)
        if normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors
