"""Exported copies of a transformer model, for the backends other than torch.

A backend is exported once per model, cached under ``<models_dir>/exports/<model>/<backend>/``
and reused by every later process; nothing is exported on a request. The first process that
loads a (model, backend) pair exports it under a file lock (or ``kensaku model export`` does it
ahead of time), and the cache is rebuilt when the source model's files change.

- ``onnx``: the whole sentence-transformers pipeline (transformer, pooling, any dense layers)
  traced to one ONNX graph by ``torch.onnx.export``, run by ONNX Runtime.
- ``onnx-int8``: that graph with its MatMul weights quantized to int8 per channel
  (``onnxruntime.quantization.quantize_dynamic``). ``reduce_range`` keeps the products within
  the range AVX2 (no VNNI) multiplies without saturating: on the packaged MiniLM the mean
  cosine to torch was 0.753 without it, 0.981 with it.
- ``openvino``: the ONNX graph compiled by OpenVINO.
- ``openvino-int8``: the graph with int8 weights (``nncf.compress_weights``).

optimum is not used: its ONNX exporter (optimum-onnx 0.1) needs transformers < 4.58, which
sentence-transformers 6 cannot run with. Tracing the model with torch is all it would do here.

Each export is checked against torch on the probe texts (``data/probe_ja.txt``) before it is
cached: the mean cosine must reach ``min_cosine``, else the export is refused with the figure,
rather than serving vectors that silently lost quality. The figures go into the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.errors import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "EXPORTED_BACKENDS",
    "MANIFEST",
    "RUNTIME_MODULES",
    "TOKENS",
    "ensure_export",
    "export_dir",
    "probe_texts",
    "require_runtime",
]

log = logging.getLogger(__name__)

EXPORTED_BACKENDS = ("onnx", "onnx-int8", "openvino", "openvino-int8")
# Not a backend: the tokenizer and settings alone, for processes that only count tokens (prep).
TOKENS = "tokens"
MANIFEST = "kensaku-export.json"
FORMAT = 2  # bump when the layout or the export changes: older caches are rebuilt
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# What each backend needs at run time and, in addition, to export; and the extra that has both.
RUNTIME_MODULES = {
    "onnx": "onnxruntime",
    "onnx-int8": "onnxruntime",
    "openvino": "openvino",
    "openvino-int8": "openvino",
}
_EXPORT = {"onnx": "onnx", "onnx-int8": "onnx", "openvino": "onnx", "openvino-int8": "nncf"}
_EXTRA = {"onnx": "onnx", "onnx-int8": "onnx", "openvino": "openvino", "openvino-int8": "openvino"}
_PROBE = Path(__file__).with_name("data") / "probe_ja.txt"


def _missing(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:
        return True


def require_runtime(backend: str, *, exporting: bool = False) -> None:
    """A clear error when the packages ``backend`` needs are not installed."""
    if backend == TOKENS:
        return
    needed = [RUNTIME_MODULES[backend]] + ([_EXPORT[backend]] if exporting else [])
    missing = [m for m in needed if _missing(m)]
    if missing:
        raise ConfigError(
            f"KENSAKU_BACKEND={backend} needs {', '.join(missing)}: "
            f"pip install 'kensaku[{_EXTRA[backend]}]'"
        )


def probe_texts() -> list[str]:
    return [line for line in _PROBE.read_text("utf-8").splitlines() if line.strip()]


def export_dir(models_dir: Path, name: str, backend: str) -> Path:
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name.strip("/")) or "model"
    return Path(models_dir) / "exports" / slug / backend


def source_fingerprint(source: str) -> str:
    """Changes when the source model's files do (a local directory), else its hub id."""
    path = Path(source)
    h = hashlib.sha256(f"format {FORMAT}\n".encode())
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(path)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    else:
        h.update(source.encode())
    return h.hexdigest()


def read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((directory / MANIFEST).read_text("utf-8")))
    except (OSError, ValueError):
        return None


def ensure_export(
    source: str, *, name: str, backend: str, models_dir: Path, trust: bool, min_cosine: float
) -> Path:
    """The cached export of ``source`` for ``backend``, made now if missing or stale."""
    from filelock import FileLock

    require_runtime(backend)
    target = export_dir(models_dir, name, backend)
    fingerprint = source_fingerprint(source)

    def current() -> bool:
        manifest = read_manifest(target)
        return manifest is not None and manifest.get("fingerprint") == fingerprint

    if current():
        return _checked(target, backend, min_cosine)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Workers and the API may start together: one exports, the others wait and reuse it.
    with FileLock(str(target) + ".lock", timeout=900):
        if current():
            return _checked(target, backend, min_cosine)
        require_runtime(backend, exporting=True)
        started = time.perf_counter()
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            manifest = _export(source, trust, backend, staging, min_cosine)
            seconds = round(time.perf_counter() - started, 2)
            manifest.update(name=name, fingerprint=fingerprint, seconds=seconds)
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), "utf-8")
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s for %s in %s: %s", name, backend, target, manifest)
    return target


def _checked(target: Path, backend: str, min_cosine: float) -> Path:
    """A cached export, refused if it was measured below a floor raised since."""
    if backend == TOKENS:
        return target
    quality = (read_manifest(target) or {}).get("quality") or {}
    _refuse_below(quality, backend, min_cosine)
    return target


