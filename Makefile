# Two entry points for a newcomer (see README): `make run` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.promptfence-installed

.PHONY: install run test lint typecheck unit clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# Headless Chromium + ChromeDriver for the log viewer's browser test (Debian packages).
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }
	touch $(STAMP)

install: $(STAMP)

## Install everything and start proxy + inspector on embedded defaults (Ctrl-C stops both).
run: $(STAMP)
	$(BIN)/promptfence up

## Everything CI checks: import directions, lint, strict typing, the test suite.
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
