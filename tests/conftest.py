"""Shared fixtures: the generated zoo (tests/zoo.py) and the third-party models in ../shared/models."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = REPO.parent / "shared" / "models"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import zoo`, as pytest's rootdir insertion does


@pytest.fixture(scope="session")
def zoo() -> dict:
    """name -> zoo.ZooModel, built once and cached under .cache/zoo (needs TensorFlow the first time)."""
    from zoo import build_zoo

    return build_zoo(REPO / ".cache" / "zoo")


@pytest.fixture(scope="session")
def shared_models() -> Path:
    """../shared/models (read-only third-party models); tests skip when it is absent."""
    if not SHARED_MODELS.is_dir():
        pytest.skip(f"third-party models not found at {SHARED_MODELS} (see ../shared/models/README.md)")
    return SHARED_MODELS


@pytest.fixture(scope="session")
def small_int8_model(shared_models: Path) -> Path:
    """A small real int8 model (MLPerf Tiny anomaly-detection autoencoder, 271 KB)."""
    path = shared_models / "ad01_int8.tflite"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path