def _refuse_below(quality: dict[str, float], backend: str, min_cosine: float) -> None:
    if quality.get("mean_cosine", 0.0) < min_cosine:
        raise ConfigError(
            f"the {backend} export strays from torch: mean cosine "
            f"{quality.get('mean_cosine', 0.0):.4f} (min {quality.get('min_cosine', 0.0):.4f}) "
            f"on {quality.get('probe_texts', 0)} Japanese probe texts, below "
            f"KENSAKU_EXPORT_MIN_COSINE={min_cosine}; use another backend"
        )


def _export(source: str, trust: bool, backend: str, out: Path, min_cosine: float) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(source, device="cpu", trust_remote_code=trust)
    model.eval()
    settings = _runtime_settings(model)
    inputs = list(settings["inputs"])
    if backend == TOKENS:
        (out / "tokenizer.json").write_text(settings.pop("tokenizer_json"), "utf-8")
        settings.update(format=FORMAT, backend=backend, graph=None)
        return settings
    fp32 = out / "model-fp32.onnx"
    _trace(model, inputs, fp32)
    if backend == "onnx":
        graph = fp32.rename(out / "model.onnx")
    elif backend == "onnx-int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        graph = out / "model.onnx"
        quantize_dynamic(
            fp32, graph, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True
        )
        fp32.unlink()
    else:
        import openvino as ov

        ov_model = ov.Core().read_model(str(fp32))
        if backend == "openvino-int8":
            import nncf

            # Its INFO tables and progress bars go to stdout, into the worker's log.
            nncf.set_log_level(logging.WARNING)
            ov_model = nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        graph = out / "model.xml"
        ov.save_model(ov_model, str(graph), compress_to_fp16=False)
        fp32.unlink()
    (out / "tokenizer.json").write_text(settings.pop("tokenizer_json"), "utf-8")
    settings.update(format=FORMAT, backend=backend, graph=graph.name)
    (out / MANIFEST).write_text(json.dumps(settings), "utf-8")
    settings["quality"] = _check_quality(model, out, backend, min_cosine)
    return settings


def _runtime_settings(model: SentenceTransformer) -> dict[str, Any]:
    """What the exported runtime needs to tokenize and encode exactly as the model does."""
    first = model[0]
    tokenizer: Any = getattr(model, "tokenizer", None)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(first, "auto_model"):
        raise ConfigError(
            "only transformer models (a fast tokenizer and a Hugging Face model) can be "
            "exported; use KENSAKU_BACKEND=torch"
        )
    for module in model:
        if getattr(module, "include_prompt", True) is False:
            raise ConfigError("a model that pools without its prompt cannot be exported")
    sample = _features(model, ["probe"])
    seq = model.max_seq_length
    return {
        "inputs": [k for k in _INPUTS if k in sample],
        "tokenizer_json": backend.to_str(),
        "pad_id": int(tokenizer.pad_token_id or 0),
        "pad_token": str(tokenizer.pad_token or "[PAD]"),
        "max_seq_length": int(seq) if seq else None,
        "dimension": int(model.get_embedding_dimension() or 0),
        "prompts": {k: v for k, v in (model.prompts or {}).items() if v},
    }


def _trace(model: SentenceTransformer, inputs: list[str], path: Path) -> None:
    import torch

    class Pipeline(torch.nn.Module):
        """The model's modules end to end, from token tensors to the sentence embedding."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            out = self.model(dict(zip(inputs, tensors, strict=True)))
            vector: torch.Tensor = out["sentence_embedding"]
            return vector

    sample = _features(model, ["東京の天気", "富士山は日本で一番高い山である"])
    axes = {k: {0: "batch", 1: "sequence"} for k in inputs}
    axes["sentence_embedding"] = {0: "batch"}
    # The TorchScript exporter: deprecated, but it needs no onnxscript and traces BERT-like
    # encoders whole; its deprecation warning and the tracer's are expected here.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Pipeline(),
            tuple(sample[k] for k in inputs),
            str(path),
            input_names=inputs,
            output_names=["sentence_embedding"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,  # the TorchScript tracer: no onnxscript needed, and it handles BERT
        )


def _features(model: SentenceTransformer, texts: list[str]) -> dict[str, Any]:
    """The model's input tensors for ``texts`` (``preprocess`` in sentence-transformers 6)."""
    prepare = getattr(model, "preprocess", None) or model.tokenize
    return dict(prepare(texts))


def _check_quality(
    model: SentenceTransformer, directory: Path, backend: str, min_cosine: float
) -> dict[str, float]:
    from shared.embed.exported_model import ExportedModel

    texts = probe_texts()
    exported = ExportedModel(directory, threads=None)
    ref = model.encode_document(texts, normalize_embeddings=True, convert_to_numpy=True)
    got = exported.encode_document(texts, normalize_embeddings=True)
    cos = np.sum(np.asarray(ref, dtype=np.float32) * got, axis=1)
    quality = {
        "probe_texts": len(texts),
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
    }
    _refuse_below(quality, backend, min_cosine)
    return quality
