"""Firmware test fixtures: the bare-metal toolchain (skip, or fail under CI=true, when missing); the model
zoo (tests.zoo.build_zoo, cached under .cache/zoo) and ../shared/models are tests/conftest.py's fixtures."""

from __future__ import annotations

import os

import pytest

from firmware_tests import harness
from tests.conftest import shared_models, zoo  # noqa: F401  (tests' session fixtures, reused here)


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
