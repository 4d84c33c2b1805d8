# qassure: `make certify TARGET=cortex-m4` and `make test` do all the set-up on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.qassure-setup-stamp
TARGET ?= cortex-m4
CONFIG ?= configs/default.yaml

.PHONY: setup setup-firmware test certify bench clean

setup: $(STAMP)

# Runs once (the stamp also depends on pyproject.toml, so new dependencies re-run it).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --pre tflite-micro
	touch $(STAMP)

# arm-none-eabi-gcc + qemu-system-arm for the firmware tests (needs root + apt).
setup-firmware:
	bash scripts/setup-firmware.sh

test: setup
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  $(MAKE) --no-print-directory setup-firmware || echo "firmware set-up failed: firmware tests will skip"; \
	fi
	$(PY) -m pytest

certify: setup
	$(VENV)/bin/qassure run $(CONFIG) --target $(TARGET)

# The suite every engine change is judged by (about 40 minutes on 2 cores): bench/out/suite/results.md,
# results.json and ratios.png. The older benches are scripts: see README's benchmark paragraph.
bench: setup
	$(PY) bench/suite.py

clean:
	rm -rf build .cache .pytest_cache .hypothesis .mypy_cache .ruff_cache bench/out firmware_tests/out *.egg-info
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +
