"""Fixtures for the text pipeline and embedding unit tests.

The default model is built once per test session into ``.models/`` at the repository root (the
same place ``kensaku model build`` puts it) and reused while it is valid, so only the first run
pays for the build (about ten seconds, plus the ja-ginza wheel download if it is not cached).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from shared.embed.embedder import Embedder
    from shared.text.tokenize import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = ROOT / ".models"


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    from shared.text.tokenize import get_tokenizer

    return get_tokenizer()


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    from shared.config import Settings
    from shared.embed.build_default import main_build

    return main_build(Settings(models_dir=MODELS_DIR))


@pytest.fixture(scope="session")
def default_embedder(default_model_path: Path) -> Embedder:
    from shared.config import DEFAULT_MODEL, Settings
    from shared.embed.embedder import load_embedder

    return load_embedder(Settings(model=DEFAULT_MODEL, models_dir=MODELS_DIR, device="cpu"))
