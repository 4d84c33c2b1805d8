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


@pytest.fixture(scope="session")
def tiny_nets(tmp_path_factory) -> dict:
    """Two-input MLPs (ReLU, ReLU6, none) converted to int8: small enough to enumerate (certify tests)."""
    import keras
    import numpy as np

    from toolchain.quantize import quantize_keras_model

    out = {}
    for seed in (0, 1, 2):
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([
            keras.Input((2,)),
            keras.layers.Dense(6, activation="relu"),
            keras.layers.Dense(5, activation=["relu6", None, "relu"][seed]),
            keras.layers.Dense(2),
        ])
        rng = np.random.default_rng(seed)
        rep = rng.uniform(-1, 1, size=(200, 2)).astype(np.float32) * (0.5 if seed == 1 else 1.0)
        d = tmp_path_factory.mktemp(f"tiny{seed}")
        out[seed] = quantize_keras_model(model, rep, d)
    return out
