"""Build the offline Japanese default model ``kensaku/chive-sudachi-300``.

Source: the word vectors inside the ``ja-ginza`` 5.3.0 wheel (MIT; its meta.json lists the vectors
as chiVe by Works Applications, Apache License 2.0). spaCy keeps them as ``vocab/vectors`` (a .npy
array, 20000 × 300 float32), ``vocab/key2row`` (msgpack, uint64 key → row; 480,443 keys: spaCy
pruned chiVe to 20k rows and pointed the other words at their nearest kept row) and
``vocab/strings.json`` (every string spaCy knows). A key is spaCy's 64-bit string hash,
MurmurHash64A with seed 1 over the UTF-8 bytes; the ``murmurhash`` package exposes only its 32-bit
function to Python, so MurmurHash64A is implemented here. It matches 480,425 of the 480,443 keys
(99.996%; the other 18 keys have no string in strings.json).

The build is deterministic (same input wheel and table → same bytes): sorted vocabulary, no
timestamps, no model card. ja-ginza itself is never installed (it pins SudachiPy < 0.7 and pulls
in spaCy): the wheel is read as a zip file.

SIF (smooth inverse frequency; Arora, Liang and Ma, 2017), measured on ../shared/data/ja_dev
(9,713 paragraphs, 2,000 questions; one vector per sentence, title included; bench/RESULTS.md):

- each word weighs ``SIF_A / (SIF_A + p(w))``, ``p`` its relative frequency in the reference
  table ``data/word_freq.tsv.gz`` (lexeme counts over ja_dev's paragraphs, see its README);
  vector MRR@10 0.575 (plain mean) → 0.626. ``SIF_A`` 3e-4 / 1e-3 / 3e-3: 0.619 / 0.626 / 0.616.
- the first ``COMMON_COMPONENTS`` principal components of the frequency-weighted table are
  projected out of every row (they are what every text shares): 0.626 → 0.650 with 10
  (1: 0.610, 5: 0.636, 20: 0.650). Fitted on the table, not on a corpus's sentences, so the
  model needs no corpus at build time; fitted on one half of ja_dev's articles, the table and
  components gave 0.650 on the questions of the other half, as good as fitting on all.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import msgpack
import numpy as np

from shared.config import DEFAULT_MODEL
from shared.text.normalize import normalize
from shared.text.tokenize import SPLIT_MODE

if TYPE_CHECKING:
    from shared.config import Settings

__all__ = [
    "MARKER_FILE",
    "build_default_model",
    "default_model_dir",
    "find_ginza_wheel",
    "is_valid_model_dir",
    "main_build",
    "murmurhash64a",
]

log = logging.getLogger(__name__)

GINZA_REQUIREMENT = "ja-ginza==5.3.0"
GINZA_WHEEL_GLOB = "ja_ginza-5.3.0-*.whl"
_VOCAB_PREFIX = "ja_ginza/ja_ginza-5.3.0/vocab/"
# Written last; its presence (with matching contents) marks a complete kensaku-built model dir.
MARKER_FILE = "kensaku_model.json"
# The files SudachiStaticEmbedding saves; shared.embed.sudachi_static (which imports torch) is
# loaded only to build, so that checking a model directory costs no torch import.
VOCAB_FILE = "vocab.txt"
WEIGHTS_FILE = "model.safetensors"
# Bump when the output of the build changes, so old model dirs are rebuilt.
BUILDER_VERSION = 2
WORD_FREQUENCIES = Path(__file__).with_name("data") / "word_freq.tsv.gz"
SIF_A = 1e-3
COMMON_COMPONENTS = 10

_M = 0xC6A4A7935BD1E995
_MASK = (1 << 64) - 1


def murmurhash64a(data: bytes, seed: int = 1) -> int:
    """MurmurHash64A (Austin Appleby's MurmurHash2, 64-bit, little-endian), as spaCy's hash64."""
    n = len(data)
    h = (seed ^ (n * _M)) & _MASK
    end = n - (n & 7)
    for i in range(0, end, 8):
        k = (int.from_bytes(data[i : i + 8], "little") * _M) & _MASK
        k ^= k >> 47
        h ^= (k * _M) & _MASK
        h = (h * _M) & _MASK
    if n & 7:
        h ^= int.from_bytes(data[end:], "little")
        h = (h * _M) & _MASK
    h ^= h >> 47
    h = (h * _M) & _MASK
    h ^= h >> 47
    return h


def default_model_dir(models_dir: Path) -> Path:
    """Where ``kensaku/chive-sudachi-300`` lives under ``settings.models_dir``."""
    return Path(models_dir) / DEFAULT_MODEL.split("/")[-1]


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kensaku" / "wheels"


def find_ginza_wheel(ginza_wheel: Path | None = None, *, download: bool = True) -> Path:
    """The ja-ginza wheel: the argument, else ``$KENSAKU_GINZA_WHEEL``, else the download cache
    (``$XDG_CACHE_HOME/kensaku/wheels``), else ``pip download`` into that cache."""
    if ginza_wheel is not None:
        path = Path(ginza_wheel)
        if not path.is_file():
            raise FileNotFoundError(f"ja-ginza wheel not found: {path}")
        return path
    env = os.environ.get("KENSAKU_GINZA_WHEEL")
    if env:
        path = Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"KENSAKU_GINZA_WHEEL points to a missing file: {path}")
        return path
    cache = _cache_dir()
    found = sorted(cache.glob(GINZA_WHEEL_GLOB))
    if found:
        return found[0]
    if not download:
        raise FileNotFoundError(f"no {GINZA_WHEEL_GLOB} in {cache} and downloading is off")
    cache.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s into %s", GINZA_REQUIREMENT, cache)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-q", GINZA_REQUIREMENT, "-d", str(cache)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(cache.glob(GINZA_WHEEL_GLOB))
    if proc.returncode != 0 or not found:
        raise RuntimeError(
            f"could not download {GINZA_REQUIREMENT} with pip (exit {proc.returncode}): "
            f"{proc.stderr.strip()[-500:]}\nDownload it elsewhere with "
            f"`pip download --no-deps {GINZA_REQUIREMENT} -d DIR` and set KENSAKU_GINZA_WHEEL."
        )
    return found[0]


def read_ginza_vectors(wheel: Path) -> tuple[np.ndarray, dict[str, int], str]:
    """(vectors, word → row, sha256 of the vectors file) from the wheel, without installing it."""
    with zipfile.ZipFile(wheel) as zf:
        raw_vectors = zf.read(_VOCAB_PREFIX + "vectors")
        key2row = msgpack.unpackb(zf.read(_VOCAB_PREFIX + "key2row"), strict_map_key=False)
        strings = json.loads(zf.read(_VOCAB_PREFIX + "strings.json"))
    vectors = np.load(io.BytesIO(raw_vectors), allow_pickle=False)
    if vectors.ndim != 2 or vectors.dtype != np.float32:
        raise ValueError(f"unexpected vector table {vectors.shape} {vectors.dtype} in {wheel}")
    words: dict[str, int] = {}
    for s in strings:
        row = key2row.get(murmurhash64a(s.encode("utf-8")))
        if row is not None:
            words[s] = int(row)
    log.info("ja-ginza vectors: %d keys, %d matched by string", len(key2row), len(words))
    return vectors, words, hashlib.sha256(raw_vectors).hexdigest()


def canonical_vocab(words: dict[str, int]) -> dict[str, int]:
    """Key the table the way lexemes look: normalized and lowercased, one row per key.

    Where several chiVe words collapse to one key (Apple/apple, ＡＢＣ/ABC), the word that already
    had the canonical spelling wins, else the first in code-point order: deterministic.
    """
    candidates: dict[str, tuple[bool, str, int]] = {}
    for word, row in words.items():
        key = normalize(word).lower()
        if not key or any(c.isspace() for c in key):
            continue  # a lexeme never contains whitespace
        cand = (key != word, word, row)
        best = candidates.get(key)
        if best is None or cand < best:
            candidates[key] = cand
    return {key: cand[2] for key, cand in candidates.items()}


def read_word_frequencies(path: Path = WORD_FREQUENCIES) -> tuple[dict[str, int], int]:
    """(lexeme → occurrences, all occurrences) of the reference table."""
    counts: dict[str, int] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        name, total = f.readline().rstrip("\n").split("\t")
        if name != "#occurrences":
            raise ValueError(f"{path}: missing '#occurrences' header")
        for line in f:
            word, _, n = line.rstrip("\n").partition("\t")
            counts[word] = int(n)
    return counts, int(total)


def sif_weights(vocab: dict[str, int], counts: dict[str, int], total: int) -> dict[str, float]:
    """``SIF_A / (SIF_A + p(w))`` for every vocabulary word (1 for words the table lacks)."""
    return {w: SIF_A / (SIF_A + counts.get(w, 0) / total) for w in vocab}


def remove_common_components(
    table: np.ndarray,
    vocab: dict[str, int],
    weights: dict[str, float],
    counts: dict[str, int],
    total: int,
) -> np.ndarray:
    """The table with its first principal components projected out of every row. The components
    are those of the rows as texts use them: each row weighted by the frequency of the words that
    map to it times their squared SIF weight (a text's vector is the weighted sum of its rows)."""
    row_mass = np.zeros(table.shape[0], dtype=np.float64)
    for word, row in vocab.items():
        n = counts.get(word, 0)
        if n:
            row_mass[row] += n / total * weights[word] ** 2
    used = np.flatnonzero(row_mass)
    sample = table[used].astype(np.float64) * np.sqrt(row_mass[used])[:, None]
    components = np.linalg.svd(sample, full_matrices=False)[2][:COMMON_COMPONENTS]
    projected = table.astype(np.float64)
    projected -= (projected @ components.T) @ components
    return projected.astype(np.float32)


def build_default_model(out_dir: Path, ginza_wheel: Path | None = None) -> Path:
    """Build the model into ``out_dir`` (replaced if present) and return ``out_dir``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize

    from shared.embed.sudachi_static import SudachiStaticEmbedding

    out_dir = Path(out_dir)
    wheel = find_ginza_wheel(ginza_wheel)
    vectors, words, source_sha = read_ginza_vectors(wheel)
    vocab = canonical_vocab(words)
    # The last row is the "unknown" vector for texts without any known lexeme: the mean of all
    # rows (the direction every text shares most), so such texts sit in the middle, not at 0.
    unk = vectors.astype(np.float64).mean(axis=0).astype(np.float32)
    counts, total = read_word_frequencies()
    weights = sif_weights(vocab, counts, total)
    table = remove_common_components(vectors, vocab, weights, counts, total)
    # The unknown row stays unprojected: the mean is nearly all common component, and projected
    # it would shrink to noise.
    table = np.vstack([table, unk[None, :]])
    module = SudachiStaticEmbedding(
        vocab, table, split_mode=SPLIT_MODE, unk_row=len(vectors), word_weights=weights
    )
    model = SentenceTransformer(modules=[module, Normalize()], device="cpu")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the model is meant to be shared
        model.save(str(tmp), create_model_card=False)
        _write_readme(tmp)
        for path in tmp.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)  # safetensors writes 0600
        marker = {
            "name": DEFAULT_MODEL,
            "builder_version": BUILDER_VERSION,
            "source": {
                "requirement": GINZA_REQUIREMENT,
                "vectors_sha256": source_sha,
                "word_frequencies_sha256": hashlib.sha256(
                    WORD_FREQUENCIES.read_bytes()
                ).hexdigest(),
            },
            "sif": {"a": SIF_A, "common_components": COMMON_COMPONENTS},
            "vectors": {"rows": int(table.shape[0]), "dimension": int(table.shape[1])},
            "vocabulary": len(vocab),
            "split_mode": SPLIT_MODE,
            "files": _file_hashes(tmp),
            "license": "chiVe word vectors: Apache-2.0 (Works Applications); see NOTICE",
        }
        (tmp / MARKER_FILE).write_text(
            json.dumps(marker, ensure_ascii=False, indent=2, sort_keys=True) + "\n", "utf-8"
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("built %s in %s (%d words, %d rows)", DEFAULT_MODEL, out_dir, len(vocab), len(table))
    return out_dir


def _file_hashes(model_dir: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(model_dir).as_posix()
        if rel != MARKER_FILE:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def is_valid_model_dir(model_dir: Path) -> bool:
    """A complete model dir of this builder version whose files match the recorded hashes."""
    marker_path = Path(model_dir) / MARKER_FILE
    try:
        marker = json.loads(marker_path.read_text("utf-8"))
    except (OSError, ValueError):
        return False
    if marker.get("builder_version") != BUILDER_VERSION or marker.get("name") != DEFAULT_MODEL:
        return False
    files = marker.get("files") or {}
    if WEIGHTS_FILE not in files or VOCAB_FILE not in files:
        return False
    try:
        return _file_hashes(Path(model_dir)) == files
    except OSError:
        return False


def main_build(settings: Settings, *, force: bool = False, ginza_wheel: Path | None = None) -> Path:
    """``kensaku model build``: build the default model under ``settings.models_dir`` unless a
    valid one is already there. Returns the model directory."""
    out = default_model_dir(settings.models_dir)
    if not force and is_valid_model_dir(out):
        log.info("%s already built in %s", DEFAULT_MODEL, out)
        return out
    return build_default_model(out, ginza_wheel)


_README = """\
# kensaku/chive-sudachi-300

Japanese sentence embeddings for kensaku's default vector search: the SIF-weighted sum of chiVe
word vectors over the SudachiPy (core dictionary, split mode C) normalized forms of the content
words of a text, with the table's common components removed, L2-normalized. 300 dimensions, no
query/document prompts, no sequence length limit.

Built by `kensaku model build` (shared/embed/build_default.py) from the vector table shipped in
the ja-ginza 5.3.0 wheel. Load it with
`SentenceTransformer(path, trust_remote_code=True)` in an environment where the kensaku package
is installed (the input module is `shared.embed.sudachi_static.SudachiStaticEmbedding`).
"""

_NOTICE = """\
The word vectors in model.safetensors come from chiVe (https://github.com/WorksApplications/chiVe),
Copyright Works Applications Co., Ltd., licensed under the Apache License, Version 2.0
(https://www.apache.org/licenses/LICENSE-2.0), as redistributed (pruned to 20,000 vectors for
480,443 words) in the ja-ginza 5.3.0 package by Megagon Labs Tokyo (MIT License).
The vocabulary is keyed by SudachiDict normalized forms (SudachiDict: Apache License 2.0).
kensaku changed the data: vocabulary keys normalized and lowercased, an extra mean vector added,
word weights from word frequencies and the first principal components projected out.
The word frequencies (vocab.txt's weights) were counted over paragraphs of the JaQuAD dataset
(So et al., arXiv:2202.01764; text from Japanese Wikipedia), CC BY-SA 3.0.
"""


def _write_readme(model_dir: Path) -> None:
    (model_dir / "README.md").write_text(_README, "utf-8")
    (model_dir / "NOTICE").write_text(_NOTICE, "utf-8")
