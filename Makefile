# Two entry points for a newcomer (see README): `make run` and `make test`.
#
# Two environments, one per process (promptfence/runtimes.py):
#   .venv        Python 3.11, '.[inspector,dev]': torch (the local CPU wheel), Presidio, faiss
#   .venv-proxy  Python >= 3.12, '.[proxy,dev]': mitmproxy 12, a current cryptography and h11
PYTHON ?= python3.11
# The first Python >= 3.12 that runs (a pyenv shim for a version that is not selected does not).
PROXY_PYTHON ?= $(shell for p in python3.12 python3.13 $$HOME/.pyenv/versions/3.12*/bin/python3.12 \
	$$HOME/.pyenv/versions/3.13*/bin/python3.13; do \
	"$$p" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { echo "$$p"; break; }; done)
VENV ?= .venv
PROXY_VENV ?= .venv-proxy
BIN := $(VENV)/bin
PBIN := $(PROXY_VENV)/bin
STAMP := $(VENV)/.promptfence-installed
PROXY_STAMP := $(PROXY_VENV)/.promptfence-installed

.PHONY: install run test lint typecheck unit clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[inspector,dev]'
	touch $(STAMP)

$(PROXY_STAMP): pyproject.toml
	@test -x $(PBIN)/python || test -n "$(PROXY_PYTHON)" || { echo "make: no Python >= 3.12 found for the proxy" \
		"environment; install one (e.g. pyenv install 3.12) or pass PROXY_PYTHON=/path/to/python3.12" >&2; exit 1; }
	test -x $(PBIN)/python || $(PROXY_PYTHON) -m venv $(PROXY_VENV)
	$(PBIN)/python -m pip install --quiet --upgrade pip
	$(PBIN)/python -m pip install --quiet -e '.[proxy,dev]'
	# Headless Chromium + ChromeDriver for the log viewer's browser test (Debian packages).
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }
	touch $(PROXY_STAMP)

install: $(STAMP) $(PROXY_STAMP)

## Install both environments and start proxy + inspector on embedded defaults (Ctrl-C stops both).
## `up` starts the inspector with .venv's Python and the proxy with .venv-proxy's.
run: install
	$(BIN)/promptfence up

## Everything CI checks: import directions, lint, strict typing, the test suite.
test: lint typecheck unit

lint: install
	$(PBIN)/lint-imports
	$(PBIN)/ruff check .

# Each environment type-checks the packages that run in it (the CLI, the composition root, in
# both); the other side's code is followed silently (mypy-inspector.ini / mypy-proxy.ini).
typecheck: install
	$(PBIN)/mypy --config-file mypy-proxy.ini
	$(BIN)/mypy --config-file mypy-inspector.ini

# The inspector side first (detectors in-process), then the proxy side: mitmproxy in-process and
# the end-to-end tests, which start each process with its own environment's Python.
unit: install
	$(BIN)/pytest --side inspector
	$(PBIN)/pytest --side proxy

clean:
	rm -rf $(VENV) $(PROXY_VENV) .mypy_cache .ruff_cache .pytest_cache
