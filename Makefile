# jiva-py: the README's two commands (`make deploy`, `make test`) and their helpers.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTHON ?= python3
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv debs test lint unit deploy bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

debs:
	bash scripts/install-debs.sh

lint: venv
	$(VENV)/bin/ruff check jiva_engine tests bench
	$(VENV)/bin/ruff format --check jiva_engine tests bench

# The whole suite: Debian tools, the venv, lint, then every default test.
test: debs venv lint
	$(PY) -m pytest -q tests

unit: venv
	$(PY) -m pytest -q tests/unit

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
