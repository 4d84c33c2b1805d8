"""Firmware test fixtures: the bare-metal toolchain (skip, or fail under CI=true, when missing), and the
model zoo + third-party models shared with tests/ (tests.zoo.build_zoo, cached under .cache/zoo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from firmware_tests import harness

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = REPO.parent / "shared" / "models"


@pytest.fixture(scope="session")
def firmware_toolchain() -> dict[str, str]:
    missing = harness.missing_tools()
    if missing:
        msg = (f"firmware toolchain missing: {', '.join(missing)} not on PATH "
               "(run `make setup-firmware` or scripts/setup-firmware.sh)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + "; CI=true makes this a failure")
        pytest.skip(msg)
    return harness.tool_versions()


@pytest.fixture(scope="session")
def zoo() -> dict:
    """name -> tests.zoo.ZooModel, the same cached files tests/ uses (TensorFlow only to build them once)."""
    from tests.zoo import build_zoo

    return build_zoo(REPO / ".cache" / "zoo")


@pytest.fixture(scope="session")
def shared_models() -> Path:
    """../shared/models (read-only third-party models); tests skip when it is absent."""
    if not SHARED_MODELS.is_dir():
        pytest.skip(f"third-party models not found at {SHARED_MODELS} (see ../shared/models/README.md)")
    return SHARED_MODELS
