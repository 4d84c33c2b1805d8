"""Firmware test fixtures: skip (or fail under CI=true) when the bare-metal toolchain is missing."""

from __future__ import annotations

import os

import pytest

from firmware_tests import harness


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
